"""Schemathesis against the published /openapi.json of a real gateway over a real router: for every
operation, the schema's examples, generated valid requests and generated invalid ones; no server error, and
every answer is one the schema documents (status, content type, body).

The router behind this gateway has the replay rungs only, so each request is answered in milliseconds: the
schema's own example (a recorded GSM8K question) gets a 200, while a generated prompt has no recording and
gets the documented 503 `rung_unavailable`, the one 5xx allowed (no rung can answer it; nothing failed).
"""

from __future__ import annotations

import httpx
import pytest

from escalon.gateway.app import create_app
from escalon.gateway.settings import GatewaySettings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pip install schemathesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (hypothesis comes with schemathesis)
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.integration
EXAMPLES = {"/v1/chat/completions": 120}  # the operation with a body: the most to explore
DEFAULT_EXAMPLES = 30
# The operations, from the same app the server runs (building it does no I/O); the test loads the schema the
# running gateway publishes and checks it is this one.
SPEC = create_app(GatewaySettings()).openapi()
OPERATIONS = [(path, method.upper()) for path, methods in SPEC["paths"].items() for method in methods]


def no_unexpected_server_error(ctx, response, case) -> None:
    """5xx only as the documented "no rung is available": a 503 with the OpenAI error body saying so."""
    if response.status_code < 500:
        return
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    assert response.status_code == 503 and code == "rung_unavailable", (
        f"server error {response.status_code} for {case.method} {case.formatted_path}: {response.text[:500]}")


@pytest.fixture(scope="module")
def published(replay_gateway):
    served = httpx.get(f"{replay_gateway.url}/openapi.json", timeout=10).json()
    assert served == SPEC
    return schemathesis.openapi.from_url(f"{replay_gateway.url}/openapi.json")


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_server_error_and_only_documented_answers(published, replay_gateway, path, method):
    operation = published[path][method]
    strategies = list(published.get_strategies_from_examples(operation))
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategies.append(operation.as_strategy(generation_mode=mode))

    @given(case=st.one_of(strategies))
    @settings(max_examples=EXAMPLES.get(path, DEFAULT_EXAMPLES), deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(
            base_url=replay_gateway.url, timeout=30,
            checks=[no_unexpected_server_error, status_code_conformance, content_type_conformance,
                    response_schema_conformance],
        )

    check()

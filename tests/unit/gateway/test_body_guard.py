"""The API key and the body size are checked before the body is read (escalon.gateway.bodyguard)."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fastapi.testclient import TestClient

from escalon.gateway.app import create_app
from escalon.gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit
NOWHERE = "127.0.0.1:1"  # nothing listens on port 1: these requests never need an upstream
QUESTION = b'{"model": "escalon/auto", "messages": [{"role": "user", "content": "hi"}]}'


def _app(**settings):
    return create_app(GatewaySettings(router_address=NOWHERE, serving_address=NOWHERE, distill_address=NOWHERE,
                                      upstream_timeout_s=1, request_timeout_s=2, max_body_bytes=64 * 1024,
                                      **settings))


@pytest.fixture(scope="module")
def keyed():
    with TestClient(_app(api_keys="sk-a")) as client:
        yield client


@pytest.fixture(scope="module")
def open_gateway():
    with TestClient(_app()) as client:
        yield client


@pytest.mark.parametrize("body", [b"{nope", QUESTION, b"x" * 2_000_000])
def test_a_keyless_request_is_401_whatever_its_body(keyed, body):
    reply = keyed.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "missing_api_key"


def test_a_wrong_key_is_403_before_the_body_is_parsed(keyed):
    reply = keyed.post("/v1/chat/completions", content=b"{nope", headers={"authorization": "Bearer sk-z"})
    assert reply.status_code == 403


def test_a_good_key_reaches_validation(keyed):
    reply = keyed.post("/v1/chat/completions", content=b"{nope", headers={"authorization": "Bearer sk-a",
                                                                          "content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"


def test_a_body_over_the_limit_is_413_declared_or_streamed(open_gateway):
    declared = open_gateway.post("/v1/chat/completions", content=b"x" * (65 * 1024))
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: the size is only known as the bytes arrive
        for _ in range(40):
            yield b"y" * 4096

    streamed = open_gateway.post("/v1/chat/completions", content=chunks())
    assert streamed.status_code == 413
    assert open_gateway.get("/livez").status_code == 200


def test_the_guard_answers_from_the_headers_without_reading_the_body():
    """At the ASGI level: with keys set and no key sent, receive() is never called."""
    app = _app(api_keys="sk-a")
    calls, sent = [], []

    async def receive():
        calls.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def send(message):
        sent.append(message)

    async def main():
        async with app.router.lifespan_context(app):
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                     "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5), "server": ("t", 80),
                     "headers": [(b"content-length", b"200000000")]}
            await app(scope, receive, send)

    asyncio.run(main())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 401 and not calls


_bodies = st.one_of(st.binary(max_size=2048), st.text(max_size=512).map(str.encode),
                    st.builds(lambda n: b"x" * n, st.integers(60_000, 70_000)),  # either side of the 64 KB limit
                    st.recursive(st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=20)),
                                 lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c,
                                                                                          max_size=3)),
                                 max_leaves=10).map(lambda v: json.dumps(v).encode()))
_paths = st.sampled_from(["/v1/chat/completions", "/v1/models", "/v1/models/gpt-4", "/ops/api/jobs",
                          "/ops/api/traffic", "/v1/../ops/api/rungs", "/v1/%00"])


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(path=_paths, body=_bodies, auth=st.sampled_from(["", "Bearer", "Bearer ", "Basic sk-a", "bearer sk-x",
                                                        "Bearer sk-a\x00"]))
def test_fuzzed_requests_without_a_good_key_are_always_401_or_403(keyed, path, body, auth):
    headers = {"content-type": "application/json", **({"authorization": auth} if auth else {})}
    reply = keyed.post(path, content=body, headers=headers)
    assert reply.status_code in (401, 403, 404, 405), (path, auth, reply.status_code, reply.text[:200])
    if path.startswith(("/v1/", "/ops/api/")) and reply.status_code not in (404, 405):
        assert reply.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies)
def test_fuzzed_bodies_with_a_good_key_never_get_a_server_error(keyed, body):
    reply = keyed.post("/v1/chat/completions", content=body,
                       headers={"content-type": "application/json", "authorization": "Bearer sk-a"})
    # 503: the router behind this gateway is nowhere (port 1), the one server-side status allowed
    assert reply.status_code in (400, 413, 429, 503), (reply.status_code, reply.text[:200])
    assert reply.json()["error"]["message"]

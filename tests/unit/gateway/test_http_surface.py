"""The HTTP surface with nothing behind it (the upstream addresses refuse connections): request validation,
the error shape, authentication, and the page and its data degrading to "source down" instead of failing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from escalon.gateway.app import create_app
from escalon.gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit
NOWHERE = "127.0.0.1:1"
JSON_TYPE = {"content-type": "application/json"}  # nothing listens on port 1
QUESTION = {"model": "escalon/auto", "messages": [{"role": "user", "content": "What is 2+2?"}]}


@pytest.fixture(scope="module")
def http():
    settings = GatewaySettings(router_address=NOWHERE, serving_address=NOWHERE, distill_address=NOWHERE,
                               upstream_timeout_s=1, request_timeout_s=2)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def keyed():
    settings = GatewaySettings(router_address=NOWHERE, serving_address=NOWHERE, distill_address=NOWHERE,
                               upstream_timeout_s=1, api_keys="sk-a,sk-b")
    with TestClient(create_app(settings)) as client:
        yield client


def error_of(reply) -> dict:
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(("payload", "param"), [
    ({"messages": QUESTION["messages"]}, "model"),
    ({"model": "escalon/auto", "messages": []}, "messages"),
    ({**QUESTION, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({**QUESTION, "max_tokens": 0}, "max_tokens"),
    ({**QUESTION, "min_quality": 1.5}, "min_quality"),
    ({**QUESTION, "answer_type": "poem"}, "answer_type"),
])
def test_invalid_requests_are_400_naming_the_field(http, payload, param):
    reply = http.post("/v1/chat/completions", json=payload)
    assert reply.status_code == 400 and error_of(reply)["param"] == param


def test_a_body_that_is_not_json_is_a_400(http):
    reply = http.post("/v1/chat/completions", content=b"{nope", headers=JSON_TYPE)
    assert reply.status_code == 400 and error_of(reply)["code"] == "invalid_json"


def test_a_nan_budget_is_refused(http):
    reply = http.post("/v1/chat/completions", content=b'{"model": "escalon/auto", "max_cost_usd": NaN, '
                      b'"messages": [{"role": "user", "content": "hi"}]}', headers=JSON_TYPE)
    assert reply.status_code == 400 and error_of(reply)["param"] == "max_cost_usd"


def test_text_that_is_not_unicode_is_refused(http):
    # JSON may escape a lone surrogate, which no protobuf string can carry.
    reply = http.post("/v1/chat/completions", content=b'{"model": "escalon/auto", '
                      b'"messages": [{"role": "user", "content": "hi \\ud800"}]}', headers=JSON_TYPE)
    assert reply.status_code == 400 and error_of(reply)["param"] in ("messages", "messages[0].content")
    reply = http.post("/v1/chat/completions", content=b'{"model": "a\\udfff", '
                      b'"messages": [{"role": "user", "content": "hi"}]}', headers=JSON_TYPE)
    assert reply.status_code == 400 and error_of(reply)["param"] == "model"


def test_an_unreachable_router_is_a_503_and_not_ready(http):
    reply = http.post("/v1/chat/completions", json=QUESTION)
    assert reply.status_code == 503 and error_of(reply)["code"] == "upstream_unavailable"
    assert http.get("/healthz").status_code == 503 and http.get("/livez").status_code == 200


def test_unknown_paths_and_methods_answer_in_the_error_shape(http):
    assert http.get("/v1/nothing").status_code == 404 and error_of(http.get("/v1/nothing"))["code"] == "not_found"
    assert http.get("/v1/chat/completions").status_code == 405


def test_models_still_lists_the_policies_when_serving_is_down(http):
    ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert ids == ["escalon/auto", "escalon/economy", "escalon/balanced", "escalon/max-quality"]


def test_the_page_and_its_data_say_which_source_is_down(http):
    page = http.get("/ops")
    assert page.status_code == 200 and "<svg id=\"frontier-chart\"" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert http.get("/").text == page.text
    assert http.get("/ops/page.js").headers["content-type"].startswith("text/javascript")
    for path in ("/ops/api/rungs", "/ops/api/jobs"):
        reply = http.get(path)
        assert reply.status_code == 200 and reply.json()["error"].startswith("UNAVAILABLE")
    assert http.get("/ops/api/traffic").json()["routes"] >= 0


def test_keys_are_required_on_the_api_and_the_page_data_but_not_the_page_or_probes(keyed):
    missing = keyed.post("/v1/chat/completions", json=QUESTION)
    assert missing.status_code == 401 and error_of(missing)["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = keyed.get("/v1/models", headers={"authorization": "Bearer sk-c"})
    assert wrong.status_code == 403 and error_of(wrong)["code"] == "invalid_api_key"
    assert keyed.get("/v1/models", headers={"authorization": "Bearer sk-b"}).status_code == 200
    assert keyed.get("/ops/api/traffic").status_code == 401
    assert keyed.get("/ops/api/traffic", headers={"authorization": "Bearer sk-a"}).status_code == 200
    for open_path in ("/ops", "/ops/page.js", "/healthz", "/livez", "/openapi.json"):
        assert keyed.get(open_path).status_code in (200, 503)


def test_the_schema_documents_400_not_fastapis_422(http):
    schema = http.get("/openapi.json").json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert "422" not in chat["responses"] and {"200", "400", "401", "403", "429", "503"} <= set(chat["responses"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]

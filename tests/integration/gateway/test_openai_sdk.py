"""The real `openai` SDK against the real gateway over the real stack: SmolLM2 answering through the Router API.

Every client has max_retries=0, so each error is the gateway's first answer, not the SDK's last retry.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from escalon.offline.stack import DEMO_PROMPT
from tests.integration.gateway.stack import GPT4, LOCAL, MIXTRAL, Gateway

pytestmark = pytest.mark.integration
SIMPLE = "What is 2 + 3? Answer with a number."


def client(gateway: Gateway, api_key: str = "unused", **kwargs) -> OpenAI:
    return OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0, timeout=300, **kwargs)


def test_a_pinned_local_rung_answers_with_usage_cost_and_headers(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model=LOCAL, messages=[{"role": "user", "content": SIMPLE}], max_tokens=24)
    completion = raw.parse()

    escalon = completion.model_extra["escalon"]
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == LOCAL == escalon["rung"]  # SmolLM2 itself answered
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.strip()
    assert completion.choices[0].finish_reason == "stop"
    assert [a["rung"] for a in escalon["attempts"]] == [LOCAL]
    attempt = escalon["attempts"][0]
    assert completion.usage.prompt_tokens == attempt["input_tokens"] > 0
    assert completion.usage.completion_tokens == attempt["output_tokens"] > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert escalon["cost_usd"] > 0 and escalon["trace_id"] and escalon["request_id"] == completion.id
    assert raw.headers["x-escalon-rung"] == LOCAL
    assert float(raw.headers["x-escalon-cost-usd"]) == escalon["cost_usd"]
    assert raw.headers["x-request-id"] == completion.id


def test_auto_climbs_the_cascade_and_reports_every_attempt(gateway):
    completion = client(gateway).chat.completions.create(
        model="escalon/auto", messages=[{"role": "user", "content": DEMO_PROMPT}], max_tokens=48,
        extra_body={"answer_type": "number", "min_quality": 0.99})  # a bar SmolLM2 will not clear

    escalon = completion.model_extra["escalon"]
    tried = [a for a in escalon["attempts"] if a["samples"] > 0]
    assert escalon["attempts"][0]["rung"] == LOCAL  # cheapest first
    assert len(tried) >= 2, escalon  # the recorded question makes the judges doubt SmolLM2 and escalate
    assert completion.model == escalon["rung"] in {a["rung"] for a in tried}
    assert escalon["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in escalon["attempts"]))
    assert completion.usage.prompt_tokens == sum(a["input_tokens"] for a in escalon["attempts"])
    assert completion.usage.completion_tokens == sum(a["output_tokens"] for a in escalon["attempts"])
    assert completion.choices[0].message.content.strip()


def test_streaming_sends_the_decided_answer_then_rung_and_cost(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="escalon/economy", messages=[{"role": "system", "content": "Answer briefly."},
                                           {"role": "user", "content": SIMPLE}],
        max_tokens=24, stream=True, stream_options={"include_usage": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())

    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    escalon = finish[0].model_extra["escalon"]
    assert escalon["rung"] == raw.headers["x-escalon-rung"] == finish[0].model
    assert float(raw.headers["x-escalon-cost-usd"]) == escalon["cost_usd"]
    usage = chunks[-1]  # include_usage: a last chunk with no choices
    assert usage.choices == [] and usage.usage.total_tokens > 0
    assert usage.model_extra["escalon"]["rung"] == escalon["rung"]


def test_streaming_through_a_router_that_samples_local_rungs_several_times(sampling_gateway):
    stream = client(sampling_gateway).chat.completions.create(
        model=LOCAL, messages=[{"role": "user", "content": SIMPLE}], max_tokens=16, stream=True)
    chunks = list(stream)
    assert chunks[-1].model_extra["escalon"]["attempts"][0]["samples"] == 3


def test_stream_of_sse_lines_ends_with_done(gateway):
    """The wire format itself: data lines of JSON, then `data: [DONE]` (what every SSE client expects)."""
    body = {"model": MIXTRAL, "messages": [{"role": "user", "content": DEMO_PROMPT}], "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_models_lists_policies_operating_points_and_served_rungs(gateway):
    sdk = client(gateway)
    ids = [m.id for m in sdk.models.list()]
    assert ids[:4] == ["escalon/auto", "escalon/economy", "escalon/balanced", "escalon/max-quality"]
    assert {LOCAL, MIXTRAL, GPT4} <= set(ids)
    assert sdk.models.retrieve(LOCAL).model_extra["healthy"] is True
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("no-such-model")


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"model": "escalon/no-such-point"}, "model"),  # the router: unknown operating point
    ({"model": "no-such-rung"}, "model"),  # the router: unknown rung to pin
    ({"extra_body": {"max_cost_usd": -1}}, "max_cost_usd"),
    ({"extra_body": {"min_quality": 2}}, "min_quality"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages[0].content"),
    ({"n": 2}, "n"),
])
def test_bad_input_is_a_400_that_names_the_field(gateway, kwargs, param):
    request = {"model": "escalon/auto", "messages": [{"role": "user", "content": SIMPLE}], **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).chat.completions.create(**request)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"
    assert caught.value.message


def test_a_budget_below_the_cheapest_rung_is_a_429_not_to_retry(gateway):
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway).chat.completions.create(model="escalon/auto", messages=[{"role": "user", "content": SIMPLE}],
                                                extra_body={"max_cost_usd": 1e-12})
    assert caught.value.code == "budget_exceeded" and caught.value.param == "max_cost_usd"
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_no_rung_available_is_a_503(gateway):
    # A replay rung has no recording of this prompt, so the only rung of the route cannot answer.
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway).chat.completions.create(model=MIXTRAL, messages=[{"role": "user", "content": SIMPLE}])
    assert caught.value.status_code == 503
    assert caught.value.code == "rung_unavailable"
    assert MIXTRAL in caught.value.message


def test_api_keys_and_rate_limit(secured_gateway):
    messages = [{"role": "user", "content": SIMPLE}]
    with pytest.raises(openai.AuthenticationError) as missing:  # no Authorization header at all
        client(secured_gateway).chat.completions.create(model="escalon/auto", messages=messages,
                                                        extra_headers={"Authorization": openai.Omit()})
    assert missing.value.status_code == 401 and missing.value.code == "missing_api_key"
    with pytest.raises(openai.PermissionDeniedError) as wrong:
        client(secured_gateway, api_key="sk-not-this-one").models.list()
    assert wrong.value.status_code == 403 and wrong.value.code == "invalid_api_key"

    sdk = client(secured_gateway, api_key="sk-escalon-test")
    for _ in range(3):  # the burst
        assert "escalon/auto" in [m.id for m in sdk.models.list()]
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.models.list()
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_healthz_is_ready_with_the_router_up(gateway):
    reply = httpx.get(f"{gateway.url}/healthz", timeout=10)
    assert reply.status_code == 200 and "SERVING" in reply.json()["router"]


def test_the_callers_trace_continues_through_the_router(gateway):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    completion = client(gateway).chat.completions.create(
        model=MIXTRAL, messages=[{"role": "user", "content": DEMO_PROMPT}],
        extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    # The router reports the trace its route span belongs to: the one the HTTP client started.
    assert completion.model_extra["escalon"]["trace_id"] == trace_id

"""OpenAI chat requests onto RouteRequest, and RouteResponse back onto completions and stream chunks."""

from __future__ import annotations

import grpc
import pytest

from escalon.gateway.chat import (
    ChatCompletionRequest,
    completion,
    escalon_headers,
    operating_label,
    pieces,
    prompt_of,
    route_request,
    stream_chunks,
)
from escalon.gateway.errors import APIError, from_grpc, param_of, param_of_loc
from escalon.gen.common.v1.common_pb2 import AnswerType, Usage
from escalon.gen.router.v1 import router_pb2

pytestmark = pytest.mark.unit


def body(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "escalon/auto",
                                                 "messages": [{"role": "user", "content": "What is 2+2?"}], **fields})


def test_a_lone_user_message_is_the_prompt_unchanged():
    # Unchanged matters: replay rungs find recorded answers by the prompt's text.
    assert prompt_of(body(messages=[{"role": "user", "content": "  What is 2+2?\n"}]).messages) == "  What is 2+2?\n"


def test_a_conversation_becomes_a_readable_transcript_ending_with_the_question():
    messages = body(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "assistant", "content": None, "tool_calls": []},  # nothing to show: skipped
        {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}]},
    ]).messages
    assert prompt_of(messages) == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: What is\n2+2?"


@pytest.mark.parametrize(("messages", "param"), [
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "messages"),
    ([{"role": "user", "content": " \n"}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}], "messages[0].content[0]"),
    ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
])
def test_messages_that_cannot_be_asked_name_the_offending_field(messages, param):
    with pytest.raises(APIError) as caught:
        route_request(body(messages=messages), "id")
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(("model", "point", "pin"), [
    ("escalon/auto", "", ""),
    ("escalon/economy", "economy", ""),
    ("escalon/max-quality", "max-quality", ""),
    ("smollm2-135m", "", "smollm2-135m"),
])
def test_model_selects_the_operating_point_or_pins_a_rung(model, point, pin):
    request = route_request(body(model=model), "chatcmpl-1")
    assert (request.operating_point, request.pin_rung, request.request_id) == (point, pin, "chatcmpl-1")
    assert not request.HasField("max_cost_usd") and not request.HasField("min_quality")


def test_knobs_from_the_extra_body_and_token_limits():
    request = route_request(body(max_tokens=64, max_cost_usd=0.002, min_quality=0.8, answer_type="number"), "id")
    assert request.max_tokens == 64 and request.max_cost_usd == 0.002 and request.min_quality == 0.8
    assert request.answer_type == AnswerType.ANSWER_TYPE_NUMBER
    assert route_request(body(max_tokens=64, max_completion_tokens=32), "id").max_tokens == 32  # the newer name wins
    assert route_request(body(max_cost_usd=0), "id").HasField("max_cost_usd")  # a zero budget is a budget


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"model": "escalon/"}, "model"),
])
def test_what_cannot_be_honoured_is_refused_by_name(fields, param):
    with pytest.raises(APIError) as caught:
        route_request(body(**fields), "id")
    assert caught.value.param == param and caught.value.body()["error"]["type"] == "invalid_request_error"


def test_the_frontier_groups_by_model_and_the_knobs_that_move_the_point():
    assert operating_label(body(model="escalon/economy")) == "escalon/economy"
    assert operating_label(body(min_quality=0.8, max_cost_usd=0.01)) == "escalon/auto min_quality=0.8 max_cost_usd=0.01"


def test_sampling_fields_are_accepted_and_unused():
    request = route_request(body(temperature=1.3, top_p=0.5, seed=7, stop=["\n"], user="u", some_new_field=1), "id")
    assert request.prompt == "What is 2+2?"


def _response() -> router_pb2.RouteResponse:
    return router_pb2.RouteResponse(
        answer="The answer is 4.", rung="gpt-4", total_cost_usd=0.0123, confidence=0.91, policy="cheapest-first",
        reason="why", request_id="chatcmpl-9", trace_id="ab" * 16, total_latency_ms=120,
        attempts=[
            router_pb2.RungAttempt(rung="smollm2-135m", samples=3, confidence=0.2, cost_usd=0.0003,
                                   usage=Usage(input_tokens=30, output_tokens=90)),
            router_pb2.RungAttempt(rung="mixtral-8x7b", samples=0, note="skipped: no recording"),
            router_pb2.RungAttempt(rung="gpt-4", samples=1, confidence=0.91, accepted=True, cost_usd=0.012,
                                   usage=Usage(input_tokens=30, output_tokens=12)),
        ])


def test_a_completion_sums_the_attempts_usage_and_says_how_it_was_answered():
    done = completion(_response(), "chatcmpl-9", created=1).model_dump()
    assert done["model"] == "gpt-4" and done["choices"][0]["message"] == {"role": "assistant",
                                                                          "content": "The answer is 4."}
    assert done["usage"] == {"prompt_tokens": 60, "completion_tokens": 102, "total_tokens": 162}
    assert done["escalon"]["rung"] == "gpt-4" and done["escalon"]["cost_usd"] == 0.0123
    assert [a["rung"] for a in done["escalon"]["attempts"]] == ["smollm2-135m", "mixtral-8x7b", "gpt-4"]
    headers = escalon_headers(_response())
    assert headers["x-escalon-rung"] == "gpt-4" and float(headers["x-escalon-cost-usd"]) == 0.0123


def test_the_stream_is_role_then_the_answer_then_finish_with_escalon_then_usage():
    chunks = stream_chunks(_response(), "chatcmpl-9", 1, include_usage=True)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "The answer is 4."
    finish = chunks[-2]
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["escalon"]["rung"] == "gpt-4"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 162
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert "usage" not in stream_chunks(_response(), "x", 1, include_usage=False)[-1]


@pytest.mark.parametrize("text", ["", "one", "a b  c\n\nd ", "  leading", "ünïcode wörds and more words here"])
def test_pieces_put_back_together_are_the_answer(text):
    assert "".join(pieces(text)) == text


# ---- errors ----------------------------------------------------------------------------------------------

def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(("code", "details", "status", "param", "error_code"), [
    (grpc.StatusCode.INVALID_ARGUMENT, "operating_point: unknown operating point 'x'", 400, "model", "invalid_value"),
    (grpc.StatusCode.INVALID_ARGUMENT, "pin_rung: unknown rung 'x'", 400, "model", "invalid_value"),
    (grpc.StatusCode.INVALID_ARGUMENT, "prompt: the prompt is empty", 400, "messages", "invalid_value"),
    (grpc.StatusCode.INVALID_ARGUMENT, "rung smollm2-135m: request.max_tokens: must be between 0 and 2048", 400,
     "max_tokens", "invalid_value"),
    (grpc.StatusCode.INVALID_ARGUMENT, "the request is odd", 400, None, "invalid_value"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "max_cost_usd: budget $0.000001 is below", 429, "max_cost_usd",
     "budget_exceeded"),
    (grpc.StatusCode.UNAVAILABLE, "no rung could answer (gpt-4: skipped: no recording)", 503, None,
     "rung_unavailable"),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", 503, None, "upstream_unavailable"),
    (grpc.StatusCode.NOT_FOUND, "job x not found", 404, None, "not_found"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", 504, None, "deadline_exceeded"),
    (grpc.StatusCode.INTERNAL, "internal error in Route: ZeroDivisionError", 500, None, "internal"),
    (grpc.StatusCode.FAILED_PRECONDITION, "not ready", 500, None, "failed_precondition"),
])
def test_grpc_statuses_map_to_http_and_the_openai_error_shape(code, details, status, param, error_code):
    error = from_grpc(_rpc_error(code, details))
    assert (error.status, error.param, error.code) == (status, param, error_code)
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}
    assert details in error.message


def test_a_budget_error_tells_the_sdk_not_to_retry():
    assert from_grpc(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "x")).headers == {"x-should-retry": "false"}


def test_a_shed_call_is_a_503_with_the_retry_hint_the_sdks_honour():
    details = "overloaded: escalon-router is handling 64 calls, its limit (...); retry in 0.3s"
    error = from_grpc(grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(("retry-after-ms", "250")), details))
    assert (error.status, error.code, error.type) == (503, "overloaded", "service_unavailable_error")
    assert error.headers == {"retry-after": "1", "retry-after-ms": "250"} and error.message == details
    hintless = from_grpc(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, details))
    assert hintless.status == 503 and hintless.headers["retry-after-ms"] == "1000"


def test_params_from_messages_and_locations():
    assert param_of("min_quality: out of range") == "min_quality"
    assert param_of("no colon here") is None
    assert param_of("a sentence with spaces: and a colon") is None
    assert param_of_loc(("body", "messages", 0, "content")) == "messages[0].content"
    assert param_of_loc(("body", "messages", 2, "content", "list[...]", 1, "text")) == "messages[2].content[1].text"
    assert param_of_loc(("body",)) is None

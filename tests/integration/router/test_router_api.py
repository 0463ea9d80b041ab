"""The Router API over real gRPC: router → serving (in-process runtime, replay rungs over the shipped demo
sample) → judge, each a real server on a free port. Real local models are exercised in tests/e2e."""

import contextlib

import grpc
import pytest

from escalon.offline.stack import DEMO_PROMPT
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.grpc import running_server
from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.registry import Catalogue, load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings

pytestmark = pytest.mark.integration
NUMBER = AnswerType.ANSWER_TYPE_NUMBER


@pytest.fixture(scope="module")
async def router_address(tmp_path_factory):
    default = load_catalogue()
    catalogue = Catalogue(rungs=[default.get("mixtral-8x7b"), default.get("gpt-4")])
    data_dir = tmp_path_factory.mktemp("router")
    async with contextlib.AsyncExitStack() as stack:
        serving_settings = ServingSettings(port=0, runtime="inprocess", data_dir=data_dir)
        serving = await stack.enter_async_context(
            running_server(ServingService(serving_settings, catalogue), serving_settings, "escalon-serving"))
        judge_settings = JudgeSettings(port=0)
        judge = await stack.enter_async_context(
            running_server(JudgeService(judge_settings), judge_settings, "escalon-judge"))
        router_settings = RouterSettings(port=0, serving_address=serving.address, judge_address=judge.address)
        router = await stack.enter_async_context(
            running_server(RouterService(router_settings, catalogue), router_settings, "escalon-router"))
        yield router.address


async def _route(address, **fields):
    async with grpc.aio.insecure_channel(address) as channel:
        return await router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(**fields), timeout=30)


async def test_a_wrong_cheap_answer_escalates_and_every_rung_is_accounted(router_address):
    response = await _route(router_address, prompt=DEMO_PROMPT, answer_type=NUMBER, request_id="r1")
    assert [a.rung for a in response.attempts] == ["mixtral-8x7b", "gpt-4"]
    mixtral, gpt4 = response.attempts
    # one recorded sample each: consistency judges are skipped, cross-model agreement decides
    assert mixtral.parsed_answer != gpt4.parsed_answer and not mixtral.accepted
    assert response.rung == "gpt-4" and gpt4.parsed_answer == "8"  # 64 bars / 8 boxes
    assert response.total_cost_usd == pytest.approx(mixtral.cost_usd + gpt4.cost_usd)
    assert response.request_id == "r1" and response.policy == "cheapest-first" and response.reason
    assert all(s.skipped for s in mixtral.judge_scores)


async def test_a_pinned_rung_answers_alone(router_address):
    response = await _route(router_address, prompt=DEMO_PROMPT, pin_rung="gpt-4", answer_type=NUMBER)
    assert [a.rung for a in response.attempts] == ["gpt-4"] and response.policy == "pinned"


async def test_the_budget_is_never_exceeded(router_address):
    response = await _route(router_address, prompt=DEMO_PROMPT, answer_type=NUMBER, max_cost_usd=0.0005)
    assert response.total_cost_usd <= 0.0005
    assert response.rung == "mixtral-8x7b" and "budget" in response.attempts[1].note


@pytest.mark.parametrize("fields, code, field", [
    ({"prompt": "   "}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    ({"prompt": "x" * 32_001}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    ({"prompt": "hi", "pin_rung": "gpt-9"}, grpc.StatusCode.INVALID_ARGUMENT, "pin_rung"),
    ({"prompt": "hi", "max_cost_usd": -0.5}, grpc.StatusCode.INVALID_ARGUMENT, "max_cost_usd"),
    ({"prompt": "hi", "min_quality": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "min_quality"),
    ({"prompt": "hi", "operating_point": "cheapest"}, grpc.StatusCode.INVALID_ARGUMENT, "operating_point"),
    ({"prompt": "hi", "max_tokens": -3}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ({"prompt": "hi", "max_cost_usd": 1e-12}, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_cost_usd"),
])
async def test_bad_requests_name_the_field(router_address, fields, code, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _route(router_address, **fields)
    assert err.value.code() == code and err.value.details().startswith(f"{field}: ")


async def test_an_unrecorded_prompt_reports_why_no_rung_could_answer(router_address):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _route(router_address, prompt="A question nobody recorded")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "mixtral-8x7b: skipped" in err.value.details() and "not recorded" in err.value.details()


async def test_route_stream_sends_decision_events_tokens_then_the_result(router_address):
    async with grpc.aio.insecure_channel(router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        items = [m async for m in stub.RouteStream(router_pb2.RouteStreamRequest(
            request=router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=NUMBER)))]
    kinds = [m.WhichOneof("payload") for m in items]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    events = [m.event.kind for m in items if m.WhichOneof("payload") == "event"]
    assert events[0] == router_pb2.ROUTE_EVENT_KIND_DECIDED and router_pb2.ROUTE_EVENT_KIND_ESCALATED in events
    streamed = "".join(m.token.text for m in items if m.WhichOneof("payload") == "token" and m.token.rung == "gpt-4")
    assert streamed == items[-1].result.attempts[-1].answer

"""The judge service over real gRPC: bad input is refused with its reason, LLM judges go through a real
ModelServing server (a slow one must not hang a Score call), and a calibration artefact is applied."""

import asyncio
import contextlib
import math
import time

import grpc
import pytest

from escalon.gen.common.v1 import common_pb2
from escalon.gen.judge.v1 import judge_pb2, judge_pb2_grpc
from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc
from escalon.grpc import running_server
from escalon.judge.calibration import Row
from escalon.offline.judging.calibration_fit import fit_calibration
from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.serving.settings import ServingSettings

pytestmark = pytest.mark.integration
NUMBER = common_pb2.ANSWER_TYPE_NUMBER
SLOW, FAST = "smollm2-135m", "gemma3-270m"  # catalogue rungs; the fake serving below answers for them


class FakeServing(serving_pb2_grpc.ModelServingServiceServicer):
    """A real ModelServing server: SLOW takes 30 s to answer, FAST says 'A' with p = 0.8 at once."""

    service_names = (serving_pb2.DESCRIPTOR.services_by_name["ModelServingService"].full_name,)

    def __init__(self):
        self.calls = []

    def register(self, server):
        serving_pb2_grpc.add_ModelServingServiceServicer_to_server(self, server)

    async def start(self):
        pass

    async def close(self):
        pass

    async def Generate(self, request, context):
        self.calls.append(request)
        if request.rung == SLOW:
            await asyncio.sleep(30)
        top = [common_pb2.TopLogprob(token="A", logprob=math.log(0.8)),
               common_pb2.TopLogprob(token="B", logprob=math.log(0.2))]
        return serving_pb2.GenerateResponse(
            rung=request.rung,
            samples=[serving_pb2.Sample(text="A", logprobs=[common_pb2.TokenLogprob(token="A", logprob=top[0].logprob,
                                                                                    top=top)])],
            usage=common_pb2.Usage(input_tokens=120, output_tokens=1, cost_usd=1.2e-6))


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    rows = [Row({"format": 1.0 if i % 4 else 0.75, "hedging": 1.0 - (i % 5) / 10}, float(i % 4 != 0), "gsm8k", "gpt-4")
            for i in range(400)]
    artefact = fit_calibration(rows, ["format", "hedging"], min_rows=50).save(folder / "calibration.json")
    async with contextlib.AsyncExitStack() as es:
        fake = FakeServing()
        serving_settings = ServingSettings(port=0)
        serving = await es.enter_async_context(running_server(fake, serving_settings, "fake-serving"))
        plain = JudgeSettings(port=0, serving_address=serving.address, max_answer_chars=1000, judge_timeout_s=5)
        judge = await es.enter_async_context(running_server(JudgeService(plain), plain, "escalon-judge"))
        calibrated = JudgeSettings(port=0, serving_address=serving.address, calibration=str(artefact))
        judge_cal = await es.enter_async_context(running_server(JudgeService(calibrated), calibrated, "escalon-judge"))
        yield {"judge": judge.address, "calibrated": judge_cal.address, "fake": fake}


async def _score(address, **fields):
    async with grpc.aio.insecure_channel(address) as channel:
        return await judge_pb2_grpc.JudgeServiceStub(channel).Score(judge_pb2.ScoreRequest(**fields), timeout=20)


def _c(text, **kw):
    return judge_pb2.Candidate(text=text, rung=kw.pop("rung", "gpt-4"), family=kw.pop("family", "openai"), **kw)


LP = [common_pb2.TokenLogprob(token="4", logprob=-0.2)]


def _w(bias=0.0, **judges):
    return judge_pb2.JudgeWeights(bias=bias, version="plan-7", judges=[
        judge_pb2.JudgeWeight(judge=j, weight=w, skipped_weight=v) for j, (w, v) in judges.items()])


@pytest.mark.parametrize("fields, field", [
    ({"prompt": "q"}, "candidates"),
    ({"prompt": "q", "candidates": [_c("4", logprobs=LP), _c("5")]}, "mismatched lengths"),
    ({"prompt": "q", "candidates": [_c("4")], "judges": ["agreement", "oracle"]}, "judges: unknown judge(s) oracle"),
    ({"prompt": "q", "candidates": [_c("x" * 1001)]}, "candidates[0].text"),
    ({"prompt": "q", "candidates": [_c("4")], "references": [_c("y" * 1001)]}, "references[0].text"),
    ({"prompt": "q", "candidates": [_c("4", logprobs=[common_pb2.TokenLogprob(token="4", logprob=0.5)])]},
     "candidates[0].logprobs[0].logprob"),
    ({"prompt": "q", "candidates": [_c("4")], "judge_rung": "gpt-9"}, "judge_rung"),
    ({"prompt": "q", "candidates": [_c("4")], "judge_timeout_s": -1}, "judge_timeout_s"),
    ({"prompt": "q", "candidates": [_c("4")], "answer_type": 42}, "answer_type"),
    ({"prompt": "q", "candidates": [_c("4")] * 65}, "limit of 64"),
    ({"prompt": "q", "candidates": [_c("4")], "predicted_success": 1.5}, "predicted_success: a probability in [0, 1]"),
    ({"prompt": "q", "candidates": [_c("4")], "predicted_success": float("nan")}, "predicted_success"),
    ({"prompt": "q", "candidates": [_c("4")], "weights": _w(bias=float("inf"))}, "weights.bias"),
    ({"prompt": "q", "candidates": [_c("4")], "weights": _w(agreement=(float("nan"), 0))},
     "weights.judges[0].weight"),
    ({"prompt": "q", "candidates": [_c("4")], "weights": _w(agreement=(1, float("-inf")))},
     "weights.judges[0].skipped_weight"),
    ({"prompt": "q", "candidates": [_c("4")], "weights": _w(agreement=(1, 0), oracle=(1, 0))},
     "weights.judges[1].judge: unknown judge 'oracle'"),
])
async def test_bad_input_is_invalid_argument_with_the_reason(stack, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _score(stack["judge"], **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


async def test_a_timing_out_judge_rung_is_skipped_and_said_so_never_a_hang(stack):
    started = time.perf_counter()
    reply = await _score(stack["judge"], prompt="What is 2+2?", candidates=[_c("#### 4")], answer_type=NUMBER,
                         judges=["p_true", "format"], judge_rung=SLOW, judge_timeout_s=0.3)
    assert time.perf_counter() - started < 5
    p_true, fmt = reply.scores
    assert p_true.skipped and "timed out after 0.3 s" in p_true.reason and SLOW in p_true.reason
    assert not fmt.skipped and reply.confidence == pytest.approx(fmt.score)


async def test_p_true_goes_through_the_serving_api_with_top_logprobs(stack):
    reply = await _score(stack["judge"], prompt="What is 2+2?", candidates=[_c("It is 4")], answer_type=NUMBER,
                         judges=["p_true"], judge_rung=FAST)
    assert not reply.scores[0].skipped and reply.scores[0].score == pytest.approx(0.8)
    assert reply.judge_usage.cost_usd == pytest.approx(1.2e-6) and reply.judge_usage.input_tokens == 120
    request = next(r for r in stack["fake"].calls if r.rung == FAST)
    assert request.top_logprobs == 20 and request.temperature == 0 and "Proposed answer: It is 4" in request.prompt


async def test_token_logprobs_reach_the_token_judges(stack):
    reply = await _score(stack["judge"], prompt="q", answer_type=NUMBER, judges=["token_confidence", "agreement"],
                         candidates=[_c("4", logprobs=LP), _c("4", logprobs=LP)])
    scores = {s.judge: s for s in reply.scores}
    assert scores["token_confidence"].score == pytest.approx(math.exp(-0.2)) and scores["agreement"].score == 1.0
    assert not reply.calibrated and "no calibration artefact" in reply.calibration


async def test_a_loaded_artefact_sets_the_panel_and_calibrates_the_confidence(stack):
    reply = await _score(stack["calibrated"], prompt="q", candidates=[_c("#### 4", rung="gpt-4")], answer_type=NUMBER,
                         task="gsm8k")
    assert [s.judge for s in reply.scores] == ["format", "hedging"]
    assert reply.calibrated and "gsm8k|gpt-4" in reply.calibration
    assert 0 < reply.raw_confidence <= 1 and reply.confidence == pytest.approx(1.0, abs=0.01)
    invalid = await _score(stack["calibrated"], prompt="q", candidates=[_c("no number")], answer_type=NUMBER)
    assert invalid.confidence == 0.0 and not invalid.calibrated


async def test_the_routers_predicted_success_runs_as_a_judge_and_its_weights_aggregate(stack):
    two = [_c("#### 4"), _c("#### 4")]
    plain = await _score(stack["judge"], prompt="q", candidates=two, answer_type=NUMBER, predicted_success=0.25)
    scores = {s.judge: s for s in plain.scores}
    assert scores["predicted_success"].score == 0.25 and not scores["predicted_success"].skipped
    assert scores["cross_model"].skipped  # no references: its weight below is the skipped one
    assert plain.confidence == pytest.approx((1 + 1 + 1 + 0.25) / 4) and not plain.calibrated
    weighted = await _score(stack["judge"], prompt="q", candidates=two, answer_type=NUMBER, predicted_success=0.25,
                            weights=_w(-1.0, agreement=(2.0, 0.0), cross_model=(3.0, -0.5), predicted_success=(4.0, 0.0)))
    assert weighted.calibrated and "plan-7" in weighted.calibration
    assert weighted.confidence == pytest.approx(1 / (1 + math.exp(-(-1.0 + 2.0 - 0.5 + 4.0 * 0.25))))
    unset = await _score(stack["judge"], prompt="q", candidates=two, answer_type=NUMBER)
    assert "predicted_success" not in {s.judge for s in unset.scores}

"""Each judge's logic, and the engine that runs them: scores, skips with reasons, aggregation."""

import asyncio
import math

import pytest

from escalon.errors import InvalidInput
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.judge.calibration import Row
from escalon.offline.judging.calibration_fit import fit_calibration
from escalon.judge.engine import JudgeEngine, known_judges
from escalon.judge.panel import Candidate
from escalon.judge.ptrue import FirstTokens, JudgeUnavailable, ptrue_prompt, read_ptrue
from escalon.judge.textual import arithmetic_counts, brevity_score, format_score, hedging_score
from escalon.judge.tokens import TokenStat, borda_vote, features, squash_self_certainty

pytestmark = pytest.mark.unit
NUMBER, CHOICE, YES_NO, CODE = (AnswerType.ANSWER_TYPE_NUMBER, AnswerType.ANSWER_TYPE_CHOICE,
                                AnswerType.ANSWER_TYPE_YES_NO, AnswerType.ANSWER_TYPE_CODE)


@pytest.mark.parametrize("text, answer_type, expected", [
    ("She has 9 eggs.\n#### 18", NUMBER, 1.0),  # marked, non-negative integer
    ("so about 18", NUMBER, 0.75),  # integer, unmarked
    ("The answer is 2.5", NUMBER, 0.75),  # marked, not an integer
    ("no number", NUMBER, 0.0),
    ("The answer is (C).", CHOICE, 1.0),
    ("I think (A) or maybe (B)", CHOICE, 0.5),
    ("Yes, it is.", YES_NO, 1.0),
    ("It could be yes or no", YES_NO, 0.25),
    ("```python\ndef f(x):\n    return x\n```", CODE, 1.0),
    ("```\nfunction f(x) { return x; }\n```", CODE, 0.5),
])
def test_format_grades_how_the_final_answer_is_stated(text, answer_type, expected):
    assert format_score(text, answer_type) == expected


def test_hedging_brevity_and_arithmetic_read_the_text():
    assert hedging_score("It is 4.") == 1.0
    assert hedging_score("I think it is approximately 4, but wait, let me recalculate.") == pytest.approx(1 / 5)
    assert brevity_score("x" * 1000) == pytest.approx(0.5)
    assert arithmetic_counts("2 x 60 = <<2*60=120>>120 GB; 11 / 8.5 = 1.3; 3 + 4 = 8") == (2, 1)
    assert arithmetic_counts("80 / 120 = 2/3 of an hour and 50% of 80 = 40") == (1, 0)


def test_token_features_quantiles_and_self_certainty():
    stats = [TokenStat(-0.1, 1.0, 12.0), TokenStat(-2.0, 2.0, 8.0), TokenStat(-0.5, 1.5, 10.0)]
    f = features(stats)
    assert f["lp_sum"] == pytest.approx(-2.6) and f["lp_mean"] == pytest.approx(-2.6 / 3)
    assert f["lp_q0"] == -2.0 and f["lp_q0.5"] == -0.5 and f["tokens"] == 3
    assert squash_self_certainty(10.0) == 0.5 and squash_self_certainty(14.0) > 0.85


def test_borda_vote_weights_samples_by_self_certainty_rank():
    # ranks by certainty: c (r=1, √4 = 2), a (r=2, √3), b (r=3, √2), d (r=4, 1): "x" gets 2 + √2, "y" √3 + 1
    assert borda_vote(["y", "x", "x", "y"], [5.0, 3.0, 9.0, 1.0]) == "x"
    assert borda_vote([None, None], [1.0, 2.0]) is None


def test_p_true_reads_the_first_position_that_shows_either_option():
    positions = [[("The", -0.1), ("I", -3.0)], [(" A", math.log(0.6)), ("B", math.log(0.2)), ("(A", math.log(0.1))]]
    assert read_ptrue(positions) == pytest.approx(0.7 / 0.9)
    # an option missing from the top alternatives is bounded by the smallest probability listed
    only_true = [[("True", math.log(0.8)), ("x", math.log(0.05))]]
    assert read_ptrue(only_true) == pytest.approx(0.8 / 0.85)
    assert read_ptrue([[("hmm", -0.1)]]) is None
    assert ptrue_prompt("q", "a", "completion").endswith("The proposed answer is: (")


class ScriptedJudgeModel:
    def __init__(self, positions=None, error=None):
        self.positions, self.error, self.prompts = positions, error, []

    async def first_tokens(self, rung, prompt, *, timeout_s):
        self.prompts.append((rung, prompt))
        if self.error:
            raise self.error
        return FirstTokens(self.positions, input_tokens=100, output_tokens=3, cost_usd=2e-6)


async def test_every_judge_that_lacks_its_inputs_is_skipped_with_its_reason():
    engine = JudgeEngine()
    scored = await engine.score("What is 2+2?", [Candidate("#### 4", "r", "x")], answer_type=NUMBER,
                                judges=list(known_judges()))
    skipped = {s.judge: s.reason for s in scored.verdict.scores if s.skipped}
    assert "n ≥ 2" in skipped["agreement"] and "another family" in skipped["cross_model"]
    assert "log-probs" in skipped["token_confidence"] and "log-probs" in skipped["self_certainty"]
    assert "only for code" in skipped["execution"] and "no judge rung" in skipped["p_true"]
    assert "arithmetic" in skipped["arithmetic"]
    ran = {s.judge: s.score for s in scored.verdict.scores if not s.skipped}
    assert set(ran) == {"format", "hedging", "brevity"}
    assert scored.confidence == pytest.approx(sum(ran.values()) / 3) and not scored.calibrated


async def test_token_judges_use_the_majority_answers_logprobs():
    sure = (TokenStat(-0.05, 0.3, 13.0), TokenStat(-0.1, 0.4, 12.0))
    unsure = (TokenStat(-2.0, 3.0, 6.0),)
    candidates = [Candidate("4", "r", "x", sure), Candidate("4", "r", "x", sure), Candidate("5", "r", "x", unsure)]
    scored = await JudgeEngine().score("q", candidates, answer_type=NUMBER,
                                       judges=["agreement", "token_confidence", "self_certainty", "deferral"])
    s = {x.judge: x for x in scored.verdict.scores}
    assert s["token_confidence"].score == pytest.approx(math.exp(-0.075))
    assert s["self_certainty"].score == pytest.approx(squash_self_certainty(12.5))
    assert s["deferral"].skipped and "deferral model" in s["deferral"].reason


async def test_all_invalid_answers_give_confidence_zero():
    scored = await JudgeEngine().score("q", [Candidate("no idea"), Candidate("none")], answer_type=NUMBER,
                                       judges=["agreement", "format"])
    assert scored.confidence == 0.0 and scored.verdict.answer is None and scored.verdict.invalid == 2


async def test_p_true_asks_the_judge_rung_and_reports_its_cost_or_skips_when_it_fails():
    model = ScriptedJudgeModel([[("A", math.log(0.9)), ("B", math.log(0.1))]])
    engine = JudgeEngine(judge_model=model, judge_rung="judge")
    scored = await engine.score("What is 2+2?", [Candidate("It is 4", "r", "x")], answer_type=NUMBER, judges=["p_true"])
    assert scored.verdict.scores[0].score == pytest.approx(0.9) and scored.usage.cost_usd == 2e-6
    assert model.prompts[0][0] == "judge" and "Proposed answer: It is 4" in model.prompts[0][1]
    failing = JudgeEngine(judge_model=ScriptedJudgeModel(error=JudgeUnavailable("UNAVAILABLE: down")), judge_rung="j")
    result = (await failing.score("q", [Candidate("4")], answer_type=NUMBER, judges=["p_true"])).verdict.scores[0]
    assert result.skipped and "unavailable" in result.reason


async def test_p_true_never_waits_past_the_score_callers_deadline():
    """The Score call's own deadline bounds the judge rung's call (escalon.grpc.time_left), not only the
    judge's configured timeout: a caller with 0.2 s left is answered in about 0.2 s, P(True) skipped."""
    import time

    from escalon import grpc as escalon_grpc

    class Slow(ScriptedJudgeModel):
        async def first_tokens(self, rung, prompt, *, timeout_s):
            self.asked = timeout_s
            await asyncio.sleep(5)

    model = Slow()
    engine = JudgeEngine(judge_model=model, judge_rung="judge", judge_timeout_s=10.0)
    token = escalon_grpc._DEADLINE.set(time.monotonic() + 0.2)
    try:
        started = time.monotonic()
        scored = await engine.score("q", [Candidate("4")], answer_type=NUMBER, judges=["p_true"])
    finally:
        escalon_grpc._DEADLINE.reset(token)
    result = scored.verdict.scores[0]
    assert result.skipped and "timed out" in result.reason and model.asked <= 0.2
    assert time.monotonic() - started < 2.0


async def test_unknown_or_repeated_judges_are_rejected():
    with pytest.raises(InvalidInput, match="oracle"):
        await JudgeEngine().score("q", [Candidate("4")], judges=["agreement", "oracle"])
    with pytest.raises(InvalidInput, match="twice"):
        JudgeEngine().check_judges(["format", "format"])


async def test_a_loaded_calibration_sets_the_default_panel_and_calibrates():
    rows = [Row({"format": 1.0 if i % 3 else 0.75, "hedging": 1.0}, float(i % 3 != 0), "gsm8k", "mixtral-model")
            for i in range(300)]
    calibration = fit_calibration(rows, ["format", "hedging"], min_rows=50)
    from escalon.registry import Catalogue, Price, Rung

    catalogue = Catalogue(rungs=[Rung(name="mixtral", family="mistral", backend="replay", model="mixtral-model",
                                      benchmark="x.parquet", price=Price(input_per_1m=0, output_per_1m=0))])
    engine = JudgeEngine(calibration=calibration, catalogue=catalogue)
    assert engine.default_panel == ("format", "hedging")
    scored = await engine.score("q", [Candidate("#### 4", "mixtral", "mistral")], answer_type=NUMBER, task="gsm8k")
    assert scored.calibrated and "gsm8k|mixtral-model" in scored.calibration  # rung → model via the catalogue
    assert scored.confidence == pytest.approx(1.0, abs=0.01)


def test_a_sample_cut_at_its_token_limit_gives_no_structured_answer():
    from escalon.judge.panel import Candidate, judge_answers

    cut = [Candidate("Lisa sold 3 and a half boxes. Peter sold 4", "gemma", "gemma", truncated=True)] * 3
    verdict = judge_answers("How many bars are in a box?", cut, answer_type=AnswerType.ANSWER_TYPE_NUMBER)
    assert verdict.answer is None and verdict.invalid == 3 and verdict.confidence == 0.0
    whole = [Candidate("There are 8 bars in a box.", "gemma", "gemma")] * 3
    assert judge_answers("How many bars are in a box?", whole, answer_type=AnswerType.ANSWER_TYPE_NUMBER).answer == "8"
    text = [Candidate("Paris is the capital and", "s", "s", truncated=True)] * 2
    assert judge_answers("Capital of France?", text, answer_type=AnswerType.ANSWER_TYPE_FREE_TEXT).answer is not None


def test_one_valid_answer_among_samples_is_no_evidence_of_consistency():
    from escalon.judge.panel import Candidate, judge_answers

    samples = [Candidate("The answer is 44.", "g", "g"), Candidate("and then 3", "g", "g", truncated=True),
               Candidate("I cannot tell.", "g", "g")]
    verdict = judge_answers("How many bars are in a box?", samples, answer_type=AnswerType.ANSWER_TYPE_NUMBER)
    assert verdict.answer == "44" and verdict.invalid == 2
    assert all(s.skipped for s in verdict.scores) and verdict.confidence == 0.0

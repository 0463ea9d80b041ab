import math

import pytest

from escalon.errors import InvalidInput
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.judge.panel import Candidate, JudgeWeights, check_judges, judge_answers

pytestmark = pytest.mark.unit
NUMBER = AnswerType.ANSWER_TYPE_NUMBER


def test_panel_averages_the_judges_that_ran():
    v = judge_answers("q", [Candidate("it is 4", "a", "x"), Candidate("4", "a", "x"), Candidate("5", "a", "x")],
                      answer_type=NUMBER)
    ran = {s.judge: s.score for s in v.scores if not s.skipped}
    assert set(ran) == {"agreement", "entropy", "fsd"}  # no references: cross_model skipped
    assert v.confidence == pytest.approx(sum(ran.values()) / 3)
    assert v.answer == "4" and v.answer_text == "it is 4"


def test_one_sample_skips_consistency_and_says_why():
    v = judge_answers("q", [Candidate("18", "gpt-4", "openai")], answer_type=NUMBER)
    assert all(s.skipped for s in v.scores) and v.confidence == 0.0
    assert "n ≥ 2" in next(s.reason for s in v.scores if s.judge == "agreement")


def test_cross_model_agreement_uses_each_reference_rungs_majority():
    refs = [Candidate("17", "mix", "mistral"), Candidate("18", "small", "smollm"), Candidate("18", "small", "smollm"),
            Candidate("16", "small", "smollm")]
    v = judge_answers("q", [Candidate("#### 18", "gpt-4", "openai")], references=refs, answer_type=NUMBER,
                      judges=("cross_model",))
    assert v.scores[0].score == pytest.approx(0.5)  # smollm's majority (18) agrees, mistral's (17) does not
    assert v.confidence == pytest.approx(0.5)


def test_unknown_judges_are_rejected_by_name():
    with pytest.raises(InvalidInput, match="oracle"):
        check_judges(["agreement", "oracle"])
    assert check_judges([]) == ("agreement", "entropy", "fsd", "cross_model")


def test_the_routers_predicted_success_runs_as_a_judge_only_when_sent():
    two = [Candidate("4", "a", "x"), Candidate("4", "a", "x")]
    sent = judge_answers("q", two, answer_type=NUMBER, predicted_success=0.4)
    assert {s.judge: s.score for s in sent.ran}["predicted_success"] == 0.4
    assert sent.confidence == pytest.approx((1 + 1 + 1 + 0.4) / 4)
    unsent = judge_answers("q", two, answer_type=NUMBER, judges=("agreement", "predicted_success"))
    skipped = next(s for s in unsent.scores if s.judge == "predicted_success")
    assert skipped.skipped and "no predicted success" in skipped.reason and unsent.confidence == 1.0


def test_fitted_weights_give_a_logistic_confidence_with_a_term_for_skipped_judges():
    weights = JudgeWeights(-2.0, {"agreement": (3.0, 0.0), "cross_model": (2.0, -1.0)}, "w1")
    two = [Candidate("4", "a", "x"), Candidate("4", "a", "x")]
    v = judge_answers("q", two, answer_type=NUMBER, judges=("agreement", "cross_model"), weights=weights)
    assert v.confidence == pytest.approx(1 / (1 + math.exp(-(-2.0 + 3.0 - 1.0))))  # cross_model skipped: −1
    refs = [Candidate("4", "b", "y")]
    agreed = judge_answers("q", two, references=refs, answer_type=NUMBER, judges=("agreement", "cross_model"),
                           weights=weights)
    assert agreed.confidence == pytest.approx(1 / (1 + math.exp(-(-2.0 + 3.0 + 2.0))))
    assert JudgeWeights.from_dict(weights.to_dict()) == weights
    invalid = judge_answers("q", [Candidate("no idea", "a", "x")] * 2, answer_type=NUMBER, weights=weights)
    assert invalid.confidence == 0.0  # no valid answer: 0, not the bias and the skipped terms

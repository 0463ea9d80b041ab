import pytest

from escalon.errors import InvalidInput
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.judge.panel import Candidate, check_judges, judge_answers

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

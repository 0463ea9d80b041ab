import math

import pytest

from escalon.judge.consistency import cross_model_agreement, sample_consistency

pytestmark = pytest.mark.unit


def test_unanimous_answers_are_fully_confident():
    c = sample_consistency(["4", "4", "4"])
    assert (c.agreement, c.entropy, c.fsd, c.majority) == (1.0, 1.0, 1.0, "4")


def test_split_answers_follow_the_formulas():
    c = sample_consistency(["4", "4", "5", "6", None])  # the invalid one is dropped: n = 4
    assert c.agreement == pytest.approx(2 / 4)
    assert c.fsd == pytest.approx((2 - 1) / 4)
    h = -(0.5 * math.log2(0.5) + 2 * 0.25 * math.log2(0.25))
    assert c.entropy == pytest.approx(1 - h / math.log2(3))
    assert c.invalid == 1 and c.majority == "4"


def test_all_distinct_answers_have_zero_entropy_confidence():
    c = sample_consistency(["1", "2", "3"])
    assert c.entropy == pytest.approx(0.0, abs=1e-12) and c.fsd == 0.0


def test_all_invalid_gives_zero_not_one():
    c = sample_consistency([None, None])
    assert (c.agreement, c.entropy, c.fsd, c.majority) == (0.0, 0.0, 0.0, None)


def test_cross_model_agreement_counts_only_other_families():
    refs = [("18", "mistral"), ("17", "openai"), ("18", "smollm")]
    assert cross_model_agreement("18", "smollm", refs) == 0.5
    assert cross_model_agreement("18", "smollm", [("18", "smollm")]) is None
    assert cross_model_agreement(None, "smollm", refs) is None

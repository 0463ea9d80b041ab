"""Calibration metrics against hand computations."""

import pytest

from escalon.offline.judging.metrics import auroc, brier, ece, reliability_bins, summarise

pytestmark = pytest.mark.unit


def test_brier_is_the_mean_squared_error_of_the_confidence():
    # (0.9-1)² + (0.2-0)² + (0.6-0)² + (0.7-1)² = 0.01 + 0.04 + 0.36 + 0.09 = 0.50 → 0.125
    assert brier([0.9, 0.2, 0.6, 0.7], [1, 0, 0, 1]) == pytest.approx(0.125)
    assert brier([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.25)


def test_ece_uses_ten_equal_width_bins_weighted_by_count():
    conf = [0.05, 0.15, 0.15, 0.95, 0.95, 0.95, 0.95, 1.0]
    labels = [0, 0, 1, 1, 1, 1, 0, 1]
    # bin [0,.1): conf .05 acc 0 → |.05| × 1/8; bin [.1,.2): conf .15 acc .5 → .35 × 2/8;
    # bin [.9,1.0] (1.0 included): conf (4×.95+1)/5 = .96, acc 4/5 = .8 → .16 × 5/8
    expected = 0.05 / 8 + 0.35 * 2 / 8 + 0.16 * 5 / 8
    assert ece(conf, labels) == pytest.approx(expected)
    bins = reliability_bins(conf, labels)
    assert [b.count for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 5]
    assert bins[2].accuracy is None and bins[9].confidence == pytest.approx(0.96)


def test_a_perfectly_calibrated_bin_has_no_calibration_error():
    assert ece([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)


def test_auroc_counts_ties_as_half_and_needs_both_classes():
    # positives .9 .6 .4; negatives .6 .2 → pairs: (.9>.6)(.9>.2)(.6=.6 half)(.6>.2)(.4<.6)(.4>.2) = 4.5/6
    assert auroc([0.9, 0.6, 0.4, 0.6, 0.2], [1, 1, 1, 0, 0]) == pytest.approx(0.75)
    assert auroc([0.1, 0.9], [0, 1]) == 1.0 and auroc([0.9, 0.1], [0, 1]) == 0.0
    assert auroc([0.3, 0.8], [1, 1]) is None


def test_summary_reports_base_rate_and_rejects_bad_confidences():
    s = summarise([0.8, 0.4], [1, 0])
    assert s.n == 2 and s.accuracy == 0.5 and s.mean_confidence == pytest.approx(0.6)
    assert summarise([], []).brier is None
    with pytest.raises(ValueError):
        brier([1.2], [1])
    with pytest.raises(ValueError):
        brier([0.2, 0.3], [1])


def test_the_ece_noise_floor_is_what_a_calibrated_predictor_shows_by_chance():
    from escalon.offline.judging.metrics import ece_noise_floor

    graded = [i / 199 for i in range(200)]
    assert 0.01 < ece_noise_floor(graded) < 0.1  # 200 answers over 10 bins: a few points of pure noise
    assert ece_noise_floor(graded * 25) < ece_noise_floor(graded)  # more answers, less noise
    assert ece_noise_floor([0.0, 1.0] * 100) == 0.0  # certain and right by construction: nothing to mis-bin

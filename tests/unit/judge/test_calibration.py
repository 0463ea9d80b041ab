"""Fitting judge weights and calibration maps: synthetic outcomes with known truth."""

import numpy as np
import pytest

from escalon.errors import ConfigError
from escalon.judge.calibration import Calibration, Row
from escalon.offline.judging.calibration_fit import fit_calibration, fit_deferral, fit_map
from escalon.offline.judging.metrics import brier, ece

pytestmark = pytest.mark.unit


def _overconfident(n, seed):
    """A judge that says p while the truth is right with probability p² (overconfident in the middle)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    y = (rng.uniform(0, 1, n) < p ** 2).astype(float)
    return p, y


@pytest.mark.parametrize("method", ["isotonic", "platt", "auto"])
def test_a_fitted_map_repairs_a_miscalibrated_judge_on_held_out_data(method):
    p_fit, y_fit = _overconfident(3000, 1)
    p_test, y_test = _overconfident(3000, 2)
    fitted = fit_map(p_fit, y_fit, method=method)
    calibrated = [fitted(v) for v in p_test]
    assert ece(p_test, y_test) > 0.1
    assert ece(calibrated, y_test) < 0.04
    assert brier(calibrated, y_test) < brier(p_test, y_test)


def _rows(n, seed, rung="small"):
    """Two judges: 'good' tracks the truth, 'noise' is random; 'sometimes' runs on half the rows only."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        y = float(rng.uniform() < 0.6)
        good = float(np.clip(0.5 + (0.35 if y else -0.35) + rng.normal(0, 0.15), 0, 1))
        scores = {"good": good, "noise": float(rng.uniform())}
        if rng.uniform() < 0.5:
            scores["sometimes"] = float(np.clip(0.5 + (0.2 if y else -0.2) + rng.normal(0, 0.3), 0, 1))
        rows.append(Row(scores, y, "math", rung))
    return rows


def test_weights_favour_the_informative_judge_and_the_panel_beats_the_plain_mean():
    fit, test = _rows(1500, 3), _rows(1500, 4)
    cal = fit_calibration(fit, ["good", "noise", "sometimes"], min_rows=50)
    group = cal.by_key[("math", "small")]
    assert group.weights["good"] > 0.6 and group.weights["noise"] < 0.1
    mean = [sum(r.scores.values()) / len(r.scores) for r in test]
    panel = [cal.apply(r.scores, "math", ["small"]).confidence for r in test]
    labels = [r.correct for r in test]
    assert brier(panel, labels) < brier(mean, labels) and ece(panel, labels) < 0.05


def test_too_few_rows_of_the_rarer_outcome_keep_the_weights_uniform():
    from escalon.offline.judging.calibration_fit import fit_weights

    rows = _rows(1500, 3)
    rare = [r for r in rows if r.correct][:25] + [r for r in rows if not r.correct][:200]  # 25 < 10 × 3 judges
    assert fit_weights(rare, ["good", "noise", "sometimes"]) == pytest.approx(
        {"good": 1 / 3, "noise": 1 / 3, "sometimes": 1 / 3})
    enough = [r for r in rows if r.correct][:40] + [r for r in rows if not r.correct][:200]
    assert fit_weights(enough, ["good", "noise", "sometimes"])["good"] > 0.5


def test_each_set_of_judges_that_ran_gets_its_own_map_and_skipped_judges_are_not_faked():
    cal = fit_calibration(_rows(1500, 5), ["good", "noise", "sometimes"], min_rows=50)
    group = cal.by_key[("math", "small")]
    active = [j for j, w in group.weights.items() if w > 0]
    assert frozenset(active) in group.maps and frozenset(["good"]) in group.maps
    without = cal.apply({"good": 0.55, "noise": 0.5}, "math", ["small"])
    with_it = cal.apply({"good": 0.55, "noise": 0.5, "sometimes": 0.05}, "math", ["small"])
    assert without.calibrated and with_it.calibrated and "sometimes" not in without.note.split("map over")[1]
    assert without.confidence != with_it.confidence


def test_groups_back_off_from_task_and_rung_to_the_global_map():
    rows = _rows(600, 6, rung="small") + _rows(30, 7, rung="rare")
    cal = fit_calibration(rows, ["good"], min_rows=50)
    assert ("math", "small") in cal.by_key and ("math", "rare") not in cal.by_key
    assert "group math|small" in cal.apply({"good": 0.8}, "math", ["small"]).note
    assert "group math|*" in cal.apply({"good": 0.8}, "math", ["rare"]).note
    assert "group *|*" in cal.apply({"good": 0.8}, "poetry", ["rare"]).note
    unknown = cal.apply({"format": 0.8}, "math", ["small"])
    assert not unknown.calibrated and unknown.confidence == pytest.approx(0.8)


def test_the_artefact_round_trips_through_json_and_bad_files_are_config_errors(tmp_path):
    cal = fit_calibration(_rows(400, 8), ["good", "noise"], min_rows=50, source={"benchmark": "synthetic"})
    path = cal.save(tmp_path / "calibration.json")
    again = Calibration.load(path)
    for scores in ({"good": 0.2}, {"good": 0.7, "noise": 0.1}):
        assert again.apply(scores, "math", ["small"]).confidence == pytest.approx(
            cal.apply(scores, "math", ["small"]).confidence, abs=1e-5)
    (tmp_path / "bad.json").write_text('{"format": "something/else"}')
    with pytest.raises(ConfigError, match="not a valid"):
        Calibration.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="does not exist"):
        Calibration.load(tmp_path / "missing.json")
    merged = Calibration.merge([again, fit_calibration(_rows(400, 9, rung="other"), ["good"], min_rows=50)])
    assert ("math", "other") in merged.by_key and ("math", "small") in merged.by_key


def test_the_deferral_model_learns_from_token_features():
    rng = np.random.default_rng(10)
    feats, labels = [], []
    for _ in range(400):
        y = float(rng.uniform() < 0.5)
        feats.append({"lp_mean": (-0.3 if y else -1.2) + rng.normal(0, 0.3), "lp_sum": rng.normal(-20, 5)})
        labels.append(y)
    model = fit_deferral(feats, labels, ["lp_mean", "lp_sum"])
    assert model.predict({"lp_mean": -0.2, "lp_sum": -20}) > 0.8 > 0.2 > model.predict({"lp_mean": -1.4, "lp_sum": -20})
    assert model.predict({"lp_mean": -0.2}) is None
    assert fit_deferral(feats[:5], labels[:5], ["lp_mean"]) is None

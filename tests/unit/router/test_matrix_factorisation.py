"""The RouteLLM-style matrix-factorisation baseline (escalon.offline.evaluation.baselines.MatrixFactorisation) on planted data,
and its place in the harness."""

import numpy as np
import pytest

from escalon.offline.evaluation.baselines import MF_DIM, MF_EPOCHS, MatrixFactorisation
from escalon.offline.evaluation.evaluation import ALL_POLICIES, evaluate
from escalon.offline.evaluation.synthetic import write_synthetic

pytestmark = pytest.mark.unit
HASHING = "hashing-trigram-256"


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(n=2400, d=32, n_models=4, seed=0, hidden=0.3):
    """Each model is good at queries near its own direction: P(success) = σ(8·⟨u_m, x⟩); the best model varies
    with the query. A share `hidden` of the cells is unobserved (NaN)."""
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, n, d)
    directions = unit_rows(rng, n_models, d)
    p = 1 / (1 + np.exp(-8 * x @ directions.T))
    scores = (rng.random(p.shape) < p).astype(float)
    scores[rng.random(p.shape) < hidden] = np.nan
    return x, scores, p


def test_the_fit_ranks_the_planted_best_model_first_on_held_out_queries():
    x, scores, p = planted()
    train, test = slice(0, 1800), slice(1800, None)
    mf = MatrixFactorisation.fit(x[train], scores[train], seed=0)
    pred = mf.predict(x[test])
    assert pred.shape == p[test].shape and np.isfinite(pred).all()
    hit = (pred.argmax(axis=1) == p[test].argmax(axis=1)).mean()
    assert hit > 0.7  # chance is 0.25
    # and it separates good from bad cells, not only the top one
    assert np.corrcoef(pred.ravel(), p[test].ravel())[0, 1] > 0.8


def test_unobserved_cells_are_ignored_not_read_as_failures():
    rng = np.random.default_rng(1)
    x = unit_rows(rng, 600, 16)
    scores = np.column_stack([np.ones(600), np.zeros(600)])  # model 0 always right, model 1 always wrong
    scores[rng.random(600) < 0.6, 0] = np.nan  # most of model 0's cells unobserved
    pred = MatrixFactorisation.fit(x, scores, seed=0).predict(x)
    assert pred[:, 0].min() > 0.9 and pred[:, 1].max() < 0.1


def test_prompts_without_any_observed_cell_change_nothing():
    x, scores, _ = planted(n=400, seed=2)
    rng = np.random.default_rng(3)
    extra = unit_rows(rng, 150, x.shape[1])
    with_blank = (np.vstack([x, extra]), np.vstack([scores, np.full((150, scores.shape[1]), np.nan)]))
    a = MatrixFactorisation.fit(x, scores, seed=0, epochs=3)
    b = MatrixFactorisation.fit(*with_blank, seed=0, epochs=3)
    np.testing.assert_array_equal(a.projection, b.projection)
    np.testing.assert_array_equal(a.bias, b.bias)


def test_a_model_with_few_rows_leans_to_its_mean_and_one_with_none_predicts_the_overall_mean():
    x, scores, _ = planted(n=800, n_models=3, seed=4, hidden=0.0)
    scores[:, 1] = np.nan
    scores[:3, 1] = 1.0  # three observed rows, all right
    scores[:, 2] = np.nan  # never observed
    pred = MatrixFactorisation.fit(x, scores, seed=0).predict(x)
    assert np.isfinite(pred).all() and ((0 < pred) & (pred < 1)).all()
    overall = np.nanmean(scores)
    # on average above the others' mean yet short of certain: three rows are little evidence
    assert overall + 0.15 < pred[:, 1].mean() < 0.95
    assert pred[:, 2] == pytest.approx(overall, abs=0.05)


def test_the_fit_is_deterministic_for_a_seed():
    x, scores, _ = planted(n=500, seed=5)
    a = MatrixFactorisation.fit(x, scores, seed=7, epochs=5)
    b = MatrixFactorisation.fit(x, scores, seed=7, epochs=5)
    c = MatrixFactorisation.fit(x, scores, seed=8, epochs=5)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    assert not np.allclose(a.predict(x), c.predict(x))


def test_the_harness_runs_it_by_default_and_notes_its_settings(tmp_path):
    assert "routellm-mf" in ALL_POLICIES
    path = write_synthetic(tmp_path / "benchmark.parquet", n=120)
    report = evaluate(path, encoder=HASHING, cache_dir=None, policies=["single", "oracle", "routellm-mf"])
    mf = report["policies"]["routellm-mf"]
    oracle = report["policies"]["oracle"]["points"][0]["quality"]
    assert 0.0 <= mf["aiq"] <= 1.0 and mf["max_quality"] <= oracle + 1e-9
    assert f"k={MF_DIM}" in mf["note"] and f"epochs={MF_EPOCHS}" in mf["note"]

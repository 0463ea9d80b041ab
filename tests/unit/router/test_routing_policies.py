"""The routing policies, the harness and the artefact on tiny synthetic data (escalon.offline.evaluation.synthetic)."""

import json
import os

import numpy as np
import pytest

from escalon.errors import ConfigError
from escalon.judging import JudgeWeights
from escalon.router.artefact import LiveArtefact, load_artefact
from escalon.judging import JudgeResult
from escalon.offline.evaluation.evaluation import evaluate
from escalon.offline.evaluation.replay_cascade import fit_judge_weights
from escalon.router.routing import build_plan, lambda_for_threshold
from escalon.router.routing_model import choose
from escalon.offline.evaluation.synthetic import write_synthetic

pytestmark = pytest.mark.unit
HASHING = "hashing-trigram-256"


def test_the_selection_rule_trades_quality_for_cost():
    success = np.array([[0.5, 0.7, 0.95]])
    cost = np.array([[1.0, 2.0, 10.0]])
    assert choose(success, cost, 0.0, 10.0)[0] == 2  # λ = 0: best predicted quality
    assert choose(success, cost, 1e3, 10.0)[0] == 0  # huge λ: cheapest
    # λ = 0.5: utilities 0.45, 0.60, 0.45
    assert choose(success, cost, 0.5, 10.0)[0] == 1
    assert choose(success, cost, 0.0, 10.0, allowed=np.array([[True, True, False]]))[0] == 1


def test_a_plan_probes_cheaper_rungs_of_two_families_and_sets_the_escalation_threshold():
    success = np.array([0.6, 0.62, 0.7, 0.9])
    cost = np.array([1.0, 1.5, 2.0, 10.0])
    families = ["a", "a", "b", "c"]
    plan = build_plan(success, cost, 0.1, 10.0, families, probe=True)
    assert plan.target == 3
    # the two best-utility cheaper rungs are 2 (family b) and 1 (family a): different families, cheapest first
    assert plan.rungs == (1, 2, 3)
    assert plan.threshold == pytest.approx(0.9 - 0.1 * 10.0 / 10.0)
    assert build_plan(success, cost, 0.1, 10.0, families, probe=False).rungs == (3,)


def test_probes_are_dropped_when_no_judge_could_make_them_confident_enough():
    weak = JudgeWeights(-5.0, {"predicted_success": (1.0, 0.0), "cross_model": (1.0, 0.0)})
    plan = build_plan(np.array([0.6, 0.7, 0.9]), np.array([1.0, 2.0, 10.0]), 0.01, 10.0, ["a", "b", "c"],
                      probe=True, weights=weak)
    assert plan.rungs == (2,)


def test_a_request_threshold_maps_to_lambda_monotonically():
    values = [lambda_for_threshold(t) for t in (0.0, 0.5, 0.7, 0.9, 1.0)]
    assert values == sorted(values, reverse=True) and values[-1] == 0.0


def test_judge_weights_learn_that_cross_model_agreement_means_correct():
    rng = np.random.default_rng(0)
    attempts = []
    for _ in range(300):
        correct = rng.random() < 0.5
        agree = float(correct if rng.random() < 0.9 else not correct)
        verdicts = (JudgeResult("cross_model", agree), JudgeResult("predicted_success", 0.5),
                    JudgeResult("agreement", 0.0, skipped=True))
        attempts.append((verdicts, float(correct)))
    weights = fit_judge_weights(attempts)
    assert weights.weights["cross_model"][0] > 2.0
    assert fit_judge_weights(attempts[:5]) is None


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("syn")
    path = write_synthetic(folder / "benchmark.parquet", n=150)
    report = evaluate(path, encoder=HASHING, cache_dir=folder / "cache", artefact_dir=folder / "artefact",
                      policies=["single", "oracle", "random-mix", "taxonomy", "learned", "hybrid", "hybrid+cascade",
                                "routellm-knn"])
    return folder, report


def test_the_harness_reports_every_policy_against_the_best_single_model(synthetic):
    _, report = synthetic
    policies = report["policies"]
    best = report["best_single"]
    assert best["model"] == "bigcorp/large"
    assert {"oracle", "random-mix", "taxonomy", "learned", "hybrid", "hybrid+cascade", "routellm-knn",
            "single:cheapco/small"} <= set(policies)
    oracle = policies["oracle"]["points"][0]["quality"]
    for name, p in policies.items():
        assert max(pt["quality"] for pt in p["points"]) <= oracle + 1e-9, name
        assert 0.0 <= p["aiq"] <= 1.0
    # the routers' curves reach from the cheapest model's quality to about the best single model's
    qualities = [pt["quality"] for pt in policies["hybrid"]["points"]]
    assert min(qualities) < 0.6 < 0.85 < max(qualities)
    assert report["test_prompts"] == 45 and report["familiarity"]["why"]


def test_the_budget_knob_is_never_exceeded_and_refuses_what_no_rung_fits(synthetic):
    _, report = synthetic
    sweep = report["budget_sweep"]
    assert len(sweep) >= 10 and report["policies"]["hybrid+cascade@max-cost"]["knob"] == "max_cost_usd"
    for row in sweep:
        assert row["over_budget"] == 0 and row["max_cost_usd_paid"] <= row["max_cost_usd"] * (1 + 1e-9)
    assert sweep[0]["refused_share"] == 1.0 and sweep[0]["quality"] == 0.0  # below the cheapest model's price
    assert sweep[-1]["refused_share"] == 0.0
    # a bigger budget buys at least as much quality, up to about the best single model's
    qualities = [row["quality"] for row in sweep]
    assert qualities[-1] >= report["best_single"]["quality"] - 0.1 and qualities[-1] > qualities[len(sweep) // 3]


def test_the_artefact_round_trips_and_a_bad_one_names_the_variable(synthetic, tmp_path):
    folder, _ = synthetic
    artefact = load_artefact(folder / "artefact")
    assert artefact.model.rungs == ["large", "small", "mid"] and artefact.version
    x = np.random.default_rng(0).normal(size=(3, 256)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pred = artefact.model.predict(x, np.array([20.0, 40.0, 60.0]))
    assert pred.hybrid.shape == (3, 3) and ((0 <= pred.hybrid) & (pred.hybrid <= 1)).all()
    with pytest.raises(ConfigError, match="ESCALON_ROUTER_ARTEFACT"):
        load_artefact(tmp_path / "nothing-here")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="ESCALON_ROUTER_ARTEFACT.*unreadable"):
        load_artefact(tmp_path)


def test_a_live_artefact_swaps_when_its_manifest_changes_and_keeps_the_last_good_one(synthetic, tmp_path):
    import shutil

    folder, _ = synthetic
    live_dir = tmp_path / "live"
    shutil.copytree(folder / "artefact", live_dir)
    live = LiveArtefact(live_dir, check_interval_s=0.0)
    first = live.current().version
    manifest = json.loads((live_dir / "manifest.json").read_text())
    manifest["version"] = "v-next"
    (live_dir / "manifest.json").write_text(json.dumps(manifest))
    os.utime(live_dir / "manifest.json", ns=(1, 1))  # a different stamp even within one clock tick
    assert live.current().version == "v-next" != first
    (live_dir / "manifest.json").write_text("{broken")
    assert live.current().version == "v-next"


def test_benchmarks_without_responses_or_prices_are_reported_not_crashed(tmp_path):
    path = write_synthetic(tmp_path / "b.parquet", n=90, responses=False, prices=False)
    report = evaluate(path, encoder=HASHING, cache_dir=None,
                      policies=["single", "hybrid", "hybrid+cascade", "frugalgpt"])
    notes = " ".join(report["notes"])
    assert "no recorded responses" in notes and "costs the same" in notes and report["uniform_cost"]
    assert not report["policies"]["frugalgpt"]["applicable"]
    assert all(pt["calls_per_query"] == 1.0 for pt in report["policies"]["hybrid+cascade"]["points"])


def test_the_frugal_cascade_pays_for_every_rung_it_tries():
    from escalon.offline.evaluation.baselines import frugal_points

    scores = np.array([[1.0, 1.0], [0.0, 1.0]])
    costs = np.array([[1.0, 10.0], [1.0, 10.0]])
    g = np.array([[0.9, 0.5], [0.2, 0.5]])  # the scorer trusts the first answer of query 0 only
    answered = np.ones((2, 2), dtype=bool)
    (cost, quality, calls), = frugal_points([0, 1], g, answered, scores, costs, thresholds=(0.5,))
    assert (cost, quality, calls) == (pytest.approx((1 + 11) / 2), 1.0, 1.5)
    # without recorded answers a query goes to the first rung whose training accuracy reaches τ
    (cost, quality, _), = frugal_points([0, 1], g, np.zeros((2, 2), bool), scores, costs, thresholds=(0.5,),
                                        prior=np.array([0.6, 0.9]))
    assert (cost, quality) == (1.0, 0.5)


def test_a_sparse_benchmark_leaves_out_the_model_missing_on_test(tmp_path):
    from escalon.offline.evaluation.synthetic import synthetic_frame

    frame = synthetic_frame(n=90)
    sparse = (frame["model"] == "otherlab/mid") & (frame["split"] == "test") & (frame.index % 5 != 0)
    path = tmp_path / "sparse.parquet"
    frame[~sparse].to_parquet(path)
    report = evaluate(path, encoder=HASHING, cache_dir=None, policies=["single", "hybrid"])
    assert report["models"] == ["bigcorp/large", "cheapco/small"]
    assert any("otherlab/mid left out" in n for n in report["notes"]) and report["test_prompts"] == 27


def _tuning_case(phi_informative: bool, n: int = 600, seed: int = 0):
    """Two rungs, a cheap one right on half the queries (which half a confident taxonomy knows) and a dear
    one always right; the learned estimate is a constant."""
    from escalon.router.routing_model import Prediction

    rng = np.random.default_rng(seed)
    cheap_right = rng.random(n) < 0.5
    scores = np.stack([cheap_right.astype(float), np.ones(n)], axis=1)
    costs = np.tile([1.0, 10.0], (n, 1))
    learned = np.tile([0.5, 0.9], (n, 1))
    phi = np.stack([np.where(cheap_right, 0.95, 0.05), np.full(n, 0.9)], axis=1) if phi_informative else learned.copy()
    p_task = np.tile([0.99, 0.01], (n, 1))
    return Prediction(p_task, np.tile([1.0, 0.0, 0.0], (n, 1)), phi, learned, np.ones(n), np.ones(n, bool), costs,
                      np.ones(n, bool)), scores, costs


def test_the_hybrid_keeps_the_taxonomy_path_only_when_it_beats_always_learned_beyond_the_noise():
    from escalon.offline.evaluation.routing_fit import tune_familiarity

    pred, scores, costs = _tuning_case(phi_informative=True)
    chosen = tune_familiarity(pred, scores, costs, cost_scale=10.0)
    assert chosen.min_top <= 1 and "over always learned on the other half" in chosen.why  # the taxonomy knows: kept
    pred, scores, costs = _tuning_case(phi_informative=False)
    pred.phi = pred.phi + np.random.default_rng(1).normal(0, 0.01, pred.phi.shape)  # no information, just noise
    chosen = tune_familiarity(pred, scores, costs, cost_scale=10.0)
    assert chosen.min_top > 1 and "always learned" in chosen.why

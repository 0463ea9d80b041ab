"""Cascade routing: the E[max] model, the planner's step, the fitted post-hoc estimates, and that the Router's
per-request Stepper and the harness's batch simulation take the same decisions."""

import asyncio

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from escalon.answer_keys import answer_key
from escalon.benchmark import load_benchmark, model_family
from escalon.offline.evaluation import cascade_routing_fit as crf
from escalon.offline.evaluation.replay_cascade import in_process_cascade, replay_catalogue
from escalon.offline.evaluation.synthetic import write_synthetic
from escalon.router.cascade import Cascade, SamplingConfig
from escalon.router.cascade_routing import (AnswerState, QualityEstimator, Stepper, expected_max, plan_step)
from escalon.router.policy import RoutePlan, RouteQuery
from escalon.router.routing_model import LAMBDAS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("k", [1, 2, 3])
def test_expected_max_matches_monte_carlo(k):
    rng = np.random.default_rng(k)
    base, base_sd = 0.6, 0.1
    mu, sd = rng.uniform(0.3, 0.9, k), rng.uniform(0.05, 0.3, k)
    draws = np.maximum(rng.normal(base, base_sd, 200_000), rng.normal(mu, sd, (200_000, k)).max(axis=1)).mean()
    got = expected_max(np.array(base), mu, sd, np.ones(k, bool), np.array(base_sd))
    assert got == pytest.approx(draws, abs=0.01 if k > 1 else 0.002)  # Clark is exact for one fold


def test_expected_max_of_certain_values_is_their_max():
    got = expected_max(np.array(0.4), np.array([0.7, 0.5]), np.zeros(2), np.array([True, False]))
    assert got == pytest.approx(0.7)


def test_the_planner_stops_when_the_answer_in_hand_is_best_and_climbs_when_not():
    run = np.array([[True, False, False]])
    cost = np.array([[0.01, 0.1, 1.0]])
    sigma = np.zeros((1, 3))
    sure = plan_step(np.array([[0.95, 0.6, 0.9]]), sigma, run, cost, lam=0.1)
    assert sure.next_rung[0] == -1
    doubtful = plan_step(np.array([[0.2, 0.6, 0.9]]), sigma, run, cost, lam=0.1)
    assert doubtful.next_rung[0] == 2  # worth its price: 0.9 − 0.1 > 0.6 − 0.01
    dear = plan_step(np.array([[0.2, 0.6, 0.9]]), sigma, run, cost, lam=1.0)
    assert dear.next_rung[0] == 1  # at this λ the dearest rung does not pay


def test_a_first_step_must_run_something_and_runs_the_cheapest_of_the_best_set():
    q = np.array([[0.5, 0.55, 0.9]])
    step = plan_step(q, np.full((1, 3), 0.3), np.zeros((1, 3), bool), np.array([[0.01, 0.02, 0.5]]), lam=0.05)
    assert step.next_rung[0] >= 0
    assert step.next_rung[0] == min(step.best_set[0], key=lambda c: [0.01, 0.02, 0.5][c])


def test_the_planner_never_plans_past_the_budget_or_the_depth():
    q = np.array([[0.3, 0.5, 0.95]])
    bound = np.array([[1.0, 2.0, 5.0]])
    step = plan_step(q, np.full((1, 3), 0.2), np.zeros((1, 3), bool), bound / 10, lam=0.0, bound=bound,
                     remaining=np.array([3.5]))
    assert sum(bound[0, c] for c in step.best_set[0]) <= 3.5
    assert 2 not in step.best_set[0]
    full = plan_step(q, np.full((1, 3), 0.2), np.array([[True, True, False]]), bound / 10, lam=0.0, depth=2)
    assert full.next_rung[0] == -1


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Out-of-fold-like inputs from the synthetic benchmark: a noisy ex-ante estimate per task and rung."""
    path = write_synthetic(tmp_path_factory.mktemp("cr") / "b.parquet", n=600, seed=3)
    bench = load_benchmark(path)
    rng = np.random.default_rng(0)
    tasks = bench.tasks
    means = {t: np.nanmean(bench.scores[tasks == t], axis=0) for t in set(tasks)}
    ex_ante = np.clip(np.array([means[t] for t in tasks]) + rng.normal(0, 0.05, bench.scores.shape), 0.02, 0.98)
    cost = np.nanmean(bench.costs, axis=0)[None, :].repeat(bench.n, 0) / np.nanmean(bench.costs)
    answers = crf.recorded_answers(bench.texts, bench.responses, len(bench.models))
    families = [model_family(m) for m in bench.models]
    return bench, ex_ante, cost, answers, families


@pytest.fixture(scope="module")
def estimator(synthetic):
    bench, ex_ante, cost, answers, families = synthetic
    train = bench.train_idx
    return crf.fit_estimator(ex_ante[train], cost[train], answers.rows(train), bench.scores[train],
                             bench.rung_names(), families, LAMBDAS, seed=0)


def test_post_hoc_estimates_are_sharper_than_ex_ante_ones(synthetic, estimator):
    bench, ex_ante, cost, answers, _ = synthetic
    test = bench.test_idx
    rows = np.arange(len(test))
    state = AnswerState.empty(len(test), 3)
    small, mid, large = (bench.models.index(m) for m in ("cheapco/small", "otherlab/mid", "bigcorp/large"))
    for r in (small, mid):  # the two cheaper rungs answered
        state = state.with_answer(rows, np.full(len(rows), r), answers.codes[test, r], answers.lengths[test, r])
    q, sigma = estimator.estimate(ex_ante[test], state)
    y = bench.scores[test, small] >= 0.5
    assert roc_auc_score(y, q[:, small]) > roc_auc_score(y, ex_ante[test, small]) + 0.05
    # run rungs are known, the unrun one is not
    assert (sigma[:, [small, mid]] == 0).all() and (sigma[:, large] > 0).all()


def test_estimator_round_trips_and_refuses_other_features(estimator):
    again = QualityEstimator.from_dict(estimator.to_dict())
    x = np.array([[0.5, 0.6, 0.9]])
    state = AnswerState.empty(1, 3).with_answer(np.array([0]), np.array([0]), np.array([0]), np.array([20.0]))
    assert np.allclose(again.estimate(x, state)[0], estimator.estimate(x, state)[0])
    data = estimator.to_dict()
    data["features"]["run"] = ["something", "else"]
    with pytest.raises(ValueError, match="refit"):
        QualityEstimator.from_dict(data)


def test_an_estimator_fitted_before_the_check_features_reads_as_it_did(estimator):
    """Artefacts written before code checks existed load with weight 0 on them and estimate the same."""
    from escalon.router.cascade_routing import RUN_FEATURES

    data = estimator.to_dict()
    keep = [i for i, f in enumerate(RUN_FEATURES) if not f.startswith("check")]
    f = len(RUN_FEATURES)
    data["features"]["run"] = [RUN_FEATURES[i] for i in keep]
    data["run_coef"] = [data["run_coef"][i] for i in keep] + data["run_coef"][f:]
    mean, std = data["scale"]["run"]
    data["scale"]["run"] = [[mean[i] for i in keep], [std[i] for i in keep]]
    old = QualityEstimator.from_dict(data)
    x = np.array([[0.5, 0.6, 0.9]])
    state = AnswerState.empty(1, 3).with_answer(np.array([0]), np.array([0]), np.array([0]), np.array([20.0]))
    ours = estimator.estimate(x, state)[0]
    zeroed = QualityEstimator.from_dict(estimator.to_dict())
    for name in ("checked", "check_pass", "check_full"):
        zeroed.run_coef[RUN_FEATURES.index(name)] = 0.0
    assert np.allclose(old.estimate(x, state)[0], zeroed.estimate(x, state)[0])
    assert ours.shape == (1, 3)


def _code_benchmark(n: int, seed: int):
    """Prompts whose code answers were executed: a right answer passes every test, a wrong one some.
    Answer keys are made distinct per answer, so agreement carries no signal and only the checks do."""
    rng = np.random.default_rng(seed)
    skill = np.array([0.35, 0.6, 0.85])
    scores = (rng.random((n, 3)) < skill).astype(float)
    checks = np.where(scores > 0, 1.0, rng.choice([0.0, 1 / 3, 2 / 3], size=(n, 3)))
    codes = np.tile(np.arange(3), (n, 1))
    answers = crf.Answers(codes, np.full((n, 3), 200.0), checks)
    ex_ante = np.clip(skill + rng.normal(0, 0.05, (n, 3)), 0.02, 0.98)
    cost = np.tile([0.1, 0.5, 2.0], (n, 1))
    return ex_ante, cost, answers, scores


def test_executed_code_answers_make_the_post_hoc_estimate_sharp():
    ex_ante, cost, answers, scores = _code_benchmark(500, 1)
    est = crf.fit_estimator(ex_ante, cost, answers, scores, ["a", "b", "c"], ["x", "y", "z"], LAMBDAS, seed=0)
    ex_t, cost_t, answers_t, scores_t = _code_benchmark(300, 2)
    rows = np.arange(300)
    state = AnswerState.empty(300, 3).with_answer(rows, np.zeros(300, int), *answers_t.at(rows, np.zeros(300, int)))
    q, _ = est.estimate(ex_t, state)
    assert roc_auc_score(scores_t[:, 0] >= 0.5, q[:, 0]) > 0.9
    blind = AnswerState(state.run, state.codes, state.lengths)  # the same answers, not executed
    q_blind, _ = est.estimate(ex_t, blind)
    assert roc_auc_score(scores_t[:, 0] >= 0.5, q_blind[:, 0]) < 0.7
    out = crf.simulate(est, ex_t, cost_t, answers_t, scores_t, cost_t, lam=0.05)
    assert out.quality.mean() > scores_t[:, 2].mean()  # a passing cheap answer is kept, a failing one climbs


def test_code_answers_are_keyed_by_what_they_do():
    from escalon.answer_keys import answer_evidence

    prompt = "Write add(a, b).\nYour code should pass these tests:\nassert add(1, 2) == 3\nassert add(2, 2) == 4"
    texts = ["```python\ndef add(a, b):\n    return a + b\n```", "def add(x, y):\n    return y + x",
             "```python\ndef add(a, b):\n    return a * b\n```", "I think it is 3.", None]
    keys, checks = answer_evidence(prompt, texts)
    assert keys[0] == keys[1] != keys[2]  # same behaviour, different text
    assert checks[:3] == [1.0, 1.0, 0.5] and np.isnan(checks[3]) and np.isnan(checks[4])
    plain_keys, plain_checks = answer_evidence("What is 1 + 2?", ["3", "three is 3"])
    assert plain_keys == ["3", "3"] and all(np.isnan(plain_checks))


def test_recorded_code_answers_are_executed_once_per_prompt_that_states_tests():
    prompts = ["Write inc(x).\nassert inc(1) == 2", "What is 2 + 2?"]
    responses = np.array([["def inc(x):\n    return x + 1", "def inc(x):\n    return x"],
                          ["4", "The answer is 4"]], dtype=object)
    answers = crf.recorded_answers(prompts, responses, 2)
    assert answers.checks[0].tolist() == [1.0, 0.0] and np.isnan(answers.checks[1]).all()
    assert answers.codes[0, 0] != answers.codes[0, 1] and answers.codes[1, 0] == answers.codes[1, 1]
    state = answers.state(np.array([[True, False]]), np.array([0]))
    assert state.checks[0].tolist()[0] == 1.0 and np.isnan(state.checks[0, 1])  # unrun: nothing checked


def test_the_routers_cascade_executes_a_code_answer_before_it_plans_on():
    from escalon.judging import Candidate
    from escalon.router.cascade import _evidence

    prompt = "Write sq(x).\nassert sq(3) == 9\nassert sq(0) == 0"
    key, check = asyncio.run(_evidence(prompt, Candidate("def sq(x):\n    return x * x + x")))
    assert key.startswith("exec:") and check == 0.5
    key, check = asyncio.run(_evidence(prompt, Candidate("def sq(x):\n    return x * x", truncated=True)))
    assert key is None and np.isnan(check)  # a truncated answer is not judged


def test_cascade_routing_pays_off_where_answers_agree(synthetic, estimator):
    """On data where agreeing answers are right, cascade routing beats the best one-call choice per λ."""
    bench, ex_ante, cost, answers, _ = synthetic
    test = bench.test_idx
    scores, costs = bench.scores[test], bench.costs[test]
    out = crf.simulate(estimator, ex_ante[test], cost[test], answers.rows(test), scores, costs, lam=0.05)
    route = (ex_ante[test] - 0.05 * cost[test]).argmax(1)
    routed_quality = scores[np.arange(len(test)), route].mean()
    assert out.quality.mean() > routed_quality
    strongest = bench.models.index("bigcorp/large")
    assert out.paid.mean() < costs[:, strongest].mean()  # and cheaper than always asking the strongest rung


def test_the_stepper_takes_the_simulations_decisions(synthetic, estimator):
    bench, ex_ante, cost, answers, _ = synthetic
    test = bench.test_idx[:40]
    names = bench.rung_names()
    for lam in (0.0, 0.05, 1.0):
        batch = crf.simulate(estimator, ex_ante[test], cost[test], answers.rows(test), bench.scores[test],
                             bench.costs[test], lam)
        for i, row in enumerate(test):
            stepper = Stepper(estimator, names, ex_ante[row], cost[row], lam)
            calls = 0
            while (rung := stepper.next()) is not None:
                j = names.index(rung)
                stepper.observe(rung, answer_key(bench.responses[row, j], bench.texts[row]),
                                len(bench.responses[row, j]))
                calls += 1
            chosen, _ = stepper.best()
            assert calls == batch.calls[i]
            assert names.index(chosen) == batch.answered_by[i]


def test_the_routers_cascade_runs_the_stepper_over_replay_rungs(synthetic, estimator):
    """The Router's Cascade with a Stepper plan, replaying recorded answers, answers as the simulation does
    and never exceeds a budget."""
    bench, ex_ante, cost, answers, _ = synthetic
    catalogue = replay_catalogue(bench)
    cascade = in_process_cascade(catalogue)
    names = bench.rung_names()
    test = bench.test_idx[:12]
    batch = crf.simulate(estimator, ex_ante[test], cost[test], answers.rows(test), bench.scores[test],
                         bench.costs[test], 0.05)

    async def go():
        out = []
        for row in test:
            stepper = Stepper(estimator, names, ex_ante[row], cost[row], 0.05)
            plan = RoutePlan(tuple(names), "test/cascade-routing", "test", 0.0, stepper=stepper)
            out.append(await cascade.run(RouteQuery(prompt=bench.texts[row], threshold=0.0), plan))
        return out

    results = asyncio.run(go())
    for i, result in enumerate(results):
        assert names.index(result.rung) == batch.answered_by[i]
        assert sum(a.answered for a in result.attempts) == batch.calls[i]
        assert result.total_cost_usd == pytest.approx(batch.paid[i])
    budget = float(np.nanmean(bench.costs[:, 1]))
    bounded = Cascade(catalogue, cascade.generator, cascade.scorer, SamplingConfig(remote_samples=1))

    async def one():
        row = test[0]
        stepper = Stepper(estimator, names, ex_ante[row], cost[row], 0.0)
        plan = RoutePlan(tuple(names), "test/cascade-routing", "test", 0.0, stepper=stepper)
        query = RouteQuery(prompt=bench.texts[row], threshold=0.0, max_cost_usd=budget * 3)
        return await bounded.run(query, plan), query

    result, query = asyncio.run(one())
    assert result.total_cost_usd <= query.max_cost_usd


def test_a_model_with_no_training_answers_is_named(tmp_path):
    from escalon.offline.evaluation.evaluation import evaluate
    from escalon.offline.evaluation.synthetic import synthetic_frame

    frame = synthetic_frame(n=120)
    frame = frame[~((frame.model == "otherlab/mid") & (frame.split == "train"))]
    frame.to_parquet(tmp_path / "b.parquet")
    report = evaluate(tmp_path / "b.parquet", encoder="hashing-trigram-256", cache_dir=None,
                      policies=["hybrid", "cascade-routing"])
    note = report["policies"]["cascade-routing"]["note"]
    assert "otherlab/mid answers none of the training prompts" in note and "b.parquet" in note
    assert report["policies"]["hybrid"]["aiq"] is not None  # the rest of the report stands


def test_a_benchmark_with_only_some_models_answers_recorded_still_plans(tmp_path):
    """A model whose answer texts are missing (scores and costs kept) is still a rung: its estimate rests on
    the ex-ante one and on the others' answers; nothing crashes and the report has a curve."""
    from escalon.offline.evaluation.evaluation import evaluate
    from escalon.offline.evaluation.synthetic import synthetic_frame

    frame = synthetic_frame(n=120, seed=4)
    frame.loc[frame.model == "otherlab/mid", "response"] = None
    frame.to_parquet(tmp_path / "b.parquet")
    report = evaluate(tmp_path / "b.parquet", encoder="hashing-trigram-256", cache_dir=None,
                      policies=["hybrid", "cascade-routing"])
    policy = report["policies"]["cascade-routing"]
    assert policy["aiq"] is not None and len(policy["points"]) > 3, policy.get("note")


def test_without_recorded_answers_cascade_routing_says_why(tmp_path):
    from escalon.offline.evaluation.evaluation import evaluate

    path = write_synthetic(tmp_path / "b.parquet", n=90, responses=False)
    report = evaluate(path, encoder="hashing-trigram-256", cache_dir=None, policies=["cascade-routing"])
    assert "no recorded responses" in report["policies"]["cascade-routing"]["note"]


def test_cascade_routing_plans_around_an_open_circuit(synthetic, estimator):
    bench, ex_ante, cost, answers, _ = synthetic
    catalogue = replay_catalogue(bench)
    cascade = in_process_cascade(catalogue)
    names = bench.rung_names()
    strongest = catalogue.get(names[bench.models.index("bigcorp/large")])
    for _ in range(strongest.circuit.failures):
        cascade.breakers.failure(strongest, "connection refused", cascade.breakers.allow(strongest))
    row = bench.test_idx[0]

    async def go():
        stepper = Stepper(estimator, names, ex_ante[row], cost[row], 0.0)  # λ = 0: it would want the strongest
        plan = RoutePlan(tuple(names), "test/cascade-routing", "test", 0.0, stepper=stepper)
        return await cascade.run(RouteQuery(prompt=bench.texts[row], threshold=0.0), plan)

    result = asyncio.run(go())
    assert result.rung != strongest.name
    assert not any(a.answered for a in result.attempts if a.rung == strongest.name)
    assert any(a.rung == strongest.name and "circuit" in a.note for a in result.attempts)


def test_a_replay_rung_without_the_prompt_opens_no_circuit(synthetic):
    """NotAnswerable (a healthy rung with no recording of this prompt) moves the cascade on without counting
    against the rung's circuit; a real failure does count."""
    from escalon.errors import NotAnswerable, RungUnavailable

    bench, *_ = synthetic
    catalogue = replay_catalogue(bench)
    cascade = in_process_cascade(catalogue)
    rung = catalogue.rungs[0]
    for _ in range(rung.circuit.failures + 2):
        cascade._count_failure(rung, NotAnswerable("prompt not recorded"), cascade.breakers.allow(rung))
    assert cascade.breakers.allow(rung)
    for _ in range(rung.circuit.failures):
        cascade._count_failure(rung, RungUnavailable("connection refused"), cascade.breakers.allow(rung))
    assert not cascade.breakers.allow(rung)


def test_the_serving_clients_reads_not_answerable_from_the_trailing_metadata():
    import grpc
    from grpc.aio import AioRpcError, Metadata

    from escalon.errors import NotAnswerable, RungUnavailable
    from escalon.router.clients import _domain_error

    reason = AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(("escalon-reason", "not-answerable")),
                         "prompt not recorded")
    plain = AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), "connection refused")
    assert isinstance(_domain_error(reason, "mixtral"), NotAnswerable)
    got = _domain_error(plain, "mixtral")
    assert isinstance(got, RungUnavailable) and not isinstance(got, NotAnswerable)

"""The evaluation harness behind `escalon eval`: train every policy on split=train, measure it on split=test.

Steps: load the benchmark (any file in the shared routing format), embed every prompt once (disk cache), fit
the routing model on train (familiarity thresholds tuned on out-of-fold predictions of train), fit the judge
weights and decide whether the cascade probes on held-out training prompts, then trace each policy's
cost–quality points on the test prompts answered by every model, and summarise them against the best single
model.

Nothing on the test split picks anything: thresholds, weights, the probe decision and every λ are fixed
before the test rows are read; each policy reports all its operating points, and the metrics (AIQ, quality
at the best single model's cost, cost to match it) are computed from those.

Benchmarks without recorded responses cannot be judged on answers: hybrid+cascade then routes with one call
per query (its plans have no probes) and the FrugalGPT baseline is not applicable; the report says so.
Benchmarks whose costs are all equal are quality-only: the report says so and cost is calls × that price.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from escalon.errors import ConfigError
from escalon.offline.evaluation import baselines
from escalon.benchmark import Benchmark, load_benchmark, model_family
from escalon.router.embedding import MINILM, STATIC, cached_encode, make_encoder
from escalon.offline.evaluation.metrics import aiq, cost_to_match, frontier, quality_at_cost, upper_hull
from escalon.router.policy import RoutePlan, RouteQuery
from escalon.offline.evaluation.replay_cascade import fit_judge_weights, in_process_cascade, replay_catalogue, run_plans
from escalon.router.routing import build_plan, policy_success
from escalon.offline.evaluation.routing_fit import fit_routing_model
from escalon.router.routing_model import LAMBDAS, Prediction, RoutingModel, route_points

FORMAT = "escalon.routing-evaluation/v1"
ROUTERS = ("taxonomy", "learned", "hybrid", "hybrid+cascade", "cascade-routing", "cascade-routing/ex-ante")
BASELINES = ("single", "random-mix", "oracle", "routellm-knn", "routellm-mf", "frugalgpt")
ALL_POLICIES = (*ROUTERS, *BASELINES)
# hybrid+cascade (fixed probes, judge-panel threshold) is the earlier design: its in-process panel is slow on
# large benchmarks and cascade routing supersedes it, so it runs only when asked for
DEFAULT_POLICIES = tuple(p for p in ALL_POLICIES if p != "hybrid+cascade")
BUDGET_LAMBDA_THRESHOLD = 0.7  # the budget sweeps run at the "balanced" operating point's λ
DEV_LAMBDAS = LAMBDAS[::3]
DEV_CASCADE_SAMPLE = 1000  # training prompts with answers that fit the judge weights (as many decide probing)


class Progress:
    """What the harness reports while it works; the CLI renders it with rich."""

    def step(self, message: str) -> None:
        pass

    def track(self, items: Iterable, total: int, message: str) -> Iterable:
        return items


@dataclass
class PolicyResult:
    name: str
    points: list[tuple[float, float, float]]  # (cost, quality, calls per query)
    knob: list[float]  # the knob value of each point
    knob_name: str
    note: str = ""
    applicable: bool = True


@dataclass
class Context:
    bench: Benchmark
    x: np.ndarray
    chars: np.ndarray
    train: np.ndarray  # benchmark row indices
    test: np.ndarray  # test rows answered by every model
    model: RoutingModel
    pred: Prediction  # on test rows
    families: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def scores(self) -> np.ndarray:
        return self.bench.scores[self.test]

    @property
    def costs(self) -> np.ndarray:
        return self.bench.costs[self.test]


def keep_models_for_test(bench: Benchmark, notes: list[str], min_complete: float = 0.5) -> Benchmark:
    """Policies are compared on test prompts every model answered. On a sparse benchmark, drop the models
    missing most often on test until at least `min_complete` of the test prompts are complete (≥ 2 models)."""
    keep = list(range(len(bench.models)))
    test = bench.test_idx
    observed = ~np.isnan(bench.scores[test]) & ~np.isnan(bench.costs[test])
    dropped = []
    while len(keep) > 2 and observed[:, keep].all(axis=1).mean() < min_complete:
        worst = min(keep, key=lambda j: observed[:, j].sum())
        keep.remove(worst)
        dropped.append(bench.models[worst])
    if not dropped:
        return bench
    notes.append(f"sparse benchmark: {', '.join(dropped)} left out so that most test prompts are answered by "
                 "every remaining model")
    responses = None if bench.responses is None else bench.responses[:, keep]
    return Benchmark(bench.name, bench.path, bench.prompts, [bench.models[j] for j in keep], bench.scores[:, keep],
                     bench.costs[:, keep], responses, bench.split_note, list(bench.notes))


def answerable(bench: Benchmark, rows: np.ndarray) -> np.ndarray:
    if bench.responses is None:
        return np.zeros((len(rows), len(bench.models)), dtype=bool)
    return np.vectorize(lambda v: isinstance(v, str))(bench.responses[rows]).astype(bool)


def cascade_points(model: RoutingModel, bench: Benchmark, rows: np.ndarray, success: np.ndarray, cost: np.ndarray,
                   families: list[str], weights, probe: bool, lambdas, progress: Progress,
                   label: str = "hybrid+cascade") -> tuple[list[tuple[float, float, float]], int]:
    """hybrid+cascade at every λ: plans from build_plan; plans with probes run through the Router's Cascade
    in-process (replay rungs, the judge panel); one-rung plans are that rung's recorded answer."""
    can_answer = answerable(bench, rows)
    scores, costs = bench.scores[rows], bench.costs[rows]
    catalogue = cascade = None
    names = bench.rung_names()
    points, cascaded = [], 0
    for lam in progress.track(lambdas, len(lambdas), f"{label}: λ sweep"):
        got, paid, calls = np.zeros(len(rows)), np.zeros(len(rows)), np.zeros(len(rows))
        queries, plans, where = [], [], []
        for q in range(len(rows)):
            usable = probe and can_answer[q].sum() >= 2
            choice = build_plan(success[q], cost[q], lam, model.cost_scale, families, usable,
                                allowed=can_answer[q] if usable else None, weights=weights)
            if usable and not can_answer[q, choice.target]:
                choice = build_plan(success[q], cost[q], lam, model.cost_scale, families, False)
            if len(choice.rungs) == 1:
                r = choice.target
                got[q], paid[q], calls[q] = scores[q, r], costs[q, r], 1
                continue
            text = bench.prompts["prompt"].iat[rows[q]]
            queries.append(RouteQuery(prompt=text, threshold=choice.threshold))
            plans.append(RoutePlan(tuple(names[r] for r in choice.rungs), label, "evaluation", choice.threshold,
                                   predicted_success={names[r]: float(success[q, r]) for r in choice.rungs},
                                   judge_weights=weights, min_agreeing_share=0.0 if weights else 2 / 3))
            where.append(q)
        if plans:
            if cascade is None:
                catalogue = replay_catalogue(bench, model.cost_intercept, model.cost_slope)
                cascade = in_process_cascade(catalogue)
            for q, result in zip(where, run_plans(cascade, queries, plans)):
                r = names.index(result.rung)
                got[q], paid[q] = scores[q, r], result.total_cost_usd
                calls[q] = sum(1 for a in result.attempts if a.answered)
            cascaded += len(plans)
        points.append((float(paid.mean()), float(got.mean()), float(calls.mean())))
    return points, cascaded


def collect_attempts(model: RoutingModel, bench: Benchmark, rows: np.ndarray, success: np.ndarray,
                     cost: np.ndarray, families: list[str], lam: float) -> list:
    """Every attempt of probing plans with acceptance off, with its recorded score: the judge weights' data."""
    can_answer = answerable(bench, rows)
    names = bench.rung_names()
    queries, plans, index = [], [], []
    for q in range(len(rows)):
        if can_answer[q].sum() < 2:
            continue
        choice = build_plan(success[q], cost[q], lam, model.cost_scale, families, True, allowed=can_answer[q])
        if len(choice.rungs) < 2:
            continue
        text = bench.prompts["prompt"].iat[rows[q]]
        queries.append(RouteQuery(prompt=text, threshold=2.0))
        plans.append(RoutePlan(tuple(names[r] for r in choice.rungs), "fit", "judge weights", 2.0,
                               predicted_success={names[r]: float(success[q, r]) for r in choice.rungs}))
        index.append(q)
    if not plans:
        return []
    cascade = in_process_cascade(replay_catalogue(bench, model.cost_intercept, model.cost_slope))
    out = []
    for q, result in zip(index, run_plans(cascade, queries, plans)):
        for a in result.attempts:
            if a.answered:
                out.append((a.scores, float(bench.scores[rows[q], names.index(a.rung)])))
    return out


BUDGET_POINTS = 14
BUDGET_MARGIN = 1.05  # over the worst overrun of recorded cost past the cost model on train


def cost_upper_bound(costs: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per rung, (scale, extra) such that scale·ĉ + extra bounded every recorded cost on train (+5%): the
    price a budget is checked against, so a plan that fits is not exceeded in fact. Of the two forms —
    a factor (a cost proportional to length) or an added amount (a long answer to a short prompt) — each rung
    takes the one with the lower mean bound on train."""
    R = costs.shape[1]
    scale, extra = np.ones(R), np.zeros(R)
    for r in range(R):
        seen = ~np.isnan(costs[:, r]) & (predicted[:, r] > 0)
        if not seen.any():
            continue
        c, p = costs[seen, r], predicted[seen, r]
        factor = max(float((c / p).max()), 1.0) * BUDGET_MARGIN
        added = max(float((c - p).max()), 0.0) * BUDGET_MARGIN
        if (p * factor).mean() <= (p + added).mean():
            scale[r] = factor
        else:
            extra[r] = added
    return scale, extra


def budget_bounds(ctx: Context):
    """The replay Cascade whose prices bound every recorded cost on train (cost_upper_bound), and the bound it
    checks a budget against per test prompt and rung."""
    bench, model = ctx.bench, ctx.model
    names, every_text = bench.rung_names(), bench.texts

    def bounds(cascade, rows):
        return np.array([[cascade.cost_bound(cascade.catalogue.get(n), RouteQuery(prompt=every_text[r], threshold=0.0))
                          for n in names] for r in rows])

    plain = in_process_cascade(replay_catalogue(bench, model.cost_intercept, model.cost_slope))
    scale, extra = cost_upper_bound(bench.costs[ctx.train], bounds(plain, ctx.train))
    cascade = in_process_cascade(replay_catalogue(bench, model.cost_intercept * scale + extra,
                                                  model.cost_slope * scale))
    return cascade, bounds(cascade, ctx.test), scale, extra


def cascade_routing_budget(ctx: Context, estimator, lam: float, progress: Progress
                           ) -> tuple[PolicyResult, list[dict]]:
    """cascade-routing driven by a per-request budget (max_cost_usd) at the default operating point's λ: the
    planner only considers sets whose upper-bound prices fit what is left of the budget (the Router's Stepper
    does the same with the Cascade's bounds); a recorded answer dearer than its bound counts as cut (paid at
    the bound, scored wrong, no answer to compare); a prompt no rung fits is refused (quality 0)."""
    from escalon.offline.evaluation import cascade_routing_fit as crf

    bench = ctx.bench
    _, bound, _, _ = budget_bounds(ctx)
    cut = ctx.costs > bound
    scores = np.where(cut, 0.0, ctx.scores)
    paid_cost = np.minimum(ctx.costs, bound)
    texts = bench.texts
    answers = crf.recorded_answers([texts[r] for r in ctx.test], bench.responses[ctx.test], len(bench.models))
    answers = crf.Answers(np.where(cut, -1, answers.codes), answers.lengths)
    singles = ctx.costs.mean(axis=0)
    top = max(2.0 * singles.max(), float(np.quantile(bound.max(axis=1), 0.99)))
    budgets = np.geomspace(0.5 * singles.min(), top, BUDGET_POINTS)
    points, sweep = [], []
    for budget in progress.track(budgets, len(budgets), "cascade-routing: max-cost sweep"):
        o = crf.simulate(estimator, ctx.pred.hybrid, ctx.pred.cost / ctx.model.cost_scale, answers, scores,
                         paid_cost, lam, bound=bound, budget=float(budget), context=ctx.pred.p_task)
        served = o.calls > 0
        got = np.where(served, o.quality, 0.0)
        points.append((float(o.paid.mean()), float(got.mean()), float(o.calls.mean())))
        chosen_cut = served & cut[np.arange(len(got)), np.maximum(o.answered_by, 0)]
        sweep.append({"max_cost_usd": float(budget), "mean_cost_usd": float(o.paid.mean()), "quality": float(got.mean()),
                      "refused_share": float(1 - served.mean()), "over_budget": int((o.paid > budget * (1 + 1e-9)).sum()),
                      "max_cost_usd_paid": float(o.paid.max()), "cut_at_max_tokens": int(chosen_cut.sum())})
    over = sum(s["over_budget"] for s in sweep)
    note = (f"budget knob (max_cost_usd) swept over {len(budgets)} budgets at λ={lam:.4g} (the default operating "
            f"point); sets are planned on upper-bound prices fitted on train, so the spend went over the budget in "
            f"{over} of {len(budgets) * len(ctx.test)} (prompt, budget) answers")
    return PolicyResult("cascade-routing@max-cost", points, [float(b) for b in budgets], "max_cost_usd", note), sweep


def budget_result(ctx: Context, weights, probe: bool, progress: Progress) -> tuple[PolicyResult, list[dict]]:
    """hybrid+cascade driven by the other knob, a per-request budget (max_cost_usd), swept over budgets:
    at each, the Router's own rule — rungs whose upper-bound cost exceeds the budget are left out, the best
    predicted one is the target, probes run while the budget allows (the Cascade's check), and a query no
    rung fits is refused (quality 0, as the API answers it with a clear error). A rung's bound plays the part
    max_tokens plays in serving: a recorded answer dearer than it is cut there (paid at the bound, scored
    wrong). The spend of every query is then checked against its budget: the Cascade's own check."""
    bench, model = ctx.bench, ctx.model
    names, every_text = bench.rung_names(), bench.texts
    cascade, bound, scale, extra = budget_bounds(ctx)
    texts = [every_text[r] for r in ctx.test]
    can_answer = answerable(bench, ctx.test)
    scores, costs = ctx.scores, ctx.costs
    singles = costs.mean(axis=0)
    # from below the cheapest model's mean cost to where the dearest rung fits 99% of the queries
    top = max(2.0 * singles.max(), float(np.quantile(bound.max(axis=1), 0.99)))
    budgets = np.geomspace(0.5 * singles.min(), top, BUDGET_POINTS)
    points, sweep = [], []
    for budget in progress.track(budgets, len(budgets), "hybrid+cascade: max-cost sweep"):
        got, paid, calls = np.zeros(len(texts)), np.zeros(len(texts)), np.zeros(len(texts))
        fits = bound <= budget
        queries, plans, where, cut = [], [], [], 0
        for q in np.flatnonzero(fits.any(axis=1)):
            usable = probe and (can_answer[q] & fits[q]).sum() >= 2
            allowed = fits[q] & can_answer[q] if usable else fits[q]
            choice = build_plan(ctx.pred.hybrid[q], ctx.pred.cost[q], 0.0, model.cost_scale, ctx.families, usable,
                                allowed=allowed, weights=weights)
            if len(choice.rungs) == 1:
                r = choice.target
                paid[q], calls[q] = min(costs[q, r], bound[q, r]), 1
                got[q] = scores[q, r] if costs[q, r] <= bound[q, r] else 0.0
                cut += costs[q, r] > bound[q, r]
                continue
            queries.append(RouteQuery(prompt=texts[q], threshold=choice.threshold, max_cost_usd=float(budget)))
            plans.append(RoutePlan(tuple(names[r] for r in choice.rungs), "hybrid+cascade", "evaluation",
                                   choice.threshold,
                                   predicted_success={names[r]: float(ctx.pred.hybrid[q, r]) for r in choice.rungs},
                                   judge_weights=weights, min_agreeing_share=0.0 if weights else 2 / 3))
            where.append(q)
        for q, result in zip(where, run_plans(cascade, queries, plans) if plans else []):
            r = names.index(result.rung)
            overran = {a.rung for a in result.attempts if a.answered and a.cost_usd > bound[q, names.index(a.rung)]}
            paid[q] = sum(min(a.cost_usd, bound[q, names.index(a.rung)]) for a in result.attempts)
            got[q] = 0.0 if result.rung in overran else scores[q, r]
            calls[q] = sum(1 for a in result.attempts if a.answered)
            cut += len(overran)
        served = fits.any(axis=1)
        points.append((float(paid.mean()), float(got.mean()), float(calls.mean())))
        sweep.append({"max_cost_usd": float(budget), "mean_cost_usd": float(paid.mean()), "quality": float(got.mean()),
                      "refused_share": float(1 - served.mean()), "over_budget": int((paid > budget * (1 + 1e-9)).sum()),
                      "max_cost_usd_paid": float(paid.max()), "cut_at_max_tokens": int(cut)})
    over = sum(s["over_budget"] for s in sweep)
    cut = sum(s["cut_at_max_tokens"] for s in sweep)
    forms = ", ".join(f"{n} ×{k:.2f}" if e == 0 else f"{n} +${e:.2g}" for n, k, e in zip(names, scale, extra))
    note = (f"budget knob (max_cost_usd) swept over {len(budgets)} budgets; a rung fits a budget when its cost model "
            f"times a factor or plus an amount (the worst overrun on train, +5%: {forms}) does. That bound plays "
            f"max_tokens: a recorded answer dearer than it would have been cut off there, so it is paid at the bound "
            f"and scored wrong ({cut} of {len(budgets) * len(texts)} (query, budget) answers); the spend went over "
            f"the budget in {over}")
    return PolicyResult("hybrid+cascade@max-cost", points, [float(b) for b in budgets], "max_cost_usd", note), sweep


def route_result(name: str, ctx: Context, success: np.ndarray, note: str = "") -> PolicyResult:
    points = route_points(success, ctx.pred.cost, ctx.scores, ctx.costs, ctx.model.cost_scale, LAMBDAS)
    return PolicyResult(name, [(c, q, 1.0) for c, q in points], list(LAMBDAS), "lambda", note)


def evaluate(benchmark: Path | str, *, policies: Iterable[str] = DEFAULT_POLICIES, encoder: str = MINILM,
             cache_dir: Path | str | None = None, artefact_dir: Path | str | None = None,
             progress: Progress | None = None, max_test: int | None = None, seed: int = 0,
             artefact_policy: str = "auto") -> dict:
    """artefact_policy: "auto" (cascade routing in the artefact when it beat one-call routing on train),
    "cascade-routing" (always, with the best multi-rung setting on train) or "routing" (never)."""
    progress = progress or Progress()
    policies = list(dict.fromkeys(policies))
    unknown = [p for p in policies if p not in ALL_POLICIES]
    if unknown:
        raise ConfigError(f"unknown policies {', '.join(unknown)}; known: {', '.join(ALL_POLICIES)}", field="--policies")
    started = time.perf_counter()
    progress.step(f"loading {benchmark}")
    bench = load_benchmark(benchmark)
    notes = [n for n in [bench.split_note, *bench.notes] if n]
    if len(bench.models) < 2:
        raise ConfigError(f"{bench.path} holds one model ({bench.models[0]}); routing needs at least two")
    bench = keep_models_for_test(bench, notes)
    complete = ~np.isnan(bench.scores).any(axis=1) & ~np.isnan(bench.costs).any(axis=1)
    test = bench.test_idx[complete[bench.test_idx]]
    train = bench.train_idx
    if len(test) < len(bench.test_idx):
        notes.append(f"{len(bench.test_idx) - len(test)} test prompts not answered by every model are left out")
    if max_test and len(test) > max_test:
        test = np.sort(np.random.default_rng(seed).choice(test, max_test, replace=False))
        notes.append(f"test sample of {max_test} prompts (--max-test)")
    if not len(test) or len(train) < 10:
        raise ConfigError(f"{bench.path}: {len(train)} training and {len(test)} complete test prompts; need ≥ 10 and ≥ 1")
    spread = np.nanmax(bench.costs, axis=1) - np.nanmin(bench.costs, axis=1)
    uniform_cost = bool(np.nanmax(spread) <= 1e-15)
    if uniform_cost:
        notes.append("every model costs the same on each prompt (no per-model prices): quality-only routing; "
                     "AIQ is the quality at one call's cost, and cascades pay for every rung they try")
    if not bench.has_responses():
        notes.append("no recorded responses: answer-based judges (cross-model agreement, sample consistency) "
                     "cannot run, so hybrid+cascade routes with one call per query and FrugalGPT is not applicable")

    enc = make_encoder(encoder)
    progress.step(f"embedding {bench.n} prompts with {enc.name} (cached)")
    x = cached_encode(enc, bench.texts, cache_dir)
    chars = bench.prompts["prompt"].str.len().to_numpy(dtype=float)
    families = [model_family(m) for m in bench.models]
    rungs = bench.rung_names()

    model, dev = fit_routing_model(x[train], chars[train], bench.tasks[train], bench.scores[train],
                                   bench.costs[train], rungs, families, enc.name, seed=seed,
                                   progress=progress.step)
    model.models = list(bench.models)
    pred = model.predict(x[test], chars[test])
    ctx = Context(bench, x, chars, train, test, model, pred, families, notes)

    weights, probe, probe_note = None, False, "no recorded responses: no probes"
    if bench.has_responses() and dev.prediction is not None and "hybrid+cascade" in policies:
        progress.step("fitting judge weights on the development slice (recorded answers, cross-model agreement)")
        # out-of-fold predictions of training prompts that have answers; half fit the weights, half decide probing
        has = np.flatnonzero(answerable(bench, train[dev.rows]).sum(axis=1) >= 2)
        has = np.random.default_rng(seed).permutation(has)[:2 * DEV_CASCADE_SAMPLE]
        fit_part, decide_part = np.sort(has[::2]), np.sort(has[1::2])
        dev_pred = dev.prediction
        attempts = collect_attempts(model, bench, train[dev.rows[fit_part]], dev_pred.hybrid[fit_part],
                                    dev_pred.cost[fit_part], families, DEV_LAMBDAS[len(DEV_LAMBDAS) // 2])
        weights = fit_judge_weights(attempts, version="eval")
        probe, probe_note = decide_probe(model, bench, train[dev.rows[decide_part]],
                                         dev_pred.rows(decide_part), families, weights, progress)
    notes.append(f"hybrid familiarity: {model.familiarity.why}")
    if "hybrid+cascade" in policies:
        notes.append(f"hybrid+cascade probes: {probe_note}")

    results: list[PolicyResult] = []
    singles = baselines.single_points(ctx.scores, ctx.costs)
    if "single" in policies:
        for m, (c, q) in zip(bench.models, singles):
            results.append(PolicyResult(f"single:{m}", [(c, q, 1.0)], [0.0], "-"))
    if "random-mix" in policies:
        pts = baselines.random_mix_points(ctx.scores, ctx.costs, seed=seed)
        results.append(PolicyResult("random-mix", [(c, q, 1.0) for c, q in pts], list(range(len(pts))), "share"))
    if "oracle" in policies:
        c, q = baselines.oracle_point(ctx.scores, ctx.costs)
        results.append(PolicyResult("oracle", [(c, q, 1.0)], [0.0], "-", "knows every recorded score"))
    for name in ("taxonomy", "learned", "hybrid"):
        if name in policies:
            progress.step(f"{name}: λ sweep")
            results.append(route_result(name, ctx, policy_success(name, pred)))
    if "routellm-knn" in policies:
        progress.step("routellm-knn: neighbours of every test prompt")
        knn = baselines.knn_success(x[train], bench.scores[train], x[test])
        results.append(route_result("routellm-knn", ctx, knn, f"k={baselines.KNN_K} cosine neighbours"))
    if "routellm-mf" in policies:
        progress.step("routellm-mf: fitting the matrix factorisation on train")
        mf = baselines.MatrixFactorisation.fit(x[train], bench.scores[train], seed=seed)
        results.append(route_result("routellm-mf", ctx, mf.predict(x[test]),
                                    f"k={baselines.MF_DIM}, epochs={baselines.MF_EPOCHS}, L2 {baselines.MF_L2:g}, "
                                    f"Adam lr {baselines.MF_LEARNING_RATE:g}, batches of {baselines.MF_BATCH} prompts"))
    if "hybrid+cascade" in policies:
        points, cascaded = cascade_points(model, bench, test, pred.hybrid, pred.cost, families, weights, probe,
                                          LAMBDAS, progress)
        results.append(PolicyResult("hybrid+cascade", points, list(LAMBDAS), "lambda",
                                    f"{cascaded} (query, λ) plans ran the judged cascade; {probe_note}"))
    sweep = None
    if "hybrid+cascade" in policies and not uniform_cost:
        result, sweep = budget_result(ctx, weights, probe, progress)
        results.append(result)
    if "frugalgpt" in policies:
        results.append(frugal_result(ctx, enc, cache_dir, progress))
    fitted = None
    if {"cascade-routing", "cascade-routing/ex-ante"} & set(policies):
        if artefact_policy not in ("auto", "cascade-routing", "routing"):
            raise ConfigError(f"unknown artefact policy {artefact_policy!r}; auto, cascade-routing or routing",
                              field="--artefact-policy")
        fitted, cr_results = cascade_routing_results(ctx, dev, progress, seed, artefact_policy == "cascade-routing")
        if fitted is not None and artefact_policy == "routing":
            fitted.use = False
        results.extend(r for r in cr_results if r.name in policies)
        if fitted is not None and fitted.estimator is not None and not uniform_cost and "cascade-routing" in policies:
            from escalon.router.routing import lambda_for_threshold

            result, sweep = cascade_routing_budget(ctx, fitted.estimator,
                                                   lambda_for_threshold(BUDGET_LAMBDA_THRESHOLD), progress)
            results.append(result)

    report = build_report(ctx, results, singles, uniform_cost)
    report["budget_sweep"] = sweep
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["judge_weights"] = weights.to_dict() if weights else None
    report["cascade_routing"] = None if fitted is None else {"note": fitted.note, "used_by_artefact": fitted.use,
                                                              **fitted.dev}
    report["familiarity"] = {k: v for k, v in vars(model.familiarity).items()}
    if artefact_dir is not None:
        from escalon.router.artefact import source_fingerprint, write_artefact

        progress.step(f"writing the artefact to {artefact_dir}")
        write_artefact(artefact_dir, model, weights, probe, source_fingerprint(bench.path), notes,
                       estimator=fitted.estimator if fitted is not None and fitted.use else None)
        report["artefact"] = str(artefact_dir)
    return report


def cascade_routing_results(ctx: Context, dev, progress: Progress, seed: int, force: bool = False):
    """cascade-routing and its ex-ante ablation (offline/evaluation/cascade_routing_fit.py), every choice made on
    out-of-fold training rows before the test rows are read."""
    from escalon.offline.evaluation import cascade_routing_fit as crf

    bench, model = ctx.bench, ctx.model
    names = ("cascade-routing", "cascade-routing/ex-ante")
    if not bench.has_responses() or dev.prediction is None:
        why = ("no recorded responses: nothing to estimate post-hoc quality from" if not bench.has_responses()
               else "too few training prompts for out-of-fold estimates")
        return None, [PolicyResult(n, [], [], "lambda", f"not applicable: {why}", applicable=False) for n in names]
    train_rows = ctx.train[dev.rows]
    complete = ~np.isnan(bench.scores[train_rows]).any(axis=1) & ~np.isnan(bench.costs[train_rows]).any(axis=1)
    rows, oof = train_rows[complete], dev.prediction.rows(np.flatnonzero(complete))
    unseen = [m for j, m in enumerate(bench.models) if np.isnan(bench.scores[train_rows, j]).all()]
    if unseen:
        why = (f"{', '.join(unseen)} answer{'s' if len(unseen) == 1 else ''} none of the training prompts of "
               f"{bench.path}: post-hoc estimates need every rung's training answers (drop those models or add "
               "their rows)")
        return None, [PolicyResult(n, [], [], "lambda", f"not applicable: {why}", applicable=False) for n in names]
    answers = crf.recorded_answers(bench.texts, bench.responses, len(bench.models))
    scale = model.cost_scale

    def route_curve(pick):
        pts = route_points(oof.hybrid[pick], oof.cost[pick], bench.scores[rows[pick]], bench.costs[rows[pick]],
                           scale, DEV_LAMBDAS)
        return [(c, q, 1.0) for c, q in pts]

    try:
        fitted = crf.fit_for_benchmark(oof.hybrid, oof.cost / scale, answers.rows(rows), bench.scores[rows],
                                       bench.costs[rows], oof.p_task, bench.rung_names(), ctx.families, LAMBDAS,
                                       DEV_LAMBDAS, aiq, route_curve, seed, progress.step, force)
    except crf.NotFittable as exc:
        return None, [PolicyResult(n, [], [], "lambda", f"not applicable: {exc}", applicable=False) for n in names]
    if fitted.estimator is None:
        return fitted, [PolicyResult(n, [], [], "lambda", f"not applicable: {fitted.note}", applicable=False)
                        for n in names]
    progress.step("cascade routing: λ sweep on the test prompts (post-hoc and ex-ante estimates)")
    curves = crf.test_curves(fitted.estimator, ctx.pred.hybrid, ctx.pred.cost / scale, answers.rows(ctx.test),
                             ctx.scores, ctx.costs, LAMBDAS, ctx.pred.p_task)
    best = int(np.argmax(ctx.scores.mean(axis=0)))
    quarter = 0.25 * float(ctx.costs.mean(axis=0)[best])
    judged = curves.pop("judged")
    if judged:
        c, auroc, calls = min(judged, key=lambda p: abs(np.log(max(p[0], 1e-12) / quarter)))
        fitted.dev["judged_auroc"] = [{"cost_usd": a, "auroc": b, "calls_per_query": n} for a, b, n in judged]
        fitted.note += (f"; its post-hoc estimate of the answer it returns, as a judge: AUROC {auroc:.3f} at "
                        f"${c:.2g} a query ({calls:.2f} calls; evidence: the answers it bought anyway)")
    notes = {"cascade-routing": fitted.note,
             "cascade-routing/ex-ante": "ablation: the same planner with ex-ante estimates only (answers seen "
                                        "change no estimate)"}
    return fitted, [PolicyResult(n, curves[n], list(LAMBDAS), "lambda", notes[n]) for n in names]


def decide_probe(model: RoutingModel, bench: Benchmark, dev_rows: np.ndarray, dev_pred: Prediction,
                 families: list[str], weights, progress: Progress) -> tuple[bool, str]:
    """Probe when, on the development slice, probing plans give a higher AIQ than one-call routes."""
    complete = ~np.isnan(bench.scores[dev_rows]).any(axis=1)
    rows = dev_rows[complete]
    if len(rows) < 20 or answerable(bench, rows).sum(axis=1).max(initial=0) < 2:
        return False, "fewer than two rungs with recorded answers per query on train: no probes"
    costs = bench.costs[rows]
    lo, hi = float(costs.mean(0).min()), float(costs.mean(0).max())
    value = {}
    for probe in (False, True):
        pts, _ = cascade_points(model, bench, rows, dev_pred.hybrid[complete], dev_pred.cost[complete], families,
                                weights, probe, DEV_LAMBDAS, progress, label=f"development, probes={probe}")
        value[probe] = aiq([(c, q) for c, q, _ in pts], lo, hi)
    chosen = value[True] > value[False]
    return chosen, (f"development AIQ {value[True]:.4f} with probes vs {value[False]:.4f} without: "
                    f"{'probing' if chosen else 'no probes'}")


FRUGAL_MAX_TRAIN_ANSWERS = 60_000


def frugal_result(ctx: Context, enc, cache_dir, progress: Progress) -> PolicyResult:
    bench = ctx.bench
    if not bench.has_responses():
        return PolicyResult("frugalgpt", [], [], "tau", "not applicable: no recorded responses", applicable=False)
    # Answers are embedded with the static encoder (a 64-d static model, ~10k texts/s): a transformer over every
    # recorded answer (335k on mmlu-pro-28) would take most of an hour on 2 cores. FrugalGPT's own scorer is a
    # fine-tuned DistilBERT; this is its cheap stand-in, fitted the same way (correct or not, per answer).
    answer_enc = make_encoder(STATIC)
    texts = bench.texts
    progress.step(f"frugalgpt: embedding recorded answers with {answer_enc.name}, fitting the answer scorer")
    R = len(bench.models)
    train_ok, test_ok = answerable(bench, ctx.train), answerable(bench, ctx.test)
    if train_ok.sum() > FRUGAL_MAX_TRAIN_ANSWERS:  # a sample of training answers fits the scorer as well
        keep = np.random.default_rng(0).random(train_ok.shape) < FRUGAL_MAX_TRAIN_ANSWERS / train_ok.sum()
        train_ok = train_ok & keep

    def feats(rows, ok):
        q, r = np.nonzero(ok)
        answers = [bench.responses[rows[i], j] for i, j in zip(q, r)]
        xq = cached_encode(answer_enc, [texts[rows[i]] for i in q], cache_dir) if len(q) else None
        xa = cached_encode(answer_enc, answers, cache_dir) if answers else None
        if xa is None:
            return q, r, np.zeros((0, 1))
        lengths = np.array([len(a) for a in answers], dtype=float)
        return q, r, baselines.AnswerScorer.features(xq, xa, lengths, r, R)

    q, r, f = feats(ctx.train, train_ok)
    scorer = baselines.AnswerScorer.fit(f, bench.scores[ctx.train[q], r] >= 0.5) if len(q) else None
    if scorer is None:
        return PolicyResult("frugalgpt", [], [], "tau", "not applicable: too few recorded training answers "
                            "of both outcomes", applicable=False)
    g = np.full((len(ctx.test), R), np.nan)
    q, r, f = feats(ctx.test, test_ok)
    if len(q):
        g[q, r] = scorer.score(f)
    train_scores, train_costs = bench.scores[ctx.train], bench.costs[ctx.train]
    stats = {j: (float(np.nanmean(train_costs[:, j])), float(np.nanmean(train_scores[:, j]))) for j in range(R)}
    ladder = [j for j in sorted(stats, key=lambda j: stats[j]) if (stats[j][0], stats[j][1]) in
              frontier(list(stats.values()))]
    prior = np.array([stats[j][1] for j in range(R)])
    pts = baselines.frugal_points(ladder, g, test_ok, ctx.scores, ctx.costs, prior=prior)
    return PolicyResult("frugalgpt", pts, list(baselines.FRUGAL_THRESHOLDS), "tau",
                        f"ladder {' → '.join(bench.models[j] for j in ladder)}; a rung without a recorded answer "
                        "is skipped; a query without any is routed by the rungs' training accuracy vs τ")


def build_report(ctx: Context, results: list[PolicyResult], singles, uniform_cost: bool) -> dict:
    bench = ctx.bench
    best = max(range(len(singles)), key=lambda j: (singles[j][1], -singles[j][0]))
    best_cost, best_quality = singles[best]
    lo, hi = min(c for c, _ in singles), max(c for c, _ in singles)
    policies = {}
    for res in results:
        pts = [(c, q) for c, q, _ in res.points]
        entry = {"applicable": res.applicable, "note": res.note, "knob": res.knob_name,
                 "points": [{"knob": k, "cost_usd": c, "quality": q, "calls_per_query": n}
                            for k, (c, q, n) in zip(res.knob, res.points)]}
        if pts:
            match = cost_to_match(pts, best_quality)
            calls_at_match = next((n for c, q, n in res.points if match is not None and c == match
                                   and q >= best_quality - 1e-9), None)
            entry.update({
                "aiq": aiq(pts, lo, hi),
                "frontier": [list(p) for p in frontier(pts)],
                "hull": [list(p) for p in upper_hull(pts)],
                "quality_at_best_single_cost": quality_at_cost(pts, best_cost),
                "cost_to_match_best_single_usd": match,
                "cost_to_match_best_single_pct": 100 * match / best_cost if match is not None and best_cost else None,
                "calls_per_query_at_match": calls_at_match,
                "max_quality": max(q for _, q in pts),
                "calls_per_query": [n for _, _, n in res.points],
            })
        policies[res.name] = entry
    non_oracle = {k: v for k, v in policies.items() if k != "oracle" and v.get("aiq") is not None}
    ranking = sorted(non_oracle, key=lambda k: -non_oracle[k]["aiq"])
    return {
        "format": FORMAT,
        "benchmark": bench.name,
        "path": str(bench.path),
        "models": bench.models,
        "families": ctx.families,
        "train_prompts": int(len(ctx.train)),
        "test_prompts": int(len(ctx.test)),
        "has_responses": bench.has_responses(),
        "uniform_cost": uniform_cost,
        "notes": ctx.notes,
        "best_single": {"model": bench.models[best], "quality": best_quality, "cost_usd": best_cost},
        "aiq_cost_range_usd": [lo, hi],
        "aiq_ranking_non_oracle": ranking,
        "policies": policies,
    }

"""hybrid+cascade in `escalon eval`: the earlier judged cascade — the hybrid router's target plus up to two
cheaper probes accepted when the judge panel's fitted confidence reaches a threshold — run through the
Router's Cascade in-process (replay rungs, the judge panel). Cascade routing supersedes it
(docs/cascade-routing.md); it runs only when `--policies` names it."""

from __future__ import annotations

import numpy as np

from escalon.benchmark import Benchmark
from escalon.offline.evaluation.evaluation import (BUDGET_POINTS, DEV_CASCADE_SAMPLE, DEV_LAMBDAS, Context,
                                                   PolicyResult, Progress, answerable, budget_bounds)
from escalon.offline.evaluation.metrics import aiq
from escalon.offline.evaluation.replay_cascade import fit_judge_weights, in_process_cascade, replay_catalogue, run_plans
from escalon.router.policy import RoutePlan, RouteQuery
from escalon.router.routing import build_plan
from escalon.router.routing_model import LAMBDAS, Prediction, RoutingModel


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


def fit_weights_and_probe(ctx: Context, dev, progress: Progress, seed: int):
    """Judge weights fitted on half the out-of-fold training prompts with answers; the other half decides
    whether probing beats one-call routes. (weights, probe, note)."""
    bench, model, train, families = ctx.bench, ctx.model, ctx.train, ctx.families
    if not bench.has_responses() or dev.prediction is None:
        return None, False, "no recorded responses: no probes"
    progress.step("fitting judge weights on the development slice (recorded answers, cross-model agreement)")
    has = np.flatnonzero(answerable(bench, train[dev.rows]).sum(axis=1) >= 2)
    has = np.random.default_rng(seed).permutation(has)[:2 * DEV_CASCADE_SAMPLE]
    fit_part, decide_part = np.sort(has[::2]), np.sort(has[1::2])
    dev_pred = dev.prediction
    attempts = collect_attempts(model, bench, train[dev.rows[fit_part]], dev_pred.hybrid[fit_part],
                                dev_pred.cost[fit_part], families, DEV_LAMBDAS[len(DEV_LAMBDAS) // 2])
    weights = fit_judge_weights(attempts, version="eval")
    probe, note = decide_probe(model, bench, train[dev.rows[decide_part]], dev_pred.rows(decide_part), families,
                               weights, progress)
    return weights, probe, note


def results(ctx: Context, weights, probe: bool, probe_note: str, uniform_cost: bool, progress: Progress):
    """hybrid+cascade's λ curve and (with prices) its budget sweep: ([PolicyResult], sweep or None)."""
    points, cascaded = cascade_points(ctx.model, ctx.bench, ctx.test, ctx.pred.hybrid, ctx.pred.cost, ctx.families,
                                      weights, probe, LAMBDAS, progress)
    out = [PolicyResult("hybrid+cascade", points, list(LAMBDAS), "lambda",
                        f"{cascaded} (query, λ) plans ran the judged cascade; {probe_note}")]
    sweep = None
    if not uniform_cost:
        result, sweep = budget_result(ctx, weights, probe, progress)
        out.append(result)
    return out, sweep

"""cascade-routing in `escalon eval` (docs/cascade-routing.md): its estimators fitted and its spread chosen on
out-of-fold training rows before the test rows are read, then its λ curve, its ex-ante ablation and its
budget knob on the test prompts."""

from __future__ import annotations

import numpy as np

from escalon.errors import ConfigError
from escalon.offline.evaluation import cascade_routing_fit as crf
from escalon.offline.evaluation.evaluation import (BUDGET_POINTS, DEV_LAMBDAS, Context, PolicyResult, Progress,
                                                   budget_bounds)
from escalon.offline.evaluation.metrics import aiq
from escalon.router.routing import lambda_for_threshold
from escalon.router.routing_model import LAMBDAS, route_points

BUDGET_LAMBDA_THRESHOLD = 0.7  # the budget sweep runs at the "balanced" operating point's λ
ARTEFACT_POLICIES = ("auto", "cascade-routing", "routing")


def cascade_routing_policies(ctx: Context, dev, policies, progress: Progress, seed: int, artefact_policy: str,
                             uniform_cost: bool):
    """(fitted, the requested cascade-routing results, the budget sweep or None)."""
    if artefact_policy not in ARTEFACT_POLICIES:
        raise ConfigError(f"unknown artefact policy {artefact_policy!r}; one of {', '.join(ARTEFACT_POLICIES)}",
                          field="--artefact-policy")
    fitted, results = cascade_routing_results(ctx, dev, progress, seed, artefact_policy == "cascade-routing")
    if fitted is not None and artefact_policy == "routing":
        fitted.use = False
    results = [r for r in results if r.name in policies]
    sweep = None
    if fitted is not None and fitted.estimator is not None and not uniform_cost and "cascade-routing" in policies:
        result, sweep = cascade_routing_budget(ctx, fitted.estimator, lambda_for_threshold(BUDGET_LAMBDA_THRESHOLD),
                                               progress)
        results.append(result)
    return fitted, results, sweep


def cascade_routing_results(ctx: Context, dev, progress: Progress, seed: int, force: bool = False):
    """cascade-routing and its ex-ante ablation (offline/evaluation/cascade_routing_fit.py), every choice made on
    out-of-fold training rows before the test rows are read."""
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
    answers = _recorded(ctx, progress)
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
        return None, [PolicyResult(n, [], [], "lambda", f"not applicable: {exc} ({bench.path})", applicable=False)
                      for n in names]
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


def _recorded(ctx: Context, progress: Progress) -> crf.Answers:
    """The recorded answers' keys (code run against the prompts' tests), computed once per evaluation."""
    if ctx.answers is None:
        bench = ctx.bench
        ctx.answers = crf.recorded_answers(bench.texts, bench.responses, len(bench.models), progress.step)
    return ctx.answers


def cascade_routing_budget(ctx: Context, estimator, lam: float, progress: Progress
                           ) -> tuple[PolicyResult, list[dict]]:
    """cascade-routing driven by a per-request budget (max_cost_usd) at the default operating point's λ: the
    planner only considers sets whose upper-bound prices fit what is left of the budget (the Router's Stepper
    does the same with the Cascade's bounds); a recorded answer dearer than its bound counts as cut (paid at
    the bound, scored wrong, no answer to compare); a prompt no rung fits is refused (quality 0)."""
    bench = ctx.bench
    _, bound, _, _ = budget_bounds(ctx)
    cut = ctx.costs > bound
    scores = np.where(cut, 0.0, ctx.scores)
    paid_cost = np.minimum(ctx.costs, bound)
    answers = _recorded(ctx, progress).rows(ctx.test)
    answers = crf.Answers(np.where(cut, -1, answers.codes), answers.lengths,
                          None if answers.checks is None else np.where(cut, np.nan, answers.checks))
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

"""Fitting and simulating cascade routing on a benchmark (docs/cascade-routing.md).

`fit_estimator` learns the post-hoc quality estimates from training prompts only: their out-of-fold ex-ante
estimates ŝ (each prompt predicted by a routing model fitted without it, so ŝ is as noisy as on new
traffic), their recorded answers turned into answer keys, and their recorded scores. The states it learns
from are sets of rungs a cascade could have run: drawn by a noisy version of the planner's own utility
ŝ − λĉ at random λ, plus uniformly random sets. Both estimators are scikit-learn logistic regressions over
standardised features and a per-rung bias; σ of an unrun rung's estimate is how far its estimate moves
once that rung has answered (root mean square per depth and rung, shrunk to the depth's pooled value).

`simulate` runs the planner of escalon.router.cascade_routing over many prompts at once, paying each
rung's recorded cost and reading its recorded answer — the same decisions the Router API takes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from escalon.answer_keys import answer_evidence
from escalon.execution import has_checks
from escalon.router.cascade_routing import (DEPTH, INTERACTION, RUN_FEATURES, TOP_K, UNRUN_FEATURES, AnswerState,
                                            QualityEstimator, choose_answer, decide, encode_keys, logit,
                                            state_features, unrun_summary)

STATES_PER_PROMPT = 8
UNRUN_PER_STATE = 6
MAX_FIT_PROMPTS = 6000
EXECUTION_WORKERS = 4  # prompts whose code answers run at once (each runs its answers in parallel)
SIGMA_SHRINK = 30  # rows of a rung at one depth that weigh as much as the depth's pooled σ


class NotFittable(ValueError):
    """The training rows cannot support post-hoc estimates (the report says why)."""


@dataclass(frozen=True)
class Answers:
    """The recorded answers of n prompts as the cascade would see them."""

    codes: np.ndarray  # [n, R] answer-key ids within each prompt, −1 = no usable answer
    lengths: np.ndarray  # [n, R] characters
    checks: np.ndarray | None = None  # [n, R] share of the prompt's tests passed when executed, NaN = unchecked

    def rows(self, index: np.ndarray) -> Answers:
        return Answers(self.codes[index], self.lengths[index], None if self.checks is None else self.checks[index])

    def state(self, run: np.ndarray, rows: np.ndarray) -> AnswerState:
        """The cascade's view of prompts `rows` once the rungs in `run` have answered."""
        checks = None if self.checks is None else np.where(run, self.checks[rows], np.nan)
        return AnswerState(run, np.where(run, self.codes[rows], -1), np.where(run, self.lengths[rows], 0.0), checks)

    def at(self, rows: np.ndarray, rungs: np.ndarray) -> tuple:
        """What `with_answer` needs for rung rungs[i] answering prompt rows[i]."""
        return (self.codes[rows, rungs], self.lengths[rows, rungs],
                None if self.checks is None else self.checks[rows, rungs])


def recorded_answers(prompts: list[str], responses: np.ndarray | None, n_models: int,
                     progress=lambda message: None) -> Answers:
    """Answer keys of the recorded responses; code answers to prompts that state tests are executed
    (escalon.answer_keys.answer_evidence), the rest compared as text."""
    if responses is None:
        return Answers(np.full((len(prompts), n_models), -1, np.int64), np.zeros((len(prompts), n_models)))
    texts = [[r if isinstance(r, str) else None for r in row] for row in responses]
    testable = sum(has_checks(p) for p in prompts)
    if testable:
        progress(f"cascade routing: running the code answers of {testable} prompts that state tests")
    with ThreadPoolExecutor(EXECUTION_WORKERS) as pool:  # the programs run in child processes; threads wait
        evidence = list(pool.map(answer_evidence, prompts, texts))
    lengths = np.array([[len(t) if t else 0 for t in row] for row in texts], dtype=float)
    checks = np.array([c for _, c in evidence], float) if testable else None
    return Answers(encode_keys([k for k, _ in evidence]), lengths, checks)


def sample_states(rng: np.random.Generator, ex_ante: np.ndarray, cost: np.ndarray, lambdas, per_prompt: int,
                  depth: int = DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """Run masks [n·per_prompt, R] and the prompt each belongs to."""
    n, R = ex_ante.shape
    rows = np.repeat(np.arange(n), per_prompt)
    lam = rng.choice(np.asarray(lambdas, float), size=len(rows))
    size = rng.integers(1, min(depth, R) + 1, size=len(rows))
    utility = ex_ante[rows] - lam[:, None] * cost[rows]
    uniform = rng.random(len(rows)) < 0.3
    noise = rng.gumbel(size=utility.shape) * 0.05
    keyed = np.where(uniform[:, None], rng.random(utility.shape), utility + noise)
    order = np.argsort(-keyed, axis=1)
    run = np.zeros((len(rows), R), bool)
    for d in range(min(depth, R)):
        take = size > d
        run[np.flatnonzero(take), order[take, d]] = True
    return run, rows


def _labels(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows duplicated as (y=1, weight s) and (y=0, weight 1−s) so fractional scores fit a logistic model."""
    idx = np.arange(len(scores))
    both = np.concatenate([idx, idx])
    y = np.concatenate([np.ones(len(scores)), np.zeros(len(scores))])
    w = np.concatenate([scores, 1 - scores])
    keep = w > 0
    return both[keep], y[keep], w[keep]


def _fit_logistic(x: np.ndarray, rung: np.ndarray, y_score: np.ndarray, R: int, seed: int, which: str,
                  context: np.ndarray):
    """Columns as QualityEstimator._apply reads them: scaled features, rung bias, rung × interaction, context."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    scaled = (x - mean) / std
    onehot = np.eye(R)[rung]
    features = np.hstack([scaled, onehot, onehot * scaled[:, [INTERACTION[which]]], context])
    idx, y, w = _labels(np.clip(y_score, 0.0, 1.0))
    if len(np.unique(y)) < 2:
        raise NotFittable("every training answer has the same score: nothing to learn a quality estimate from")
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    model.fit(features[idx], y, sample_weight=w)
    return model.coef_[0].copy(), float(model.intercept_[0]), (mean, std)


def fit_estimator(ex_ante: np.ndarray, cost: np.ndarray, answers: Answers, scores: np.ndarray, rungs: list[str],
                  families: list[str], lambdas, context: np.ndarray | None = None, seed: int = 0) -> QualityEstimator:
    """ex_ante, cost (in λ's units), scores: [n, R] for training prompts with every rung observed; context
    [n, C]: per-prompt features both estimators see (the taxonomy's task probabilities)."""
    rng = np.random.default_rng(seed)
    n, R = ex_ante.shape
    context = np.zeros((n, 0)) if context is None else context
    if n > MAX_FIT_PROMPTS:
        keep = np.sort(rng.choice(n, MAX_FIT_PROMPTS, replace=False))
        ex_ante, cost, answers, scores = ex_ante[keep], cost[keep], answers.rows(keep), scores[keep]
        context = context[keep]
        n = MAX_FIT_PROMPTS
    run, rows = sample_states(rng, ex_ante, cost, lambdas, STATES_PER_PROMPT)
    state = answers.state(run, rows)
    blank = QualityEstimator(rungs, families, np.zeros(len(RUN_FEATURES) + R), 0.0,
                             np.zeros(len(UNRUN_FEATURES) + R), 0.0, np.zeros((DEPTH, R)))
    run_x, _ = state_features(ex_ante[rows], state, blank.cross_family)
    s_i, r_i = np.nonzero(run)
    run_coef, run_bias, run_scale = _fit_logistic(run_x[s_i, r_i], r_i, scores[rows[s_i], r_i], R, seed, "run",
                                                  context[rows[s_i]])
    est = QualityEstimator(rungs, families, run_coef, run_bias, np.zeros(len(UNRUN_FEATURES) + R), 0.0,
                           np.zeros((DEPTH, R)), scale={"run": run_scale})
    # the unrun model: features as estimate() builds them, for a few unrun rungs of each state, and for every
    # rung before any answer (so the first step compares calibrated estimates, as later steps do)
    rows = np.concatenate([rows, np.arange(n)])
    run = np.vstack([run, np.zeros((n, R), bool)])
    state = answers.state(run, rows)
    unrun_x = _unrun_features(est, ex_ante[rows], state, context[rows])
    pick = _pick_unrun(rng, ~run, UNRUN_PER_STATE)
    pick[-n:] = True
    s_u, r_u = np.nonzero(pick)
    unrun_coef, unrun_bias, unrun_scale = _fit_logistic(unrun_x[s_u, r_u], r_u, scores[rows[s_u], r_u], R, seed,
                                                        "unrun", context[rows[s_u]])
    est = QualityEstimator(rungs, families, run_coef, run_bias, unrun_coef, unrun_bias, np.zeros((DEPTH, R)),
                           scale={"run": run_scale, "unrun": unrun_scale})
    est.sigma = _fit_sigma(est, ex_ante, answers, rng, lambdas, context)
    est.tau = _fit_tau(est, ex_ante, answers, rng, lambdas, context)
    return est


def _fit_tau(est: QualityEstimator, ex_ante: np.ndarray, answers: Answers, rng: np.random.Generator, lambdas,
             context: np.ndarray) -> np.ndarray:
    """RMS move of the best run rung's estimate when k more rungs answer, per depth d (pooled over rungs)."""
    n, R = ex_ante.shape
    tau = np.zeros((DEPTH + 1, DEPTH + 1))
    for d in range(1, DEPTH):
        run, rows = sample_states(rng, ex_ante, np.zeros_like(ex_ante), lambdas, 1, depth=d)
        run = _exact_size(rng, run, d)
        state = answers.state(run, rows)
        before, _ = est.estimate(ex_ante[rows], state, context[rows])
        best = np.where(run, before, -np.inf).argmax(-1)
        grown = state
        for k in range(1, DEPTH - d + 1):
            j = np.array([rng.choice(np.flatnonzero(~r)) if (~r).any() else -1 for r in grown.run])
            ok = np.flatnonzero(j >= 0)
            grown = grown.with_answer(ok, j[ok], *answers.at(rows[ok], j[ok]))
            after, _ = est.estimate(ex_ante[rows], grown, context[rows])
            i = np.arange(len(rows))
            tau[d, k] = float(np.sqrt(np.mean((after[i, best] - before[i, best]) ** 2)))
    return tau


def _unrun_features(est: QualityEstimator, ex_ante: np.ndarray, state: AnswerState, context: np.ndarray
                    ) -> np.ndarray:
    """The unrun model's inputs exactly as QualityEstimator.estimate computes them."""
    n, R = ex_ante.shape
    run_x, summary = state_features(ex_ante, state, est.cross_family)
    q_run = est._apply(run_x, est.run_coef, est.run_bias, "run", context)
    per_query = unrun_summary(ex_ante, state, q_run, summary)
    per_query[~state.run.any(-1)] = 0.0  # as estimate() sees a state with no answer
    return np.concatenate([logit(ex_ante)[..., None], np.broadcast_to(per_query[:, None, :],
                                                                      (n, R, per_query.shape[1]))], -1)


def _pick_unrun(rng: np.random.Generator, unrun: np.ndarray, per_state: int) -> np.ndarray:
    keyed = np.where(unrun, rng.random(unrun.shape), -1.0)
    order = np.argsort(-keyed, axis=1)[:, :per_state]
    pick = np.zeros_like(unrun)
    np.put_along_axis(pick, order, True, axis=1)
    return pick & unrun


def _fit_sigma(est: QualityEstimator, ex_ante: np.ndarray, answers: Answers, rng: np.random.Generator,
               lambdas, context: np.ndarray) -> np.ndarray:
    """RMS of (q̂_j before j runs − q̂_j after) per depth d = rungs already run, per rung, shrunk to the depth's
    pooled value."""
    n, R = ex_ante.shape
    sq, count = np.zeros((DEPTH, R)), np.zeros((DEPTH, R))
    for d in range(DEPTH):
        if d == 0:
            run = np.zeros((n, R), bool)
            rows = np.arange(n)
        else:
            run, rows = sample_states(rng, ex_ante, np.zeros_like(ex_ante), lambdas, 1, depth=d)
            run = _exact_size(rng, run, d)
        state = answers.state(run, rows)
        before, _ = est.estimate(ex_ante[rows], state, context[rows])
        j = np.array([rng.choice(np.flatnonzero(~r)) if (~r).any() else -1 for r in run])
        ok = j >= 0
        rr, jj = np.flatnonzero(ok), j[ok]
        after_state = state.with_answer(rr, jj, *answers.at(rows[rr], jj))
        after, _ = est.estimate(ex_ante[rows], after_state, context[rows])
        diff = before[rr, jj] - after[rr, jj]
        np.add.at(sq[d], jj, diff ** 2)
        np.add.at(count[d], jj, 1)
    pooled = sq.sum(1, keepdims=True) / np.maximum(count.sum(1, keepdims=True), 1)
    return np.sqrt((sq + SIGMA_SHRINK * pooled) / (count + SIGMA_SHRINK))


def _exact_size(rng: np.random.Generator, run: np.ndarray, d: int) -> np.ndarray:
    """Trim or fill each mask to exactly d rungs (the σ of depth d)."""
    out = np.zeros_like(run)
    for i, r in enumerate(run):
        have = list(np.flatnonzero(r))
        rest = [j for j in rng.permutation(run.shape[1]) if j not in have]
        out[i, (have + rest)[:d]] = True
    return out


@dataclass(frozen=True)
class Outcome:
    quality: np.ndarray  # [n] the returned answer's recorded score
    paid: np.ndarray  # [n] recorded cost of every rung run
    calls: np.ndarray  # [n] rungs run
    answered_by: np.ndarray  # [n] the rung whose answer was returned
    confidence: np.ndarray  # [n] its post-hoc estimate: the planner's judgement of the answer it returns


def simulate(est: QualityEstimator, ex_ante: np.ndarray, cost: np.ndarray, answers: Answers, scores: np.ndarray,
             costs: np.ndarray, lam: float, allowed: np.ndarray | None = None, bound: np.ndarray | None = None,
             budget: float | None = None, depth: int | None = None, top_k: int = TOP_K,
             context: np.ndarray | None = None) -> Outcome:
    """Cascade routing over n prompts at one λ: cost is the planner's (predicted, in λ's units); costs the
    recorded USD paid; with bound and budget every chosen set fits the budget by its upper-bound prices."""
    n, R = ex_ante.shape
    depth = depth or est.depth
    state = AnswerState.empty(n, R)
    paid = np.zeros(n)
    committed = np.zeros(n)
    active = np.ones(n, bool)
    for _ in range(depth):
        if not active.any():
            break
        remaining = None if budget is None else budget - committed
        step = decide(est, ex_ante, state, cost, lam, context, allowed, bound, remaining, depth, top_k)
        go = active & (step.next_rung >= 0)
        rows, rungs = np.flatnonzero(go), step.next_rung[go]
        state = state.with_answer(rows, rungs, *answers.at(rows, rungs))
        paid[rows] += costs[rows, rungs]
        if bound is not None:
            committed[rows] += bound[rows, rungs]
        active = go
    q, _ = est.estimate(ex_ante, state, context)
    pick = choose_answer(q, state.run)
    got = np.where(pick >= 0, scores[np.arange(n), np.maximum(pick, 0)], 0.0)
    confidence = np.where(pick >= 0, q[np.arange(n), np.maximum(pick, 0)], 0.0)
    return Outcome(got, paid, state.run.sum(-1).astype(float), pick, confidence)


# (σ multiplier, τ multiplier) tried on the held-out half of the out-of-fold training prompts: how much an
# unrun rung's own answer and a second opinion are worth is where the normal model is least exact
# depth 1 with no spread is one-call routing on the calibrated estimates: the special case the planner
# falls back to when no cascade beats it on train
SPREAD_GRID = ((0.0, 0.0, 1), (0.0, 0.5, 4), (0.0, 1.0, 4), (0.1, 1.0, 4), (0.25, 1.0, 4), (0.25, 2.0, 4), (0.5, 1.0, 4),
               (1.0, 1.0, 4), (0.25, 1.0, 3), (1.0, 1.0, 3))


@dataclass
class Fitted:
    estimator: QualityEstimator | None
    use: bool  # the artefact plans with it: it beat one-call routing on the held-out training half
    note: str
    dev: dict


def _curve(est, ex_ante, cost, answers, scores, costs, lambdas, context, judged: list | None = None
           ) -> list[tuple[float, float, float]]:
    """(mean cost, mean quality, calls) per λ; judged (optional) collects (mean cost, AUROC of the returned
    answers' post-hoc estimates against their recorded correctness, mean calls) per λ."""
    from sklearn.metrics import roc_auc_score

    points = []
    for lam in lambdas:
        o = simulate(est, ex_ante, cost, answers, scores, costs, lam, context=context)
        points.append((float(o.paid.mean()), float(o.quality.mean()), float(o.calls.mean())))
        right = o.quality >= 0.5
        if judged is not None and 0 < right.sum() < len(right):
            judged.append((float(o.paid.mean()), float(roc_auc_score(right, o.confidence)), float(o.calls.mean())))
    return points


def fit_for_benchmark(ex_ante: np.ndarray, cost: np.ndarray, answers: Answers, scores: np.ndarray,
                      costs: np.ndarray, context: np.ndarray, rungs: list[str], families: list[str], lambdas,
                      dev_lambdas, aiq, route_curve, seed: int = 0, progress=lambda message: None,
                      force: bool = False) -> Fitted:
    """Out-of-fold training rows only (ex_ante, cost in λ's units, …: [n, R], complete rows). One half fits
    the estimators, the other picks the spread multipliers and decides whether cascade routing beats
    one-call routing (route_curve(rows) → its points); then the estimators are refitted on every row."""
    n = len(ex_ante)
    if n < 40:
        return Fitted(None, False, f"{n} complete training prompts with answers: too few to fit post-hoc estimates", {})
    order = np.random.default_rng(seed).permutation(n)
    fit_rows, pick_rows = np.sort(order[::2]), np.sort(order[1::2])
    progress(f"cascade routing: fitting post-hoc estimators on {len(fit_rows)} out-of-fold training prompts")
    est = fit_estimator(ex_ante[fit_rows], cost[fit_rows], answers.rows(fit_rows), scores[fit_rows], rungs,
                        families, lambdas, context[fit_rows], seed)
    lo, hi = float(costs[pick_rows].mean(0).min()), float(costs[pick_rows].mean(0).max())
    sigma, tau = est.sigma.copy(), est.tau.copy()
    tried = {}
    for gs, gt, depth in SPREAD_GRID:
        est.sigma, est.tau, est.depth = sigma * gs, tau * gt, depth
        pts = _curve(est, ex_ante[pick_rows], cost[pick_rows], answers.rows(pick_rows), scores[pick_rows],
                     costs[pick_rows], dev_lambdas, context[pick_rows])
        tried[(gs, gt, depth)] = aiq([(c, q) for c, q, _ in pts], lo, hi)
    options = {k: v for k, v in tried.items() if k[2] > 1 or not force}  # force: a multi-rung cascade
    (gs, gt, depth), best = max(options.items(), key=lambda kv: kv[1])
    routed = aiq([(c, q) for c, q, _ in route_curve(pick_rows)], lo, hi)
    use = force or (best > routed and depth > 1)
    progress(f"cascade routing: refitting on all {n} out-of-fold training prompts (σ×{gs:g}, τ×{gt:g})")
    final = fit_estimator(ex_ante, cost, answers, scores, rungs, families, lambdas, context, seed)
    final.sigma, final.tau, final.depth = final.sigma * gs, final.tau * gt, depth
    chosen = "one call (routing on the calibrated estimates)" if depth == 1 else f"σ×{gs:g}, τ×{gt:g}, depth {depth}"
    note = (f"post-hoc estimators fitted on {n} out-of-fold training prompts; {chosen} picked on the held-out half "
            f"(AIQ {best:.4f}; the routing model's one-call routes there {routed:.4f}): the router artefact "
            f"{'plans with cascade routing' if use else 'keeps one-call routing'}{' (as asked)' if force else ''}")
    return Fitted(final, use, note, {"spread_aiq": {f"sigma×{a:g},tau×{b:g},depth {d}": v
                                                    for (a, b, d), v in tried.items()},
                                     "routing_aiq": routed, "sigma_mult": gs, "tau_mult": gt, "depth": depth})


def test_curves(est: QualityEstimator, ex_ante, cost, answers, scores, costs, lambdas, context
                ) -> dict[str, list[tuple[float, float, float]]]:
    """cascade-routing (post-hoc) and its ablation with ex-ante estimates only, on the test prompts."""
    judged: list = []
    out = {"cascade-routing": _curve(est, ex_ante, cost, answers, scores, costs, lambdas, context, judged),
           "judged": judged}
    ex = QualityEstimator(est.rungs, est.families, est.run_coef, est.run_bias, est.unrun_coef, est.unrun_bias,
                          est.sigma, est.tau, posthoc=False, scale=est.scale, depth=max(est.depth, 2))
    out["cascade-routing/ex-ante"] = _curve(ex, ex_ante, cost, answers, scores, costs, lambdas, context)
    return out

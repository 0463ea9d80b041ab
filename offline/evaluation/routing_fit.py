"""Fitting the routing model (escalon.router.routing_model) on observed (query, rung, score, cost) rows.

`fit_routing_model` tunes the familiarity thresholds on out-of-fold predictions of the training rows (never
the test split): the thresholds whose routes give the best AIQ on one half of them are kept only when they
beat always-learned on the other half by more than a standard error; then every part is refitted on all
training rows with the thresholds kept (docs/routing.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from escalon.offline.evaluation.metrics import aiq
from escalon.router.neighbours import knn_success
from escalon.router.predictor import SuccessPredictor
from escalon.router.routing_model import (
    MIN_MARGIN,
    Familiarity,
    Prediction,
    RoutingModel,
    familiar_mask,
    route_outcomes,
    route_points,
)
from escalon.router.taxonomy import Profile, Taxonomy, complexity_labels

MIN_TOP_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 2.0)  # 0: always taxonomy; 2: always learned
MIN_COSINE_GRID = (0.0, 0.6, 0.75, 0.85)
MEMORY_LIMIT = 20_000  # training prompts kept for the neighbour estimate (and the artefact's size)
TAXONOMY_WEIGHT_GRID = (1.0, 0.75, 0.5, 0.25)


def _fit_parts(x: np.ndarray, chars: np.ndarray, tasks: np.ndarray, scores: np.ndarray, costs: np.ndarray,
               rungs: list[str], families: list[str], encoder: str, seed: int = 0) -> RoutingModel:
    cx, _ = complexity_labels(scores)
    taxonomy = Taxonomy.fit(x, tasks, cx, seed=seed)
    task_names = taxonomy.task.classes
    task_idx = np.array([task_names.index(str(t)) for t in tasks])
    profile = Profile.fit(rungs, task_names, task_idx, cx, scores, costs)
    p_task, p_cx = taxonomy.task_proba(x), taxonomy.complexity_proba(x)
    phi = profile.phi(p_task, p_cx)
    h = np.hstack([x, p_task, p_cx]).astype(np.float32)
    # the neighbour memory: every training prompt up to MEMORY_LIMIT (a seeded sample beyond), leave-one-out
    memory = np.arange(len(x))
    if len(x) > MEMORY_LIMIT:
        memory = np.sort(np.random.default_rng(seed).choice(len(x), MEMORY_LIMIT, replace=False))
    own = np.full(len(x), -1)
    own[memory] = np.arange(len(memory))
    neighbours = knn_success(x[memory], scores[memory], x, exclude=own)
    predictor = SuccessPredictor.fit(h, phi, scores, rungs, seed=seed, neighbours=neighbours)
    intercept, slope = fit_cost_model(chars, costs)
    observed = ~np.isnan(scores)
    scale = _cost_scale(scores, costs)
    return RoutingModel(encoder, list(rungs), list(families), task_names, taxonomy, profile, predictor, intercept,
                        slope, scale, x[memory].astype(np.float16), scores[memory].astype(np.float16),
                        mean_success=float(np.nanmean(scores)) if observed.any() else 0.5)


def _cost_scale(scores: np.ndarray, costs: np.ndarray) -> float:
    """The dearest rung's mean cost: λ = 1 trades all of one answer's quality for that much money."""
    observed = ~np.isnan(scores) & ~np.isnan(costs)
    if not observed.any():
        return 1.0
    scale = float(np.nanmax(np.nanmean(np.where(observed, costs, np.nan), axis=0)))
    return scale if scale > 0 else 1.0


def fit_cost_model(chars: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares cost = a + b·chars per rung on its observed rows; a rung without rows: the others' mean."""
    R = costs.shape[1]
    a, b, ok = np.zeros(R), np.zeros(R), np.zeros(R, dtype=bool)
    for r in range(R):
        seen = ~np.isnan(costs[:, r])
        if seen.sum() >= 2 and np.ptp(chars[seen]) > 0:
            b[r], a[r] = np.polyfit(chars[seen].astype(float), costs[seen, r], 1)
            ok[r] = True
        elif seen.any():
            a[r], ok[r] = costs[seen, r].mean(), True
    if ok.any() and not ok.all():
        a[~ok], b[~ok] = a[ok].mean(), b[ok].mean()
    return a, b


def folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


BOOTSTRAP = 200  # resamples behind the one-standard-error rule of the familiarity tuning


def tune_familiarity(pred: Prediction, scores: np.ndarray, costs: np.ndarray, cost_scale: float,
                     seed: int = 0) -> Familiarity:
    """The thresholds whose hybrid routes give the best AIQ on out-of-fold predictions of the training rows,
    kept only when the taxonomy path earns it: the thresholds are picked on one half of those rows and must
    beat always-learned on the other half by more than one standard error (a paired bootstrap). Otherwise the
    hybrid is always-learned: the best of many candidates on the tuning rows beats it by luck alone, and a
    gain inside the noise is no evidence that the taxonomy path helps."""
    lo = float(np.nanmin(np.nanmean(costs, axis=0)))
    hi = float(np.nanmax(np.nanmean(costs, axis=0)))
    halves = folds(len(scores), 2, seed)
    candidates = []  # (Familiarity, success [n, R], label)
    for min_top in MIN_TOP_GRID:
        for min_cos in MIN_COSINE_GRID if 0 < min_top <= 1 else (0.0,):
            for alpha in TAXONOMY_WEIGHT_GRID if min_top <= 1 else (1.0,):
                f = Familiarity(min_top, MIN_MARGIN if 0 < min_top <= 1 else 0.0, min_cos, alpha)
                familiar = familiar_mask(pred.p_task, pred.nearest, pred.profiled, f) if min_top > 0 else \
                    np.ones(len(scores), bool)
                success = np.where(familiar[:, None], alpha * pred.phi + (1 - alpha) * pred.learned, pred.learned)
                label = "always taxonomy" if min_top == 0 and alpha == 1 else "always learned" if min_top > 1 else \
                    f"{familiar.mean():.0%} familiar, α={alpha:g}"
                candidates.append((f, success, label))

    def value(success, rows):
        return aiq(route_points(success[rows], pred.cost[rows], scores[rows], costs[rows], cost_scale), lo, hi)

    every = np.arange(len(scores))
    named = {label: value(success, every) for _, success, label in candidates
             if label in ("always taxonomy", "always learned")}
    summary = (f"on all of them: always taxonomy {named.get('always taxonomy', float('nan')):.4f}, always learned "
               f"{named.get('always learned', float('nan')):.4f}")
    head = f"tuned on out-of-fold predictions of {len(scores)} training prompts"
    learned = next(c for c in candidates if c[0].min_top > 1)
    best = max(candidates, key=lambda c: value(c[1], halves[0]))  # first of equals: the grid's order
    if best[0].min_top > 1:
        best[0].why = f"{head}: always learned is best on the tuning half ({summary})"
        return best[0]
    gain, se = paired_aiq_gain(best[1][halves[1]], learned[1][halves[1]], pred.cost[halves[1]], scores[halves[1]],
                               costs[halves[1]], cost_scale, lo, hi, seed)
    picked = f"{best[2]}, AIQ {value(best[1], every):.4f}"
    if gain <= se:
        learned[0].why = (f"{head}: always learned — the best hybrid on the tuning half ({picked}) beats it on "
                          f"the other half by {gain:+.4f}, within one standard error ({se:.4f}); {summary}")
        return learned[0]
    best[0].why = f"{head}: {picked}; +{gain:.4f} over always learned on the other half (SE {se:.4f}); {summary}"
    return best[0]


def paired_aiq_gain(success_a: np.ndarray, success_b: np.ndarray, cost_pred: np.ndarray, scores: np.ndarray,
                    costs: np.ndarray, cost_scale: float, lo: float, hi: float, seed: int = 0) -> tuple[float, float]:
    """AIQ(a) − AIQ(b) on these rows, and its standard error over paired bootstrap resamples of the rows."""
    ca, qa = route_outcomes(success_a, cost_pred, scores, costs, cost_scale)
    cb, qb = route_outcomes(success_b, cost_pred, scores, costs, cost_scale)

    def value(c, q, rows):
        return aiq(list(zip(c[:, rows].mean(axis=1), q[:, rows].mean(axis=1))), lo, hi)

    every = np.arange(len(scores))
    gain = value(ca, qa, every) - value(cb, qb, every)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(BOOTSTRAP):
        rows = rng.integers(0, len(scores), len(scores))
        draws.append(value(ca, qa, rows) - value(cb, qb, rows))
    return float(gain), float(np.std(draws))


@dataclass
class DevSlice:
    """Out-of-fold predictions of training rows: each row predicted by a model fitted without it."""

    rows: np.ndarray
    prediction: Prediction | None


def fit_routing_model(x: np.ndarray, chars: np.ndarray, tasks: np.ndarray, scores: np.ndarray, costs: np.ndarray,
                      rungs: list[str], families: list[str], encoder: str, seed: int = 0, k_folds: int = 3,
                      progress=lambda message: None) -> tuple[RoutingModel, DevSlice]:
    familiarity = Familiarity()
    dev = DevSlice(np.zeros(0, dtype=int), None)
    if len(x) >= 20 * k_folds:
        parts, rows = [], []
        for i, held in enumerate(folds(len(x), k_folds, seed)):
            progress(f"fold {i + 1}/{k_folds}: fitting taxonomy, profile and predictor without {len(held)} "
                     "training prompts")
            keep = np.setdiff1d(np.arange(len(x)), held)
            part = _fit_parts(x[keep], chars[keep], tasks[keep], scores[keep], costs[keep], rungs, families,
                              encoder, seed)
            parts.append(part.predict(x[held], chars[held]))
            rows.append(held)
        order = np.concatenate(rows)
        pred = Prediction.concat(parts)
        inverse = np.argsort(order)
        pred = pred.rows(inverse)
        progress("tuning the hybrid's familiarity thresholds on the out-of-fold predictions")
        scale = _cost_scale(scores, costs)
        familiarity = tune_familiarity(pred, scores, costs, scale, seed)
        pred.familiar = familiar_mask(pred.p_task, pred.nearest, pred.profiled, familiarity)
        pred.taxonomy_weight = familiarity.taxonomy_weight
        dev = DevSlice(np.arange(len(x)), pred)
    progress("refitting taxonomy, profile and predictor on all training prompts")
    model = _fit_parts(x, chars, tasks, scores, costs, rungs, families, encoder, seed)
    model.familiarity = familiarity
    return model, dev

"""Everything the taxonomy, learned and hybrid routers know, fitted on observed (query, rung, score, cost) rows.

    taxonomy   p(task | x), p(complexity | x), domain (escalon.router.taxonomy)
    profile    Φ(i, x): rung i's accuracy in x's cell, with back-off
    predictor  ŝ_i(x): the learned per-rung success probability over [Enc(x); taxonomy probabilities]
    cost       ĉ_i(x) = a_i + b_i · len(x): the recorded cost explained by the prompt's length (what a router
               knows before calling); rungs without rows get the mean of the others
    memory     the training embeddings and scores: the nearest-example test of familiarity, and the nearest
               prompts' success estimate N_i(x) the predictor builds on (leave-one-out on train)
    familiar   top task probability ≥ min_top, margin over the second ≥ min_margin, nearest training example
               cosine ≥ min_cosine, cell profiled (ALGORITHMS.md §1). Familiar queries take Φ, others ŝ.

`fit_routing_model` tunes the familiarity thresholds on out-of-fold predictions of the training rows (never
the test split): the thresholds whose routes give the best AIQ on one half of them are kept only when they
beat always-learned on the other half by more than a standard error; then every part is refitted on all
training rows with the thresholds kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from escalon.router.neighbours import knn_success
from escalon.router.predictor import SuccessPredictor
from escalon.router.taxonomy import Profile, Taxonomy, complexity_labels

# λ grid of the selection rule argmax_i ŝ_i − λ·ĉ_i / cost_scale: 0 = best predicted quality, large = cheapest.
LAMBDAS = (0.0, *np.round(np.geomspace(1e-3, 30.0, 36), 6).tolist(), 1e3)
MIN_TOP_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 2.0)  # 0: always taxonomy; 2: always learned
MIN_COSINE_GRID = (0.0, 0.6, 0.75, 0.85)
MIN_MARGIN = 0.2
MEMORY_LIMIT = 20_000  # training prompts kept for the neighbour estimate (and the artefact's size)
TAXONOMY_WEIGHT_GRID = (1.0, 0.75, 0.5, 0.25)


@dataclass
class Familiarity:
    min_top: float = 0.7
    min_margin: float = MIN_MARGIN
    min_cosine: float = 0.75
    taxonomy_weight: float = 1.0  # a familiar query's estimate: α·Φ + (1 − α)·ŝ (1 = the taxonomy's alone)
    why: str = "ALGORITHMS.md defaults"


@dataclass
class Prediction:
    """The router's view of n queries: [n, ...] arrays, columns in RoutingModel.rungs order."""

    p_task: np.ndarray
    p_cx: np.ndarray
    phi: np.ndarray  # taxonomy estimate of success
    learned: np.ndarray  # predictor estimate of success
    nearest: np.ndarray  # cosine of the nearest training example
    familiar: np.ndarray  # bool
    cost: np.ndarray  # predicted cost in USD
    profiled: np.ndarray  # bool: the argmax cell holds enough rows
    taxonomy_weight: float = 1.0

    ARRAYS = ("p_task", "p_cx", "phi", "learned", "nearest", "familiar", "cost", "profiled")

    @classmethod
    def concat(cls, parts: list[Prediction]) -> Prediction:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.ARRAYS))

    def rows(self, index: np.ndarray) -> Prediction:
        return Prediction(*(getattr(self, f)[index] for f in self.ARRAYS), self.taxonomy_weight)

    @property
    def hybrid(self) -> np.ndarray:
        a = self.taxonomy_weight
        return np.where(self.familiar[:, None], a * self.phi + (1 - a) * self.learned, self.learned)

    def why(self, row: int, model: RoutingModel) -> str:
        top = np.sort(self.p_task[row])[::-1]
        second = top[1] if len(top) > 1 else 0.0
        f = model.familiarity
        facts = (f"top task p={top[0]:.2f} (≥{f.min_top:g}), margin {top[0] - second:.2f} (≥{f.min_margin:g}), "
                 f"nearest example cos {self.nearest[row]:.2f} (≥{f.min_cosine:g})")
        return ("familiar: " if self.familiar[row] else "ambiguous: ") + facts


@dataclass
class RoutingModel:
    encoder: str
    rungs: list[str]
    families: list[str]
    tasks: list[str]
    taxonomy: Taxonomy
    profile: Profile
    predictor: SuccessPredictor
    cost_intercept: np.ndarray  # [R]
    cost_slope: np.ndarray  # [R] USD per prompt character
    cost_scale: float  # USD; λ is per this much money
    memory: np.ndarray  # [m, d] float16 unit rows
    memory_scores: np.ndarray  # [m, R] float16, NaN where unobserved
    familiarity: Familiarity = field(default_factory=Familiarity)
    mean_success: float = 0.5
    models: list[str] = field(default_factory=list)  # the benchmark's model ids, column for column (rung aliases)

    def features(self, x: np.ndarray, p_task: np.ndarray, p_cx: np.ndarray) -> np.ndarray:
        return np.hstack([x, p_task, p_cx]).astype(np.float32)

    def predict_cost(self, prompt_chars: np.ndarray) -> np.ndarray:
        return np.maximum(self.cost_intercept[None, :] + np.outer(prompt_chars, self.cost_slope), 0.0)

    @cached_property
    def memory32(self) -> np.ndarray:
        return self.memory.astype(np.float32)

    @cached_property
    def memory_scores64(self) -> np.ndarray:
        return self.memory_scores.astype(float)

    def nearest(self, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
        if not len(self.memory):
            return np.zeros(len(x))
        memory = self.memory32
        return np.concatenate([(x[i:i + chunk] @ memory.T).max(axis=1) for i in range(0, len(x), chunk)]) \
            if len(x) else np.zeros(0)

    def predict(self, x: np.ndarray, prompt_chars: np.ndarray, nearest: np.ndarray | None = None) -> Prediction:
        p_task = self.taxonomy.task_proba(x)
        p_cx = self.taxonomy.complexity_proba(x)
        phi = self.profile.phi(p_task, p_cx)
        neighbours = knn_success(self.memory32, self.memory_scores64, x) \
            if len(self.memory) else None
        learned = self.predictor.predict(self.features(x, p_task, p_cx), phi, neighbours)
        near = self.nearest(x) if nearest is None else nearest
        profiled = self.profile.profiled(p_task.argmax(axis=1), p_cx.argmax(axis=1))
        familiar = familiar_mask(p_task, near, profiled, self.familiarity)
        return Prediction(p_task, p_cx, phi, learned, near, familiar, self.predict_cost(prompt_chars), profiled,
                          self.familiarity.taxonomy_weight)


def familiar_mask(p_task: np.ndarray, near: np.ndarray, profiled: np.ndarray, f: Familiarity) -> np.ndarray:
    ordered = np.sort(p_task, axis=1)[:, ::-1]
    top = ordered[:, 0]
    second = ordered[:, 1] if ordered.shape[1] > 1 else np.zeros(len(top))
    return (top >= f.min_top) & (top - second >= f.min_margin) & (near >= f.min_cosine) & profiled


def choose(success: np.ndarray, cost: np.ndarray, lam: float, cost_scale: float,
           allowed: np.ndarray | None = None) -> np.ndarray:
    """The selection rule: per query the rung maximising ŝ − λ·ĉ/scale (ties go to the cheaper rung)."""
    utility = success - lam * cost / cost_scale - 1e-9 * cost / cost_scale
    if allowed is not None:
        utility = np.where(allowed, utility, -np.inf)
    return utility.argmax(axis=1)


def route_outcomes(success: np.ndarray, cost_pred: np.ndarray, scores: np.ndarray, costs: np.ndarray,
                   cost_scale: float, lambdas=LAMBDAS) -> tuple[np.ndarray, np.ndarray]:
    """Per λ and query, the recorded (cost, score) of the rung one-call routing picks: [L, n] each; only
    observed (query, rung) pairs are chosen."""
    observed = ~np.isnan(scores)
    rows = np.arange(len(scores))
    picks = [choose(success, cost_pred, lam, cost_scale, observed) for lam in lambdas]
    return np.array([costs[rows, p] for p in picks]), np.array([scores[rows, p] for p in picks])


def route_points(success: np.ndarray, cost_pred: np.ndarray, scores: np.ndarray, costs: np.ndarray,
                 cost_scale: float, lambdas=LAMBDAS) -> list[tuple[float, float]]:
    """(mean cost, mean score) of one-call routing at every λ."""
    c, q = route_outcomes(success, cost_pred, scores, costs, cost_scale, lambdas)
    return [(float(a), float(b)) for a, b in zip(c.mean(axis=1), q.mean(axis=1))]


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
    from escalon.router.metrics import aiq

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
    from escalon.router.metrics import aiq

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

"""Everything the taxonomy, learned and hybrid routers know, fitted on observed (query, rung, score, cost) rows.

    taxonomy   p(task | x), p(complexity | x), domain (escalon.router.taxonomy)
    profile    Φ(i, x): rung i's accuracy in x's cell, with back-off
    predictor  ŝ_i(x): the learned per-rung success probability over [Enc(x); taxonomy probabilities]
    cost       ĉ_i(x) = a_i + b_i · len(x): the recorded cost explained by the prompt's length (what a router
               knows before calling); rungs without rows get the mean of the others
    memory     the training embeddings and scores: the nearest-example test of familiarity, and the nearest
               prompts' success estimate N_i(x) the predictor builds on (leave-one-out on train)
    familiar   top task probability ≥ min_top, margin over the second ≥ min_margin, nearest training example
               cosine ≥ min_cosine, cell profiled (docs/routing.md, Hybrid). Familiar queries take Φ, others ŝ.

This module is what the router loads and runs; fitting it is offline (escalon.offline.evaluation.routing_fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from escalon.router.neighbours import knn_success
from escalon.router.predictor import SuccessPredictor
from escalon.router.taxonomy import Profile, Taxonomy

# λ grid of the selection rule argmax_i ŝ_i − λ·ĉ_i / cost_scale: 0 = best predicted quality, large = cheapest.
LAMBDAS = (0.0, *np.round(np.geomspace(1e-3, 30.0, 36), 6).tolist(), 1e3)
MIN_MARGIN = 0.2


@dataclass
class Familiarity:
    min_top: float = 0.7
    min_margin: float = MIN_MARGIN
    min_cosine: float = 0.75
    taxonomy_weight: float = 1.0  # a familiar query's estimate: α·Φ + (1 − α)·ŝ (1 = the taxonomy's alone)
    why: str = "the defaults (docs/routing.md, Hybrid)"


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

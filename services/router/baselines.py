"""Baselines every router is measured against (ALGORITHMS.md §6), on a benchmark's score and cost matrices.

- single models, the oracle (best recorded score per query, from the cheapest model that has it) and the
  random mix (queries sent at random to two neighbouring models of the single-model frontier);
- RouteLLM-style kNN router: ŝ_i(x) = similarity-weighted mean score of rung i over the k nearest training
  prompts (cosine on the same embeddings), chosen with the same ŝ − λ·ĉ rule as Escalon's routers;
- FrugalGPT-style cascade: a learned scorer g(query, answer) → P(correct) (logistic regression on the query
  and answer embeddings and the answer's length), trained on training answers; rungs in the order of the
  training cost–accuracy frontier, each answer accepted when g ≥ τ, the last rung's answer otherwise.
"""

from __future__ import annotations

import numpy as np

from escalon.router.metrics import frontier
from escalon.router.neighbours import KNN_K, knn_success  # noqa: F401 - the RouteLLM-style baseline

Point = tuple[float, float]
FRUGAL_THRESHOLDS = tuple(np.round(np.linspace(0.05, 0.95, 19), 2).tolist()) + (1.01,)


def single_points(scores: np.ndarray, costs: np.ndarray) -> list[Point]:
    return [(float(costs[:, j].mean()), float(scores[:, j].mean())) for j in range(scores.shape[1])]


def oracle_point(scores: np.ndarray, costs: np.ndarray) -> Point:
    top = scores.max(axis=1, keepdims=True)
    cost = np.where(scores >= top - 1e-12, costs, np.inf).min(axis=1)
    return float(cost.mean()), float(top.mean())


def random_mix_points(scores: np.ndarray, costs: np.ndarray, shares=np.linspace(0, 1, 11),
                      seed: int = 0) -> list[Point]:
    """Along the single-model frontier, each query goes to the dearer of two neighbours with probability p."""
    singles = single_points(scores, costs)
    ladder = [singles.index(p) for p in frontier(singles)]
    rng = np.random.default_rng(seed)
    draw = rng.random(len(scores))
    rows = np.arange(len(scores))
    points = [singles[ladder[0]]]
    for a, b in zip(ladder, ladder[1:]):
        for p in shares[1:]:
            pick = np.where(draw < p, b, a)
            points.append((float(costs[rows, pick].mean()), float(scores[rows, pick].mean())))
    return points


class AnswerScorer:
    """FrugalGPT's scorer: P(correct | query, answer) from [query embedding, answer embedding, log length]."""

    def __init__(self, clf) -> None:
        self.clf = clf

    @staticmethod
    def features(x_query: np.ndarray, x_answer: np.ndarray, answer_chars: np.ndarray, rung: np.ndarray,
                 n_rungs: int) -> np.ndarray:
        onehot = np.eye(n_rungs)[rung]
        return np.hstack([x_query, x_answer, x_query * x_answer, np.log1p(answer_chars)[:, None] / 8, onehot])

    @classmethod
    def fit(cls, feats: np.ndarray, correct: np.ndarray) -> AnswerScorer | None:
        from sklearn.linear_model import LogisticRegression

        if len(feats) < 20 or correct.all() or not correct.any():
            return None
        return cls(LogisticRegression(C=1.0, max_iter=2000).fit(feats, correct))

    def score(self, feats: np.ndarray) -> np.ndarray:
        return self.clf.predict_proba(feats)[:, 1]


def frugal_points(ladder: list[int], g: np.ndarray, answered: np.ndarray, scores: np.ndarray,
                  costs: np.ndarray, thresholds=FRUGAL_THRESHOLDS,
                  prior: np.ndarray | None = None) -> list[tuple[float, float, float]]:
    """g [n, R] scorer outputs (NaN where no answer). A query without any recorded answer cannot be scored:
    its rung is the first on the ladder whose training accuracy (`prior`) reaches τ, else the last — the
    cascade with a constant scorer; on queries with answers, a rung without one is skipped unpaid."""
    points = []
    n = len(scores)
    for tau in thresholds:
        got, paid, calls = np.zeros(n), np.zeros(n), np.ones(n)
        for q in range(n):
            chosen, spent = None, 0.0
            tried = [r for r in ladder if answered[q, r]]
            for k, r in enumerate(tried):
                spent += costs[q, r]
                chosen, calls[q] = r, k + 1
                if g[q, r] >= tau:
                    break
            if chosen is None:
                ok = [r for r in ladder if prior is not None and prior[r] >= tau]
                chosen = ok[0] if ok else ladder[-1]
                spent = costs[q, chosen]
            got[q], paid[q] = scores[q, chosen], spent
        points.append((float(paid.mean()), float(got.mean()), float(calls.mean())))
    return points

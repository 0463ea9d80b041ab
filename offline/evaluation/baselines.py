"""Baselines every router is measured against (docs/routing.md, Metrics and baselines), on a benchmark's score and cost matrices.

- single models, the oracle (best recorded score per query, from the cheapest model that has it) and the
  random mix (queries sent at random to two neighbouring models of the single-model frontier);
- RouteLLM-style kNN router: ŝ_i(x) = similarity-weighted mean score of rung i over the k nearest training
  prompts (cosine on the same embeddings), chosen with the same ŝ − λ·ĉ rule as Escalon's routers;
- RouteLLM-style matrix factorisation (Ong et al. 2024), for R models rather than a pair:
  ŝ_m(x) = σ(⟨v_m, W x⟩ + b_m), fitted on the observed training cells (MatrixFactorisation), same rule;
- FrugalGPT-style cascade: a learned scorer g(query, answer) → P(correct) (logistic regression on the query
  and answer embeddings and the answer's length), trained on training answers; rungs in the order of the
  training cost–accuracy frontier, each answer accepted when g ≥ τ, the last rung's answer otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from escalon.offline.evaluation.metrics import frontier
from escalon.router.neighbours import KNN_K, knn_success  # noqa: F401 - the RouteLLM-style baseline

Point = tuple[float, float]
FRUGAL_THRESHOLDS = tuple(np.round(np.linspace(0.05, 0.95, 19), 2).tolist()) + (1.01,)
# MF defaults: picked on a quarter of the training prompts held out (dcrouter, routellm-evals; never test).
# Coupled L2 ≥ 3e-3 shrinks W and V to nothing; more epochs overfit (held-out BCE rises).
MF_DIM = 64
MF_EPOCHS = 10
MF_L2 = 1e-3
MF_LEARNING_RATE = 3e-3
MF_BATCH = 128  # prompts per step, every observed model cell of each
MF_PRIOR_COUNT = 2.0  # pseudo-observations of the overall mean in each model's starting bias


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


@dataclass
class MatrixFactorisation:
    """RouteLLM's matrix-factorisation router, generalised from a pair of models to R of them: a model
    embedding v_m ∈ R^k, a projection W: R^d → R^k of the query embedding and a per-model bias, so that
    P(model m succeeds on x) = σ(⟨v_m, W x⟩ + b_m). RouteLLM scores a pair through w^T (v_m ⊙ W x); with one
    model per term w folds into v_m. Inference is numpy (two matrix products)."""

    projection: np.ndarray  # W [k, d]
    model_vectors: np.ndarray  # V [R, k]
    bias: np.ndarray  # b [R]

    @classmethod
    def fit(cls, x: np.ndarray, scores: np.ndarray, k: int = MF_DIM, epochs: int = MF_EPOCHS, l2: float = MF_L2,
            learning_rate: float = MF_LEARNING_RATE, batch: int = MF_BATCH, seed: int = 0) -> MatrixFactorisation:
        """x [n, d] training embeddings, scores [n, R] in [0, 1] with NaN where unobserved (soft labels).

        Binary cross-entropy over observed cells only, Adam with L2 weight decay on W and V (not on b), a
        fixed number of epochs over shuffled prompts. b starts at the logit of the model's mean training
        score (shrunk by MF_PRIOR_COUNT pseudo-rows towards the mean of all observed scores), so a model
        with few rows keeps v_m ≈ 0 and predicts about that; one with none predicts the overall mean.
        Deterministic for a seed (one torch thread while fitting)."""
        import torch

        observed = ~np.isnan(scores)
        rows = np.flatnonzero(observed.any(axis=1))
        overall = float(np.nanmean(scores)) if observed.any() else 0.5
        counts = observed.sum(axis=0)
        # pseudo-counts at the overall mean: three lucky rows do not make a model look certain
        mean = (np.where(observed, scores, 0.0).sum(axis=0) + MF_PRIOR_COUNT * overall) / (counts + MF_PRIOR_COUNT)
        mean = np.clip(mean, 1e-3, 1 - 1e-3)
        d, n_models = x.shape[1], scores.shape[1]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the harness shares its cores; one thread also keeps the sums in one order
        try:
            gen = torch.Generator().manual_seed(seed)
            W = (torch.randn(k, d, generator=gen, dtype=torch.float64) / np.sqrt(k)).requires_grad_()
            V = (0.1 * torch.randn(n_models, k, generator=gen, dtype=torch.float64)).requires_grad_()
            b = torch.tensor(np.log(mean / (1 - mean)), dtype=torch.float64).requires_grad_()
            opt = torch.optim.Adam([{"params": [W, V], "weight_decay": l2}, {"params": [b], "weight_decay": 0.0}],
                                   lr=learning_rate)
            X = torch.tensor(x[rows], dtype=torch.float64)
            M = torch.tensor(observed[rows], dtype=torch.float64)
            Y = torch.tensor(np.where(observed[rows], scores[rows], 0.0), dtype=torch.float64)
            shuffle = np.random.default_rng(seed)
            for _ in range(epochs if len(rows) else 0):
                perm = torch.from_numpy(shuffle.permutation(len(rows)))
                for start in range(0, len(rows), batch):
                    idx = perm[start:start + batch]
                    logits = (X[idx] @ W.T) @ V.T + b
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, Y[idx], weight=M[idx],
                                                                                reduction="sum")
                    opt.zero_grad()
                    (loss / M[idx].sum()).backward()
                    opt.step()
            return cls(W.detach().numpy().copy(), V.detach().numpy().copy(), b.detach().numpy().copy())
        finally:
            torch.set_num_threads(threads)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """ŝ [n, R]."""
        z = (x @ self.projection.T) @ self.model_vectors.T + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


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

"""Success estimates from the nearest training prompts: RouteLLM-style kNN on the query embeddings.

ŝ_i(x) = (Σ_k w_k · score_i(x_k) + prior_i) / (Σ_k w_k + 1) over the k most cosine-similar training prompts,
w_k = exp((cos_k − cos_max) / T) (a softmax over similarities), prior_i the rung's mean score (one pseudo-count
so a rung rarely observed near x stays near its mean). Used as the RouteLLM baseline and, computed
leave-one-out on train, as an input of the learned success predictor.
"""

from __future__ import annotations

import numpy as np

KNN_K = 25
KNN_TEMPERATURE = 0.05


def knn_success(x_train: np.ndarray, scores_train: np.ndarray, x: np.ndarray, k: int = KNN_K,
                temperature: float = KNN_TEMPERATURE, chunk: int = 1024,
                exclude: np.ndarray | None = None) -> np.ndarray:
    """ŝ [n, R]; `exclude[i]`: the row of x_train that is query i itself (−1: none), never its own neighbour."""
    observed = ~np.isnan(scores_train)
    filled = np.where(observed, scores_train, 0.0)
    prior = np.where(observed.any(0), filled.sum(0) / np.maximum(observed.sum(0), 1), 0.5)
    out = np.zeros((len(x), scores_train.shape[1]))
    k = max(1, min(k, len(x_train)))
    for start in range(0, len(x), chunk):
        sims = x[start:start + chunk] @ x_train.T
        if exclude is not None:
            own = exclude[start:start + chunk]
            rows = np.flatnonzero(own >= 0)
            sims[rows, own[rows]] = -np.inf
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, nearest, axis=1)
        w = np.exp((s - s.max(axis=1, keepdims=True)) / temperature)
        num = np.einsum("nk,nkr->nr", w, filled[nearest])
        den = np.einsum("nk,nkr->nr", w, observed[nearest].astype(float))
        out[start:start + chunk] = np.where(den > 0, (num + prior) / (den + 1.0), prior)  # one pseudo-count
    return out

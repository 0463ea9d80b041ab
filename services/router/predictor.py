"""The learned router's success predictor (docs/routing.md, Learned predictor): one head per rung over a shared representation.

    h = [Enc(x); p(task | x); p(complexity | x)]
    logit ŝ_i(x) = a_i · logit Φ_i(x) + c_i · logit N_i(x) + b_i + w_iᵀ h

Φ_i is the taxonomy profile's expected accuracy (the prior); N_i, when given, the nearest training prompts'
estimate (escalon.router.neighbours, leave-one-out on train); the head learns how far this query departs from
them. Trained on observed (query, rung, score) rows only — a masked soft cross-entropy (L-BFGS in scipy), so fractional
scores (F1, coverage) count as they are and missing pairs count not at all. L2 on w_i is the only shrinkage:
a rung with few observed rows (one added later) keeps w_i ≈ 0 and falls back to its profile, and a rung
with no rows at all has no head and is predicted by Φ alone. Inference is numpy (a matrix product).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-3


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


@dataclass
class SuccessPredictor:
    rungs: list[str]  # rungs with a head, in column order
    weight: np.ndarray  # [d, R]
    prior_scale: np.ndarray  # [R]  (a_i)
    bias: np.ndarray  # [R]
    rows: np.ndarray  # [R] observed training rows per rung
    neighbour_scale: np.ndarray | None = None  # [R] (c_i); None: fitted without neighbour estimates

    @classmethod
    def fit(cls, h: np.ndarray, prior: np.ndarray, scores: np.ndarray, rungs: list[str], l2: float = 1e-2,
            max_iter: int = 300, seed: int = 0, neighbours: np.ndarray | None = None) -> SuccessPredictor:
        """h [n, d], prior Φ [n, R], scores [n, R] with NaN where unobserved, neighbours N [n, R] or None."""
        from scipy.optimize import minimize

        observed = ~np.isnan(scores)
        keep = observed.any(axis=0)
        rung_idx = np.flatnonzero(keep)
        n, d = h.shape
        R = len(rung_idx)
        weight = np.zeros((d, len(rungs)))
        scale = np.ones(len(rungs))
        bias = np.zeros(len(rungs))
        nscale = np.zeros(len(rungs))
        if R and n:
            H = h.astype(np.float64)
            O = logit(prior[:, rung_idx])
            N = logit(neighbours[:, rung_idx]) if neighbours is not None else np.zeros((n, R))
            M = observed[:, rung_idx].astype(np.float64)
            Y = np.where(observed, scores, 0.0)[:, rung_idx]
            total = max(M.sum(), 1.0)
            shapes = [(d, R), (R,), (R,), (R,)]  # W, a, c, b
            sizes = [int(np.prod(sh)) for sh in shapes]

            def unpack(theta):
                parts, at = [], 0
                for sh, size in zip(shapes, sizes):
                    parts.append(theta[at:at + size].reshape(sh))
                    at += size
                return parts

            def loss_and_grad(theta):
                W, a, c, b = unpack(theta)
                z = H @ W + a * O + c * N + b
                # masked binary cross-entropy with logits, written stably
                loss = ((np.maximum(z, 0) - z * Y + np.log1p(np.exp(-np.abs(z)))) * M).sum() / total
                loss += l2 * (W ** 2).sum() / R
                dz = (sigmoid(z) - Y) * M / total
                grads = [H.T @ dz + 2 * l2 * W / R, (dz * O).sum(0),
                         (dz * N).sum(0) if neighbours is not None else np.zeros(R), dz.sum(0)]
                return loss, np.concatenate([g.ravel() for g in grads])

            theta0 = np.concatenate([np.zeros(d * R), np.ones(R), np.zeros(R), np.zeros(R)])
            result = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                              options={"maxiter": max_iter})
            W, a, c, b = unpack(result.x)
            weight[:, rung_idx] = W
            scale[rung_idx] = a
            bias[rung_idx] = b
            nscale[rung_idx] = c
        return cls(list(rungs), weight, scale, bias, observed.sum(axis=0),
                   nscale if neighbours is not None else None)

    def predict(self, h: np.ndarray, prior: np.ndarray, neighbours: np.ndarray | None = None) -> np.ndarray:
        """ŝ [n, R] for this predictor's rungs; a rung never observed returns its prior unchanged."""
        z = h @ self.weight + self.prior_scale * logit(prior) + self.bias
        if self.neighbour_scale is not None and neighbours is not None:
            z = z + self.neighbour_scale * logit(neighbours)
        out = sigmoid(z)
        unseen = self.rows == 0
        if unseen.any():
            out[:, unseen] = prior[:, unseen]
        return out

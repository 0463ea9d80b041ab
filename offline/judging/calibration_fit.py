"""Fitting the judges' calibration (escalon.judge.calibration holds the artefact format and applies it).

Weights: ω = softmax(θ), fitted jointly with a Platt map by minimising the log-loss on the fit rows (L-BFGS,
a small L2 on θ); weights under 1% are dropped. With fewer than 10 rows of the rarer outcome per judge (a
small live set, a model that is almost always wrong) the weights stay uniform and only the map is fitted.
Map: isotonic or Platt, whichever has the lower 5-fold cross-validated Brier score on the fit rows ("auto"),
or the one asked for. Test rows never reach `fit_calibration`: callers pass fit (train) rows only. The method
and its sources: docs/judges.md.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from escalon.judge.calibration import ANY, Calibration, Group, Map, Row, TokenDeferral, weighted_mean
from escalon.offline.judging.metrics import auroc

MAX_SUBSET_JUDGES = 8  # 2^8 − 1 subsets per group at most
EVENTS_PER_WEIGHT = 10  # the usual rule for logistic fits: ≥ 10 rows of the rarer outcome per fitted weight


def fit_calibration(rows: Sequence[Row], judges: Sequence[str], *, min_rows: int = 50, method: str = "auto",
                    weighting: str = "logloss", deferral: TokenDeferral | None = None,
                    source: Mapping[str, Any] | None = None, levels: Iterable[str] = ("task_rung", "task", "rung", "all"),
                    ) -> Calibration:
    """Fit weights and maps for every group with at least `min_rows` rows. Pass fit (train) rows only."""
    judges = tuple(judges)
    buckets: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        for level in levels:
            task = row.task if level in ("task_rung", "task") else ANY
            rung = row.rung if level in ("task_rung", "rung") else ANY
            if (level in ("task_rung", "task") and not row.task) or (level in ("task_rung", "rung") and not row.rung):
                continue
            buckets.setdefault((task, rung), []).append(row)
    groups = []
    fitted: dict[tuple[int, ...], Group | None] = {}  # groups with the same rows (one task: task|* = *|*) fit once
    for (task, rung), members in sorted(buckets.items()):
        if len(members) < min_rows:
            continue
        same = tuple(sorted(id(r) for r in members))
        if same not in fitted:
            fitted[same] = fit_group(members, judges, task=task, rung=rung, min_rows=min_rows, method=method,
                                     weighting=weighting)
        if fitted[same] is not None:
            groups.append(dataclasses.replace(fitted[same], task=task, rung=rung))
    return Calibration(judges, tuple(groups), deferral, dict(source or {}))


def fit_group(rows: Sequence[Row], judges: Sequence[str], *, task: str = ANY, rung: str = ANY, min_rows: int = 50,
              method: str = "auto", weighting: str = "logloss") -> Group | None:
    present = [j for j in judges if sum(j in r.scores for r in rows) >= min_rows]
    if not present:
        return None
    y = np.array([r.correct for r in rows], dtype=float)
    weights = fit_weights(rows, present, weighting=weighting)
    active = [j for j in present if weights.get(j, 0.0) > 0]
    if len(active) > MAX_SUBSET_JUDGES:  # keep the strongest; the others get weight 0
        active = sorted(active, key=lambda j: -weights[j])[:MAX_SUBSET_JUDGES]
        weights = {j: (w if j in active else 0.0) for j, w in weights.items()}
    maps: dict[frozenset[str], Map] = {}
    for size in range(1, len(active) + 1):
        for subset in itertools.combinations(active, size):
            keep = [i for i, r in enumerate(rows) if all(j in r.scores for j in subset)]
            if len(keep) < min_rows:
                continue
            raw = np.array([weighted_mean({j: rows[i].scores[j] for j in subset}, weights) for i in keep])
            maps[frozenset(subset)] = fit_map(raw, y[keep], method=method, judges=frozenset(subset))
    if not maps:
        return None
    return Group(task, rung, len(rows), float(y.mean()), weights, maps)


def fit_weights(rows: Sequence[Row], judges: Sequence[str], *, weighting: str = "logloss",
                l2: float = 1e-3) -> dict[str, float]:
    """ω on the simplex. "logloss": jointly with a Platt map, minimising log-loss; "uniform": equal weights;
    "quality": ∝ max(AUROC − 0.5, 0) of each judge alone (its quality on development data, docs/judges.md)."""
    judges = list(judges)
    k = len(judges)
    if k == 1 or weighting == "uniform":
        return {j: 1.0 / k for j in judges}
    events = min(sum(r.correct >= 0.5 for r in rows), sum(r.correct < 0.5 for r in rows))
    if events < EVENTS_PER_WEIGHT * k:  # too few of the rarer outcome to fit k weights: they would fit noise
        return {j: 1.0 / k for j in judges}
    s = np.array([[r.scores.get(j, 0.0) for j in judges] for r in rows], dtype=float)
    m = np.array([[j in r.scores for j in judges] for r in rows], dtype=float)
    y = np.array([r.correct for r in rows], dtype=float)
    usable = m.sum(axis=1) > 0
    s, m, y = s[usable], m[usable], y[usable]
    if weighting == "quality":
        quality = []
        for c in range(k):
            ran = m[:, c] > 0
            value = auroc(s[ran, c], y[ran]) if ran.any() else None
            quality.append(max((value or 0.5) - 0.5, 0.0))
        total = sum(quality)
        return {j: (q / total if total else 1.0 / k) for j, q in zip(judges, quality)}
    from scipy.optimize import minimize

    n = y.size

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        theta, a, b = params[:k], params[k], params[k + 1]
        w = np.exp(theta - theta.max())
        w /= w.sum()
        denom = np.maximum(m @ w, 1e-12)
        raw = (s * m) @ w / denom
        p = np.clip(_sigmoid_np(a * raw + b), 1e-9, 1 - 1e-9)
        value = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)) + l2 * np.sum(theta ** 2))
        err = (p - y) / n  # d loss / d (a·raw + b)
        g = ((err * a / denom)[:, None] * m * (s - raw[:, None])).sum(axis=0)  # d loss / d w
        grad_theta = w * (g - w @ g) + 2 * l2 * theta
        return value, np.concatenate([grad_theta, [float(err @ raw), float(err.sum())]])

    start = np.concatenate([np.zeros(k), [4.0, -2.0]])
    best = minimize(loss, start, method="L-BFGS-B", jac=True)
    theta = best.x[:k]
    w = np.exp(theta - theta.max())
    w /= w.sum()
    w = np.where(w < 0.01, 0.0, w)
    w /= w.sum()
    return {j: float(v) for j, v in zip(judges, w)}


def fit_map(raw: np.ndarray, y: np.ndarray, *, method: str = "auto", judges: frozenset[str] = frozenset(),
            folds: int = 5) -> Map:
    raw, y = np.asarray(raw, dtype=float), np.asarray(y, dtype=float)
    if method == "auto":
        scores = {m: _cv_brier(raw, y, m, folds) for m in ("platt", "isotonic")}
        method = min(scores, key=lambda m: (scores[m], m != "platt"))
        fitted = _fit_one(raw, y, method, judges)
        return Map(fitted.judges, fitted.rows, fitted.method, fitted.x, fitted.y, fitted.a, fitted.b, scores[method])
    return _fit_one(raw, y, method, judges)


def _fit_one(raw: np.ndarray, y: np.ndarray, method: str, judges: frozenset[str]) -> Map:
    if len(set(y.tolist())) < 2:  # one class only: the base rate is all there is to say
        rate = float(y.mean()) if y.size else 0.5
        return Map(judges, int(y.size), "isotonic", (0.0, 1.0), (rate, rate))
    if method == "isotonic":
        x, fitted = _isotonic(raw, y)
        return Map(judges, int(y.size), "isotonic", tuple(map(float, x)), tuple(map(float, fitted)))
    if method == "platt":
        a, b = _platt(raw, y)
        return Map(judges, int(y.size), "platt", a=a, b=b)
    raise ValueError(f"unknown calibration method {method!r}: isotonic, platt or auto")


def _isotonic(raw: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) regression by pool-adjacent-violators; ties in raw are pooled first. Returns
    the knots to interpolate between: the two ends of every constant block."""
    xs, inverse = np.unique(raw, return_inverse=True)
    weight = np.bincount(inverse).astype(float)
    mean = np.bincount(inverse, weights=y) / weight
    values, weights, starts = [], [], []
    for i in range(xs.size):
        values.append(mean[i])
        weights.append(weight[i])
        starts.append(i)
        while len(values) > 1 and values[-2] >= values[-1]:
            w = weights[-2] + weights[-1]
            values[-2] = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            weights[-2] = w
            values.pop()
            weights.pop()
            starts.pop()
    knots_x, knots_y = [], []
    ends = starts[1:] + [xs.size]
    for value, start, end in zip(values, starts, ends):
        knots_x.append(xs[start])
        knots_y.append(value)
        if end - 1 > start:
            knots_x.append(xs[end - 1])
            knots_y.append(value)
    return np.array(knots_x), np.clip(np.array(knots_y), 0.0, 1.0)


def _platt(raw: np.ndarray, y: np.ndarray, ridge: float = 1e-4) -> tuple[float, float]:
    """Logistic regression of y on raw (two parameters) by Newton's method, with a tiny ridge so separable
    data stays finite."""
    x = np.column_stack([raw, np.ones_like(raw)])
    w = np.zeros(2)
    for _ in range(50):
        p = _sigmoid_np(x @ w)
        grad = x.T @ (p - y) / y.size + ridge * np.array([w[0], 0.0])
        hess = (x * (p * (1 - p))[:, None]).T @ x / y.size + ridge * np.eye(2)
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return float(w[0]), float(w[1])


def _cv_brier(raw: np.ndarray, y: np.ndarray, method: str, folds: int) -> float:
    n = y.size
    order = np.random.default_rng(0).permutation(n)
    errors = np.zeros(n)
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        if train.size == 0 or test.size == 0:
            continue
        fitted = _fit_one(raw[train], y[train], method, frozenset())
        errors[test] = (np.array([fitted(v) for v in raw[test]]) - y[test]) ** 2
    return float(errors.mean())


def fit_deferral(features: Sequence[Mapping[str, float]], correct: Sequence[float], names: Sequence[str],
                 c: float = 1.0) -> TokenDeferral | None:
    """Logistic regression on token-level features; None when the rows cannot support one."""
    keep = [i for i, f in enumerate(features) if all(n in f for n in names)]
    y = np.array([correct[i] for i in keep], dtype=float)
    if len(keep) < 10 or len(set(y.tolist())) < 2:
        return None
    from sklearn.linear_model import LogisticRegression

    x = np.array([[features[i][n] for n in names] for i in keep], dtype=float)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / scale, y)
    return TokenDeferral(tuple(names), tuple(map(float, mean)), tuple(map(float, scale)),
                         tuple(map(float, model.coef_[0])), float(model.intercept_[0]), len(keep))


def _sigmoid_np(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

"""Calibration metrics, computed the way the papers do (docs/judges.md, Measuring the judges).

- Brier score: mean((confidence − correct)²); lower is better, 0.25 is a constant 0.5.
- ECE: 10 equal-width bins over [0, 1] (the last bin includes 1.0); Σ_b (n_b / N)·|accuracy_b − mean confidence_b|.
- AUROC: the probability that a random correct answer gets a higher confidence than a random wrong one, ties
  counting half (Mann–Whitney); undefined (None) when only one class is present.

Labels are 0/1. Scores of benchmarks that grade partially (token F1) are turned into labels by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

N_BINS = 10


@dataclass(frozen=True)
class Bin:
    lower: float
    upper: float
    count: int
    confidence: float | None  # mean confidence in the bin
    accuracy: float | None  # share correct in the bin


@dataclass(frozen=True)
class CalibrationSummary:
    n: int
    accuracy: float | None  # base rate of correct answers
    mean_confidence: float | None
    brier: float | None
    ece: float | None
    auroc: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _arrays(confidence: Sequence[float], correct: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=float)
    y = np.asarray(correct, dtype=float)
    if conf.shape != y.shape:
        raise ValueError(f"{conf.size} confidences but {y.size} labels")
    if conf.size and (np.any(conf < 0) or np.any(conf > 1) or not np.all(np.isfinite(conf))):
        raise ValueError("confidences must be finite and lie in [0, 1]")
    return conf, y


def brier(confidence: Sequence[float], correct: Sequence[float]) -> float | None:
    conf, y = _arrays(confidence, correct)
    return float(np.mean((conf - y) ** 2)) if conf.size else None


def bin_index(conf: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width bins [0, .1), [.1, .2), …, [.9, 1.0]."""
    return np.minimum((conf * n_bins).astype(int), n_bins - 1)


def reliability_bins(confidence: Sequence[float], correct: Sequence[float], n_bins: int = N_BINS) -> list[Bin]:
    conf, y = _arrays(confidence, correct)
    idx = bin_index(conf, n_bins)
    bins = []
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        bins.append(Bin(b / n_bins, (b + 1) / n_bins, count,
                        float(conf[mask].mean()) if count else None, float(y[mask].mean()) if count else None))
    return bins


def ece(confidence: Sequence[float], correct: Sequence[float], n_bins: int = N_BINS) -> float | None:
    conf, y = _arrays(confidence, correct)
    if not conf.size:
        return None
    total = 0.0
    for b in reliability_bins(conf, y, n_bins):
        if b.count:
            total += b.count / conf.size * abs(b.accuracy - b.confidence)
    return float(total)


def auroc(confidence: Sequence[float], correct: Sequence[float]) -> float | None:
    conf, y = _arrays(confidence, correct)
    positives = int((y == 1).sum())
    negatives = int((y == 0).sum())
    if positives == 0 or negatives == 0:
        return None
    # Mann–Whitney U through average ranks (ties share their mean rank, i.e. count half).
    order = np.argsort(conf, kind="mergesort")
    ranks = np.empty(conf.size, dtype=float)
    sorted_conf = conf[order]
    i = 0
    while i < conf.size:
        j = i
        while j + 1 < conf.size and sorted_conf[j + 1] == sorted_conf[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = ranks[y == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def summarise(confidence: Sequence[float], correct: Sequence[float]) -> CalibrationSummary:
    conf, y = _arrays(confidence, correct)
    if not conf.size:
        return CalibrationSummary(0, None, None, None, None, None)
    return CalibrationSummary(
        n=int(conf.size),
        accuracy=float(y.mean()),
        mean_confidence=float(conf.mean()),
        brier=brier(conf, y),
        ece=ece(conf, y),
        auroc=auroc(conf, y),
    )


def log_loss(confidence: Sequence[float], correct: Sequence[float], eps: float = 1e-6) -> float:
    conf, y = _arrays(confidence, correct)
    p = np.clip(conf, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def bootstrap_interval(metric, confidence: Sequence[float], correct: Sequence[float],
                       baseline: Sequence[float] | None = None, *, rounds: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of metric(confidence) — or, with a baseline scored on the same answers,
    of metric(confidence) − metric(baseline) (paired: both resampled together)."""
    conf, y = _arrays(confidence, correct)
    base = np.asarray(baseline, dtype=float) if baseline is not None else None
    if conf.size < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, conf.size, conf.size)
        value = metric(conf[idx], y[idx])
        if value is None:
            continue
        if base is not None:
            other = metric(base[idx], y[idx])
            if other is None:
                continue
            value -= other
        values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def ece_noise_floor(confidence: Sequence[float], *, draws: int = 300, seed: int = 0) -> float | None:
    """The median ECE a *perfectly calibrated* predictor with these confidences would show on this many answers
    (labels drawn as Bernoulli(confidence)): binning noise. An ECE at or under it is as calibrated as the sample
    can show; a predictor with few distinct values (a coarse judge) has a lower floor than a graded one."""
    conf, _ = _arrays(confidence, confidence)
    if not conf.size:
        return None
    rng = np.random.default_rng(seed)
    return float(np.median([ece(conf, rng.binomial(1, conf)) for _ in range(draws)]))

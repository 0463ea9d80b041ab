"""Judges from the answering model's own token probabilities (docs/judges.md, Token judges). They need what only some rungs
return: per-token log-probs (local models, OpenAI-compatible endpoints that give logprobs) and, for
self-certainty, statistics of the whole next-token distribution (local models only). Without them the judge
is skipped and says which input was missing.

- token_confidence: exp(mean token log-prob) — the geometric-mean probability of the tokens the model chose.
- self_certainty: SC = mean over positions of KL(U ‖ p(·|x, y<i)) (nats), from the serving API's
  per-position `self_certainty`; reported as σ((SC − 10)/2), a monotone squash into [0, 1] whose centre and
  scale come from SmolLM2-135M's range (8–14 nats). Only the calibration map gives it a probability meaning.
- deferral: the learned token-level deferral judge — a logistic regression on (sum, mean, α-quantiles for
  α ∈ {0, .01, .05, .1, .2, .5}, length) of the token log-probs, fitted from logged outcomes and carried in
  the calibration artefact; skipped when no fitted model is loaded.

Each is the mean over the candidates that gave the majority answer. `borda_vote` is self-certainty's selection
rule: rank the N samples by SC; the sample ranked r casts (N − r + 1)^0.5 votes for its answer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOKEN_JUDGES = ("token_confidence", "self_certainty", "deferral")
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5)
FEATURES = ("lp_sum", "lp_mean", *(f"lp_q{q:g}" for q in QUANTILES), "tokens")
SC_CENTRE, SC_SCALE = 10.0, 2.0


@dataclass(frozen=True)
class TokenStat:
    logprob: float
    entropy: float | None = None
    self_certainty: float | None = None


def features(stats: Sequence[TokenStat]) -> dict[str, float] | None:
    if not stats:
        return None
    lp = np.array([t.logprob for t in stats], dtype=float)
    out = {"lp_sum": float(lp.sum()), "lp_mean": float(lp.mean()), "tokens": float(lp.size)}
    for q in QUANTILES:
        out[f"lp_q{q:g}"] = float(np.quantile(lp, q))
    return out


def mean_self_certainty(stats: Sequence[TokenStat]) -> float | None:
    values = [t.self_certainty for t in stats]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values) / len(values))


def token_confidence(stats: Sequence[TokenStat]) -> float | None:
    return math.exp(sum(t.logprob for t in stats) / len(stats)) if stats else None


def squash_self_certainty(sc: float) -> float:
    return 1.0 / (1.0 + math.exp(-(sc - SC_CENTRE) / SC_SCALE))


def borda_vote(answers: Sequence[str | None], certainty: Sequence[float]) -> str | None:
    """Self-certainty's Borda vote over samples: the answer with the most (N − r + 1)^0.5 votes."""
    ranked = sorted((i for i, a in enumerate(answers) if a is not None), key=lambda i: -certainty[i])
    votes: dict[str, float] = defaultdict(float)
    n = len(ranked)
    for r, i in enumerate(ranked, start=1):
        votes[answers[i]] += (n - r + 1) ** 0.5
    return max(votes, key=lambda a: (votes[a], -ranked.index(next(i for i in ranked if answers[i] == a)))) if votes else None

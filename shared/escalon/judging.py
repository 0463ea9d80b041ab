"""What a judge says about an answer, in the one shape the router, the judge and the offline tools share.

    Candidate   one answer text and where it came from (rung, family), as the judges see it
    JudgeResult one judge's score for a rung's samples, or why it was skipped
    Judgement   the panel's verdict as the cascade uses it: confidence, parsed answer, the judges' scores
    JudgeWeights fitted aggregation of the judges' scores into one confidence (a logistic model)

The judge service fills these from its panel (escalon.judge.panel); the router's gRPC client fills them from
the JudgeService response; the evaluation harness from the panel in process. The wire form is
escalon.gen.judge.v1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: judges whose score, once run, leans "correct" at this value or above (the agreeing-share rule)
AGREES_AT = 0.5


@dataclass(frozen=True)
class Candidate:
    """One answer text with where it came from, as the judges see it."""

    text: str
    rung: str = ""
    family: str = ""
    logprobs: tuple = ()  # escalon.judge.tokens.TokenStat per generated token, where the rung returned them
    truncated: bool = False  # cut at the rung's token limit (finish_reason "length"): its parsed answer is invalid


@dataclass(frozen=True)
class JudgeResult:
    judge: str
    score: float
    skipped: bool = False
    reason: str = ""


def agreeing_share(scores: Iterable[JudgeResult]) -> float:
    """Share of the judges that ran which lean 'correct' (score ≥ 0.5); the cascade asks for ≥ 2/3."""
    ran = [s for s in scores if not s.skipped]
    return sum(s.score >= AGREES_AT for s in ran) / len(ran) if ran else 0.0


@dataclass(frozen=True)
class Judgement:
    confidence: float
    answer: str  # parsed answer ("" when none parsed)
    answer_text: str
    scores: tuple[JudgeResult, ...]

    @property
    def agreeing_share(self) -> float:
        return agreeing_share(self.scores)


@dataclass(frozen=True)
class JudgeWeights:
    """Fitted aggregation: judge -> (weight of its score when it ran, contribution when it was skipped)."""

    bias: float
    weights: Mapping[str, tuple[float, float]]
    version: str = ""

    def confidence(self, results: Iterable[JudgeResult]) -> float:
        z = self.bias
        for r in results:
            if r.judge in self.weights:
                ran_weight, skipped_weight = self.weights[r.judge]
                z += skipped_weight if r.skipped else ran_weight * r.score
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))

    def to_dict(self) -> dict:
        return {"bias": self.bias, "version": self.version,
                "judges": {k: {"weight": w, "skipped_weight": v} for k, (w, v) in self.weights.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> JudgeWeights:
        return cls(float(data["bias"]), {k: (float(v["weight"]), float(v["skipped_weight"]))
                                         for k, v in data.get("judges", {}).items()}, str(data.get("version", "")))

"""The cascade's Scorer without the network: the judge service's own panel, called in-process.

The evaluation harness sweeps thousands of queries through the same Cascade the Router API runs; this
adapter (and the serving backends, which the harness calls directly) keeps the decisions identical
while skipping the gRPC hops.
"""

from __future__ import annotations

from escalon.judge.panel import DEFAULT_PANEL, judge_answers
from escalon.judging import Candidate, Judgement, JudgeWeights


class PanelScorer:
    def __init__(self, judges: tuple[str, ...] = DEFAULT_PANEL) -> None:
        self.judges = judges

    async def score(self, prompt: str, candidates: list[Candidate], references: list[Candidate],
                    answer_type: int, predicted_success: float | None = None,
                    weights: JudgeWeights | None = None) -> Judgement:
        verdict = judge_answers(
            prompt,
            candidates,
            references=references,
            answer_type=answer_type,
            judges=self.judges,
            predicted_success=predicted_success,
            weights=weights,
        )
        return Judgement(
            confidence=verdict.confidence,
            answer=verdict.answer or "",
            answer_text=verdict.answer_text,
            scores=verdict.scores,
        )

"""JudgeService over gRPC: validate, run the panel, report every judge's verdict."""

from __future__ import annotations

import grpc

from escalon.errors import InvalidInput
from escalon.gen.common.v1 import common_pb2
from escalon.gen.judge.v1 import judge_pb2, judge_pb2_grpc
from escalon.judge.panel import Candidate, check_judges, judge_answers
from escalon.judge.settings import JudgeSettings


class JudgeServicer(judge_pb2_grpc.JudgeServiceServicer):
    def __init__(self, settings: JudgeSettings) -> None:
        self.settings = settings

    async def Score(self, request: judge_pb2.ScoreRequest, context: grpc.aio.ServicerContext) -> judge_pb2.ScoreResponse:
        judges = check_judges(list(request.judges))
        candidates = self._candidates(request.candidates, "candidates")
        references = self._candidates(request.references, "references")
        if not candidates:
            raise InvalidInput("no candidates to score; send at least one answer", field="candidates")
        if len(candidates) + len(references) > self.settings.max_candidates:
            raise InvalidInput(
                f"{len(candidates) + len(references)} answers exceed the limit of {self.settings.max_candidates}",
                field="candidates",
            )
        if request.answer_type not in common_pb2.AnswerType.values():
            raise InvalidInput(f"unknown answer type {request.answer_type}", field="answer_type")
        verdict = judge_answers(
            request.prompt, candidates, references=references, answer_type=request.answer_type, judges=judges
        )
        return judge_pb2.ScoreResponse(
            confidence=verdict.confidence,
            answer=verdict.answer or "",
            answer_text=verdict.answer_text,
            answer_type=verdict.answer_type,
            scores=[
                common_pb2.JudgeScore(judge=s.judge, score=s.score, skipped=s.skipped, reason=s.reason)
                for s in verdict.scores
            ],
            answers=[judge_pb2.AnswerCount(answer=a, count=c) for a, c in verdict.counts],
            invalid=verdict.invalid,
        )

    def _candidates(self, items, field: str) -> list[Candidate]:
        out = []
        for i, item in enumerate(items):
            if len(item.text) > self.settings.max_answer_chars:
                raise InvalidInput(
                    f"answer of {len(item.text)} characters exceeds {self.settings.max_answer_chars}",
                    field=f"{field}[{i}].text",
                )
            out.append(Candidate(item.text, item.rung, item.family))
        return out


class JudgeService:
    """What the shared bootstrap runs."""

    service_names = (judge_pb2.DESCRIPTOR.services_by_name["JudgeService"].full_name,)

    def __init__(self, settings: JudgeSettings) -> None:
        self.servicer = JudgeServicer(settings)

    def register(self, server: grpc.aio.Server) -> None:
        judge_pb2_grpc.add_JudgeServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        """Nothing to load: the sample-consistency judges are pure functions."""

    async def close(self) -> None:
        pass

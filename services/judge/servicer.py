"""JudgeService over gRPC: validate, run the judges through the engine, report every judge's verdict and how the
confidence was made (raw combination, calibration map, LLM-judge spend)."""

from __future__ import annotations

import math

import grpc

from escalon.errors import ConfigError, InvalidInput, shown
from escalon.gen.common.v1 import common_pb2
from escalon.gen.judge.v1 import judge_pb2, judge_pb2_grpc
from escalon.judge.calibration import Calibration
from escalon.judge.engine import JudgeEngine, known_judges
from escalon.judge.panel import Candidate, JudgeWeights
from escalon.judge.ptrue import ServingJudgeModel
from escalon.sandbox import Sandbox, SandboxLimits
from escalon.judge.settings import JudgeSettings
from escalon.judge.tokens import TokenStat
from escalon.metrics import metrics
from escalon.registry import Catalogue, load_catalogue

MAX_TASK_CHARS = 128


class JudgeServicer(judge_pb2_grpc.JudgeServiceServicer):
    def __init__(self, settings: JudgeSettings, engine: JudgeEngine | None = None,
                 catalogue: Catalogue | None = None) -> None:
        self.settings = settings
        self.engine = engine or JudgeEngine(catalogue=catalogue)
        self.catalogue = catalogue

    async def Score(self, request: judge_pb2.ScoreRequest, context: grpc.aio.ServicerContext) -> judge_pb2.ScoreResponse:
        judges = self.engine.check_judges(list(request.judges))
        if not request.candidates:
            raise InvalidInput("no candidates to score; send at least one answer", field="candidates")
        total = len(request.candidates) + len(request.references)
        if total > self.settings.max_candidates:
            raise InvalidInput(f"{total} answers exceed the limit of {self.settings.max_candidates}", field="candidates")
        if len(request.prompt) > self.settings.max_prompt_chars:
            raise InvalidInput(f"{len(request.prompt)} characters exceed the limit of {self.settings.max_prompt_chars}",
                               field="prompt")
        if request.answer_type not in common_pb2.AnswerType.values():
            raise InvalidInput(f"unknown answer type {request.answer_type}", field="answer_type")
        if len(request.task) > MAX_TASK_CHARS:
            raise InvalidInput(f"a task name of {len(request.task)} characters; at most {MAX_TASK_CHARS}", field="task")
        if not (math.isfinite(request.judge_timeout_s) and 0 <= request.judge_timeout_s <= 300):
            raise InvalidInput(f"must be between 0 (the service's default) and 300 seconds, got {request.judge_timeout_s}",
                               field="judge_timeout_s")
        if request.judge_rung and self.catalogue is not None and request.judge_rung not in self.catalogue.by_name:
            raise InvalidInput(f"unknown rung {shown(request.judge_rung)}; known rungs: {', '.join(self.catalogue.names)}",
                               field="judge_rung")
        candidates = self._candidates(request.candidates, "candidates")
        references = self._candidates(request.references, "references")
        with_logprobs = sum(bool(c.logprobs) for c in request.candidates)
        if 0 < with_logprobs < len(request.candidates):
            raise InvalidInput(
                f"mismatched lengths: {with_logprobs} of {len(request.candidates)} candidates carry token log-probs; "
                "send them for every candidate or for none", field="candidates")
        scored = await self.engine.score(
            request.prompt, candidates, references=references, answer_type=request.answer_type, judges=judges,
            task=request.task, judge_rung=request.judge_rung, judge_timeout_s=request.judge_timeout_s,
            predicted_success=self._predicted_success(request), weights=self._weights(request))
        verdict = scored.verdict
        m = metrics()
        m.judge_confidence.observe(verdict.confidence)
        for s in verdict.scores:
            m.verdicts.labels(s.judge, "skipped" if s.skipped else "scored").inc()
        return judge_pb2.ScoreResponse(
            confidence=verdict.confidence,
            answer=verdict.answer or "",
            answer_text=verdict.answer_text,
            answer_type=verdict.answer_type,
            scores=[common_pb2.JudgeScore(judge=s.judge, score=s.score, skipped=s.skipped, reason=s.reason)
                    for s in verdict.scores],
            answers=[judge_pb2.AnswerCount(answer=a, count=c) for a, c in verdict.counts],
            invalid=verdict.invalid,
            raw_confidence=scored.raw_confidence,
            calibrated=scored.calibrated,
            calibration=scored.calibration,
            judge_usage=common_pb2.Usage(input_tokens=scored.usage.input_tokens,
                                         output_tokens=scored.usage.output_tokens, cost_usd=scored.usage.cost_usd),
        )

    @staticmethod
    def _predicted_success(request: judge_pb2.ScoreRequest) -> float | None:
        if not request.HasField("predicted_success"):
            return None
        value = request.predicted_success
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise InvalidInput(f"a probability in [0, 1], got {value}", field="predicted_success")
        return value

    def _weights(self, request: judge_pb2.ScoreRequest) -> JudgeWeights | None:
        """The router's fitted aggregation; every judge it names must be one the service knows, once."""
        if not request.HasField("weights"):
            return None
        known = set(known_judges())
        if not math.isfinite(request.weights.bias):
            raise InvalidInput(f"must be a finite number, got {request.weights.bias}", field="weights.bias")
        weights: dict[str, tuple[float, float]] = {}
        for i, item in enumerate(request.weights.judges):
            field = f"weights.judges[{i}]"
            if item.judge not in known:
                raise InvalidInput(f"unknown judge {shown(item.judge)}; known judges: {', '.join(sorted(known))}",
                                   field=f"{field}.judge")
            if item.judge in weights:
                raise InvalidInput(f"judge {shown(item.judge)} weighted twice", field=f"{field}.judge")
            for name in ("weight", "skipped_weight"):
                value = getattr(item, name)
                if not math.isfinite(value):
                    raise InvalidInput(f"must be a finite number, got {value}", field=f"{field}.{name}")
            weights[item.judge] = (item.weight, item.skipped_weight)
        return JudgeWeights(request.weights.bias, weights, request.weights.version)

    def _candidates(self, items, field: str) -> list[Candidate]:
        out = []
        for i, item in enumerate(items):
            if len(item.text) > self.settings.max_answer_chars:
                raise InvalidInput(
                    f"answer of {len(item.text)} characters exceeds {self.settings.max_answer_chars}",
                    field=f"{field}[{i}].text",
                )
            if len(item.logprobs) > self.settings.max_logprob_tokens:
                raise InvalidInput(f"{len(item.logprobs)} token log-probs exceed {self.settings.max_logprob_tokens}",
                                   field=f"{field}[{i}].logprobs")
            stats = []
            for k, token in enumerate(item.logprobs):
                if not (math.isfinite(token.logprob) and token.logprob <= 1e-6):
                    raise InvalidInput(f"a log-probability must be finite and ≤ 0, got {token.logprob}",
                                       field=f"{field}[{i}].logprobs[{k}].logprob")
                stats.append(TokenStat(token.logprob,
                                       token.entropy if token.HasField("entropy") else None,
                                       token.self_certainty if token.HasField("self_certainty") else None))
            out.append(Candidate(item.text, item.rung, item.family, tuple(stats), item.truncated))
        return out


class JudgeService:
    """What the shared bootstrap runs."""

    service_names = (judge_pb2.DESCRIPTOR.services_by_name["JudgeService"].full_name,)

    def __init__(self, settings: JudgeSettings) -> None:
        self.settings = settings
        # Configuration problems surface here, before anything listens (a missing or malformed artefact).
        self.catalogue = load_catalogue(settings.catalogue)
        parts = [Calibration.load(path) for path in settings.calibration]
        self.calibration = Calibration.merge(parts) if len(parts) > 1 else (parts[0] if parts else None)
        self.sandbox = Sandbox(SandboxLimits(wall_s=settings.exec_wall_s, cpu_s=settings.exec_cpu_s,
                                             memory_mb=settings.exec_memory_mb), network=settings.exec_network)
        if settings.exec_network == "namespace":
            try:
                self.sandbox.enforced  # probes for a network namespace once, now rather than at the first code answer
            except RuntimeError as exc:
                raise ConfigError(f"ESCALON_JUDGE_EXEC_NETWORK=namespace: {exc}; use auto or hook") from None
        if settings.judge_rung and settings.judge_rung not in self.catalogue.by_name:
            raise ConfigError(f"ESCALON_JUDGE_JUDGE_RUNG: unknown rung {settings.judge_rung!r}; known rungs: "
                              f"{', '.join(self.catalogue.names)}")
        self._channel: grpc.aio.Channel | None = None
        self.engine = JudgeEngine(calibration=self.calibration, catalogue=self.catalogue,
                                  judge_rung=settings.judge_rung, judge_timeout_s=settings.judge_timeout_s,
                                  sandbox=self.sandbox)
        self.servicer = JudgeServicer(settings, self.engine, self.catalogue)

    def register(self, server: grpc.aio.Server) -> None:
        judge_pb2_grpc.add_JudgeServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        """Open the serving channel for LLM judges. Not waited on: the judges that need no model work without
        it, and an LLM judge whose rung cannot answer is skipped with the reason."""
        from escalon.grpc import open_channel

        self._channel = open_channel(self.settings.serving_address)
        self.engine.judge_model = ServingJudgeModel(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

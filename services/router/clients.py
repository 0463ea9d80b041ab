"""The cascade's Generator and Scorer over gRPC: the serving and judge services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.errors import EscalonError, InvalidInput, RungUnavailable
from escalon.gen.judge.v1 import judge_pb2, judge_pb2_grpc
from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc
from escalon.registry import Rung
from escalon.router.cascade import Answer, Generation, Judgement, JudgeVerdict


def _domain_error(exc: grpc.aio.AioRpcError, what: str) -> EscalonError:
    """Carry a downstream status into the router's own errors so the caller sees the right code."""
    message = f"{what}: {exc.details()}"
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(message)
    return RungUnavailable(message)


class ServingClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = serving_pb2_grpc.ModelServingServiceStub(channel)

    async def generate(self, rung: Rung, prompt: str, *, n: int, temperature: float, max_tokens: int,
                       on_text: Callable[[str], Awaitable[None]] | None = None) -> Generation:
        request = serving_pb2.GenerateRequest(rung=rung.name, prompt=prompt, n=n, temperature=temperature,
                                              max_tokens=max_tokens)
        started = time.perf_counter()
        try:
            if on_text is None:
                response = await self.stub.Generate(request, timeout=rung.timeout_s)
            else:
                response = None
                stream = self.stub.GenerateStream(serving_pb2.GenerateStreamRequest(request=request),
                                                  timeout=rung.timeout_s)
                async for piece in stream:
                    if piece.text:
                        await on_text(piece.text)
                    if piece.done:
                        response = piece.response
                if response is None:
                    raise RungUnavailable(f"{rung.name}: the stream ended without a final response")
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, f"rung {rung.name}") from None
        return Generation(
            texts=[s.text for s in response.samples],
            cost_usd=response.usage.cost_usd,
            latency_ms=response.latency_ms or (time.perf_counter() - started) * 1000,
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
        )

    async def list_models(self) -> serving_pb2.ListModelsResponse:
        return await self.stub.ListModels(serving_pb2.ListModelsRequest())


class JudgeClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 30) -> None:
        self.stub = judge_pb2_grpc.JudgeServiceStub(channel)
        self.timeout_s = timeout_s

    async def score(self, prompt: str, candidates: list[Answer], references: list[Answer],
                    answer_type: int) -> Judgement:
        def wire(items: list[Answer]) -> list[judge_pb2.Candidate]:
            return [judge_pb2.Candidate(text=a.text, rung=a.rung, family=a.family) for a in items]

        try:
            response = await self.stub.Score(
                judge_pb2.ScoreRequest(prompt=prompt, candidates=wire(candidates), references=wire(references),
                                       answer_type=answer_type),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, "judge") from None
        return Judgement(
            confidence=response.confidence,
            answer=response.answer,
            answer_text=response.answer_text,
            scores=tuple(JudgeVerdict(s.judge, s.score, s.skipped, s.reason) for s in response.scores),
        )


async def wait_until_serving(channel: grpc.aio.Channel, name: str, timeout_s: float) -> None:
    """Block until a dependency's health check says SERVING (its models loaded), or fail clearly."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as exc:
            last = exc.code().name
        await asyncio.sleep(0.2)
    raise RungUnavailable(f"{name} was not SERVING after {timeout_s:.0f}s (last status {last})")

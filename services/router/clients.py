"""The cascade's Generator and Scorer over gRPC: the serving and judge services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.errors import EscalonError, InvalidInput, NotAnswerable, Overloaded, RungUnavailable
from escalon.grpc import REASON_KEY, overloaded, retry_after_ms, time_left
from escalon.gen.judge.v1 import judge_pb2, judge_pb2_grpc
from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc
from escalon.registry import Rung
from escalon.judging import Candidate, Judgement, JudgeResult, JudgeWeights
from escalon.router.cascade import Generation


def _domain_error(exc: grpc.aio.AioRpcError, what: str) -> EscalonError:
    """Carry a downstream status into the router's own errors so the caller sees the right code."""
    message = f"{what}: {exc.details()}"
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(message)
    if overloaded(exc):  # shed downstream: the caller retries later; not a fault of the rung (no circuit counts it)
        return Overloaded(f"{exc.details()} ({what})", retry_after_ms=retry_after_ms(exc))
    trailing = dict(exc.trailing_metadata() or ())
    if trailing.get(REASON_KEY) == NotAnswerable.reason:  # healthy, but cannot answer this prompt
        return NotAnswerable(message)
    return RungUnavailable(message)


class ServingClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = serving_pb2_grpc.ModelServingServiceStub(channel)

    async def generate(self, rung: Rung, prompt: str, *, n: int, temperature: float, max_tokens: int,
                       on_text: Callable[[str], Awaitable[None]] | None = None, answer_type: int = 0) -> Generation:
        request = serving_pb2.GenerateRequest(rung=rung.name, prompt=prompt, n=n, temperature=temperature,
                                              max_tokens=max_tokens, answer_type=answer_type)
        started = time.perf_counter()
        try:
            if on_text is None:
                responses = [await self.stub.Generate(request, timeout=time_left(rung.timeout_s))]
            else:
                # Serving streams one sample; the other n - 1 come from a Generate call alongside it.
                streamed = serving_pb2.GenerateRequest()
                streamed.CopyFrom(request)
                streamed.n = 1
                calls = [self._stream(rung, streamed, on_text)]
                if n > 1:
                    rest = serving_pb2.GenerateRequest()
                    rest.CopyFrom(request)
                    rest.n = n - 1
                    calls.append(self.stub.Generate(rest, timeout=time_left(rung.timeout_s)))
                responses = list(await asyncio.gather(*calls))
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, f"rung {rung.name}") from None
        return Generation(
            texts=[s.text for r in responses for s in r.samples],
            cost_usd=sum(r.usage.cost_usd for r in responses),
            latency_ms=max(r.latency_ms for r in responses) or (time.perf_counter() - started) * 1000,
            input_tokens=sum(r.usage.input_tokens for r in responses),
            output_tokens=sum(r.usage.output_tokens for r in responses),
            truncated=tuple(s.finish_reason == "length" for r in responses for s in r.samples),
        )

    async def _stream(self, rung: Rung, request: serving_pb2.GenerateRequest,
                      on_text: Callable[[str], Awaitable[None]]) -> serving_pb2.GenerateResponse:
        stream = self.stub.GenerateStream(serving_pb2.GenerateStreamRequest(request=request),
                                          timeout=time_left(rung.timeout_s))
        async for piece in stream:
            if piece.text:
                await on_text(piece.text)
            if piece.done:
                return piece.response
        raise RungUnavailable(f"{rung.name}: the stream ended without a final response")

    async def list_models(self) -> serving_pb2.ListModelsResponse:
        return await self.stub.ListModels(serving_pb2.ListModelsRequest())


class JudgeClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 30) -> None:
        self.stub = judge_pb2_grpc.JudgeServiceStub(channel)
        self.timeout_s = timeout_s

    async def score(self, prompt: str, candidates: list[Candidate], references: list[Candidate],
                    answer_type: int, predicted_success: float | None = None,
                    weights: JudgeWeights | None = None) -> Judgement:
        def wire(items: list[Candidate]) -> list[judge_pb2.Candidate]:
            return [judge_pb2.Candidate(text=a.text, rung=a.rung, family=a.family, truncated=a.truncated)
                    for a in items]

        try:
            request = judge_pb2.ScoreRequest(prompt=prompt, candidates=wire(candidates), references=wire(references),
                                             answer_type=answer_type, predicted_success=predicted_success)
            if weights is not None:
                request.weights.CopyFrom(judge_pb2.JudgeWeights(
                    bias=weights.bias, version=weights.version,
                    judges=[judge_pb2.JudgeWeight(judge=j, weight=w, skipped_weight=v)
                            for j, (w, v) in sorted(weights.weights.items())]))
            response = await self.stub.Score(request, timeout=time_left(self.timeout_s))
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, "judge") from None
        return Judgement(
            confidence=response.confidence,
            answer=response.answer,
            answer_text=response.answer_text,
            scores=tuple(JudgeResult(s.judge, s.score, s.skipped, s.reason) for s in response.scores),
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

"""A call its caller abandons (cancel, or a deadline that passes) stops the real local engine (SmolLM2) within a
few tokens, in-process and through Ray Serve, and leaves the replica free for the next call."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc

pytestmark = pytest.mark.integration
LONG = serving_pb2.GenerateRequest(rung="smollm2-135m", prompt="Write a long story about a dragon and a knight.",
                                   max_tokens=400, temperature=1.0, seed=3)  # ~20 s of decoding if left to run
SHORT = serving_pb2.GenerateRequest(rung="smollm2-135m", prompt="Say hi.", max_tokens=1)


async def _forward_passes_after_cancelling(front, stub) -> tuple[int, int]:
    """Forward passes (one per decoded token) seen while the call ran, and those run after it was cancelled."""
    model = front.server.service.tiers.replicas["smollm2-135m"].backend.model
    passes = [0]
    hook = model.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    try:
        call = stub.Generate(LONG, timeout=60)
        while passes[0] < 5:  # decoding has started
            await asyncio.sleep(0.02)
        call.cancel()
        at_cancel = passes[0]
        await asyncio.sleep(1.0)  # ~20 tokens' time: an engine that kept going would show it
        return at_cancel, passes[0] - at_cancel
    finally:
        hook.remove()


async def test_a_cancelled_call_stops_the_in_process_engine_within_a_few_tokens(inprocess_front):
    async with grpc.aio.insecure_channel(inprocess_front.address) as channel:
        stub = serving_pb2_grpc.ModelServingServiceStub(channel)
        at_cancel, after = await _forward_passes_after_cancelling(inprocess_front, stub)
        assert at_cancel >= 5 and after <= 3, (at_cancel, after)
        started = time.perf_counter()
        await stub.Generate(SHORT, timeout=10)
        assert time.perf_counter() - started < 3  # the engine's lock was free


@pytest.mark.parametrize("how", ["cancel", "deadline"])
async def test_an_abandoned_call_through_ray_frees_the_replica(ray_front, how):
    """The replica runs one decode at a time (max_replicas 1): a short call right after an abandoned long one
    answers at once only when Ray cancelled the long one in the replica."""
    async with grpc.aio.insecure_channel(ray_front.address) as channel:
        stub = serving_pb2_grpc.ModelServingServiceStub(channel)
        await stub.Generate(SHORT, timeout=30)  # warm
        if how == "cancel":
            call = stub.Generate(LONG, timeout=60)
            await asyncio.sleep(1.5)
            call.cancel()
        else:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Generate(LONG, timeout=1.5)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        started = time.perf_counter()
        await stub.Generate(SHORT, timeout=30)
        assert time.perf_counter() - started < 4

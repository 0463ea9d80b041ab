"""Admission control on a real gRPC server (escalon.grpc.Admission): the serving front with max_in_flight=1 in
front of a slow fake rung. The rung is faked (FakeTiers: it sleeps instead of running a model) because what is
tested is the front's bound and its messages, not an engine; the server, the interceptors and the stubs are real.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.backends import GenerateParams, GenerateResult, Sample
from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc
from escalon.grpc import RETRY_AFTER_KEY, running_server
from escalon.metrics import metrics
from escalon.registry import Catalogue, Rung
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings

pytestmark = pytest.mark.integration
SLOW_S = 0.3


class FakeTiers:
    """A rung that answers after SLOW_S; it records the calls it saw end and those that were cancelled."""

    def __init__(self) -> None:
        self.answered = 0
        self.cancelled = 0
        self.timeouts: list[float] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, rung: Rung) -> None: ...

    async def health(self, rung: str) -> tuple[bool, str]:
        return True, "fake"

    async def generate(self, rung: str, params: GenerateParams, timeout: float) -> GenerateResult:
        self.timeouts.append(timeout)
        try:
            await asyncio.sleep(SLOW_S)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.answered += 1
        return GenerateResult(samples=[Sample(text="8", finish_reason="stop", output_tokens=1)], input_tokens=3,
                              output_tokens=1)

    async def stream(self, rung, params, timeout):  # noqa: ANN001 - not used here
        yield await self.generate(rung, params, timeout)


def _rung() -> Rung:
    return Rung(name="slow", family="fake", backend="openai", model="fake", base_url="http://127.0.0.1:1/v1",
                price={"input_per_1m": 1.0, "output_per_1m": 1.0}, timeout_s=30)


@pytest.fixture
async def front():
    tiers = FakeTiers()
    settings = ServingSettings(port=0, max_in_flight=1, serve_promoted=False)
    service = ServingService(settings, Catalogue(rungs=[_rung()]), tiers=tiers)
    async with running_server(service, settings, "escalon-serving") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield serving_pb2_grpc.ModelServingServiceStub(channel), channel, tiers


REQUEST = serving_pb2.GenerateRequest(rung="slow", prompt="What is 3 + 5?")


async def _outcome(stub) -> tuple[str, str, dict]:
    try:
        await stub.Generate(REQUEST, timeout=10)
        return "OK", "", {}
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details(), dict(exc.trailing_metadata() or ())


def _shed_count() -> float:
    labels = {"rpc_service": "escalon.serving.v1.ModelServingService", "rpc_method": "Generate"}
    return metrics().registry.get_sample_value("escalon_rpc_server_shed_total", labels) or 0.0


async def test_a_burst_over_the_bound_is_shed_at_once_with_a_retry_hint_and_the_rest_answers(front):
    stub, channel, tiers = front
    shed_before = _shed_count()
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(_outcome(stub) for _ in range(8)))
    codes = [code for code, _, _ in outcomes]
    assert codes.count("OK") >= 1 and codes.count("RESOURCE_EXHAUSTED") >= 1
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}  # nothing else: no UNAVAILABLE, no INTERNAL, no timeout
    for code, details, trailing in outcomes:
        if code == "RESOURCE_EXHAUSTED":
            assert details.startswith("overloaded: escalon-serving is handling 1 calls")
            assert "ESCALON_SERVING_MAX_IN_FLIGHT=1" in details and "retry in" in details
            assert 100 <= int(trailing[RETRY_AFTER_KEY]) <= 10_000
    # shed at once: the burst took about one slow call, not eight queued ones
    assert time.perf_counter() - started < SLOW_S * 4
    assert _shed_count() - shed_before == codes.count("RESOURCE_EXHAUSTED")
    # no backlog: the call right after the burst is answered, in about one slow call
    started = time.perf_counter()
    assert (await _outcome(stub))[0] == "OK"
    assert time.perf_counter() - started < SLOW_S * 3
    assert tiers.answered == codes.count("OK") + 1


async def test_health_answers_while_the_bound_is_full_and_the_hint_follows_call_durations(front):
    stub, channel, tiers = front
    busy = asyncio.create_task(_outcome(stub))
    await asyncio.sleep(SLOW_S / 3)
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING  # health is never shed
    code, _, trailing = await _outcome(stub)
    assert code == "RESOURCE_EXHAUSTED"
    assert (await busy)[0] == "OK"
    for _ in range(3):  # calls of ~SLOW_S pull the hint (a mean of call durations) up from its floor of 100 ms
        await _outcome(stub)
    busy = asyncio.create_task(_outcome(stub))
    await asyncio.sleep(SLOW_S / 3)
    code, _, later = await _outcome(stub)
    await busy
    assert code == "RESOURCE_EXHAUSTED" and int(later[RETRY_AFTER_KEY]) > int(trailing[RETRY_AFTER_KEY])


async def test_a_cancelled_call_cancels_the_rung_and_frees_its_slot(front):
    stub, channel, tiers = front
    call = stub.Generate(REQUEST, timeout=10)
    await asyncio.sleep(SLOW_S / 3)
    call.cancel()
    for _ in range(50):  # the server sees the cancellation within a few milliseconds
        if tiers.cancelled:
            break
        await asyncio.sleep(0.01)
    assert tiers.cancelled == 1 and tiers.answered == 0
    assert (await _outcome(stub))[0] == "OK"  # the slot was released


async def test_the_callers_deadline_reaches_the_rung(front):
    stub, channel, tiers = front
    await stub.Generate(REQUEST, timeout=2)
    assert 1.0 < tiers.timeouts[-1] <= 2.1  # the remaining deadline, not the rung's 30 s


async def test_a_call_before_serving_is_ready_is_unavailable_starting_and_health_not_serving():
    """While start() loads the rungs (here: waits on an event), calls are refused as 'starting', never INTERNAL."""
    import socket

    class LoadingTiers(FakeTiers):
        def __init__(self) -> None:
            super().__init__()
            self.loaded = asyncio.Event()

        async def start(self) -> None:
            await self.loaded.wait()

    with socket.socket() as probe:  # a known free port: the server is called while running_server is entered
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tiers = LoadingTiers()
    settings = ServingSettings(port=port, max_in_flight=1, serve_promoted=False)
    service = ServingService(settings, Catalogue(rungs=[_rung()]), tiers=tiers)
    entered = asyncio.Event()

    async def serve() -> None:
        async with running_server(service, settings, "escalon-serving"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(serve())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30,
                                                                     wait_for_ready=True)
            code, details, _ = await _outcome(serving_pb2_grpc.ModelServingServiceStub(channel))
            tiers.loaded.set()
            await asyncio.wait_for(entered.wait(), 10)
            assert (await _outcome(serving_pb2_grpc.ModelServingServiceStub(channel)))[0] == "OK"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert code == "UNAVAILABLE" and "escalon-serving is starting" in details and "retry" in details

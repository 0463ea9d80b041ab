"""The shared server bootstrap, over a real aio server on a free port with real stubs."""

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from escalon.errors import InvalidInput
from escalon.gen.judge.v1 import judge_pb2, judge_pb2_grpc
from escalon.grpc import running_server
from escalon.judge.servicer import JudgeService, JudgeServicer
from escalon.judge.settings import JudgeSettings

pytestmark = pytest.mark.integration
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class SlowStartJudge(JudgeService):
    """A real judge whose start() waits for the test, so health can be read while it is not ready."""

    def __init__(self, settings):
        super().__init__(settings)
        self.release = asyncio.Event()
        self.closed = False

    async def start(self):
        await self.release.wait()

    async def close(self):
        self.closed = True


class ExplodingJudge(JudgeServicer):
    async def Score(self, request, context):
        if request.prompt == "bad":
            raise InvalidInput("nope", field="prompt")
        raise ZeroDivisionError("boom")


async def _health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        return (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))).status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_health_is_not_serving_until_start_returns_and_during_stop():
    settings = JudgeSettings(port=_free_port(), grace_seconds=1)
    address = f"127.0.0.1:{settings.port}"
    service = SlowStartJudge(settings)
    ready, stopping = asyncio.Event(), asyncio.Event()

    async def run():
        async with running_server(service, settings, "escalon-judge") as running:
            ready.set()
            await stopping.wait()
            await running.set_serving(False)  # the first step of the stop sequence
            assert await _health(address) == NOT_SERVING

    task = asyncio.create_task(run())
    for _ in range(50):  # the port is bound and answering while start() is still loading
        try:
            before = await _health(address)
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)
    assert before == NOT_SERVING
    service.release.set()
    await asyncio.wait_for(ready.wait(), 5)
    assert await _health(address) == SERVING
    assert await _health(address, "escalon.judge.v1.JudgeService") == SERVING
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert service.closed  # clients are closed after the server stopped


async def test_reflection_lists_the_service_and_health():
    settings = JudgeSettings(port=0)
    async with running_server(JudgeService(settings), settings, "escalon-judge") as running:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name async for r in replies for s in r.list_services_response.service}
    assert {"escalon.judge.v1.JudgeService", "grpc.health.v1.Health"} <= names


async def test_errors_map_to_status_codes_once():
    settings = JudgeSettings(port=0)
    service = JudgeService(settings)
    service.servicer = ExplodingJudge(settings)
    async with running_server(service, settings, "escalon-judge") as running:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = judge_pb2_grpc.JudgeServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.Score(judge_pb2.ScoreRequest(prompt="bad"))
            with pytest.raises(grpc.aio.AioRpcError) as boom:
                await stub.Score(judge_pb2.ScoreRequest(prompt="x"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.value.details() == "prompt: nope"
    assert boom.value.code() == grpc.StatusCode.INTERNAL and "ZeroDivisionError: boom" in boom.value.details()


async def test_in_flight_calls_finish_within_the_grace_period():
    settings = JudgeSettings(port=0, grace_seconds=5)
    service = JudgeService(settings)
    finished = asyncio.Event()

    class SlowJudge(JudgeServicer):
        async def Score(self, request, context):
            await asyncio.sleep(0.5)
            finished.set()
            return judge_pb2.ScoreResponse(confidence=0.25)

    service.servicer = SlowJudge(settings)
    async with running_server(service, settings, "escalon-judge") as running:
        channel = grpc.aio.insecure_channel(running.address)
        call = judge_pb2_grpc.JudgeServiceStub(channel).Score(judge_pb2.ScoreRequest(prompt="x"))
        await asyncio.sleep(0.1)  # the call is in flight when the stop begins
    reply = await call
    await channel.close()
    assert finished.is_set() and reply.confidence == 0.25

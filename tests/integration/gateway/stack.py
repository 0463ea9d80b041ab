"""A real embedded stack for the gateway tests, on free ports, in one event loop on a background thread.

judge + serving (in-process runtime: SmolLM2-135M, a real local model, and the two replay rungs of the default
catalogue) + two routers (all three rungs; the replay rungs only, for fast schema fuzzing) + distill front (no
worker: submitted jobs stay queued) + gateways under uvicorn. The loop lives on its own thread so the tests
can be plain synchronous code, as OpenAI SDK users write it (a blocking call cannot stall the servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import uvicorn
from google.protobuf import struct_pb2

from escalon.config import DEFAULT_DATA_DIR
from escalon.distill.servicer import DistillService
from escalon.distill.settings import DistillSettings
from escalon.gateway.app import create_app
from escalon.gateway.settings import GatewaySettings
from escalon.gen.distill.v1 import distill_pb2, distill_pb2_grpc
from escalon.grpc import RunningServer, running_server
from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.registry import load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "shared" / "escalon" / "demo" / "gsm8k-sample.parquet"
LOCAL, MIXTRAL, GPT4 = "smollm2-135m", "mixtral-8x7b", "gpt-4"
RUNGS = [LOCAL, MIXTRAL, GPT4]
REPLAY_RUNGS = [MIXTRAL, GPT4]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopThread:
    """An asyncio loop on a daemon thread; `run(coro)` waits for a coroutine scheduled on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="escalon-test-stack", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Gateway:
    settings: GatewaySettings
    server: uvicorn.Server
    task: asyncio.Task
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@dataclass
class Stack:
    loop: LoopThread
    exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    servers: dict[str, RunningServer] = field(default_factory=dict)
    gateways: list[Gateway] = field(default_factory=list)
    job_id: str = ""

    def address(self, name: str) -> str:
        return self.servers[name].address

    async def start_server(self, name: str, service, settings, telemetry_name: str) -> RunningServer:
        running = await self.exits.enter_async_context(running_server(service, settings, telemetry_name))
        self.servers[name] = running
        return running

    async def start_gateway(self, **overrides: Any) -> Gateway:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        settings = GatewaySettings(**{"port": port, "router_address": self.address("router"),
                                      "serving_address": self.address("serving"),
                                      "distill_address": self.address("distill"), "grace_seconds": 2,
                                      **overrides})
        config = uvicorn.Config(create_app(settings), lifespan="on", log_config=None, access_log=False,
                                timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped while starting")
            await asyncio.sleep(0.02)
        gateway = Gateway(settings, server, task, port)
        self.gateways.append(gateway)
        return gateway

    async def stop_gateway(self, gateway: Gateway) -> None:
        gateway.server.should_exit = True
        await asyncio.wait_for(gateway.task, 15)
        self.gateways.remove(gateway)

    async def close(self) -> None:
        for gateway in list(self.gateways):
            await self.stop_gateway(gateway)
        await self.exits.aclose()


def model_cache_dir() -> Path:
    """Where serving keeps the converted local models: the developer's data dir, so they convert once."""
    return Path(os.environ.get("ESCALON_DATA_DIR") or DEFAULT_DATA_DIR)


async def start_stack(stack: Stack, tmp: Path) -> None:
    from escalon.serving.servicer import ServingService
    from escalon.serving.settings import ServingSettings

    catalogue = load_catalogue()
    serving = ServingSettings(port=0, runtime="inprocess", rungs=RUNGS, data_dir=model_cache_dir(), torch_threads=2)
    await stack.start_server("serving", ServingService(serving, catalogue), serving, "escalon-serving")
    judge = JudgeSettings(port=0, serving_address=stack.address("serving"))
    await stack.start_server("judge", JudgeService(judge), judge, "escalon-judge")
    common = {"serving_address": stack.address("serving"), "judge_address": stack.address("judge"),
              "dependency_wait_s": 30, "grace_seconds": 1}
    # One sample per local attempt keeps SmolLM2 quick on two cores; "router-3" samples as production does.
    for name, rungs, samples in (("router", RUNGS, 1), ("router-3", RUNGS, 3), ("replay-router", REPLAY_RUNGS, 1)):
        settings = RouterSettings(port=0, rungs=rungs, local_samples=samples, **common)
        await stack.start_server(name, RouterService(settings, catalogue), settings, "escalon-router")
    distill = DistillSettings(port=0, data_dir=tmp / "distill", grace_seconds=1)
    await stack.start_server("distill", DistillService(distill), distill, "escalon-distill")
    # One queued job (no worker runs here), so the page has a job to show.
    params = struct_pb2.Struct()
    params.update({"benchmark": str(DEMO)})
    async with grpc.aio.insecure_channel(stack.address("distill")) as channel:
        reply = await distill_pb2_grpc.DistillServiceStub(channel).SubmitJob(
            distill_pb2.SubmitJobRequest(job_id="gateway-page-profile", kind="profile", params=params), timeout=30)
    stack.job_id = reply.job.job_id

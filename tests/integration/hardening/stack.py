"""Every gRPC service of Escalon as real servers on free ports in one background thread (its own event loop),
so hypothesis' synchronous tests can call them through plain gRPC channels.

serving (in-process runtime, the two replay rungs over the shipped demo sample) → judge → router, and the
distill front (SQLite job store and broker in a temporary data dir, no worker: jobs stay queued). Log
records of all four are collected, to check what bad input writes to the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.distill.servicer import DistillService
from escalon.grpc import running_server
from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.registry import Catalogue, load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings
from tests.integration.distill.stack import env_for, settings_for


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        return "\n".join(formatter.format(r) for r in self.records)


@dataclass
class Services:
    addresses: dict[str, str] = field(default_factory=dict)  # router, judge, serving, distill
    logs: Collect = field(default_factory=Collect)

    def healthy(self) -> dict[str, str]:
        """Each service's health status name, asked over a fresh channel."""
        out = {}
        for name, address in self.addresses.items():
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            out[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return out


@contextlib.contextmanager
def services_in_a_thread(data_dir: Path, **router_settings) -> Iterator[Services]:
    services = Services()
    root = logging.getLogger()
    level = root.level
    root.addHandler(services.logs)
    root.setLevel(logging.INFO)
    ready, stop_requested = threading.Event(), None
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()

    async def run() -> None:
        nonlocal stop_requested
        stop_requested = asyncio.Event()
        default = load_catalogue()
        catalogue = Catalogue(rungs=[default.get("mixtral-8x7b"), default.get("gpt-4")])
        async with contextlib.AsyncExitStack() as stack:
            serving_settings = ServingSettings(port=0, runtime="inprocess", data_dir=data_dir, grace_seconds=0.5)
            serving = await stack.enter_async_context(
                running_server(ServingService(serving_settings, catalogue), serving_settings, "escalon-serving"))
            judge_settings = JudgeSettings(port=0, grace_seconds=0.5)
            judge = await stack.enter_async_context(
                running_server(JudgeService(judge_settings), judge_settings, "escalon-judge"))
            settings = RouterSettings(port=0, serving_address=serving.address, judge_address=judge.address,
                                      data_dir=data_dir, grace_seconds=0.5, **router_settings)
            router = await stack.enter_async_context(
                running_server(RouterService(settings, catalogue), settings, "escalon-router"))
            distill_settings = settings_for(env_for(data_dir / "distill"))
            distill = await stack.enter_async_context(
                running_server(DistillService(distill_settings), distill_settings, "escalon-distill"))
            services.addresses.update(router=router.address, judge=judge.address, serving=serving.address,
                                      distill=distill.address)
            ready.set()
            await stop_requested.wait()

    def main() -> None:
        try:
            loop.run_until_complete(run())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="escalon-services", daemon=True)
    thread.start()
    ready.wait(120)
    if failure:
        raise failure[0]
    try:
        yield services
    finally:
        loop.call_soon_threadsafe(stop_requested.set)
        thread.join(30)
        root.removeHandler(services.logs)
        root.setLevel(level)

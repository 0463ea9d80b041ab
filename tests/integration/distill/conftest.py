"""Fixtures for the distill integration tests (helpers in stack.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from escalon.distill.servicer import DistillService
from escalon.gen.distill.v1 import distill_pb2_grpc
from escalon.grpc import running_server
from tests.integration.distill.stack import Front, Worker, settings_for


@pytest.fixture(autouse=True)
def _inputs_from_test_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs read inputs only from the data dir, the demo folder and ESCALON_DISTILL_INPUT_DIRS
    (escalon.distill.jobs.inputs); the in-process fronts of these tests also take pytest's folders and the
    model cache (the confinement itself: tests/integration/hardening/test_bad_input.py)."""
    import os

    folders = [str(tmp_path_factory.getbasetemp()), *filter(None, [os.environ.get("ESCALON_MODEL_CACHE")])]
    monkeypatch.setenv("ESCALON_DISTILL_INPUT_DIRS", os.pathsep.join(folders))


@pytest_asyncio.fixture
async def front_factory() -> AsyncIterator:
    """Start gRPC fronts on free ports: `await front_factory(env)`; all are stopped at the end."""
    stack: list = []

    async def start(env: dict[str, str]) -> Front:
        settings = settings_for(env)
        service = DistillService(settings)
        cm = running_server(service, settings, "escalon-distill")
        running = await cm.__aenter__()
        channel = grpc.aio.insecure_channel(running.address)
        stack.append((cm, channel))
        return Front(settings, distill_pb2_grpc.DistillServiceStub(channel), service.store, service)

    yield start
    for cm, channel in reversed(stack):
        await channel.close()
        await cm.__aexit__(None, None, None)


@pytest.fixture
def worker_factory(tmp_path: Path):
    """Start workers: `worker_factory(env, *args)`; all are stopped at the end."""
    workers: list[Worker] = []

    def start(env: dict[str, str], *args: str, name: str = "") -> Worker:
        w = Worker(env, tmp_path / f"worker{name or len(workers)}.log", list(args)).start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()

"""The serving front over real Ray Serve (one start for the package: Ray + two deployments, ~15-25 s) and
over the in-process runtime, each on a free port, with a small catalogue: SmolLM2 + a replay rung."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.config import load_settings
from escalon.grpc import RunningServer, running_server
from escalon.registry import load_catalogue
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings
from escalon.telemetry import configure_telemetry

DEMO_BENCHMARK = Path(__file__).resolve().parents[3] / "shared" / "escalon" / "demo" / "gsm8k-sample.parquet"
CATALOGUE = f"""
rungs:
  - name: smollm2-135m
    family: smollm
    backend: local-gguf
    model: smollm2-135m-instruct
    price: {{input_per_1m: 0.005, output_per_1m: 0.005}}
    context_limit: 512
    max_tokens: 8
    autoscaling: {{min_replicas: 1, max_replicas: 1, target_ongoing_requests: 4}}
    resources: {{num_cpus: 0.5}}
  - name: mixtral-8x7b
    family: mistral
    backend: replay
    model: mistralai/Mixtral-8x7B-Instruct-v0.1
    benchmark: {DEMO_BENCHMARK}
    price: {{input_per_1m: 0.24, output_per_1m: 0.24}}
    context_limit: 32768
    resources: {{num_cpus: 0.1}}
"""
SERVICE = "escalon.serving.v1.ModelServingService"


@dataclass
class Front:
    server: RunningServer
    settings: ServingSettings
    health_seen_while_starting: list[int] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.server.address


@pytest.fixture(scope="package")
def models_dir(tmp_path_factory) -> Path:
    """Shared with the unit tests of the same session (same folder), so the GGUF is converted once."""
    cache = os.environ.get("ESCALON_MODEL_CACHE")
    return Path(cache) if cache else tmp_path_factory.getbasetemp() / "serving-models"


@pytest.fixture(scope="package")
def recorded() -> dict:
    """One recorded Mixtral answer of the demo benchmark."""
    import pandas as pd

    table = pd.read_parquet(DEMO_BENCHMARK)
    return table[table["model"] == "mistralai/Mixtral-8x7B-Instruct-v0.1"].iloc[0].to_dict()


@pytest.fixture(scope="package")
def catalogue_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serving-catalogue") / "catalogue.yaml"
    path.write_text(CATALOGUE)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _start(settings: ServingSettings, stack: contextlib.AsyncExitStack) -> Front:
    """Enter running_server while polling its health, to record what it said before it was ready."""
    service = ServingService(settings, load_catalogue(settings.catalogue))
    entering = asyncio.create_task(stack.enter_async_context(running_server(service, settings, "escalon-serving")))
    seen: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not entering.done():
            with contextlib.suppress(grpc.aio.AioRpcError):  # not bound yet
                seen.append((await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)).status)
            await asyncio.wait({entering}, timeout=0.2)
    return Front(await entering, settings, seen)


@pytest.fixture(scope="package")
async def ray_front(models_dir, catalogue_path, tmp_path_factory):
    # This process's tracing is configured first (no exporter), so the console exporter set below reaches
    # only the Ray processes started now: replicas print their spans to their logs, which the trace test reads.
    configure_telemetry("escalon-tests")
    ray_dir = Path(tempfile.mkdtemp(prefix="escalon-ray-"))  # short: Ray's socket paths must fit 107 bytes
    settings = load_settings(
        ServingSettings, catalogue=catalogue_path, data_dir=tmp_path_factory.mktemp("serving-ray"),
        model_cache=models_dir, port=_free_port(), ray_temp_dir=ray_dir, ray_num_cpus=2, grace_seconds=1,
        direct_rungs=False,  # the replay rung behind Serve too: the cheap way to test the Ray hop itself
    )
    async with contextlib.AsyncExitStack() as stack:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("OTEL_TRACES_EXPORTER", "console")
            env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
            front = await _start(settings, stack)
        yield front
    shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture(scope="package")
async def inprocess_front(models_dir, catalogue_path, tmp_path_factory):
    settings = load_settings(
        ServingSettings, runtime="inprocess", catalogue=catalogue_path, model_cache=models_dir,
        data_dir=tmp_path_factory.mktemp("serving-inprocess"), port=0, grace_seconds=1,
    )
    async with contextlib.AsyncExitStack() as stack:
        service = ServingService(settings, load_catalogue(settings.catalogue))
        server = await stack.enter_async_context(running_server(service, settings, "escalon-serving"))
        yield Front(server, settings)

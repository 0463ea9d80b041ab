"""Helpers for the distill integration tests — a real stack: `python -m escalon.distill worker` subprocesses and the
gRPC front in this process on a free port, all on one temp data dir (SQLite broker, result and job stores
unless a test names a Redis or RabbitMQ broker). Polling intervals and the job lease are short here so the
suite stays quick; production defaults are in escalon.distill.settings."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from google.protobuf import struct_pb2

from escalon.distill.servicer import DistillService
from escalon.distill.settings import DistillSettings
from escalon.distill.store import JobStore
from escalon.gen.distill.v1 import distill_pb2, distill_pb2_grpc

DEMO = Path(__file__).resolve().parents[3] / "shared" / "escalon" / "demo" / "gsm8k-sample.parquet"
REDIS_URL = os.environ.get("ESCALON_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
AMQP_URL = os.environ.get("ESCALON_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
PG_URL = os.environ.get("ESCALON_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
GPT4, MIXTRAL = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"

# What the tests change from the production defaults: poll fast, expire leases fast.
FAST = {
    "ESCALON_DISTILL_BROKER_POLLING_INTERVAL_S": "0.02",
    "ESCALON_DISTILL_LEASE_S": "2",
    "ESCALON_DISTILL_REAP_INTERVAL_S": "0.5",
    "ESCALON_DISTILL_WATCH_INTERVAL_S": "0.05",
    "ESCALON_DISTILL_RETRY_BACKOFF_S": "0.2",
    "OTEL_TRACES_EXPORTER": "none",
}


def server_answers(url: str) -> str | None:
    """None when something listens at the URL's host:port, else why not (the skip reason)."""
    parsed = urlparse(url)
    port = parsed.port or {"redis": 6379, "amqp": 5672}[parsed.scheme]
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=1):
            return None
    except OSError as exc:
        return f"no broker answers at {parsed.hostname}:{port} ({exc}); start it or set ESCALON_TEST_*_URL"


def env_for(data_dir: Path, broker_url: str = "", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALON_")}
    env.update(FAST)
    env["ESCALON_DATA_DIR"] = str(data_dir)
    if broker_url:
        env["ESCALON_DISTILL_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def settings_for(env: dict[str, str]) -> DistillSettings:
    """The front's settings, read from the same variables the workers get."""
    values = {k: v for k, v in env.items() if k.startswith("ESCALON_")}
    return DistillSettings(
        **{
            k.removeprefix("ESCALON_DISTILL_").lower() if k.startswith("ESCALON_DISTILL_") else k: v
            for k, v in values.items()
        },
        port=0,
    )


@dataclass
class Worker:
    """One `python -m escalon.distill worker` in its own process group (so SIGKILL takes its pool too)."""

    env: dict[str, str]
    log: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Worker:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "escalon.distill", "worker", "--loglevel=INFO", *self.args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"worker did not start; its log:\n{self.log.read_text(errors='replace')[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool: what a node loss or an OOM-killed pod looks like."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # to the main process only, as Kubernetes does: a warm shutdown
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Front:
    settings: DistillSettings
    stub: distill_pb2_grpc.DistillServiceStub
    store: JobStore
    service: DistillService


def params(**values) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def profile_request(job_id: str = "", **extra) -> distill_pb2.SubmitJobRequest:
    return distill_pb2.SubmitJobRequest(job_id=job_id, kind="profile", params=params(benchmark=str(DEMO), **extra))


async def watch(stub, job_id: str, timeout: float = 60) -> list[distill_pb2.Job]:
    """Every update WatchJob streams until the job finishes."""
    seen = []
    async with asyncio.timeout(timeout):
        async for update in stub.WatchJob(distill_pb2.WatchJobRequest(job_id=job_id)):
            seen.append(update.job)
    return seen


async def wait_for(predicate, timeout: float = 30, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError("timed out waiting")


def per_model_accuracy(job: distill_pb2.Job) -> dict[str, float]:
    per_model = job.result["per_model"]
    return {m: per_model[m]["accuracy"] for m in per_model}

"""`escalon up`: the whole embedded stack on one machine, as child processes of this command.

serving (Ray Serve tiers, the local models) → judge → router → distill front + a Celery worker → the HTTP
gateway (OpenAI-compatible API and the operator's page). Each child
is a real service (`python -m escalon.<service>`) on its configured port, logging to <data_dir>/logs/.
Trace spans go to a small in-process OTLP receiver unless OTEL_EXPORTER_OTLP_ENDPOINT points elsewhere.
Ctrl-C (or SIGTERM) stops the children in reverse order, each gracefully.

No orphans: each child asks the kernel for SIGTERM when this process dies (ESCALON_PARENT_PID, read by
escalon.main.follow_parent: prctl PR_SET_PDEATHSIG on Linux),
so a killed `escalon up` takes its stack with it instead of leaving services on the ports. Once the stack
is up, `supervise` restarts a child that exits, with exponential backoff (1 s doubling to 30 s, back to 1 s
after a minute up), saying so on the console and in the child's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.config import ServiceSettings, load_settings
from escalon.main import PARENT_PID_ENV
from escalon.tracecollector import TraceCollector

# A GSM8K test question from the shipped demo sample (demo/ATTRIBUTION.md): the recorded Mixtral answer is
# wrong and GPT-4's is right, so the cascade has a reason to climb.
DEMO_PROMPT = ("Lisa and Peter are selling chocolate bars door to door. Lisa sold three and a half boxes of "
               "chocolate bars, and Peter sold four and a half boxes. They sold 64 chocolate bars together. "
               "How many chocolate bars are in a box?")


@dataclass
class Child:
    name: str
    args: list[str]
    address: str | None  # gRPC address to health-check; None for the worker
    http_ready: str | None = None  # an HTTP readiness URL to wait for instead (the gateway's /healthz)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    restarts: int = 0
    started_at: float = 0.0  # time.monotonic() of the last spawn


@dataclass
class Stack:
    data_dir: Path
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    collector: TraceCollector | None = None
    stopping: bool = False

    @property
    def router_address(self) -> str:
        return next(c.address for c in self.children if c.name == "router")

    @property
    def gateway_url(self) -> str | None:
        return next((c.http_ready.removesuffix("/healthz") for c in self.children if c.http_ready), None)


def plan_stack(with_worker: bool = True, with_gateway: bool = True) -> Stack:
    """Ports and addresses from the same settings the services read, so ESCALON_*_PORT moves them."""
    from escalon.distill.settings import DistillSettings
    from escalon.gateway.settings import GatewaySettings
    from escalon.judge.settings import JudgeSettings
    from escalon.router.settings import RouterSettings
    from escalon.serving.settings import ServingSettings

    common = load_settings(ServiceSettings)
    serving, judge = load_settings(ServingSettings), load_settings(JudgeSettings)
    router, distill = load_settings(RouterSettings), load_settings(DistillSettings)
    gateway = load_settings(GatewaySettings)
    env = dict(os.environ)
    env["ESCALON_DATA_DIR"] = str(common.data_dir)
    env["ESCALON_ROUTER_SERVING_ADDRESS"] = f"127.0.0.1:{serving.port}"
    env["ESCALON_ROUTER_JUDGE_ADDRESS"] = f"127.0.0.1:{judge.port}"
    env["ESCALON_JUDGE_SERVING_ADDRESS"] = f"127.0.0.1:{serving.port}"
    env["ESCALON_GATEWAY_ROUTER_ADDRESS"] = f"127.0.0.1:{router.port}"
    env["ESCALON_GATEWAY_SERVING_ADDRESS"] = f"127.0.0.1:{serving.port}"
    env["ESCALON_GATEWAY_DISTILL_ADDRESS"] = f"127.0.0.1:{distill.port}"
    # the router records every route in Escalon's database; the operator's page reads its figures from there
    env.setdefault("ESCALON_GATEWAY_TRAFFIC_SOURCE", "route_log")
    python = sys.executable
    children = [
        Child("serving", [python, "-m", "escalon.serving"], f"127.0.0.1:{serving.port}"),
        Child("judge", [python, "-m", "escalon.judge"], f"127.0.0.1:{judge.port}"),
        Child("router", [python, "-m", "escalon.router"], f"127.0.0.1:{router.port}"),
        Child("distill", [python, "-m", "escalon.distill"], f"127.0.0.1:{distill.port}"),
    ]
    if with_worker:
        children.append(Child("worker", [python, "-m", "escalon.distill", "worker", "--queues", "cpu"], None))
    if with_gateway:
        children.append(Child("gateway", [python, "-m", "escalon.gateway"], None,
                              http_ready=f"http://127.0.0.1:{gateway.port}/healthz"))
    return Stack(common.data_dir, env, children)


async def start_stack(stack: Stack, *, timeout_s: float = 900, echo=print, collect_traces: bool = True) -> None:
    logs = stack.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if collect_traces and not stack.env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        stack.collector = TraceCollector()
        await stack.collector.start()
        stack.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = stack.collector.endpoint
    for child in stack.children:
        child.log_path = logs / f"{child.name}.log"
        _spawn(stack, child)
        echo(f"  started {child.name:<8} pid {child.process.pid:<7} log {child.log_path}")
    started = time.monotonic()
    for child in stack.children:
        if child.address:
            await _wait_serving(child, deadline=started + timeout_s, echo=echo)
        elif child.http_ready:
            await _wait_http_ready(child, deadline=started + timeout_s, echo=echo)


BACKOFF_S = (1.0, 30.0)  # first wait, longest wait
STEADY_S = 60.0  # up this long: the next crash waits the first backoff again


def _spawn(stack: Stack, child: Child) -> None:
    # escalon.main.follow_parent: the child asks for SIGTERM when this process dies
    env = {**stack.env, PARENT_PID_ENV: str(os.getpid())}
    with child.log_path.open("ab") as log_file:  # the child holds its own descriptor
        child.process = subprocess.Popen(
            child.args, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)  # Ctrl-C reaches us; we stop children in order
    child.started_at = time.monotonic()


async def supervise(stack: Stack, *, echo=print, interval_s: float = 0.5) -> None:
    """Restart children that exit while the stack is up, with backoff, until stop_stack begins."""
    waits: dict[str, float] = {}
    while not stack.stopping:
        for child in stack.children:
            if stack.stopping or child.process is None or child.process.poll() is None:
                continue
            code = child.process.returncode
            up_for = time.monotonic() - child.started_at
            wait = BACKOFF_S[0] if up_for >= STEADY_S else min(waits.get(child.name, BACKOFF_S[0] / 2) * 2, BACKOFF_S[1])
            waits[child.name] = wait
            note = (f"escalon up: {child.name} (pid {child.process.pid}) exited with code {code} after {up_for:.0f}s; "
                    f"restarting in {wait:.0f}s (restart {child.restarts + 1})")
            echo(f"  {note}")
            with contextlib.suppress(OSError), child.log_path.open("a") as fh:
                fh.write(f"\n{note}\n")
            await asyncio.sleep(wait)
            if stack.stopping:
                return
            child.restarts += 1
            _spawn(stack, child)
            echo(f"  restarted {child.name:<8} pid {child.process.pid}")
        await asyncio.sleep(interval_s)


def _exited(child: Child) -> RuntimeError:
    tail = child.log_path.read_text(errors="replace")[-3000:] if child.log_path else ""
    return RuntimeError(f"{child.name} exited with code {child.process.returncode}; last log lines:\n{tail}")


async def _wait_http_ready(child: Child, *, deadline: float, echo) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise _exited(child)
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(child.http_ready)).status_code == 200:
                    echo(f"  {child.name:<8} ready on {child.http_ready.removesuffix('/healthz')}")
                    return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{child.name} was not ready at {child.http_ready} in time; see {child.log_path}")


async def _wait_serving(child: Child, *, deadline: float, echo) -> None:
    async with grpc.aio.insecure_channel(child.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise _exited(child)
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    echo(f"  {child.name:<8} SERVING on {child.address}")
                    return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{child.name} was not SERVING on {child.address} in time; see {child.log_path}")


async def stop_stack(stack: Stack, grace_s: float = 30) -> None:
    """SIGTERM in reverse start order (router before its dependencies), then SIGKILL what outlives the grace."""
    stack.stopping = True  # supervise() restarts nothing from here on
    for child in reversed(stack.children):
        if child.process and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(child.process.wait, grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
    if stack.collector:
        await stack.collector.stop()


@contextlib.asynccontextmanager
async def services_in_process(catalogue, data_dir: Path, *, database=None, serving: dict | None = None,
                              router: dict | None = None):
    """serving (in-process runtime) → judge → router as real gRPC servers on free ports inside this process:
    what `escalon loop` drives and the integration tests start. serving/router: extra settings of each;
    database: the router's DatabaseSettings (route log, keys), None for its default. Yields (router server,
    RouterService)."""
    from escalon.grpc import running_server
    from escalon.judge.servicer import JudgeService
    from escalon.judge.settings import JudgeSettings
    from escalon.router.servicer import RouterService
    from escalon.router.settings import RouterSettings
    from escalon.serving.servicer import ServingService
    from escalon.serving.settings import ServingSettings

    async with contextlib.AsyncExitStack() as stack:
        serving_settings = ServingSettings(port=0, runtime="inprocess", data_dir=data_dir, **(serving or {}))
        serving_server = await stack.enter_async_context(
            running_server(ServingService(serving_settings, catalogue), serving_settings, "escalon-serving"))
        judge_settings = JudgeSettings(port=0)
        judge = await stack.enter_async_context(
            running_server(JudgeService(judge_settings), judge_settings, "escalon-judge"))
        router_settings = RouterSettings(port=0, serving_address=serving_server.address, judge_address=judge.address,
                                         data_dir=data_dir, **(router or {}))
        service = RouterService(router_settings, catalogue, database=database)
        router_server = await stack.enter_async_context(running_server(service, router_settings, "escalon-router"))
        yield router_server, service

"""`escalon bench`: what Escalon's own machinery costs per request, against the floor of one gRPC hop.

In one run, on this machine:
  floor     a bare aio unary hop (grpc.health.v1 Check) on loopback
  decision  the routing decision in-process: policy.plan() (embedding + classify + select when the router
            has trained artefacts; the cheapest-first plan otherwise)
  cascade   a whole two-rung judged cascade through the real services — router → serving → judge over
            gRPC — with replay rungs, so model time is ~0 and what remains is Escalon's overhead;
            at 1, 10 and 100 concurrent clients and open loop at 100 req/s, once per serving runtime:
              ray         what `escalon up` and the chart run: replay rungs called by the serving front directly
                          (escalon.serving.tiers.through_ray), Ray Serve only for rungs that compute locally
              ray-hop     the ray runtime with every rung behind Ray Serve (ESCALON_SERVING_DIRECT_RUNGS=false):
                          what the deployed path did before replay and remote rungs were called directly
              inprocess   ESCALON_SERVING_RUNTIME=inprocess, no Ray: the floor of the serving front itself
Each line: p50, p99, throughput and the ratio of p50 to the floor's p50. Figures vary run to run; the
ratio is what to compare across machines.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
import yaml

from escalon.offline.stack import Child, Stack, start_stack, stop_stack
from escalon.registry import load_catalogue


@dataclass
class Figure:
    name: str
    concurrency: int
    requests: int
    p50_ms: float
    p99_ms: float
    throughput_rps: float
    ratio_to_floor: float = 0.0
    failed: int = 0  # calls that did not answer (shed, unavailable, deadline): not in the latencies


def _answered(call: Callable[[], Awaitable[object]], failures: list[str]) -> Callable[[], Awaitable[bool]]:
    """`call`, returning whether it answered; a gRPC failure is noted by its status instead of raised."""
    async def once() -> bool:
        try:
            await call()
            return True
        except grpc.aio.AioRpcError as exc:
            failures.append(exc.code().name)
            return False

    return once


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def measure(name: str, call: Callable[[], Awaitable[object]], *, concurrency: int, requests: int,
                  warmup: int = 20) -> Figure:
    for _ in range(warmup):
        await call()
    latencies: list[float] = []
    failures: list[str] = []
    answered = _answered(call, failures)
    per_client = max(1, requests // concurrency)

    async def client() -> None:
        for _ in range(per_client):
            started = time.perf_counter()
            if await answered():
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return _figure(name, concurrency, latencies, elapsed, failures)


def _figure(name: str, concurrency: int, latencies: list[float], elapsed: float, failures: list[str]) -> Figure:
    if not latencies:
        return Figure(name, concurrency, 0, float("nan"), float("nan"), 0.0, failed=len(failures))
    return Figure(name, concurrency, len(latencies), statistics.median(latencies), _percentile(latencies, 0.99),
                  len(latencies) / elapsed, failed=len(failures))


def measure_sync(name: str, call: Callable[[], object], *, requests: int, warmup: int = 20) -> Figure:
    for _ in range(warmup):
        call()
    latencies = []
    started = time.perf_counter()
    for _ in range(requests):
        t = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - started
    return Figure(name, 1, requests, statistics.median(latencies), _percentile(latencies, 0.99), requests / elapsed)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: serving runtime name -> its environment (see the module docstring)
RUNTIMES = {
    "ray": {"ESCALON_SERVING_RUNTIME": "ray"},
    "ray-hop": {"ESCALON_SERVING_RUNTIME": "ray", "ESCALON_SERVING_DIRECT_RUNGS": "false"},
    "inprocess": {"ESCALON_SERVING_RUNTIME": "inprocess"},
}


def replay_stack(scratch: Path, runtime: str = "ray", *, with_gateway: bool = False,
                 extra_env: dict[str, str] | None = None) -> Stack:
    """serving (on `runtime`), judge and router — and the gateway when asked — each its own process as deployed,
    over a catalogue of two replay rungs (Mixtral, GPT-4)."""
    default = load_catalogue()
    scratch.mkdir(parents=True, exist_ok=True)
    catalogue = scratch / "catalogue.yaml"
    rungs = [default.get("mixtral-8x7b").model_dump(mode="json"), default.get("gpt-4").model_dump(mode="json")]
    catalogue.write_text(yaml.safe_dump({"rungs": rungs}))
    names = ("serving", "judge", "router", *(("gateway",) if with_gateway else ()))
    ports = {name: _free_port() for name in names}
    env = dict(os.environ, ESCALON_CATALOGUE=str(catalogue), ESCALON_DATA_DIR=str(scratch),
               ESCALON_ROUTER_SERVING_ADDRESS=f"127.0.0.1:{ports['serving']}",
               ESCALON_ROUTER_JUDGE_ADDRESS=f"127.0.0.1:{ports['judge']}",
               ESCALON_JUDGE_SERVING_ADDRESS=f"127.0.0.1:{ports['serving']}",
               **RUNTIMES[runtime], **(extra_env or {}),
               **{f"ESCALON_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    children = [Child(name, [sys.executable, "-m", f"escalon.{name}"], f"127.0.0.1:{port}")
                for name, port in ports.items() if name != "gateway"]
    if with_gateway:
        env["ESCALON_GATEWAY_ROUTER_ADDRESS"] = f"127.0.0.1:{ports['router']}"
        env["ESCALON_GATEWAY_SERVING_ADDRESS"] = f"127.0.0.1:{ports['serving']}"
        children.append(Child("gateway", [sys.executable, "-m", "escalon.gateway"], None,
                              http_ready=f"http://127.0.0.1:{ports['gateway']}/healthz"))
    return Stack(scratch, env, children)


def _replay_stack(scratch: Path) -> Stack:
    """The stack the tenancy bench measures on: the in-process serving runtime."""
    return replay_stack(scratch, "inprocess")


async def run_bench(requests: int = 1000, concurrencies: tuple[int, ...] = (1, 10, 100),
                    rate_rps: float = 100.0, runtimes: tuple[str, ...] = tuple(RUNTIMES)) -> list[Figure]:
    from escalon.offline.stack import DEMO_PROMPT
    from escalon.router.policy import CheapestFirstPolicy, RouteQuery

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as scratch:
        for runtime in runtimes:
            stack = replay_stack(Path(scratch) / runtime, runtime)
            try:
                # Spans are made but not exported: the services' own cost, without a collector on these 2 cores.
                await start_stack(stack, timeout_s=300, echo=lambda *_: None, collect_traces=False)
                async with grpc.aio.insecure_channel(stack.router_address) as channel:
                    if not figures:  # once: the floor and the in-process decisions do not depend on the runtime
                        health = health_pb2_grpc.HealthStub(channel)
                        floor_request = health_pb2.HealthCheckRequest()
                        figures.append(await measure("floor: bare gRPC unary hop",
                                                     lambda: health.Check(floor_request), concurrency=1,
                                                     requests=requests))
                        catalogue = load_catalogue(stack.env["ESCALON_CATALOGUE"])
                        policy = CheapestFirstPolicy()
                        query = RouteQuery(DEMO_PROMPT, 0.7)
                        figures.append(measure_sync(f"decision: {policy.name} plan()",
                                                    lambda: policy.plan(query, catalogue, catalogue.names),
                                                    requests=requests))
                        figures.extend(hybrid_decision_figures(Path(scratch), requests))
                        figures.extend(planner_step_figures(requests))
                    figures.extend(await cascade_figures(channel, runtime, DEMO_PROMPT, requests, concurrencies,
                                                         rate_rps))
            finally:
                await stop_stack(stack)
    floor = figures[0].p50_ms
    for f in figures:
        f.ratio_to_floor = f.p50_ms / floor
    return figures


async def cascade_figures(channel: grpc.aio.Channel, runtime: str, prompt: str, requests: int,
                          concurrencies: tuple[int, ...], rate_rps: float) -> list[Figure]:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    request = router_pb2.RouteRequest(prompt=prompt, answer_type=AnswerType.ANSWER_TYPE_NUMBER)
    name = f"cascade [{runtime}]: 2 replay rungs, router→serving→judge"
    figures = []
    for concurrency in concurrencies:
        figures.append(await measure(name, lambda: stub.Route(request), concurrency=concurrency,
                                     requests=max(requests // 2, concurrency * 5)))
    figures.append(await measure_open_loop(f"{name} @ {rate_rps:.0f} req/s", lambda: stub.Route(request),
                                           rate_rps=rate_rps, requests=max(requests // 2, 200)))
    return figures


def hybrid_decision_figures(scratch: Path, requests: int) -> list[Figure]:
    """The trained router's decision (embed + classify + select): with $ESCALON_ROUTER_ARTEFACT when set, else
    artefacts trained here on the synthetic benchmark, one per real encoder (the embedding dominates)."""
    from escalon.router.artefact import LiveArtefact
    from escalon.router.embedding import MINILM, STATIC
    from escalon.offline.evaluation.evaluation import evaluate
    from escalon.offline.evaluation.synthetic import write_synthetic

    folder = os.environ.get("ESCALON_ROUTER_ARTEFACT")
    if folder:
        return [decision_figure(LiveArtefact(folder), scratch, requests)]
    path = write_synthetic(scratch / "synthetic" / "benchmark.parquet")
    figures = []
    for encoder in (STATIC, MINILM):
        folder = scratch / "synthetic" / f"artefact-{encoder}"
        evaluate(path, policies=["hybrid"], encoder=encoder, cache_dir=scratch / "embeddings", artefact_dir=folder)
        figures.append(decision_figure(LiveArtefact(folder), scratch, requests))
    return figures


def planner_step_figures(requests: int) -> list[Figure]:
    """Cascade routing's overhead per step (estimates + the set search; no embedding): with the estimator of
    $ESCALON_ROUTER_ARTEFACT when it has one, else one of 28 rungs (mmlu-pro-28's width) with random
    coefficients — the time depends on the shapes, not the values."""
    import numpy as np

    from escalon.router.artefact import load_artefact
    from escalon.router.cascade_routing import (DEPTH, RUN_FEATURES, UNRUN_FEATURES, QualityEstimator,
                                                Stepper)

    folder = os.environ.get("ESCALON_ROUTER_ARTEFACT")
    estimator = load_artefact(folder).estimator if folder else None
    context = None
    if estimator is None:
        rng = np.random.default_rng(0)
        R, C = 28, 14
        estimator = QualityEstimator([f"r{i}" for i in range(R)], [f"f{i % 7}" for i in range(R)],
                                     rng.normal(0, 0.3, len(RUN_FEATURES) + 2 * R + C), -0.2,
                                     rng.normal(0, 0.3, len(UNRUN_FEATURES) + 2 * R + C), -0.2,
                                     np.full((DEPTH, R), 0.05), np.full((DEPTH + 1, DEPTH + 1), 0.1))
        context = np.full(C, 1 / C)
    R = len(estimator.rungs)
    rng = np.random.default_rng(1)
    ex_ante, cost = rng.uniform(0.2, 0.9, R), rng.uniform(0.01, 1.0, R)
    figures = []
    for answered in (0, 2):
        stepper = Stepper(estimator, list(estimator.rungs), ex_ante, cost, 0.1, context)
        for i in range(answered):
            stepper.observe(estimator.rungs[i], f"answer {i % 2}", 200)

        def step(stepper=stepper):
            stepper._decided = None  # the Stepper keeps a decision until its state changes: time a fresh one
            return stepper.next()

        figures.append(measure_sync(f"planner step: cascade routing, {R} rungs, {answered} answered",
                                    step, requests=max(200, requests)))
    return figures


def decision_figure(live, scratch: Path, requests: int) -> Figure:
    from escalon.registry import Catalogue, Rung
    from escalon.router.policy import RouteQuery
    from escalon.router.routing import ArtefactPolicy

    policy = ArtefactPolicy(live)
    model = live.current().model
    rungs = model.rungs
    catalogue = Catalogue(rungs=[Rung(name=r, family=f, backend="replay", model=r, benchmark=scratch / "unused",
                                      price={"input_per_1m": 1.0, "output_per_1m": 1.0})
                                 for r, f in zip(rungs, model.families)])
    prompts = [f"What is {a} + {b}? Explain briefly." for a, b in zip(range(3, 3000, 7), range(11, 9000, 13))]
    it = iter(range(10**9))
    label = f"decision: hybrid+cascade plan() ({model.encoder}, {len(model.memory)} examples)"
    return measure_sync(label, lambda: policy.plan(RouteQuery(prompts[next(it) % len(prompts)], 0.7), catalogue,
                                                    rungs), requests=max(50, requests // 5))


async def measure_open_loop(name: str, call: Callable[[], Awaitable[object]], *, rate_rps: float,
                            requests: int) -> Figure:
    """Requests arrive at a fixed rate whatever the latency (how traffic really arrives), not one per client."""
    latencies: list[float] = []
    failures: list[str] = []
    answered = _answered(call, failures)

    async def one() -> None:
        started = time.perf_counter()
        if await answered():
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    tasks = []
    for i in range(requests):
        delay = started + i / rate_rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return _figure(name, 0, latencies, elapsed, failures)


def render(figures: list[Figure]) -> str:
    lines = [f"{'what':<72}{'clients':>8}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'p50/floor':>11}"
             f"{'failed':>8}"]
    for f in figures:
        clients = str(f.concurrency) if f.concurrency else "open"
        lines.append(f"{f.name:<72}{clients:>8}{f.requests:>7}{f.p50_ms:>9.2f}{f.p99_ms:>9.2f}"
                     f"{f.throughput_rps:>9.0f}{f.ratio_to_floor:>11.1f}{f.failed:>8}")
    return "\n".join(lines)


def main(requests: int, out: Path | None) -> int:
    before = os.getloadavg()[0]
    figures = asyncio.run(run_bench(requests))
    print(render(figures))
    print(f"load average: {before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (the machine may be shared)")
    if out:
        out.write_text(json.dumps([asdict(f) for f in figures], indent=2))
        print(f"\nwritten to {out}")
    return 0

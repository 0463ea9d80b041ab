"""`escalon bench load`: sustained open-loop load and an overload ramp through the real stack, with replay rungs.

The stack is the deployed one (serving on the ray runtime, whose replay rungs the front calls directly; judge;
router; the gateway when it is measured), each service its own process. Requests arrive at a fixed rate
whatever the latency (open loop), each with a 30 s deadline, as the demo question of the replay benchmark.

  sustained   `--rate` req/s for `--duration` s, through gRPC (RouterService/Route) and/or the gateway
              (POST /v1/chat/completions): achieved rate, answered / shed / failed, p50 / p99 / max of the
              answers, and each service's resident memory at the start and the end (growth);
  ramp        steps of rising rate (`--ramp-rates`, `--step-seconds` each) through gRPC: per step the same
              figures and the share shed; "shedding starts" is the first step that sheds at least 1%;
  after       right after each run ends (its last requests still in flight), `--probes` requests one after
              another, each retried after the retry hint when shed (as the OpenAI SDKs do): answered promptly
              means no backlog was left behind (overload shed, not queued).

A shed call is RESOURCE_EXHAUSTED "overloaded:" over gRPC and HTTP 503 code "overloaded" at the gateway (with
Retry-After); every other failure is counted by its status. The load average is printed with each figure: the
machine may be shared. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.grpc import overloaded, retry_after_ms
from escalon.offline.bench.latency import _percentile, replay_stack
from escalon.offline.stack import DEMO_PROMPT, Stack, start_stack, stop_stack

DEADLINE_S = 30.0
#: failure -> the first message seen for it, printed with the figures
EXAMPLES: dict[str, str] = {}
_HINT_MS = {"last": 1000}  # the retry hint of the last shed call (what a probe waits before trying again)
PROBE_TRIES = 5
SHED = "shed"
OK = "OK"


@dataclass
class Run:
    name: str
    target_rps: float
    seconds: float
    sent: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    achieved_rps: float = 0.0  # answered per second of the run
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    shed_p99_ms: float = 0.0  # how fast a shed call is refused
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rss_mb: dict[str, tuple[float, float]] = field(default_factory=dict)  # service -> (start, end)
    after: dict[str, float] = field(default_factory=dict)  # the probes right after the run

    @property
    def shed_share(self) -> float:
        return self.outcomes.get(SHED, 0) / self.sent if self.sent else 0.0


Call = Callable[[], Awaitable[str]]  # one request; its outcome: OK, SHED or the failure's name


@dataclass
class _Tally:
    """What the calls of one run report as they end."""

    started: float
    answered: list[float] = field(default_factory=list)  # latencies, ms
    shed: list[float] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)


def grpc_call(stub: router_pb2_grpc.RouterServiceStub, timeout_s: float = DEADLINE_S) -> Call:
    request = router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=AnswerType.ANSWER_TYPE_NUMBER)

    async def call() -> str:
        try:
            await stub.Route(request, timeout=timeout_s)
            return OK
        except grpc.aio.AioRpcError as exc:
            if overloaded(exc):
                _HINT_MS["last"] = retry_after_ms(exc) or 1000
                return SHED
            EXAMPLES.setdefault(exc.code().name, (exc.details() or "")[:200])
            return exc.code().name

    return call


def http_call(session, base_url: str, timeout_s: float = DEADLINE_S) -> Call:  # noqa: ANN001 - aiohttp session
    """An OpenAI chat completion through the gateway. aiohttp, not httpx: httpx's connection pool spends time
    quadratic in the requests waiting for a connection, and at 100 req/s the load generator became the bottleneck."""
    import aiohttp

    body = {"model": "escalon/auto", "messages": [{"role": "user", "content": DEMO_PROMPT}]}
    url, timeout = f"{base_url}/v1/chat/completions", aiohttp.ClientTimeout(total=timeout_s)

    async def call() -> str:
        try:
            async with session.post(url, json=body, timeout=timeout) as response:
                status, text = response.status, await response.text()
        except Exception as exc:  # noqa: BLE001 - a transport failure is an outcome here
            EXAMPLES.setdefault(type(exc).__name__, str(exc)[:200])
            return type(exc).__name__
        if status == 200:
            return OK
        if status == 503 and '"overloaded"' in text:
            _HINT_MS["last"] = int(response.headers.get("retry-after-ms", 1000))
            return SHED
        EXAMPLES.setdefault(f"HTTP {status}", text[:200])
        return f"HTTP {status}"

    return call


async def open_loop(call: Call, rate_rps: float, seconds: float) -> tuple[_Tally, list[asyncio.Task]]:
    """Send at `rate_rps` for `seconds`; returns the tally so far and the calls still in flight."""
    tally = _Tally(time.perf_counter())

    async def one() -> None:
        started = time.perf_counter()
        outcome = await call()
        elapsed = (time.perf_counter() - started) * 1000
        tally.outcomes[outcome] += 1
        if outcome in (OK, SHED):
            (tally.answered if outcome == OK else tally.shed).append(elapsed)

    tasks: list[asyncio.Task] = []
    for i in range(int(rate_rps * seconds)):
        delay = tally.started + i / rate_rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    return tally, [t for t in tasks if not t.done()]


async def settle(run: Run, tally: _Tally, pending: list[asyncio.Task]) -> Run:
    await asyncio.gather(*pending)
    answered, shed = tally.answered, tally.shed
    run.outcomes = dict(tally.outcomes)
    run.sent = sum(tally.outcomes.values())
    run.achieved_rps = len(answered) / max(1e-9, time.perf_counter() - tally.started)
    if answered:
        run.p50_ms, run.p99_ms, run.max_ms = statistics.median(answered), _percentile(answered, 0.99), max(answered)
    if shed:
        run.shed_p99_ms = _percentile(shed, 0.99)
    return run


async def probe(call: Call, probes: int) -> dict[str, float]:
    """`probes` calls one after another, right away, each retried after the hint when shed (as the OpenAI SDKs
    do), up to PROBE_TRIES tries: how long each took to be answered, and how many never were."""
    latencies, failed, shed = [], 0, 0
    for _ in range(probes):
        started = time.perf_counter()
        for _try in range(PROBE_TRIES):
            outcome = await call()
            if outcome != SHED:
                break
            shed += 1
            await asyncio.sleep(_HINT_MS["last"] / 1000)
        latencies.append((time.perf_counter() - started) * 1000)
        failed += outcome != OK
    return {"probes": probes, "failed": failed, "shed_then_retried": shed, "p50_ms": statistics.median(latencies),
            "max_ms": max(latencies)}


async def measured(name: str, call: Call, probe_call: Call, rate_rps: float, seconds: float, probes: int,
                   stack: Stack | None = None) -> Run:
    rss_start = _rss(stack) if stack else {}
    run = Run(name, rate_rps, seconds)
    tally, pending = await open_loop(call, rate_rps, seconds)
    run.load_average = os.getloadavg()
    after = asyncio.create_task(probe(probe_call, probes))  # while the run's last calls are still in flight
    run = await settle(run, tally, pending)
    run.after = await after
    if stack:
        rss_end = _rss(stack)
        run.rss_mb = {name: (rss_start.get(name, 0.0), end) for name, end in rss_end.items()}
    return run


def _rss(stack: Stack) -> dict[str, float]:
    import psutil

    sizes = {}
    for child in stack.children:
        if child.process is not None and child.process.poll() is None:
            try:
                process = psutil.Process(child.process.pid)
                sizes[child.name] = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
            except psutil.Error:
                continue
    return sizes


async def run_load(rate_rps: float, seconds: float, through: tuple[str, ...], ramp_rates: tuple[float, ...],
                   step_s: float, probes: int, echo=print) -> list[Run]:
    import aiohttp

    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as scratch:
        stack = replay_stack(Path(scratch), "ray", with_gateway="gateway" in through)
        try:
            await start_stack(stack, timeout_s=300, echo=lambda *_: None, collect_traces=False)
            gateway = stack.gateway_url or "http://127.0.0.1:1"
            async with grpc.aio.insecure_channel(stack.router_address) as channel, \
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000)) as http:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                calls = {"grpc": grpc_call(stub), "gateway": http_call(http, gateway)}
                probe_calls = {"grpc": grpc_call(stub, 5.0), "gateway": http_call(http, gateway, 5.0)}
                for kind in through:
                    for _ in range(20):  # warm: connections, caches
                        await calls[kind]()
                    if seconds > 0:
                        run = await measured(f"sustained via {kind}", calls[kind], probe_calls[kind], rate_rps,
                                             seconds, probes, stack)
                        runs.append(run)
                        echo(render([run]))
                for rate in ramp_rates:
                    run = await measured(f"ramp via grpc @ {rate:g}", calls["grpc"], probe_calls["grpc"], rate,
                                         step_s, probes, stack)
                    runs.append(run)
                    echo(render([run]))
        finally:
            await stop_stack(stack)
    return runs


def render(runs: list[Run]) -> str:
    lines = []
    for r in runs:
        others = {k: v for k, v in r.outcomes.items() if k not in (OK, SHED)}
        rss = ", ".join(f"{name} {a:.0f}→{b:.0f} MB" for name, (a, b) in r.rss_mb.items())
        lines.append(
            f"{r.name}: target {r.target_rps:g} req/s for {r.seconds:g}s, sent {r.sent}; answered "
            f"{r.outcomes.get(OK, 0)} ({r.achieved_rps:.1f}/s), shed {r.outcomes.get(SHED, 0)} "
            f"({100 * r.shed_share:.1f}%, p99 {r.shed_p99_ms:.1f} ms), failed {sum(others.values())} {others or ''}; "
            f"answers p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms max {r.max_ms:.0f} ms; load average "
            f"{r.load_average[0]:.2f}")
        if r.after:
            lines.append(f"  right after: {r.after['probes']:.0f} probes, {r.after['failed']:.0f} not answered, "
                         f"{r.after['shed_then_retried']:.0f} sheds retried after the hint; time to an answer "
                         f"p50 {r.after['p50_ms']:.1f} ms, max {r.after['max_ms']:.0f} ms")
        if rss:
            lines.append(f"  memory (RSS): {rss}")
    return "\n".join(lines)


def shedding_starts(runs: list[Run]) -> str:
    ramp = [r for r in runs if r.name.startswith("ramp")]
    first = next((r for r in ramp if r.shed_share >= 0.01), None)
    if not ramp:
        return ""
    if first is None:
        return f"no step up to {ramp[-1].target_rps:g} req/s shed 1% or more"
    return (f"shedding starts at {first.target_rps:g} req/s ({100 * first.shed_share:.1f}% shed, "
            f"{first.achieved_rps:.0f} answered/s)")


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--rate", type=float, default=100.0, help="sustained rate, req/s [default: 100]")
    parser.add_argument("--duration", type=float, default=300.0,
                        help="seconds of sustained load per path; 0 skips it [default: 300]")
    parser.add_argument("--through", default="grpc,gateway", help="paths measured: grpc, gateway [default: both]")
    parser.add_argument("--ramp-rates", default="50,100,200,300,400,600",
                        help="rates of the overload ramp, req/s, comma-separated; empty skips it")
    parser.add_argument("--step-seconds", type=float, default=15.0, help="seconds per ramp step [default: 15]")
    parser.add_argument("--probes", type=int, default=20, help="requests right after each run [default: 20]")


def main(args: argparse.Namespace, out: Path | None = None) -> int:
    through = tuple(p.strip() for p in args.through.split(",") if p.strip())
    bad = [p for p in through if p not in ("grpc", "gateway")]
    if bad:
        raise SystemExit(f"--through: unknown path {', '.join(bad)}; choose from grpc, gateway")
    try:
        rates = tuple(float(r) for r in args.ramp_rates.split(",") if r.strip())
    except ValueError:
        raise SystemExit(f"--ramp-rates: expected numbers separated by commas, got {args.ramp_rates!r}") from None
    if args.rate <= 0 or any(r <= 0 for r in rates):
        raise SystemExit("--rate and --ramp-rates must be above 0 req/s")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    runs = asyncio.run(run_load(args.rate, args.duration, through, rates, args.step_seconds, args.probes))
    if summary := shedding_starts(runs):
        print(summary)
    for failure, message in EXAMPLES.items():
        print(f"first {failure}: {message}")
    if out:
        out.write_text(json.dumps([asdict(r) for r in runs], indent=2))
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m escalon.offline.bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--out", type=Path, help="also write the runs as JSON here")
    parsed = parser.parse_args()
    raise SystemExit(main(parsed, parsed.out))

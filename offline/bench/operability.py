"""`python -m escalon.offline.bench.operability`: what metrics cost, and how the router copes with a rung that dies.

  metrics    the two-rung replay cascade (router → serving → judge, each its own process, as `escalon bench`
             runs it) at a fixed arrival rate, with every instrument recording and each service's /metrics
             scraped every second, against the same stack with ESCALON_METRICS=off; alternated `--rounds`
             times so that the neighbours' load on a shared machine falls on both alike. p50 and p99 per round,
             and the CPU the three processes spent per route (less sensitive to the neighbours than latency).
  rung kill  a cheap remote rung (the OpenAI-compatible backend against a provider on 127.0.0.1 run by this
             process) before the replay gpt-4 rung, under load at a fixed rate; after `--kill-after` seconds the
             provider stops (refused connections), or, with --hang, stops answering. Figures: client errors, and
             the time from the kill until the planner routes around the rung (the first route whose plan skips
             it as circuit-open, after which no route waits on it). Default retries (3 tries, backoff from 0.5 s)
             and circuit (3 failures, 30 s cooldown) of the catalogue, unless --fast-retries.
Only 127.0.0.1 is loaded; every loop is bounded by its request count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml

from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.offline.bench.latency import _free_port, _percentile
from escalon.offline.stack import DEMO_PROMPT, Child, Stack, start_stack, stop_stack
from escalon.registry import load_catalogue


def _stack(scratch: Path, rungs: list[dict[str, Any]], *, metrics_on: bool) -> tuple[Stack, dict[str, int]]:
    catalogue = scratch / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump({"rungs": rungs}))
    ports = {name: _free_port() for name in ("serving", "judge", "router")}
    metrics_ports = {name: _free_port() for name in ports} if metrics_on else {}
    env = dict(os.environ, ESCALON_CATALOGUE=str(catalogue), ESCALON_DATA_DIR=str(scratch),
               ESCALON_SERVING_RUNTIME="inprocess", ESCALON_METRICS="on" if metrics_on else "off",
               ESCALON_ROUTER_SERVING_ADDRESS=f"127.0.0.1:{ports['serving']}",
               ESCALON_ROUTER_JUDGE_ADDRESS=f"127.0.0.1:{ports['judge']}",
               **{f"ESCALON_{name.upper()}_PORT": str(port) for name, port in ports.items()},
               **{f"ESCALON_{name.upper()}_METRICS_PORT": str(port) for name, port in metrics_ports.items()})
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    children = [Child(name, [sys.executable, "-m", f"escalon.{name}"], f"127.0.0.1:{port}")
                for name, port in ports.items()]
    return Stack(scratch, env, children), metrics_ports


def _replay_rungs() -> list[dict[str, Any]]:
    default = load_catalogue()
    return [default.get("mixtral-8x7b").model_dump(mode="json"), default.get("gpt-4").model_dump(mode="json")]


class _Scraper:
    """GETs every /metrics once a second on a thread, as Prometheus would (bounded by the stop event)."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports, self.stop, self.scrapes, self.bytes = ports, threading.Event(), 0, 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            for port in self.ports.values():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                    self.bytes += len(reply.read())
                self.scrapes += 1


async def _open_loop(call, *, rate_rps: float, requests: int) -> tuple[list[float], list[Any], list[float]]:
    """(latencies ms, results or exceptions, start offsets s) of `requests` calls arriving at `rate_rps`."""
    latencies: list[float] = [0.0] * requests
    results: list[Any] = [None] * requests
    offsets: list[float] = [0.0] * requests
    started = time.perf_counter()

    async def one(i: int) -> None:
        t = time.perf_counter()
        offsets[i] = t - started
        try:
            results[i] = await call()
        except grpc.aio.AioRpcError as exc:
            results[i] = exc
        latencies[i] = (time.perf_counter() - t) * 1000

    tasks = []
    for i in range(requests):
        delay = started + i / rate_rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, results, offsets


async def metrics_overhead(rate_rps: float, requests: int, rounds: int) -> dict[str, Any]:
    figures: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    request = router_pb2.RouteRequest(prompt=DEMO_PROMPT)
    for _ in range(rounds):
        for mode in ("on", "off"):
            with tempfile.TemporaryDirectory() as scratch:
                stack, metrics_ports = _stack(Path(scratch), _replay_rungs(), metrics_on=mode == "on")
                scraper = _Scraper(metrics_ports)
                try:
                    await start_stack(stack, timeout_s=120, echo=lambda *_: None, collect_traces=False)
                    async with grpc.aio.insecure_channel(stack.router_address) as channel:
                        stub = router_pb2_grpc.RouterServiceStub(channel)
                        for _ in range(30):  # warm-up
                            await stub.Route(request, timeout=30)
                        if metrics_ports:
                            scraper.thread.start()
                        cpu_before = _cpu_seconds(stack)
                        latencies, results, _ = await _open_loop(lambda: stub.Route(request, timeout=30),
                                                                 rate_rps=rate_rps, requests=requests)
                        cpu_ms_per_route = (_cpu_seconds(stack) - cpu_before) * 1000 / requests
                finally:
                    scraper.stop.set()
                    await stop_stack(stack)
                errors = sum(isinstance(r, Exception) for r in results)
                figures[mode].append({"p50_ms": statistics.median(latencies), "p99_ms": _percentile(latencies, 0.99),
                                      "cpu_ms_per_route": cpu_ms_per_route, "errors": errors,
                                      "scrapes": scraper.scrapes, "scrape_bytes": scraper.bytes})
    summary = {mode: {key: statistics.median(f[key] for f in rows) for key in ("p50_ms", "p99_ms", "cpu_ms_per_route")}
               for mode, rows in figures.items()}
    return {"rate_rps": rate_rps, "requests_per_round": requests, "rounds": figures, "median_of_rounds": summary}


async def inprocess_overhead(requests: int, rounds: int) -> dict[str, Any]:
    """CPU per route with every instrument recording vs none, the three services in this one process (real gRPC on
    loopback, replay rungs), routes sent one at a time: process CPU time does not count what neighbours run."""
    import contextlib

    import escalon.metrics as metrics_module
    from escalon.grpc import running_server
    from escalon.judge.servicer import JudgeService
    from escalon.judge.settings import JudgeSettings
    from escalon.registry import Catalogue
    from escalon.router.servicer import RouterService
    from escalon.router.settings import RouterSettings
    from escalon.serving.servicer import ServingService
    from escalon.serving.settings import ServingSettings

    default = load_catalogue()
    catalogue = Catalogue(rungs=[default.get("mixtral-8x7b"), default.get("gpt-4")])
    request = router_pb2.RouteRequest(prompt=DEMO_PROMPT)
    per_route: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(rounds):
        for mode in ("on", "off"):
            metrics_module._metrics = metrics_module.Metrics() if mode == "on" else metrics_module.NullMetrics()
            with tempfile.TemporaryDirectory() as scratch:
                async with contextlib.AsyncExitStack() as stack:
                    serving_settings = ServingSettings(port=0, runtime="inprocess", data_dir=Path(scratch))
                    serving = await stack.enter_async_context(running_server(
                        ServingService(serving_settings, catalogue), serving_settings, "escalon-serving"))
                    judge_settings = JudgeSettings(port=0)
                    judge = await stack.enter_async_context(
                        running_server(JudgeService(judge_settings), judge_settings, "escalon-judge"))
                    router_settings = RouterSettings(port=0, serving_address=serving.address,
                                                     judge_address=judge.address, data_dir=Path(scratch))
                    router = await stack.enter_async_context(running_server(
                        RouterService(router_settings, catalogue), router_settings, "escalon-router"))
                    channel = await stack.enter_async_context(grpc.aio.insecure_channel(router.address))
                    stub = router_pb2_grpc.RouterServiceStub(channel)
                    for _ in range(30):
                        await stub.Route(request, timeout=30)
                    started = time.process_time()
                    for _ in range(requests):
                        await stub.Route(request, timeout=30)
                    per_route[mode].append((time.process_time() - started) * 1000 / requests)
    metrics_module._metrics = None
    on, off = statistics.median(per_route["on"]), statistics.median(per_route["off"])
    # Each round's on and off run back to back: their difference cancels the drift of a shared machine.
    paired = statistics.median(a - b for a, b in zip(per_route["on"], per_route["off"]))
    return {"requests_per_round": requests, "cpu_ms_per_route": per_route,
            "median": {"on": on, "off": off, "overhead_ms_paired": paired, "overhead_share": paired / off}}


def _cpu_seconds(stack: Stack) -> float:
    """User + system CPU the stack's processes used so far: what the services spend, whatever the neighbours do
    to the latencies on a shared machine."""
    import psutil

    total = 0.0
    for child in stack.children:
        times = psutil.Process(child.process.pid).cpu_times()
        total += times.user + times.system
    return total


class _Provider:
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers, or is killed (closed) or hangs on cue."""

    def __init__(self) -> None:
        self.hang = False
        self.released = asyncio.Event()
        self.runner = None
        self.port = 0

    async def start(self) -> None:
        from aiohttp import web

        async def chat(request: web.Request) -> web.Response:
            await request.read()
            if self.hang:
                await self.released.wait()  # until the run ends: then the server can close
                return web.json_response({"error": {"message": "gone"}}, status=503)
            return web.json_response({"choices": [{"index": 0, "message": {"content": "The answer is 8."},
                                                   "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 60, "completion_tokens": 6}})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        self.runner = web.AppRunner(app, shutdown_timeout=0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def kill(self) -> None:
        self.released.set()
        await self.runner.cleanup()


async def rung_kill(rate_rps: float, seconds: float, kill_after: float, *, hang: bool, fast: bool,
                    slow_call_s: float | None = None) -> dict[str, Any]:
    provider = _Provider()
    await provider.start()
    cheap: dict[str, Any] = {"name": "cheap-remote", "family": "remote", "backend": "openai", "model": "gpt-4o-mini",
                             "base_url": f"http://127.0.0.1:{provider.port}/v1",
                             "price": {"input_per_1m": 0.01, "output_per_1m": 0.01}}
    if hang:
        cheap["first_token_timeout_s"] = 2.0
    if fast:
        cheap["retries"] = {"attempts": 2, "initial_backoff_s": 0.05, "max_backoff_s": 0.2}
    if slow_call_s is not None:
        cheap["circuit"] = {"slow_call_s": slow_call_s}
    rungs = [cheap, load_catalogue().get("gpt-4").model_dump(mode="json")]
    request = router_pb2.RouteRequest(prompt=DEMO_PROMPT)
    requests = int(rate_rps * seconds)
    with tempfile.TemporaryDirectory() as scratch:
        stack, _ = _stack(Path(scratch), rungs, metrics_on=True)
        try:
            await start_stack(stack, timeout_s=120, echo=lambda *_: None, collect_traces=False)
            async with grpc.aio.insecure_channel(stack.router_address) as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                for _ in range(10):
                    await stub.Route(request, timeout=60)

                async def kill_later() -> None:
                    await asyncio.sleep(kill_after)
                    if hang:
                        provider.hang = True
                    else:
                        await provider.kill()

                killer = asyncio.create_task(kill_later())
                latencies, results, offsets = await _open_loop(lambda: stub.Route(request, timeout=120),
                                                               rate_rps=rate_rps, requests=requests)
                await killer
        finally:
            await stop_stack(stack)
            if hang:
                await provider.kill()
    errors = [r for r in results if isinstance(r, Exception)]
    after = [(o, r, lat) for o, r, lat in zip(offsets, results, latencies) if o >= kill_after]

    def waits_on_cheap(r: Any) -> bool:
        return not isinstance(r, Exception) and bool(r.attempts) and r.attempts[0].rung == "cheap-remote" \
            and not r.attempts[0].note.startswith("skipped: circuit open")

    # the first route sent after the kill from which on no route waited on the dead rung
    last_waiting = max((i for i, (o, r, _) in enumerate(after) if waits_on_cheap(r)), default=-1)
    routed_around_at = after[last_waiting + 1][0] - kill_after if last_waiting + 1 < len(after) else None
    skipped = sum(1 for _, r, _ in after if not isinstance(r, Exception) and r.attempts
                  and r.attempts[0].note.startswith("skipped: circuit open"))
    failed_on_cheap = sum(1 for _, r, _ in after if waits_on_cheap(r))
    late = [lat for o, _, lat in after if routed_around_at is not None and o - kill_after >= routed_around_at]
    return {"mode": "hang" if hang else "killed (connection refused)", "slow_call_s": slow_call_s,
            "rate_rps": rate_rps, "requests": requests,
            "kill_after_s": kill_after, "client_errors": len(errors),
            "error_codes": sorted({e.code().name for e in errors}),
            "routes_after_kill": len(after), "routes_waiting_on_dead_rung": failed_on_cheap,
            "routes_skipping_it": skipped,
            "seconds_until_routed_around": routed_around_at,
            "p50_ms_before_kill": statistics.median([lat for o, _, lat in zip(offsets, results, latencies)
                                                     if o < kill_after]),
            "p50_ms_once_routed_around": statistics.median(late) if late else None,
            "max_ms_after_kill": max(lat for _, _, lat in after)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m escalon.offline.bench.operability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("metrics", "cpu", "kill", "all"), nargs="?", default="all",
                        help="metrics: separate processes at --rate; cpu: CPU per route, in one process; kill")
    parser.add_argument("--rate", type=float, default=100.0, help="arrival rate, req/s (metrics; default 100)")
    parser.add_argument("--requests", type=int, default=1500, help="requests per metrics round (default 1500)")
    parser.add_argument("--rounds", type=int, default=3, help="on/off rounds (default 3)")
    parser.add_argument("--kill-rate", type=float, default=20.0, help="arrival rate of the kill run (default 20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the kill run (default 20)")
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds into the kill run (default 5)")
    parser.add_argument("--hang", action="store_true", help="the provider hangs instead of dying")
    parser.add_argument("--fast-retries", action="store_true", help="2 tries, 50-200 ms backoff instead of defaults")
    parser.add_argument("--slow-call", type=float, help="the rung's circuit.slow_call_s (default: the catalogue's, 30)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}
    if args.what in ("metrics", "all"):
        figures["metrics"] = asyncio.run(metrics_overhead(args.rate, args.requests, args.rounds))
        print(json.dumps(figures["metrics"]["median_of_rounds"], indent=1))
    if args.what in ("cpu", "all"):
        figures["cpu"] = asyncio.run(inprocess_overhead(min(args.requests, 500), args.rounds))
        print(json.dumps(figures["cpu"]["median"], indent=1))
    if args.what in ("kill", "all"):
        figures["kill"] = asyncio.run(rung_kill(args.kill_rate, args.seconds, args.kill_after, hang=args.hang,
                                                fast=args.fast_retries, slow_call_s=args.slow_call))
        print(json.dumps(figures["kill"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`escalon bench tenancy`: what the route log and API keys cost and whether they hold, on this machine.

  logging overhead   the two-rung replay cascade through real router, serving and judge processes at a fixed
                     100 req/s, with the route log off and on (SQLite under a scratch data dir), measured in
                     alternating blocks so that the machine's load falls on both alike: p50 and p99 of each
  database restart   a router logging to a throwaway PostgreSQL cluster (initdb + pg_ctl in a scratch folder,
                     its own port: never the machine's server) that is stopped mid-traffic and started again:
                     routes answered, routes recorded, records dropped (goal: none lost)
  budget             20 concurrent clients of one key with a daily budget, routing until refused: what was
                     spent against the budget (goal: overspend 0)
Needs the PostgreSQL server binaries (/usr/lib/postgresql/*/bin) for the restart; that part is skipped, saying
so, without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.offline.bench.latency import _free_port, _percentile, _replay_stack
from escalon.offline.stack import DEMO_PROMPT, Child, start_stack, stop_stack

REQUEST = router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=AnswerType.ANSWER_TYPE_NUMBER)


def _routers_stack(scratch: Path):  # noqa: ANN202
    """serving + judge + two routers on them: route log off and on."""
    import sys

    stack = _replay_stack(scratch)
    off, on = _free_port(), _free_port()
    router = next(c for c in stack.children if c.name == "router")
    stack.children.remove(router)
    stack.children.append(Child("router", [sys.executable, "-m", "escalon.router", "--port", str(off)],
                                f"127.0.0.1:{off}"))
    stack.children.append(Child("router-logged", [sys.executable, "-m", "escalon.router", "--port", str(on)],
                                f"127.0.0.1:{on}"))
    return stack, f"127.0.0.1:{off}", f"127.0.0.1:{on}"


async def logging_overhead(requests: int, rate_rps: float = 100.0, blocks: int = 4,
                           control: bool = False) -> dict[str, Any]:
    """control: both routers unlogged (an A/A run: how far the machine's load alone moves the difference)."""
    with tempfile.TemporaryDirectory() as scratch:
        stack, off, on = _routers_stack(Path(scratch))
        # one env for all children; the unlogged router is told apart by its own variable below
        stack.env["ESCALON_ROUTE_LOG"] = "false" if control else "true"
        stack.children[-2].args = ["env", "ESCALON_ROUTE_LOG=false", *stack.children[-2].args]
        try:
            await start_stack(stack, timeout_s=180, echo=lambda *_: None, collect_traces=False)
            lat: dict[str, list[float]] = {"off": [], "on": []}
            async with grpc.aio.insecure_channel(off) as c_off, grpc.aio.insecure_channel(on) as c_on:
                stubs = {"off": router_pb2_grpc.RouterServiceStub(c_off), "on": router_pb2_grpc.RouterServiceStub(c_on)}
                for stub in stubs.values():
                    for _ in range(30):
                        await stub.Route(REQUEST)
                for block in range(blocks):
                    for name in (("off", "on") if block % 2 == 0 else ("on", "off")):
                        lat[name].extend(await open_loop(stubs[name], rate_rps, max(50, requests // blocks)))
            from escalon.db.engine import open_database
            from sqlalchemy import text

            engine = open_database(f"sqlite:///{Path(scratch) / 'escalon.sqlite'}")
            await asyncio.sleep(1.5)
            with engine.connect() as conn:
                logged = conn.execute(text("SELECT count(*) FROM routes")).scalar()
            engine.dispose()
        finally:
            await stop_stack(stack)
    out = {name: {"n": len(v), "p50_ms": statistics.median(v), "p99_ms": _percentile(v, 0.99)} for name, v in lat.items()}
    out["p50_delta_ms"] = out["on"]["p50_ms"] - out["off"]["p50_ms"]
    out["p99_delta_ms"] = out["on"]["p99_ms"] - out["off"]["p99_ms"]
    out["rate_rps"] = rate_rps
    out["routes_in_log"] = logged
    return out


async def open_loop(stub, rate_rps: float, n: int) -> list[float]:  # noqa: ANN001
    """Latencies (ms) of n routes sent at a fixed rate, whatever each one takes."""
    latencies: list[float] = []

    async def one() -> None:
        t = time.perf_counter()
        await stub.Route(REQUEST, timeout=30)
        latencies.append((time.perf_counter() - t) * 1000)

    started, tasks = time.perf_counter(), []
    for i in range(n):
        delay = started + i / rate_rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class ThrowawayPostgres:
    """A PostgreSQL cluster of our own in a scratch folder (trust auth, its own port), run as the `postgres`
    system user when we are root (initdb refuses root)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir, self.data, self.port = bindir, root / "pg", _free_port()
        self.sock = root / "sock"
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.prefix:
            os.chmod(root.parent, 0o755)  # a TemporaryDirectory is 0700: the postgres user must reach into it
        for p in (root, self.sock):
            p.mkdir(parents=True, exist_ok=True)
            if self.prefix:
                shutil.chown(p, "postgres")

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.data.parent / "pg.log"),
                  "-o", f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


async def database_restart(rate_rps: float = 50.0, seconds: float = 12.0, down_at: float = 3.0,
                           down_for: float = 4.0) -> dict[str, Any]:
    bindir = _pg_bin()
    if bindir is None or shutil.which("runuser") is None and os.geteuid() == 0:
        return {"skipped": "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"}
    with tempfile.TemporaryDirectory() as scratch:
        pg = ThrowawayPostgres(bindir, Path(scratch) / "pgroot")
        pg.init()
        pg.start()
        stack = _replay_stack(Path(scratch))
        stack.env.update(ESCALON_DATABASE_URL=pg.url, ESCALON_ROUTE_LOG_FLUSH_S="0.2")
        answered = failed = 0
        try:
            await start_stack(stack, timeout_s=180, echo=lambda *_: None, collect_traces=False)
            async with grpc.aio.insecure_channel(stack.router_address) as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                n = int(rate_rps * seconds)
                lat: list[float] = []
                during: list[float] = []  # routes sent while the database was down

                async def one() -> None:
                    nonlocal answered, failed
                    t = time.perf_counter()
                    try:
                        await stub.Route(REQUEST, timeout=30)
                        answered += 1
                        ms = (time.perf_counter() - t) * 1000
                        (during if down_at <= t - started <= down_at + down_for else lat).append(ms)
                    except grpc.aio.AioRpcError:
                        failed += 1

                async def outage() -> None:
                    await asyncio.sleep(down_at)
                    await asyncio.to_thread(pg.stop)
                    await asyncio.sleep(down_for)
                    await asyncio.to_thread(pg.start)

                chaos = asyncio.create_task(outage())
                started, tasks = time.perf_counter(), []
                for i in range(n):
                    delay = started + i / rate_rps - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(one()))
                await asyncio.gather(*tasks, chaos)
            from sqlalchemy import text

            from escalon.db.engine import open_database

            engine = open_database(pg.url)
            recorded = 0
            for _ in range(60):  # the writer retries with backoff (up to 30 s between tries)
                with contextlib.suppress(Exception), engine.connect() as conn:
                    recorded = conn.execute(text("SELECT count(*) FROM routes")).scalar()
                if recorded >= answered:
                    break
                await asyncio.sleep(1)
            engine.dispose()
        finally:
            await stop_stack(stack)
            with contextlib.suppress(Exception):
                pg.stop()
        log = (Path(scratch) / "logs" / "router.log").read_text(errors="replace")
    said = [line.split(": ", 1)[-1][:160] for line in log.splitlines() if "route log" in line]
    return {"sent": n, "answered": answered, "failed": failed, "recorded": recorded,
            "lost": answered - recorded, "outage_s": down_for,
            "database_up": {"n": len(lat), "p50_ms": statistics.median(lat), "p99_ms": _percentile(lat, 0.99)},
            "database_down": {"n": len(during), "p50_ms": statistics.median(during) if during else None,
                              "p99_ms": _percentile(during, 0.99) if during else None},
            "router_said": said}


async def budget_under_concurrency(clients: int = 20, budget_usd: float = 0.01) -> dict[str, Any]:
    from escalon.db.engine import ready_database
    from escalon.db.keys import create_key
    from escalon.registry import load_catalogue

    with tempfile.TemporaryDirectory() as scratch:
        stack = _replay_stack(Path(scratch))
        url = f"sqlite:///{Path(scratch) / 'escalon.sqlite'}"
        engine = ready_database(url)
        _, key = create_key(engine, tenant="bench", budget_day_usd=budget_usd,
                            known_rungs=load_catalogue().names)
        spent, answered, refused, errors = 0.0, 0, 0, []
        try:
            await start_stack(stack, timeout_s=180, echo=lambda *_: None, collect_traces=False)
            async with grpc.aio.insecure_channel(stack.router_address) as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                metadata = (("authorization", f"Bearer {key}"),)
                capped = router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=AnswerType.ANSWER_TYPE_NUMBER,
                                                 max_tokens=200)

                async def client() -> None:
                    nonlocal spent, answered, refused
                    for _ in range(500):
                        try:
                            r = await stub.Route(capped, metadata=metadata, timeout=30)
                        except grpc.aio.AioRpcError as exc:
                            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                                refused += 1
                                errors.append(exc.details())
                            else:
                                errors.append(f"{exc.code().name}: {exc.details()}")
                            return
                        spent += r.total_cost_usd
                        answered += 1

                await asyncio.gather(*(client() for _ in range(clients)))
        finally:
            await stop_stack(stack)
        from sqlalchemy import text

        with engine.connect() as conn:
            charged = conn.execute(text("SELECT coalesce(sum(spent_usd), 0) FROM key_spend WHERE period LIKE 'day:%'")
                                   ).scalar()
        engine.dispose()
    return {"clients": clients, "budget_usd": budget_usd, "routes_answered": answered, "spent_usd": spent,
            "charged_in_db_usd": charged, "overspend_usd": max(0.0, spent - budget_usd),
            "refused_clients": refused, "refusal": errors[0] if errors else ""}


def request_path_cost(n: int = 5000) -> dict[str, Any]:
    """What logging adds on the request path itself, without the machine's load in the way: building the row
    of a two-attempt route and queueing it (the write happens later, on the writer's thread)."""
    from escalon.db.routelog import RouteLogWriter
    from escalon.gen.common.v1 import common_pb2
    from escalon.router.policy import RoutePlan
    from escalon.router.route_record import route_row

    scores = [common_pb2.JudgeScore(judge=j, score=0.5) for j in ("agreement", "entropy", "fsd", "cross_model")]
    response = router_pb2.RouteResponse(answer="8", rung="gpt-4", total_cost_usd=0.0034, confidence=0.8,
                                        request_id="r", attempts=[
        router_pb2.RungAttempt(rung=r, samples=1, cost_usd=0.001, answer="x" * 400, judge_scores=scores,
                               usage=common_pb2.Usage(input_tokens=56, output_tokens=130)) for r in ("a", "b")])
    plan = RoutePlan(("a", "b"), "cheapest-first", "fixed cascade", 0.7)

    async def go() -> list[float]:
        writer = RouteLogWriter("sqlite:///:memory:", queue_size=n + 1)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            writer.submit(route_row(REQUEST, response=response, plan=plan, key=None, keep_text=False, latency_ms=1.0))
            times.append((time.perf_counter() - t) * 1e6)
        return times

    times = asyncio.run(go()) if not _in_loop() else []
    return {"n": n, "p50_us": statistics.median(times), "p99_us": _percentile(times, 0.99)}


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


async def run(requests: int) -> dict[str, Any]:
    return {"logging_overhead": await logging_overhead(requests),
            "database_restart": await database_restart(),
            "budget": await budget_under_concurrency()}


def main(requests: int, out: Path | None) -> int:
    figures = {"request_path_cost": request_path_cost(), **asyncio.run(run(requests))}
    print(json.dumps(figures, indent=1))
    if out:
        out.write_text(json.dumps(figures, indent=1))
        print(f"written to {out}")
    return 0

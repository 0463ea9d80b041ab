"""Faults on real processes: `escalon up` (the README's command) on free ports in a scratch data dir, serving
on its in-process runtime with the two replay rungs (no model to load), then kill -9 of the serving front, the
judge and the Celery worker mid-job, a second server on a taken port, and finally kill -9 of `escalon up`
itself. For each: what clients saw, how long until recovery, and that nothing was lost. The figures are
printed (`-s`) and written to $ESCALON_FAULT_REPORT when set.

Killing a Ray replica and the Redis broker are covered by tests/integration/serving and
tests/integration/distill/test_distill_broker_loss.py (its own redis-server on a free port).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.distill.v1 import distill_pb2, distill_pb2_grpc
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.offline.stack import DEMO_PROMPT
from tests.integration.distill.stack import DEMO, FAST

pytestmark = pytest.mark.integration
SERVICES = ("router", "judge", "serving", "distill", "gateway")
FIGURES: dict[str, dict] = {}


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Stack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = dict(zip(SERVICES, _free_ports(len(SERVICES)), strict=True))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ESCALON_", "OTEL_"))}
        self.env.update(FAST, ESCALON_DATA_DIR=str(data_dir), OTEL_TRACES_EXPORTER="none",
                        ESCALON_SERVING_RUNTIME="inprocess", ESCALON_SERVING_RUNGS="mixtral-8x7b,gpt-4",
                        ESCALON_ROUTER_RUNGS='["mixtral-8x7b","gpt-4"]', ESCALON_ROUTER_DEPENDENCY_CHECK_S="0.5",
                        ESCALON_GRACE_SECONDS="1",
                        **{f"ESCALON_{name.upper()}_PORT": str(port) for name, port in self.ports.items()})
        self.log = data_dir / "up.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 300) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "escalon.cli", "up"], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while "Serving until Ctrl-C" not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.5)

    def child(self, module: str) -> psutil.Process:
        for proc in psutil.Process(self.process.pid).children():
            if module in _command(proc):
                return proc
        raise AssertionError(f"no child running {module}")

    def health(self, name: str) -> str:
        with grpc.insecure_channel(f"127.0.0.1:{self.ports[name]}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError as exc:
                return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def healthz(self) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports['gateway']}/healthz", timeout=2).status_code
        except httpx.HTTPError:
            return 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("faults"))
    stack.start()
    yield stack
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGINT)
        try:
            stack.process.wait(60)
        except subprocess.TimeoutExpired:
            stack.process.kill()
    if os.environ.get("ESCALON_FAULT_REPORT"):
        Path(os.environ["ESCALON_FAULT_REPORT"]).write_text(json.dumps(FIGURES, indent=1))
    print("\nfaults:", json.dumps(FIGURES, indent=1))


class Traffic:
    """Routes the demo question every 0.1 s from a thread, counting what the client saw."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)
        self.seen: Counter[str] = Counter()
        self.details: dict[str, str] = {}
        self.last_ok = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.stub.Route(router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=AnswerType.ANSWER_TYPE_NUMBER),
                                timeout=10)
                self.seen["OK"] += 1
                self.last_ok = time.monotonic()
            except grpc.RpcError as exc:
                self.seen[exc.code().name] += 1
                self.details.setdefault(exc.code().name, (exc.details() or "")[:160])
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(15)
        self.channel.close()


def _command(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:  # gone, or a zombie not yet reaped by `escalon up`
        return ""


def _until(predicate, timeout_s: float, step_s: float = 0.2) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s}s"
        time.sleep(step_s)
    return time.monotonic() - started


@pytest.mark.parametrize(("victim", "module"), [("serving", "escalon.serving"), ("judge", "escalon.judge")])
def test_a_killed_service_is_restarted_and_health_says_so_meanwhile(stack, victim, module):
    assert stack.health("router") == "SERVING" and stack.healthz() == 200
    old = stack.child(module)
    with Traffic(stack.ports["router"]) as traffic:
        _until(lambda: traffic.seen["OK"] >= 3, 60)
        killed_at = time.monotonic()
        old.send_signal(signal.SIGKILL)
        _until(lambda: stack.health("router") == "NOT_SERVING", 15, 0.05)
        not_serving_s = time.monotonic() - killed_at
        healthz_503 = stack.healthz()
        _until(lambda: any(module in _command(p) and p.pid != old.pid
                           for p in psutil.Process(stack.process.pid).children()), 30)
        restarted_s = time.monotonic() - killed_at
        _until(lambda: stack.health("router") == "SERVING", 90)
        serving_s = time.monotonic() - killed_at
        _until(lambda: traffic.last_ok > killed_at + serving_s, 90)
        recovered_s = traffic.last_ok - killed_at
    seen = dict(traffic.seen)
    FIGURES[f"kill -9 {victim}"] = {
        "routes_seen": seen, "first_error": traffic.details, "router_not_serving_after_s": round(not_serving_s, 2),
        "gateway_healthz_meanwhile": healthz_503, "restarted_after_s": round(restarted_s, 2),
        "router_serving_again_after_s": round(serving_s, 2), "first_ok_route_after_s": round(recovered_s, 2)}
    assert set(seen) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, traffic.details
    assert healthz_503 == 503
    log = stack.log.read_text()
    assert f"escalon up: {victim} (pid {old.pid}) exited with code -9 after" in log and "restarting in 1s" in log


def test_a_worker_killed_mid_job_is_restarted_and_the_job_resumes(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['distill']}") as channel:
        stub = distill_pb2_grpc.DistillServiceStub(channel)
        params = Struct()
        params.update({"benchmark": str(DEMO), "chunk_rows": 4, "step_delay_s": 0.25})
        stub.SubmitJob(distill_pb2.SubmitJobRequest(job_id="fault-job", kind="profile", params=params), timeout=30)
        get = lambda: stub.GetJob(distill_pb2.GetJobRequest(job_id="fault-job"), timeout=10).job  # noqa: E731
        _until(lambda: get().progress >= 0.25, 120)
        worker = stack.child("escalon.distill worker")
        at_kill = get()
        killed_at = time.monotonic()
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool, as a lost container
        _until(lambda: get().state in (distill_pb2.JOB_STATE_SUCCEEDED, distill_pb2.JOB_STATE_FAILED), 180)
        final = get()
        jobs = stub.ListJobs(distill_pb2.ListJobsRequest(), timeout=10).jobs
    FIGURES["kill -9 worker mid-job"] = {
        "progress_at_kill": round(at_kill.progress, 3), "final_state": distill_pb2.JobState.Name(final.state),
        "attempts": final.attempts, "done_after_kill_s": round(time.monotonic() - killed_at, 2),
        "jobs_listed": len(jobs)}
    assert final.state == distill_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.attempts == 2 and [j.job_id for j in jobs] == ["fault-job"]  # nothing lost, nothing doubled
    assert "worker (pid" in stack.log.read_text()


def test_a_second_server_on_a_taken_port_refuses_naming_the_holder(stack):
    judge = stack.child("escalon.judge")
    second = subprocess.run([sys.executable, "-m", "escalon.judge"], env=stack.env, capture_output=True, text=True,
                            timeout=120)
    FIGURES["second judge on the same port"] = {"exit": second.returncode, "message": second.stderr.strip()[-300:]}
    assert second.returncode == 1
    assert f"port {stack.ports['judge']}" in second.stderr and f"pid {judge.pid}" in second.stderr
    assert stack.health("judge") == "SERVING"


def test_no_prompt_text_in_any_service_log(stack):
    """Every test above routed the demo question hundreds of times through real processes."""
    logs = {p.name: p.read_text(errors="replace") for p in (stack.data_dir / "logs").glob("*.log")}
    assert {"router.log", "serving.log", "judge.log", "gateway.log"} <= set(logs)
    leaked = [name for name, text in logs.items() if "chocolate bars" in text or "Lisa and Peter" in text]
    FIGURES["prompt text in logs"] = {"log files": len(logs), "bytes": sum(map(len, logs.values())), "leaked": leaked}
    assert not leaked


def test_killing_escalon_up_takes_every_child_with_it(stack):
    children = psutil.Process(stack.process.pid).children(recursive=True)
    assert len(children) >= 6
    killed_at = time.monotonic()
    stack.process.send_signal(signal.SIGKILL)
    stack.process.wait(10)
    gone_s = _until(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 60)

    def bound(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    FIGURES["kill -9 escalon up"] = {"children": len(children), "all_gone_after_s": round(gone_s, 2),
                                     "ports_still_open": [p for p in stack.ports.values() if bound(p)]}
    assert FIGURES["kill -9 escalon up"]["ports_still_open"] == []
    assert time.monotonic() - killed_at < 60

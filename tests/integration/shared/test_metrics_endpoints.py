"""Every service's /metrics, scraped over HTTP and parsed as Prometheus exposition text.

The whole request path runs for real: serving (in-process runtime, the replay rungs), judge, router, the distill
front (SQLite job store and broker under a temporary data dir) and the gateway under uvicorn, each with its own
metrics endpoint on a free port (metrics_port=0). One chat completion through the gateway and one job submitted
to the distill front must then show up as the series the dashboard and the alerts read. The Celery worker's
endpoint is scraped from a real `python -m escalon.distill worker` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import httpx
import pytest
import uvicorn
from google.protobuf import struct_pb2
from prometheus_client.parser import text_string_to_metric_families

import escalon.metrics

from escalon.distill.servicer import DistillService
from escalon.distill.settings import DistillSettings
from escalon.gateway.app import create_app
from escalon.gateway.settings import GatewaySettings
from escalon.gen.distill.v1 import distill_pb2, distill_pb2_grpc
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.grpc import running_server
from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.offline.stack import DEMO_PROMPT
from escalon.registry import Catalogue, load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, list]:
    """name → samples of every family the endpoint exposes; fails on text the Prometheus parser rejects."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def scrape_async(port: int) -> dict[str, list]:
    return await asyncio.to_thread(scrape, port)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry is the process's, and other tests in this process (the fuzz suite, the router's, the gateway's)
    record into it too: this test's services get a registry of their own, so its counts are exact."""
    monkeypatch.setattr(escalon.metrics, "_metrics", escalon.metrics.Metrics())


async def test_every_service_serves_metrics_that_parse(tmp_path, fresh_registry):
    default = load_catalogue()
    catalogue = Catalogue(rungs=[default.get("mixtral-8x7b"), default.get("gpt-4")])
    async with contextlib.AsyncExitStack() as stack:
        serving_settings = ServingSettings(port=0, runtime="inprocess", data_dir=tmp_path, metrics_port=0)
        serving = await stack.enter_async_context(
            running_server(ServingService(serving_settings, catalogue), serving_settings, "escalon-serving"))
        judge_settings = JudgeSettings(port=0, metrics_port=0)
        judge = await stack.enter_async_context(
            running_server(JudgeService(judge_settings), judge_settings, "escalon-judge"))
        router_settings = RouterSettings(port=0, serving_address=serving.address, judge_address=judge.address,
                                         data_dir=tmp_path, metrics_port=0)
        router = await stack.enter_async_context(
            running_server(RouterService(router_settings, catalogue), router_settings, "escalon-router"))
        distill_settings = DistillSettings(port=0, data_dir=tmp_path, metrics_port=0)
        distill = await stack.enter_async_context(
            running_server(DistillService(distill_settings), distill_settings, "escalon-distill"))

        gateway_settings = GatewaySettings(port=free_port(), router_address=router.address,
                                           serving_address=serving.address, distill_address=distill.address,
                                           grace_seconds=1, metrics_port=0)
        app = create_app(gateway_settings)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=gateway_settings.port, lifespan="on",
                                               log_config=None, access_log=False, timeout_graceful_shutdown=1))
        task = asyncio.create_task(server.serve())
        stack.push_async_callback(lambda: task)
        stack.callback(lambda: setattr(server, "should_exit", True))
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.02)
        assert server.started, "uvicorn did not start"

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway_settings.port}", timeout=60) as http:
            reply = await http.post("/v1/chat/completions", json={
                "model": "escalon/auto", "messages": [{"role": "user", "content": DEMO_PROMPT}]})
            assert reply.status_code == 200, reply.text
            assert (await http.get("/v1/no-such-route")).status_code == 404
        async with grpc.aio.insecure_channel(router.address) as channel:  # a refusal is counted with its code
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(prompt=" "), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        async with grpc.aio.insecure_channel(distill.address) as channel:
            params = struct_pb2.Struct()
            params.update({"benchmark": str(default.get("gpt-4").benchmark)})
            await distill_pb2_grpc.DistillServiceStub(channel).SubmitJob(
                distill_pb2.SubmitJobRequest(job_id="metrics-1", kind="profile", params=params), timeout=30)

        ports = {"router": router.metrics_port, "judge": judge.metrics_port, "serving": serving.metrics_port,
                 "distill": distill.metrics_port, "gateway": app.state.metrics_port}
        assert all(ports.values()) and len(set(ports.values())) == 5, ports
        scraped = {name: await scrape_async(port) for name, port in ports.items()}

    # Every endpoint exposes the exposition format; the processes' instruments are shared in this test process,
    # so each service's own series are read where that service served them.
    for name, families in scraped.items():
        assert "rpc_server_call_duration_seconds" in families, name
        assert "process_cpu_seconds" in families, name

    rpc = scraped["router"]["rpc_server_call_duration_seconds"]
    route_calls = value(rpc, "rpc_server_call_duration_seconds_count", rpc_service="escalon.router.v1.RouterService",
                        rpc_grpc_status_code="OK")
    assert route_calls >= 1
    assert value(rpc, "rpc_server_call_duration_seconds_count", rpc_service="escalon.router.v1.RouterService",
                 rpc_method="Route", rpc_grpc_status_code="INVALID_ARGUMENT") == 1
    active = scraped["router"]["escalon_rpc_server_active_calls"]
    assert value(active, "escalon_rpc_server_active_calls", rpc_method="Route") == 0  # every call ended
    assert value(rpc, "rpc_server_call_duration_seconds_count", rpc_service="escalon.serving.v1.ModelServingService",
                 rpc_method="Generate", rpc_grpc_status_code="OK") >= 2  # the cheap rung, then the escalation
    assert value(rpc, "rpc_server_call_duration_seconds_count",
                 rpc_service="escalon.judge.v1.JudgeService", rpc_method="Score") >= 2

    router_families = scraped["router"]
    assert value(router_families["escalon_rung_attempts"], "escalon_rung_attempts_total",
                 escalon_rung="mixtral-8x7b") >= 1
    assert value(router_families["escalon_rung_escalations"], "escalon_rung_escalations_total",
                 escalon_rung="mixtral-8x7b") >= 1  # the demo question's cheap answer is wrong
    assert value(router_families["escalon_rung_cost_usd"], "escalon_rung_cost_usd_total") > 0
    assert value(router_families["escalon_route_decision_duration_seconds"],
                 "escalon_route_decision_duration_seconds_count", escalon_route_policy="cheapest-first") >= 1
    assert value(router_families["gen_ai_client_token_usage"], "gen_ai_client_token_usage_sum",
                 gen_ai_token_type="output") > 0
    assert value(router_families["escalon_rung_judge_confidence"], "escalon_rung_judge_confidence_count") >= 2

    serving_families = scraped["serving"]
    assert value(serving_families["escalon_serving_output_tokens"], "escalon_serving_output_tokens_total") > 0
    assert value(serving_families["escalon_serving_requests_in_flight"], "escalon_serving_requests_in_flight") == 0

    assert value(scraped["judge"]["escalon_judge_verdicts"], "escalon_judge_verdicts_total") > 0

    http_samples = scraped["gateway"]["http_server_request_duration_seconds"]
    assert value(http_samples, "http_server_request_duration_seconds_count", http_route="/v1/chat/completions",
                 http_request_method="POST", http_response_status_code="200") == 1
    assert value(http_samples, "http_server_request_duration_seconds_count", http_route="",
                 http_response_status_code="404") == 1  # an unmatched path: no raw path as a label

    distill_families = scraped["distill"]
    assert value(distill_families["escalon_jobs"], "escalon_jobs", escalon_job_kind="profile", state="queued") == 1
    assert value(distill_families["escalon_distill_queue_length"], "escalon_distill_queue_length", queue="cpu") == 1
    assert value(distill_families["escalon_jobs_submitted"], "escalon_jobs_submitted_total",
                 escalon_job_kind="profile") >= 1


def test_the_celery_worker_serves_metrics(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALON_")}
    env["ESCALON_DATA_DIR"] = str(tmp_path)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "escalon.distill", "worker", "--pool", "solo",
                                 "--metrics-port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, families = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                families = scrape(port)
                break
            time.sleep(0.1)
        assert families is not None, f"no /metrics from the worker; its log:\n{log.read_text()[-2000:]}"
        assert "escalon_worker_tasks_received" in families and "process_resident_memory_bytes" in families
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

"""The whole stack, started the way the README starts it (`escalon up`), on free ports in a scratch data dir.

Real processes, real models: SmolLM2 and Gemma answer through Ray Serve, the judge scores, the router
climbs to the replay rungs, a Celery worker runs a job from the queue. Traces go to an OTLP receiver
run by this test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.answers import parse_number
from escalon.offline.stack import DEMO_PROMPT
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.tracecollector import TraceCollector

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("router", "judge", "serving", "distill", "gateway")  # the gateway speaks HTTP, the others gRPC


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    collector = TraceCollector()
    await collector.start()
    data_dir = tmp_path_factory.mktemp("escalon-e2e")
    ports = dict(zip(SERVICES, _free_ports(len(SERVICES))))
    env = dict(os.environ, ESCALON_DATA_DIR=str(data_dir), OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
               **{f"ESCALON_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    # Converted model weights are reused across runs when the developer's cache has them.
    env.setdefault("ESCALON_MODEL_CACHE", str(Path.home() / ".cache" / "escalon" / "models"))
    log = (data_dir / "up.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "escalon.cli", "up"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        await _wait_all_serving(ports, process, data_dir / "up.log", timeout_s=900)
        yield {"ports": ports, "env": env, "collector": collector, "process": process, "data_dir": data_dir}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
        await collector.stop()


async def _wait_all_serving(ports, process, log_path, timeout_s):
    deadline = time.monotonic() + timeout_s
    for name, port in ports.items():
        if name == "gateway":
            await _wait_http_ready(f"http://127.0.0.1:{port}/healthz", process, log_path, deadline)
            continue
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if process.poll() is not None:
                    pytest.fail(f"escalon up exited early:\n{log_path.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} not SERVING in {timeout_s}s:\n{log_path.read_text()[-4000:]}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(1)


async def _wait_http_ready(url, process, log_path, deadline):
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if process.poll() is not None:
                pytest.fail(f"escalon up exited early:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the gateway was not ready at {url}:\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(1)


async def _route(stack, **fields) -> router_pb2.RouteResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack['ports']['router']}") as channel:
        return await router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(**fields), timeout=600)


async def test_a_real_local_model_answers_through_the_router_and_the_trace_spans_every_service(stack):
    response = await _route(stack, prompt="What is the capital of France? Answer in one word.",
                            pin_rung="smollm2-135m")
    assert response.rung == "smollm2-135m" and response.answer.strip()
    attempt = response.attempts[0]
    assert attempt.samples == 3 and attempt.usage.output_tokens > 0 and attempt.cost_usd > 0
    spans = await stack["collector"].wait_for(response.trace_id, {"escalon-router", "escalon-serving", "escalon-judge"})
    services = {s.service for s in spans}
    assert {"escalon-router", "escalon-serving", "escalon-judge"} <= services, services


async def test_the_demo_question_climbs_the_cascade_and_accounts_for_every_rung(stack):
    response = await _route(stack, prompt=DEMO_PROMPT, answer_type=AnswerType.ANSWER_TYPE_NUMBER)
    tried = [a.rung for a in response.attempts]
    assert tried[:2] == ["smollm2-135m", "gemma3-270m"]  # cheapest first, real local models
    assert len(tried) >= 3, f"the local models were trusted on a question they cannot do: {response}"
    assert response.total_cost_usd == pytest.approx(sum(a.cost_usd for a in response.attempts))
    assert response.rung in tried and response.reason
    # GSM8K's answer is 8 (3.5 + 4.5 boxes hold 64 bars): GPT-4's recorded answer, Mixtral's (1.97) is wrong
    assert parse_number(response.answer) == "8", f"the demo ended wrong: {response.rung}: {response.answer!r}"


async def test_bad_input_is_rejected_with_the_field_named(stack):
    for fields, field in [({"prompt": ""}, "prompt"), ({"prompt": "x" * 40_000}, "prompt"),
                          ({"prompt": "hi", "pin_rung": "gpt-9"}, "pin_rung"),
                          ({"prompt": "hi", "max_cost_usd": -1}, "max_cost_usd")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _route(stack, **fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field)


def _cli(stack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "escalon.cli", *args], env=stack["env"], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


async def test_the_cli_asks_lists_models_and_runs_a_job_on_the_queue(stack):
    models = await asyncio.to_thread(_cli, stack, "models")
    assert models.returncode == 0, models.stderr
    assert "smollm2-135m" in models.stdout and "gpt-4" in models.stdout
    asked = await asyncio.to_thread(_cli, stack, "ask", "Is water wet?", "--rung", "smollm2-135m")
    assert asked.returncode == 0, asked.stderr
    assert "answer" in asked.stdout and "smollm2-135m" in asked.stdout
    sample = str(ROOT / "shared" / "escalon" / "demo" / "gsm8k-sample.parquet")
    job = await asyncio.to_thread(_cli, stack, "jobs", "submit", "profile", "--param", f"benchmark={sample}",
                                  "--param", "split=test", "--id", "e2e-profile", "--watch")
    assert job.returncode == 0, job.stdout + job.stderr
    assert "succeeded" in job.stdout and "gpt-4-1106-preview" in job.stdout
    unknown = await asyncio.to_thread(_cli, stack, "jobs", "status", "no-such-job")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


async def test_the_gateway_serves_the_openai_api_and_the_operators_page_of_this_stack(stack):
    base = f"http://127.0.0.1:{stack['ports']['gateway']}"
    async with httpx.AsyncClient(timeout=600) as client:
        models = (await client.get(f"{base}/v1/models")).json()
        ids = {m["id"] for m in models["data"]}
        assert {"escalon/auto", "smollm2-135m", "gpt-4"} <= ids, ids
        reply = await client.post(f"{base}/v1/chat/completions", json={
            "model": "smollm2-135m", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello."}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] and reply.headers["x-escalon-rung"] == "smollm2-135m"
        page = await client.get(f"{base}/ops")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]


async def test_ctrl_c_stops_every_service_gracefully(stack):
    process = stack["process"]
    process.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(process.wait, 120) == 0
    for port in stack["ports"].values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listening after stop"

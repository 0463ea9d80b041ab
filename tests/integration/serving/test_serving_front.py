"""ModelServingService through real stubs on a free port: over Ray Serve deployments, and in-process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from escalon.errors import ConfigError, RungUnavailable
from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc
from escalon.grpc import open_channel, running_server
from escalon.registry import load_catalogue
from escalon.serving.servicer import ServingService
from escalon.serving.tiers import RayTiers
from escalon.telemetry import configure_telemetry, tracer

pytestmark = pytest.mark.integration
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DEMO_BENCHMARK = Path(__file__).resolve().parents[3] / "shared" / "escalon" / "demo" / "gsm8k-sample.parquet"


@pytest.fixture(params=["ray", "inprocess"])
def front(request):
    return request.getfixturevalue(f"{request.param}_front")


@pytest.fixture
async def stub(front):
    async with grpc.aio.insecure_channel(front.address) as channel:
        yield serving_pb2_grpc.ModelServingServiceStub(channel)


async def test_health_said_serving_only_after_the_deployments_were_up(ray_front):
    from ray import serve

    seen = ray_front.health_seen_while_starting
    # asked repeatedly while Ray and the replicas started: NOT_SERVING throughout, then SERVING at most in the
    # last replies (a check can land between the server turning SERVING and its start returning), never back
    first = seen.index(SERVING) if SERVING in seen else len(seen)
    assert first >= 3 and set(seen[:first]) == {NOT_SERVING} and set(seen[first:]) <= {SERVING}, seen
    async with grpc.aio.insecure_channel(ray_front.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == SERVING
    status = await asyncio.to_thread(serve.status)
    for rung in ("smollm2-135m", "mixtral-8x7b"):
        app = status.applications[rung]
        assert app.status == "RUNNING" and all(d.status == "HEALTHY" for d in app.deployments.values())


async def test_reflection_lists_the_service(ray_front):
    async with grpc.aio.insecure_channel(ray_front.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name async for reply in replies for s in reply.list_services_response.service]
    assert "escalon.serving.v1.ModelServingService" in names and "grpc.health.v1.Health" in names


async def test_generate_returns_real_text_and_logprobs_from_the_local_model(stub):
    response = await stub.Generate(serving_pb2.GenerateRequest(
        rung="smollm2-135m", prompt="What is 12 times 7?", n=2, temperature=1.0, seed=5, logprobs=True, top_logprobs=2))
    assert response.rung == "smollm2-135m" and len(response.samples) == 2
    for sample in response.samples:
        assert sample.text.strip() and sample.output_tokens == len(sample.logprobs) == 8  # the rung's max_tokens
        assert sample.finish_reason == "length"
        token = sample.logprobs[0]
        assert token.logprob <= 0 and token.entropy >= 0 and token.HasField("self_certainty") and len(token.top) == 2
    usage = response.usage
    assert usage.input_tokens > 20 and usage.output_tokens == 16  # the chat template counted exactly
    assert usage.cost_usd == pytest.approx((usage.input_tokens + usage.output_tokens) * 0.005 / 1e6)
    assert not response.HasField("reference_score") and response.latency_ms > 0


async def test_the_replay_rung_answers_with_the_recorded_cost_and_score(stub, recorded):
    response = await stub.Generate(serving_pb2.GenerateRequest(rung="mixtral-8x7b", prompt=recorded["prompt"]))
    assert response.samples[0].text == recorded["response"]
    assert response.usage.cost_usd == pytest.approx(recorded["cost_usd"]) and response.reference_score == recorded["score"]


async def test_a_rungs_own_errors_cross_the_hop_with_their_status(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(serving_pb2.GenerateRequest(rung="mixtral-8x7b", prompt="What is the capital of France?"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # healthy, but no answer for this prompt: the reason rides in the trailing metadata
    assert dict(err.value.trailing_metadata())["escalon-reason"] == "not-answerable"
    assert err.value.details() == f"prompt not recorded for {MIXTRAL} in {DEMO_BENCHMARK}"
    # ~600 characters look like 150 tokens to the front, but are ~600 tokens: the replica's tokenizer says no.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(serving_pb2.GenerateRequest(rung="smollm2-135m", prompt="7 " * 300))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("prompt: ") and "context limit of 512 tokens" in err.value.details()


async def test_list_models_shows_every_rung_with_its_health(stub):
    rungs = {r.name: r for r in (await stub.ListModels(serving_pb2.ListModelsRequest())).rungs}
    assert set(rungs) == {"smollm2-135m", "mixtral-8x7b"}
    local = rungs["smollm2-135m"]
    assert local.healthy and local.status == "smollm2-135m-instruct on cpu, 1 torch thread"
    assert (local.backend, local.prompt_format, local.context_limit, local.input_usd_per_1m) == ("local-gguf", "chat", 512, 0.005)
    assert rungs["mixtral-8x7b"].healthy and "replaying 40 recorded answers" in rungs["mixtral-8x7b"].status


async def test_generate_stream_streams_pieces_then_the_whole_response(stub):
    request = serving_pb2.GenerateStreamRequest(request=serving_pb2.GenerateRequest(
        rung="smollm2-135m", prompt="Say hello to Ada.", max_tokens=6))
    messages = [m async for m in stub.GenerateStream(request)]
    pieces, last = messages[:-1], messages[-1]
    assert len(pieces) >= 2 and not any(m.done for m in pieces)
    assert last.done and "".join(m.text for m in pieces) == last.response.samples[0].text
    assert last.response.usage.output_tokens == 6


@pytest.mark.parametrize("fields, field", [
    ({"rung": "smollm2-135m", "prompt": ""}, "prompt"),
    ({"rung": "smollm2-135m", "prompt": "x" * 40_000}, "prompt"),
    ({"rung": "smollm2-135m", "prompt": "hi", "n": 40}, "n"),
    ({"rung": "smollm2-135m", "prompt": "hi", "temperature": 3}, "temperature"),
    ({"rung": "smollm2-135m", "prompt": "hi", "max_tokens": 600}, "max_tokens"),
    ({"rung": "smollm2-135m", "prompt": "hi", "top_logprobs": 25}, "top_logprobs"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(stub, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(serving_pb2.GenerateRequest(**fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(f"{field}: ")


async def test_an_unknown_rung_lists_the_known_ones(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(serving_pb2.GenerateRequest(rung="gpt-9", prompt="hi"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "rung: unknown rung 'gpt-9'; known rungs: smollm2-135m, mixtral-8x7b"


async def test_one_trace_runs_from_the_caller_through_the_front_into_the_ray_replica(ray_front, recorded):
    exporter = InMemorySpanExporter()
    configure_telemetry("escalon-tests").provider.add_span_processor(SimpleSpanProcessor(exporter))
    channel = open_channel(ray_front.address)  # carries the trace context, as the router's channel does
    with tracer("tests").start_as_current_span("caller") as caller:
        await serving_pb2_grpc.ModelServingServiceStub(channel).Generate(
            serving_pb2.GenerateRequest(rung="mixtral-8x7b", prompt=recorded["prompt"]))
    await channel.close()
    trace_id = caller.get_span_context().trace_id
    hop = next(s for s in exporter.get_finished_spans() if s.name == "escalon.serving.ray/Generate")
    assert hop.context.trace_id == trace_id  # the front's span around the Ray call joined the caller's trace

    # The replica runs in another process; its console exporter wrote its spans to its Ray worker log.
    logs = Path(ray_front.settings.ray_session_dir) / "session_latest" / "logs"
    deadline = time.monotonic() + 20
    while (replica := _replica_span(logs, trace_id)) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    assert replica is not None, "the replica's span never appeared in its worker log"
    assert replica["parent_id"] == f"0x{hop.context.span_id:016x}"
    assert replica["attributes"]["escalon.rung"] == "mixtral-8x7b"
    assert replica["resource"]["attributes"]["service.name"] == "escalon-serving-mixtral-8x7b"


def _replica_span(logs: Path, trace_id: int) -> dict | None:
    wanted = f"0x{trace_id:032x}"
    decoder = json.JSONDecoder()
    for log in logs.glob("worker-*.out"):
        text = log.read_text(errors="replace")
        if wanted not in text:
            continue
        start = text.find("{")
        while start >= 0:
            try:
                span, end = decoder.raw_decode(text, start)
            except ValueError:
                start = text.find("{", start + 1)
                continue
            if isinstance(span, dict) and span.get("context", {}).get("trace_id") == wanted \
                    and span.get("name") == "escalon.serving.replica/Generate":
                return span
            start = text.find("{", end)
    return None


async def test_attach_mode_uses_the_deployed_applications_and_names_missing_ones(ray_front):
    """deploy=false is how the front runs beside a KubeRay RayService: it only looks the applications up."""
    settings = ray_front.settings.model_copy(update={"deploy": False, "port": 0, "rungs": ["mixtral-8x7b"]})
    catalogue = load_catalogue(settings.catalogue)
    async with running_server(ServingService(settings, catalogue), settings, "escalon-serving") as attached:
        async with grpc.aio.insecure_channel(attached.address) as channel:
            listed = await serving_pb2_grpc.ModelServingServiceStub(channel).ListModels(serving_pb2.ListModelsRequest())
    assert [(r.name, r.healthy) for r in listed.rungs] == [("mixtral-8x7b", True)]

    missing = RayTiers([load_catalogue().get("gpt-4")], settings)
    with pytest.raises(RungUnavailable, match="no Serve application named gpt-4 on the Ray cluster"):
        await missing.start()
    await missing.close()
    assert ray.is_initialized()  # neither front started Ray, so neither stopped it


async def test_a_rung_that_cannot_start_fails_the_deploy_with_its_replicas_reason(ray_front, tmp_path):
    from ray import serve

    broken = load_catalogue().get("mixtral-8x7b").model_copy(
        update={"name": "broken-replay", "benchmark": tmp_path / "missing.parquet"})
    tiers = RayTiers([broken], ray_front.settings)
    try:
        with pytest.raises(ConfigError) as err:
            await tiers.start()
        assert str(err.value) == (f"deploying the rungs failed: broken-replay: escalon.errors.ConfigError: replay rung "
                                  f"broken-replay: benchmark {tmp_path / 'missing.parquet'} does not exist")
    finally:
        await asyncio.to_thread(serve.delete, "broken-replay")

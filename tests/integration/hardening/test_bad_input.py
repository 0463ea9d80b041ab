"""The bad inputs issue 19 found, one by one, against real servers (stack.py): NaN budgets, huge fields echoed
into errors, undecodable bytes, calls before ready, job files outside the allowed folders, NaN job params, and
no prompt text in the logs."""

from __future__ import annotations

import asyncio
import math
import socket
from pathlib import Path

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.cli import parse_params
from escalon.distill.jobs import validate
from escalon.errors import InvalidInput
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.distill.v1 import distill_pb2, distill_pb2_grpc
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.grpc import running_server
from escalon.offline.stack import DEMO_PROMPT
from escalon.registry import Catalogue, load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings
from tests.integration.hardening.stack import services_in_a_thread

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
BAD = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with services_in_a_thread(tmp_path_factory.mktemp("bad-input")) as services:
        yield services


def _route(stack, **fields):
    with grpc.insecure_channel(stack.addresses["router"]) as channel:
        return router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(**fields), timeout=30)


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("fields", [{"max_cost_usd": math.nan}, {"max_cost_usd": math.inf},
                                    {"max_cost_usd": -math.inf}, {"max_cost_usd": -0.01},
                                    {"min_quality": math.nan}, {"min_quality": math.inf}])
def test_nan_and_infinite_knobs_are_invalid_argument(stack, fields):
    error = _refused(lambda: _route(stack, prompt=DEMO_PROMPT, **fields))
    assert error.code() == BAD and error.details().startswith(next(iter(fields)))


def test_a_nan_budget_no_longer_buys_the_dear_rung(stack):
    cheap = _route(stack, prompt=DEMO_PROMPT, answer_type=AnswerType.ANSWER_TYPE_NUMBER, max_cost_usd=0.0005)
    assert cheap.total_cost_usd <= 0.0005  # the budget holds; NaN is refused above rather than ignored


@pytest.mark.parametrize("field", ["operating_point", "pin_rung"])
def test_a_huge_field_is_not_echoed_back(stack, field):
    error = _refused(lambda: _route(stack, prompt="hi", **{field: "z" * 100_000}))
    assert error.code() == BAD and len(error.details()) < 500 and "more characters" in error.details()


def test_bad_utf8_is_invalid_argument_and_one_log_line(stack):
    before = len(stack.logs.records)
    with grpc.insecure_channel(stack.addresses["router"]) as channel:
        call = channel.unary_unary("/escalon.router.v1.RouterService/Route", request_serializer=None,
                                   response_deserializer=None)
        for _ in range(20):
            error = _refused(lambda: call(b"\x0a\x02\xff\xfe", timeout=10))  # prompt = two bytes of bad UTF-8
            assert error.code() == BAD and "not a valid Route message" in error.details()
    new = stack.logs.records[before:]
    assert not [r for r in new if r.exc_info]
    assert sum("undecodable" in r.getMessage() for r in new) <= 1  # the first of this client this minute, or none


def _submit(stack, **params):
    struct = Struct()
    struct.update(params)
    with grpc.insecure_channel(stack.addresses["distill"]) as channel:
        return distill_pb2_grpc.DistillServiceStub(channel).SubmitJob(
            distill_pb2.SubmitJobRequest(kind="profile", params=struct), timeout=30)


def test_job_files_outside_the_allowed_folders_are_refused_alike(stack, tmp_path):
    (tmp_path / "real.parquet").write_bytes(b"not parquet")  # tmp_path lies outside the service's data dir
    outside = ["/etc/passwd", "/etc/no-such-file.parquet", str(tmp_path / "real.parquet"), "../../../etc/hostname"]
    messages = []
    for path in outside:
        error = _refused(lambda: _submit(stack, benchmark=path))
        assert error.code() == BAD and error.details().startswith("params.benchmark: ")
        messages.append(error.details().replace(repr(path), "PATH"))
    assert len(set(messages)) == 1, messages  # existing or not, readable or not: one answer
    assert "outside the folders jobs may read" in messages[0]


def test_a_symlink_out_of_the_data_dir_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "bench.parquet").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput, match="outside the folders"):
        validate("profile", {"benchmark": "bench.parquet"}, data_dir)


def test_inside_the_data_dir_a_missing_file_is_named(tmp_path):
    with pytest.raises(InvalidInput, match="no benchmark file at"):
        validate("profile", {"benchmark": "missing.parquet"}, tmp_path)


def test_the_readmes_relative_path_works_from_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    params = parse_params(["benchmark=shared/escalon/demo/gsm8k-sample.parquet"])
    kind, typed = validate("profile", params, tmp_path)  # a data dir that is not the checkout
    assert Path(typed.benchmark) == ROOT / "shared" / "escalon" / "demo" / "gsm8k-sample.parquet"


def test_nan_job_params_are_invalid_argument_naming_the_key(stack):
    error = _refused(lambda: _submit(stack, benchmark="x.parquet", chunk_rows=math.inf))
    assert error.code() == BAD and error.details().startswith("params.chunk_rows")


def test_no_prompt_text_reaches_the_logs(stack):
    canary = "What is the quokka-canary 7f3a9 number plus two?"
    with pytest.raises(grpc.RpcError):  # the replay rungs have no recorded answer for it: UNAVAILABLE
        _route(stack, prompt=canary, answer_type=AnswerType.ANSWER_TYPE_NUMBER)
    _route(stack, prompt=DEMO_PROMPT, answer_type=AnswerType.ANSWER_TYPE_NUMBER)
    text = stack.logs.text()
    assert "serving on 127.0.0.1" in text  # the logs were collected
    assert "quokka-canary" not in text and "chocolate bars" not in text


async def test_a_call_before_the_router_is_ready_is_unavailable_starting():
    with socket.socket() as probe:  # a free port, so the address is known while start() is still waiting
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = RouterSettings(port=port, serving_address="127.0.0.1:1", judge_address="127.0.0.1:1",
                              dependency_wait_s=60)  # nothing answers there: start() waits for them
    service = RouterService(settings, Catalogue(rungs=[load_catalogue().get("gpt-4")]))

    async def serve():
        async with running_server(service, settings, "escalon-router"):
            await asyncio.Event().wait()

    task = asyncio.create_task(serve())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30,
                                                                     wait_for_ready=True)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(prompt="hi"), timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "starting" in caught.value.details()


def test_a_models_dir_outside_the_allowed_folders_is_refused(tmp_path):
    from escalon.distill.jobs import LocalContext

    kind, harvest = validate("harvest", {"source": "synthetic:arith", "n": 40, "seed": 3}, tmp_path)
    data = kind.run(harvest, LocalContext(artefact_dir=tmp_path / "harvest"))["artefacts"]["dataset"]
    base = {"teacher": "program:arith", "student": "smollm2-135m", "data": data}
    with pytest.raises(InvalidInput, match="params.models_dir: .* outside the folders"):
        validate("undo", {**base, "models_dir": "/etc/escalon-models"}, tmp_path)
    kind, params = validate("undo", {**base, "models_dir": str(tmp_path / "models")}, tmp_path)
    assert params.models_dir == str((tmp_path / "models").resolve())

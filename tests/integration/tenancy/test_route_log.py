"""The route log through a real router (replay rungs, the real judge), on SQLite and PostgreSQL: one row per
route with its plan and attempts, prompts only when opted in, the export `escalon eval` reads back."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from tests.integration.tenancy.stack import router_stack

from escalon.benchmark import load_benchmark
from escalon.db.engine import ready_database
from escalon.db.routes import RouteFilter, export_benchmark, export_jsonl, list_routes
from escalon.db.settings import DatabaseSettings
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.offline.stack import DEMO_PROMPT

pytestmark = pytest.mark.integration
NUMBER = AnswerType.ANSWER_TYPE_NUMBER


async def _written(service, n: int, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if service.tenancy.writer.snapshot().written >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"route log wrote {service.tenancy.writer.snapshot()} (wanted {n})")


@pytest.mark.parametrize("keep_prompts", [False, True])
async def test_every_route_is_recorded_with_its_plan_and_attempts(tmp_path, database_url, keep_prompts):
    db = DatabaseSettings(data_dir=tmp_path, database_url=database_url, route_log_flush_s=0.05,
                          route_log_prompts=keep_prompts)
    async with router_stack(tmp_path, db) as (router, service):
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            answered = await stub.Route(router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=NUMBER,
                                                                request_id="r-1", operating_point="balanced"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Route(router_pb2.RouteRequest(prompt="A question nobody recorded", request_id="r-2"))
        await _written(service, 2)
    engine = ready_database(database_url)
    rows = {r["request_id"]: r for r in list_routes(engine, RouteFilter())}
    ok, failed = rows["r-1"], rows["r-2"]
    assert ok["status"] == "OK" and ok["rung"] == answered.rung == "gpt-4"
    assert [a["rung"] for a in ok["attempts"]] == ["mixtral-8x7b", "gpt-4"]
    assert ok["attempts"][0]["escalated"] and not ok["attempts"][0]["accepted"] and not ok["attempts"][1]["escalated"]
    assert ok["total_cost_usd"] == pytest.approx(answered.total_cost_usd)
    assert sum(a["cost_usd"] for a in ok["attempts"]) == pytest.approx(ok["total_cost_usd"])
    assert ok["attempts"][1]["output_tokens"] > 0 and ok["attempts"][1]["judge_scores"]
    assert ok["plan"]["rungs"] == ["mixtral-8x7b", "gpt-4"] and ok["knob"]["threshold"] == pytest.approx(0.7)
    assert ok["policy"] == "cheapest-first" and ok["operating_point"] == "balanced"
    assert failed["status"] == "UNAVAILABLE" and "not recorded" in failed["error"] and failed["rung"] is None
    assert len(ok["prompt_sha256"]) == 64 and ok["prompt_chars"] == len(DEMO_PROMPT)
    if keep_prompts:
        assert ok["prompt"] == DEMO_PROMPT and ok["answer"] == answered.answer
        assert ok["attempts"][1]["answer"] == answered.attempts[1].answer
    else:
        assert ok["prompt"] is None and ok["answer"] is None and ok["attempts"][1]["answer"] == ""
        assert answered.answer not in json.dumps(ok)

    out = tmp_path / "traffic.parquet"
    rows_written, used, skipped = export_benchmark(engine, RouteFilter(status="OK"), out)
    if keep_prompts:
        assert (rows_written, used, skipped) == (2, 1, 0)
        bench = load_benchmark(out)  # what `escalon eval --benchmark` reads
        assert bench.n == 1 and sorted(bench.models) == ["gpt-4", "mixtral-8x7b"]
    else:
        assert (rows_written, used, skipped) == (0, 0, 1)
    assert export_jsonl(engine, RouteFilter(rung="gpt-4"), tmp_path / "r.jsonl") == 1
    engine.dispose()


async def test_a_database_that_does_not_answer_leaves_routing_alone(tmp_path, caplog):
    """Logging degrades, once and saying why; routes answer; records wait in memory, the overflow is counted."""
    db = DatabaseSettings(data_dir=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:9/none",
                          route_log_flush_s=0.01, route_log_queue=2, route_log_batch=1)
    async with router_stack(tmp_path, db) as (router, service):
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            for i in range(5):
                r = await stub.Route(router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=NUMBER))
                assert r.rung == "gpt-4"
        await asyncio.sleep(0.3)
        stats = service.tenancy.writer.snapshot()
        assert stats.written == 0 and stats.degraded and stats.dropped >= 1
        assert stats.dropped + stats.queued == 5
    degraded = [r for r in caplog.records if "route log degraded" in r.getMessage()]
    assert len(degraded) == 1 and "127.0.0.1:9" in degraded[0].getMessage()

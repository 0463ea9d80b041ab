"""Cascade routing through the real services takes the decisions the in-process Cascade takes: router (loading
an artefact whose post-hoc estimators `escalon eval` fitted) → serving (replay rungs of a synthetic benchmark)
→ judge, each a real server on a free port. The hashing encoder keeps the artefact model-free."""

import json

import grpc
import pytest

from escalon.benchmark import load_benchmark
from escalon.errors import ConfigError
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.offline.evaluation.evaluation import evaluate
from escalon.offline.evaluation.replay_cascade import in_process_cascade, replay_catalogue
from escalon.offline.evaluation.synthetic import write_synthetic
from tests.integration.router.replaystack import replay_router
from escalon.router.artefact import LiveArtefact, load_artefact
from escalon.router.policy import RouteQuery
from escalon.router.routing import ArtefactPolicy

pytestmark = pytest.mark.integration
THRESHOLDS = (0.3, 0.7, 0.95)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cascade-routing")
    path = write_synthetic(folder / "benchmark.parquet", n=300)
    report = evaluate(path, encoder="hashing-trigram-256", cache_dir=None, artefact_dir=folder / "artefact",
                      policies=["hybrid", "cascade-routing", "cascade-routing/ex-ante"],
                      artefact_policy="cascade-routing")
    assert report["cascade_routing"]["used_by_artefact"], report["cascade_routing"]["note"]
    artefact = load_artefact(folder / "artefact")
    assert artefact.estimator is not None
    bench = load_benchmark(path)
    catalogue = replay_catalogue(bench, artefact.model.cost_intercept, artefact.model.cost_slope)
    return folder, bench, catalogue, report


@pytest.fixture(scope="module")
async def router_address(trained):
    folder, _, catalogue, _ = trained
    async with replay_router(folder, catalogue, folder / "artefact") as address:
        yield address


def test_the_report_shows_the_ablation_in_one_run(trained):
    *_, report = trained
    policies = report["policies"]
    for name in ("cascade-routing", "cascade-routing/ex-ante", "cascade-routing@max-cost", "hybrid"):
        assert policies[name]["aiq"] is not None, name
    assert all(row["over_budget"] == 0 for row in report["budget_sweep"])


async def test_in_process_and_grpc_take_the_same_cascade_routing_decisions(trained, router_address):
    folder, bench, catalogue, _ = trained
    policy = ArtefactPolicy(LiveArtefact(folder / "artefact"))
    cascade = in_process_cascade(catalogue)
    prompts = bench.prompts.loc[bench.test_idx, "prompt"].tolist()[:8]
    multi = 0
    async with grpc.aio.insecure_channel(router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        for prompt in prompts:
            for tau in THRESHOLDS:
                query = RouteQuery(prompt=prompt, threshold=tau)
                plan = policy.plan(query, catalogue, catalogue.names)
                assert plan.policy.endswith("/cascade-routing")
                local = await cascade.run(query, plan)
                remote = await stub.Route(router_pb2.RouteRequest(prompt=prompt, min_quality=tau), timeout=30)
                assert remote.policy == plan.policy
                assert [a.rung for a in remote.attempts] == [a.rung for a in local.attempts]
                assert remote.rung == local.rung
                assert remote.total_cost_usd == pytest.approx(local.total_cost_usd)
                assert remote.confidence == pytest.approx(local.confidence, abs=1e-6)
                assert "cascade routing" in remote.reason
                multi += len(local.attempts) > 1
    assert multi > 0  # some requests looked at an answer and climbed


async def test_a_budget_is_never_exceeded_through_the_api(trained, router_address):
    _, bench, catalogue, _ = trained
    prompt = bench.prompts.loc[bench.test_idx[1], "prompt"]
    cheapest = min(catalogue.rungs, key=lambda r: r.cost(10, r.max_tokens))
    budget = cheapest.cost(len(prompt) // 4 + 1, cheapest.max_tokens) * 2.5
    async with grpc.aio.insecure_channel(router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        reply = await stub.Route(router_pb2.RouteRequest(prompt=prompt, min_quality=0.99, max_cost_usd=budget),
                                 timeout=30)
        assert reply.total_cost_usd <= budget


def test_a_corrupt_estimator_names_the_file(trained, tmp_path):
    folder, *_ = trained
    broken = tmp_path / "artefact"
    broken.mkdir()
    for file in (folder / "artefact").iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    data = json.loads((broken / "cascade_routing.json").read_text())
    data["features"] = {"run": ["other"], "unrun": []}
    (broken / "cascade_routing.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="refit"):
        load_artefact(broken)

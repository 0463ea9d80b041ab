"""The same routing decisions in-process (the evaluation harness's path) and through the real gRPC services:
router (loading a trained artefact) → serving (replay rungs over a synthetic benchmark) → judge, each a real
server on a free port. The artefact is trained on the synthetic benchmark with the hashing encoder (no model
download), and rewritten to probe so the judged cascade, not only the route, is compared."""


import grpc
import pytest

from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.router.artefact import LiveArtefact, load_artefact, source_fingerprint, write_artefact
from escalon.benchmark import load_benchmark
from escalon.offline.evaluation.evaluation import evaluate
from escalon.router.policy import RouteQuery
from escalon.offline.evaluation.replay_cascade import in_process_cascade, replay_catalogue
from escalon.router.routing import ArtefactPolicy
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings
from escalon.offline.evaluation.synthetic import write_synthetic
from tests.integration.router.replaystack import replay_router

pytestmark = pytest.mark.integration
THRESHOLDS = (0.3, 0.7, 0.95)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hybrid")
    path = write_synthetic(folder / "benchmark.parquet", n=120)
    evaluate(path, encoder="hashing-trigram-256", cache_dir=None, artefact_dir=folder / "artefact",
             policies=["hybrid+cascade"])
    artefact = load_artefact(folder / "artefact")
    write_artefact(folder / "artefact", artefact.model, artefact.judge_weights, True, source_fingerprint(path))
    bench = load_benchmark(path)
    catalogue = replay_catalogue(bench, artefact.model.cost_intercept, artefact.model.cost_slope)
    return folder, bench, catalogue


@pytest.fixture(scope="module")
async def router_address(trained):
    folder, _, catalogue = trained
    async with replay_router(folder, catalogue, folder / "artefact") as address:
        yield address


async def test_in_process_and_grpc_take_the_same_decisions(trained, router_address):
    folder, bench, catalogue = trained
    policy = ArtefactPolicy(LiveArtefact(folder / "artefact"))
    cascade = in_process_cascade(catalogue)
    prompts = bench.prompts.loc[bench.test_idx, "prompt"].tolist()[:8]
    compared = probed = 0
    async with grpc.aio.insecure_channel(router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        for prompt in prompts:
            for tau in THRESHOLDS:
                query = RouteQuery(prompt=prompt, threshold=tau)
                plan = policy.plan(query, catalogue, catalogue.names)
                local = await cascade.run(query, plan)
                remote = await stub.Route(router_pb2.RouteRequest(prompt=prompt, min_quality=tau), timeout=30)
                assert remote.policy == plan.policy
                assert [a.rung for a in remote.attempts] == [a.rung for a in local.attempts]
                assert remote.rung == local.rung
                assert remote.total_cost_usd == pytest.approx(local.total_cost_usd)
                for r, lo in zip(remote.attempts, local.attempts):
                    assert r.accepted == lo.accepted
                    assert r.confidence == pytest.approx(lo.confidence, abs=1e-6)
                assert {l.dimension for l in remote.labels} >= {"task_type", "complexity", "format"}
                assert "predicted success" in remote.reason
                compared += 1
                probed += len(plan.rungs) > 1
    assert compared == len(prompts) * len(THRESHOLDS)
    assert probed > 0  # some plans ran the judged cascade, not only a route


async def test_a_router_with_a_missing_artefact_does_not_start(tmp_path):
    from escalon.errors import ConfigError

    settings = RouterSettings(port=0, artefact=tmp_path / "absent", dependency_wait_s=0)
    with pytest.raises(ConfigError, match="ESCALON_ROUTER_ARTEFACT"):
        await RouterService(settings, replay_catalogue(load_benchmark(write_synthetic(tmp_path / "b.parquet", n=30))
                                                       )).start()


async def test_a_budget_keeps_the_plan_to_rungs_that_fit(trained):
    folder, bench, catalogue = trained
    policy = ArtefactPolicy(LiveArtefact(folder / "artefact"))
    prompt = bench.prompts.loc[bench.test_idx[0], "prompt"]
    cheapest = min(catalogue.rungs, key=lambda r: r.cost(10, r.max_tokens))
    budget = cheapest.cost(len(prompt) // 4, cheapest.max_tokens) * 1.01
    plan = policy.plan(RouteQuery(prompt=prompt, threshold=0.99, max_cost_usd=budget), catalogue, catalogue.names)
    assert plan.rungs == (cheapest.name,)
    result = await in_process_cascade(catalogue).run(RouteQuery(prompt=prompt, threshold=0.99, max_cost_usd=budget),
                                                     plan)
    assert result.total_cost_usd <= budget

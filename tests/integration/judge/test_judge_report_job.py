"""The `judge_report` job through the queue as a user meets it: SubmitJob on the distill gRPC front, a real
Celery worker process (SQLite broker in a temp data dir), WatchJob to the end, artefacts in the job's folder."""

from __future__ import annotations

import json

import grpc
import pytest
import pytest_asyncio

from escalon.gen.distill.v1 import distill_pb2
from tests.integration.distill.stack import DEMO, Front, Worker, env_for, params, settings_for, watch

pytestmark = pytest.mark.integration
State = distill_pb2.JobState


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return env_for(tmp_path_factory.mktemp("judge-report-job"))


@pytest.fixture(scope="module")
def worker(env, tmp_path_factory):
    w = Worker(env, tmp_path_factory.mktemp("logs") / "worker.log", ["--queues", "cpu"]).start()
    yield w
    w.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def front(env, worker):
    from escalon.distill.servicer import DistillService
    from escalon.gen.distill.v1 import distill_pb2_grpc
    from escalon.grpc import running_server

    settings = settings_for(env)
    service = DistillService(settings)
    async with (
        running_server(service, settings, "escalon-distill") as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        yield Front(settings, distill_pb2_grpc.DistillServiceStub(channel), service.store, service)


async def test_the_report_runs_on_a_worker_and_leaves_its_artefacts(front: Front) -> None:
    # the demo has a test split only: the report splits it by prompt hash (and says so)
    await front.stub.SubmitJob(distill_pb2.SubmitJobRequest(
        job_id="judge-demo", kind="judge_report", params=params(benchmark=str(DEMO), min_rows=10)))
    updates = await watch(front.stub, "judge-demo", timeout=120)
    final = updates[-1]
    assert final.state == State.JOB_STATE_SUCCEEDED, final.error
    assert any(0 < u.progress < 1 for u in updates)
    artefacts = set(final.result["artefacts"])
    assert {"report.json", "report.md", "calibration.json", "reliability-gsm8k.png"} <= artefacts
    folder = front.settings.jobs_dir / "judge-demo"
    report = json.loads((folder / "report.json").read_text())
    assert report["items"]["fit"] > 0 and report["items"]["eval"] > 0 and "hash of the prompt id" in report["notes"][0]
    assert (folder / "reliability-gsm8k.png").read_bytes()[:4] == b"\x89PNG"


async def test_a_benchmark_without_responses_is_refused_at_submit(front: Front, env) -> None:
    import pandas as pd
    from pathlib import Path

    bare = pd.read_parquet(DEMO)
    bare["response"] = None
    bare.to_parquet(Path(env["ESCALON_DATA_DIR"]) / "bare.parquet")  # inside the data dir: jobs read only there
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await front.stub.SubmitJob(distill_pb2.SubmitJobRequest(
            kind="judge_report", params=params(benchmark="bare.parquet")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "params.benchmark" in caught.value.details() and "no recorded responses" in caught.value.details()

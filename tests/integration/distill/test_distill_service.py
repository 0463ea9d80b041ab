"""The distill service as a user meets it: a real worker process, the gRPC front on a free port, real stubs,
the default SQLite broker in a temp data dir."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from escalon.distill.celery_app import TASK_NAME
from escalon.gen.distill.v1 import distill_pb2
from tests.integration.distill.stack import (
    DEMO,
    GPT4,
    MIXTRAL,
    Front,
    Worker,
    env_for,
    params,
    per_model_accuracy,
    profile_request,
    wait_for,
    watch,
)

pytestmark = pytest.mark.integration

State = distill_pb2.JobState


@pytest.fixture(scope="module")
def sqlite_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return env_for(tmp_path_factory.mktemp("distill"))


@pytest.fixture(scope="module")
def worker(sqlite_env, tmp_path_factory):
    w = Worker(sqlite_env, tmp_path_factory.mktemp("logs") / "worker.log", ["--queues", "cpu,gpu"]).start()
    yield w
    w.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def front(sqlite_env, worker):
    from escalon.distill.servicer import DistillService
    from escalon.gen.distill.v1 import distill_pb2_grpc
    from escalon.grpc import running_server
    from tests.integration.distill.stack import settings_for

    settings = settings_for(sqlite_env)
    service = DistillService(settings)
    async with (
        running_server(service, settings, "escalon-distill") as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        yield Front(settings, distill_pb2_grpc.DistillServiceStub(channel), service.store, service)


async def test_profile_job_streams_progress_to_succeeded(front: Front) -> None:
    started = time.perf_counter()
    submitted = await front.stub.SubmitJob(profile_request("demo-profile", chunk_rows=10, step_delay_s=0.05))
    assert submitted.created and submitted.job.state == State.JOB_STATE_QUEUED and submitted.job.queue == "cpu"
    assert submitted.job.params["chunk_rows"] == 10 and submitted.job.params["split"] == "test"  # defaults stored

    updates = await watch(front.stub, "demo-profile")
    elapsed = time.perf_counter() - started
    states = [u.state for u in updates]
    assert states[0] == State.JOB_STATE_QUEUED and states[-1] == State.JOB_STATE_SUCCEEDED
    assert State.JOB_STATE_RUNNING in states
    progress = [u.progress for u in updates]
    assert progress == sorted(progress) and len({p for p in progress if 0 < p < 1}) >= 3  # streamed, not one jump
    final = updates[-1]
    assert final.progress == 1.0 and final.attempts == 1 and not final.error
    assert per_model_accuracy(final) == {GPT4: pytest.approx(0.875), MIXTRAL: pytest.approx(0.375)}
    assert final.result["best_model"]["model"] == GPT4 and final.result["cheapest_model"]["model"] == MIXTRAL
    artefacts = final.result["artefacts"]
    assert Path(artefacts["profile_json"]) == front.settings.jobs_dir / "demo-profile" / "profile.json"
    assert Path(artefacts["profile_md"]).read_text().startswith("# Profile: gsm8k-sample.parquet")
    assert final.updated_at.ToDatetime() >= final.created_at.ToDatetime()
    print(f"\nprofile job over SQLite broker: submit → SUCCEEDED in {elapsed:.2f}s (8 chunks × 0.05 s delay)")


async def test_the_same_job_id_runs_once(front: Front) -> None:
    first = await front.stub.SubmitJob(profile_request("once", chunk_rows=40))
    second = await front.stub.SubmitJob(profile_request("once", chunk_rows=40))
    assert first.created and not second.created and second.job.job_id == "once"
    done = (await watch(front.stub, "once"))[-1]
    assert done.state == State.JOB_STATE_SUCCEEDED and done.attempts == 1
    third = await front.stub.SubmitJob(profile_request("once", chunk_rows=40))
    assert not third.created and third.job.state == State.JOB_STATE_SUCCEEDED

    # Someone sends the task by name again (a duplicate or redelivered message): the finished job is not rerun.
    result = front.service.app.send_task(TASK_NAME, args=["once"], task_id="once-again")
    outcome = await asyncio.to_thread(result.get, timeout=30, interval=0.02)
    assert outcome == {"job_id": "once", "state": "SUCCEEDED", "reason": "not run: finished", "attempts": 1}
    events = [e.event for e in front.store.events("once")]
    assert events.count("started") == 1
    assert (await front.stub.GetJob(distill_pb2.GetJobRequest(job_id="once"))).job.attempts == 1

    # The same id with other params is a mistake, not a resubmission.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await front.stub.SubmitJob(profile_request("once", chunk_rows=41))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "once" in err.value.details()


async def test_an_empty_id_gets_a_generated_one_and_the_gpu_queue_is_honoured(front: Front) -> None:
    submitted = await front.stub.SubmitJob(
        distill_pb2.SubmitJobRequest(kind="profile", queue="gpu", params=params(benchmark=str(DEMO)))
    )
    assert len(submitted.job.job_id) == 32 and submitted.job.queue == "gpu"
    assert (await watch(front.stub, submitted.job.job_id))[-1].state == State.JOB_STATE_SUCCEEDED


@pytest.mark.parametrize("rpc", ["GetJob", "WatchJob", "CancelJob"])
async def test_an_unknown_job_id_is_not_found(front: Front, rpc: str) -> None:
    request = getattr(distill_pb2, f"{rpc}Request")(job_id="no-such-job")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        call = getattr(front.stub, rpc)(request)
        if rpc == "WatchJob":
            async for _ in call:
                pass
        else:
            await call
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'no-such-job'" in err.value.details() and err.value.details().startswith("job_id:")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (profile_request(chunk_rows="ten"), "params.chunk_rows"),
        (profile_request(chunk_rows=-1), "params.chunk_rows"),
        (profile_request(chunkrows=5), "params.chunkrows"),
        (
            distill_pb2.SubmitJobRequest(kind="profile", params=params(benchmark="/nowhere/bench.parquet")),
            "params.benchmark",
        ),
        (distill_pb2.SubmitJobRequest(kind="profile"), "params.benchmark"),
        (distill_pb2.SubmitJobRequest(kind="", params=params(benchmark=str(DEMO))), "kind"),
        (distill_pb2.SubmitJobRequest(kind="teach", params=params(benchmark=str(DEMO))), "kind"),
        (profile_request("../../etc"), "job_id"),
        (distill_pb2.SubmitJobRequest(kind="profile", queue="tpu", params=params(benchmark=str(DEMO))), "queue"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(front: Front, request_, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await front.stub.SubmitJob(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}: ")
    if request_.job_id:
        assert front.store.get(request_.job_id) is None  # nothing stored, nothing queued


async def test_list_jobs_pages_and_filters(front: Front) -> None:
    for i in range(3):
        await front.stub.SubmitJob(profile_request(f"list-{i}"))
    for i in range(3):
        await watch(front.stub, f"list-{i}")
    seen, token = [], ""
    while True:
        page = await front.stub.ListJobs(distill_pb2.ListJobsRequest(page_size=2, page_token=token, kind="profile"))
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen[:3] == ["list-2", "list-1", "list-0"] and len(seen) == len(set(seen))
    succeeded = await front.stub.ListJobs(distill_pb2.ListJobsRequest(state=State.JOB_STATE_SUCCEEDED))
    assert {"list-0", "list-1", "list-2"} <= {j.job_id for j in succeeded.jobs}
    assert all(j.state == State.JOB_STATE_SUCCEEDED for j in succeeded.jobs)
    for bad, field in [
        (distill_pb2.ListJobsRequest(page_size=-1), "page_size"),
        (distill_pb2.ListJobsRequest(page_token="nonsense"), "page_token"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await front.stub.ListJobs(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field)


async def test_cancel_a_running_job_then_cancel_again(front: Front) -> None:
    await front.stub.SubmitJob(profile_request("to-cancel", chunk_rows=2, step_delay_s=0.2))
    await wait_for(lambda: (j := front.store.get("to-cancel")) and j.progress > 0)
    cancelled = await front.stub.CancelJob(distill_pb2.CancelJobRequest(job_id="to-cancel"))
    assert cancelled.job.state == State.JOB_STATE_RUNNING and cancelled.job.message == "cancel requested"
    final = (await watch(front.stub, "to-cancel"))[-1]
    assert final.state == State.JOB_STATE_CANCELLED and 0 < final.progress < 1
    assert not (front.settings.jobs_dir / "to-cancel" / "profile.json").exists()
    again = await front.stub.CancelJob(distill_pb2.CancelJobRequest(job_id="to-cancel"))
    assert again.job.state == State.JOB_STATE_CANCELLED  # idempotent
    # cancelling a finished job changes nothing and says how it ended
    await front.stub.SubmitJob(profile_request("finished-first"))
    await watch(front.stub, "finished-first")
    late = await front.stub.CancelJob(distill_pb2.CancelJobRequest(job_id="finished-first"))
    assert late.job.state == State.JOB_STATE_SUCCEEDED


async def test_the_trace_of_submit_continues_in_the_worker(front: Front) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    metadata = (("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
    await front.stub.SubmitJob(profile_request("traced"), metadata=metadata)
    await watch(front.stub, "traced")
    started = [e for e in front.store.events("traced") if e.event == "started"]
    assert started[0].metrics["trace_id"] == trace_id


async def test_an_evaluate_job_reports_policies(front: Front) -> None:
    request = distill_pb2.SubmitJobRequest(
        job_id="demo-evaluate", kind="evaluate", params=params(benchmark=str(DEMO), fit_split="same")
    )
    await front.stub.SubmitJob(request)
    final = (await watch(front.stub, "demo-evaluate"))[-1]
    assert final.state == State.JOB_STATE_SUCCEEDED, final.error
    policies = final.result["policies"]
    assert policies["oracle"]["accuracy"] == pytest.approx(0.875)  # 35 of 40 solved by someone
    assert policies[f"single:{MIXTRAL}"]["accuracy"] == pytest.approx(0.375)
    assert final.result["cheapest_matching_best_single"]["policy"] == "verified_cascade"

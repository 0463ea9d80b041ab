"""Distillation jobs as users run them: through the gRPC front, a real worker and the SQLite broker; by task
name straight onto the Celery queue; and a worker SIGKILLed mid-UNDO that resumes from its checkpoint.
Real LoRA on SmolLM2-135M, kept tiny (a few steps, 4 train items, answers of 8 tokens)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from escalon.distill.celery_app import create_celery
from escalon.gen.distill.v1 import distill_pb2
from tests.integration.distill.stack import (
    AMQP_URL,
    REDIS_URL,
    env_for,
    params,
    server_answers,
    settings_for,
    wait_for,
    watch,
)

pytestmark = pytest.mark.integration
State = distill_pb2.JobState


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("ESCALON_MODEL_CACHE")
    return Path(cache) if cache else tmp_path_factory.getbasetemp() / "serving-models"


def _undo_params(data: str, model_cache: Path, **extra) -> dict:
    return {"teacher": "program:arith", "student": "smollm2-135m", "data": data, "models_dir": str(model_cache),
            "rounds": 1, "min_gain": 0.0, "limit_train": 4, "limit_val": 2, "limit_test": 2, "max_new_tokens": 8,
            "torch_threads": 1, "teacher_chunk": 2,
            "train": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 1, "r": 4, "alpha": 8, "lr": 1e-3},
            **extra}


async def _harvest(front) -> str:
    await front.stub.SubmitJob(distill_pb2.SubmitJobRequest(
        job_id="h1", kind="harvest", params=params(source="synthetic:arith", n=40, seed=3)))
    final = (await watch(front.stub, "h1", timeout=60))[-1]
    assert final.state == State.JOB_STATE_SUCCEEDED, final.error
    return final.result["artefacts"]["dataset"]


async def test_an_undo_job_runs_through_a_worker_once_and_records_every_round(
        tmp_path, front_factory, worker_factory, model_cache) -> None:
    env = env_for(tmp_path / "data")
    front = await front_factory(env)
    worker_factory(env)
    data = await _harvest(front)
    request = distill_pb2.SubmitJobRequest(job_id="undo-1", kind="undo", params=params(**_undo_params(data, model_cache)))
    first = await front.stub.SubmitJob(request)
    again = await front.stub.SubmitJob(request)  # the same id: stored once, queued once, run once
    assert first.created and not again.created

    updates = await watch(front.stub, "undo-1", timeout=240)
    final = updates[-1]
    assert final.state == State.JOB_STATE_SUCCEEDED, final.error
    assert len({round(u.progress, 3) for u in updates}) > 3  # progress streamed as the job went
    result = final.result
    assert [r["round"] for r in result["rounds"]] == [0, 1]
    assert result["teacher_calls"] >= 4 and Path(result["artefacts"]["plot_png"]).is_file()
    assert (Path(result["student_model"]) / "config.json").is_file()

    events = front.store.events("undo-1")
    assert [e.event for e in events].count("started") == 1 and final.attempts == 1
    per_round = [e.metrics for e in events if e.metrics and "test_accuracy" in e.metrics]
    assert [m["round"] for m in per_round] == [-1, 0, 1]  # before, one-shot, UNDO round 1: persisted per round


async def test_a_worker_killed_mid_undo_resumes_from_its_last_checkpoint(
        tmp_path, front_factory, worker_factory, model_cache) -> None:
    env = env_for(tmp_path / "data")
    front = await front_factory(env)
    first = worker_factory(env, name="-first")
    data = await _harvest(front)
    await front.stub.SubmitJob(distill_pb2.SubmitJobRequest(
        job_id="undo-k", kind="undo",
        params=params(**_undo_params(data, model_cache, rounds=0, step_delay_s=0.3,
                                     train={"max_steps": 3, "batch_size": 2, "checkpoint_every": 1, "r": 4,
                                            "alpha": 8, "lr": 1e-3}))))

    def mid_training():
        job = front.store.get("undo-k")
        state = (job.checkpoint or {}) if job else {}
        return state.get("phase") == "train" and state.get("train_step", 0) >= 1

    await wait_for(mid_training, timeout=180, interval=0.1)
    first.kill()  # SIGKILL, main process and pool
    at_kill = front.store.get("undo-k")
    assert at_kill.state == "RUNNING" and at_kill.attempts == 1

    worker_factory(env, name="-second")
    final = (await watch(front.stub, "undo-k", timeout=240))[-1]
    assert final.state == State.JOB_STATE_SUCCEEDED, final.error
    assert final.attempts == 2
    [round0] = final.result["rounds"]
    assert round0["resumed_from_step"] >= 1  # training went on from its saved state, not from step 0
    events = front.store.events("undo-k")
    assert "requeued" in [e.event for e in events]
    second = [e.message for e in events if e.attempt == 2 and e.event == "checkpoint"]
    assert second and not any("teacher" in m or "before distillation" in m for m in second)  # nothing redone


BROKERS = [pytest.param("", id="sqlite"),
           pytest.param(REDIS_URL, id="redis", marks=pytest.mark.broker),
           pytest.param(AMQP_URL, id="rabbitmq", marks=pytest.mark.broker)]


@pytest.mark.parametrize("broker_url", BROKERS)
async def test_a_job_sent_by_task_name_is_stored_and_runs_once(broker_url, tmp_path, worker_factory) -> None:
    if broker_url and (why := server_answers(broker_url)):
        pytest.skip(why)
    env = env_for(tmp_path / "data", broker_url)
    worker_factory(env)
    settings = settings_for(env)
    app = create_celery(settings)
    kwargs = {"source": "synthetic:arith", "n": 30, "seed": 5}
    for _ in range(2):  # sent twice with one task id: one job, run once
        app.send_task("escalon.distill.harvest", kwargs=kwargs, task_id="celery-h1", queue="cpu")
    store = app.job_store()
    job = await wait_for(lambda: (j := store.get("celery-h1")) and j.finished and j, timeout=60)
    assert job.state == "SUCCEEDED" and job.kind == "harvest" and job.result["items"] == 30
    assert [e.event for e in store.events("celery-h1")].count("started") == 1

    bad = app.send_task("escalon.distill.undo", kwargs={"teacher": "program:arith"}, task_id="celery-bad",
                        queue="cpu")
    with pytest.raises(Exception, match="student"):
        bad.get(timeout=60, interval=0.05)
    assert store.get("celery-bad") is None  # invalid params store nothing
    app.close()
    store.close()


async def test_the_cli_submits_with_first_class_flags_and_follows_the_job(tmp_path, worker_factory, capsys) -> None:
    import grpc

    from escalon.cli import build_parser, commands
    from escalon.distill.servicer import DistillService
    from escalon.grpc import running_server

    env = env_for(tmp_path / "data")
    worker_factory(env)
    settings = settings_for(env)
    async with running_server(DistillService(settings), settings, "escalon-distill") as front:
        args = build_parser().parse_args(["jobs", "submit", "harvest", "--param", "source=synthetic:arith",
                                          "--param", "n=12", "--id", "cli-h", "--watch", "--address", front.address])
        assert await commands.jobs(args) == 0
        out = capsys.readouterr().out
        assert "submitted: cli-h" in out and "cli-h: succeeded" in out and '"items": 12' in out

        # --teacher/--student/--data arrive as the job's params: the data file is missing, and SubmitJob says so.
        args = build_parser().parse_args(["jobs", "submit", "undo", "--teacher", "program:arith", "--student",
                                          "smollm2-135m", "--data", "missing.jsonl", "--address", front.address])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await commands.jobs(args)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("params.data:")


async def test_bad_distillation_submissions_are_invalid_argument_naming_the_field(
        tmp_path, front_factory, model_cache) -> None:
    from escalon.distill.jobs import LocalContext, validate

    env = env_for(tmp_path / "data")
    front = await front_factory(env)  # no worker: SubmitJob checks everything before anything is queued
    kind, harvest = validate("harvest", {"source": "synthetic:arith", "n": 30, "seed": 3}, tmp_path / "data")
    data = kind.run(harvest, LocalContext(artefact_dir=tmp_path / "data" / "h"))["artefacts"]["dataset"]
    good = _undo_params(data, model_cache)
    cases = [
        ("distil", {}, "kind", "unknown job kind 'distil'"),
        ("undo", {"student": "no-such-rung"}, "params.student", "no-such-rung"),
        ("undo", {"teacher": "no-such-rung"}, "params.teacher", "no-such-rung"),
        ("undo", {"student": "gpt-4"}, "params.student", "must be a local model"),
        ("undo", {"data": "missing.jsonl"}, "params.data", "no data set"),
        ("undo", {"rounds": 9}, "params.rounds", "less than or equal to 4"),
        ("undo", {"train": {**good["train"], "batch_size": 0}}, "params.train.batch_size", "greater than or equal"),
        ("undo", {"train": {**good["train"], "lr": -1}}, "params.train.lr", "greater than 0"),
        ("undo", {"device": "tpu"}, "params.device", "auto, cpu or cuda"),
        ("siked", {"strategies": ["cot", "guess"]}, "params.strategies", "guess"),
        ("promote", {"student": "/nowhere/merged", "target": "gpt-4"}, "params.student", "/nowhere/merged"),
    ]
    for n, (kind_name, change, field, words) in enumerate(cases):
        raw = {**good, **change}
        if kind_name == "siked":  # no UNDO rounds in SIKeD
            raw = {k: v for k, v in raw.items() if k not in ("rounds", "min_gain")}
        if kind_name == "promote":
            raw = {"data": data, **change}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await front.stub.SubmitJob(distill_pb2.SubmitJobRequest(job_id=f"bad-{n}", kind=kind_name,
                                                                    params=params(**raw)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.value.details())
        assert err.value.details().startswith(f"{field}: ") and words in err.value.details(), err.value.details()
        assert front.store.get(f"bad-{n}") is None  # nothing stored, nothing queued


async def test_cancelling_a_running_undo_job_stops_it_at_its_next_checkpoint(
        tmp_path, front_factory, worker_factory, model_cache) -> None:
    env = env_for(tmp_path / "data")
    front = await front_factory(env)
    worker_factory(env)
    data = await _harvest(front)
    # Slow teacher steps (one question per checkpoint): the job is cancelled before any model is loaded.
    await front.stub.SubmitJob(distill_pb2.SubmitJobRequest(
        job_id="undo-c", kind="undo", params=params(**_undo_params(data, model_cache, teacher_chunk=1,
                                                                    step_delay_s=0.5))))
    await wait_for(lambda: (j := front.store.get("undo-c")) and (j.checkpoint or {}).get("teacher_done", 0) >= 1,
                   timeout=60, interval=0.05)
    reply = await front.stub.CancelJob(distill_pb2.CancelJobRequest(job_id="undo-c"))
    assert reply.job.state in (State.JOB_STATE_RUNNING, State.JOB_STATE_CANCELLED)
    final = (await watch(front.stub, "undo-c", timeout=60))[-1]
    assert final.state == State.JOB_STATE_CANCELLED
    job = front.store.get("undo-c")
    assert job.checkpoint["phase"] == "teacher" and job.checkpoint["teacher_done"] < 4  # stopped, not finished
    assert not (tmp_path / "data" / "jobs" / "undo-c" / "report.json").exists()
    again = await front.stub.CancelJob(distill_pb2.CancelJobRequest(job_id="undo-c"))  # idempotent
    assert again.job.state == State.JOB_STATE_CANCELLED

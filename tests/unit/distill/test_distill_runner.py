"""runner.execute (what the Celery task calls) against a real SQLite job store, without Celery."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy.exc

from escalon.distill import jobs, runner
from escalon.distill.jobs import validate
from escalon.distill.settings import DistillSettings
from escalon.distill.store import JobState, JobStore, make_owner

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> DistillSettings:
    return DistillSettings(ESCALON_DATA_DIR=str(tmp_path), lease_s=3)


@pytest.fixture
def sqlite_store(settings: DistillSettings):
    s = JobStore(settings.database_url).init()
    yield s
    s.close()


def _submit(store: JobStore, settings: DistillSettings, bench: Path, job_id: str = "j1", **params) -> None:
    kind, typed = validate("profile", {"benchmark": str(bench), **params}, settings.data_dir)
    store.create_if_absent(job_id, kind=kind.name, queue="cpu", params=typed.model_dump(mode="json"))


def test_a_job_runs_once_and_writes_its_artefacts(sqlite_store, settings, tiny_benchmark) -> None:
    _submit(sqlite_store, settings, tiny_benchmark, chunk_rows=4)
    outcome = runner.execute(sqlite_store, settings, "j1")
    assert outcome.state == "SUCCEEDED" and outcome.attempts == 1
    job = sqlite_store.get("j1")
    assert job.state is JobState.SUCCEEDED and job.progress == 1.0 and job.result["best_model"]["model"] == "b"
    assert Path(job.result["artefacts"]["profile_json"]) == settings.jobs_dir / "j1" / "profile.json"
    assert (settings.jobs_dir / "j1" / "profile.md").is_file()
    # a duplicate delivery: reported, not run
    again = runner.execute(sqlite_store, settings, "j1")
    assert (again.state, again.reason, again.attempts) == ("SUCCEEDED", "not run: finished", 1)
    events = [e.event for e in sqlite_store.events("j1")]
    assert events == ["started", "checkpoint", "checkpoint", "checkpoint", "checkpoint", "succeeded"]
    assert runner.execute(sqlite_store, settings, "nope").state == "NOT_FOUND"


def test_a_failing_job_is_recorded_not_retried(sqlite_store, settings, make_benchmark, tmp_path) -> None:
    bench = make_benchmark(tmp_path / "train_only.parquet", rows=[("p", "t", "train", "a", 1.0, 0.1)])
    _submit(sqlite_store, settings, bench)
    outcome = runner.execute(sqlite_store, settings, "j1")
    job = sqlite_store.get("j1")
    assert outcome.state == "FAILED" and job.state is JobState.FAILED
    assert job.error.startswith("ValueError: no rows")


def test_cancel_while_running_ends_cancelled_at_a_checkpoint(sqlite_store, settings, tiny_benchmark) -> None:
    _submit(sqlite_store, settings, tiny_benchmark, chunk_rows=1, step_delay_s=0.05)
    done: list[runner.Outcome] = []
    worker = threading.Thread(target=lambda: done.append(runner.execute(sqlite_store, settings, "j1")))
    worker.start()
    deadline = time.monotonic() + 10
    while sqlite_store.get("j1").progress == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sqlite_store.request_cancel("j1")
    worker.join(10)
    job = sqlite_store.get("j1")
    assert done[0].state == "CANCELLED" and job.state is JobState.CANCELLED
    assert 0 < job.progress < 1 and job.checkpoint["rows_done"] < 14
    assert not (settings.jobs_dir / "j1" / "profile.json").exists()


def test_transient_errors_release_the_job_and_propagate(sqlite_store, settings, tiny_benchmark, monkeypatch) -> None:
    _submit(sqlite_store, settings, tiny_benchmark)

    def db_gone(*_a, **_k):
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(jobs, "KINDS", {"profile": dataclasses.replace(jobs.KINDS["profile"], run=db_gone)})
    with pytest.raises(runner.TRANSIENT_ERRORS):
        runner.execute(sqlite_store, settings, "j1")
    job = sqlite_store.get("j1")
    assert job.state is JobState.QUEUED and job.lease_owner is None and "will retry" in job.message
    monkeypatch.undo()
    assert runner.execute(sqlite_store, settings, "j1").state == "SUCCEEDED"
    assert sqlite_store.get("j1").attempts == 2


def test_a_busy_job_is_not_run_twice(sqlite_store, settings, tiny_benchmark) -> None:
    _submit(sqlite_store, settings, tiny_benchmark)
    sqlite_store.claim("j1", make_owner(), 60)
    outcome = runner.execute(sqlite_store, settings, "j1")
    assert (outcome.state, outcome.reason) == ("RUNNING", "not run: busy")
    assert sqlite_store.get("j1").attempts == 1


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for retries in range(8):
        step = min(60.0, 2.0 * 2**retries)
        delays = [runner.backoff_delay(retries, 2.0, 60.0, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 4  # spread out, not in lockstep

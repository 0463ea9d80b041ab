"""DistillService methods called directly, with a recording stand-in for the Celery app: what is published
when, and how a job stored but never published is recovered."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf import struct_pb2

from escalon.distill import runner
from escalon.distill.servicer import BrokerUnavailable, DistillService
from escalon.distill.settings import DistillSettings
from escalon.distill.store import JobState, JobStore
from escalon.errors import NotFound
from escalon.gen.distill.v1 import distill_pb2

pytestmark = pytest.mark.unit


@dataclass
class RecordingApp:
    """Just enough of DistillCelery: records publishes, fails while `down`."""

    settings: DistillSettings
    store: JobStore
    down: bool = False
    sent: list[tuple[str, str]] = field(default_factory=list)
    conf: Any = field(default_factory=lambda: SimpleNamespace(worker_enable_remote_control=False))

    def send_task(self, name: str, *, args: list[str], task_id: str, queue: str, routing_key: str) -> None:
        if self.down:
            raise ConnectionRefusedError("broker down")
        assert args == [task_id] and queue == routing_key
        self.sent.append((task_id, queue))

    def job_store(self) -> JobStore:
        return self.store

    def close(self) -> None:
        pass


@pytest.fixture
def parts(tmp_path: Path):
    settings = DistillSettings(data_dir=tmp_path, lease_s=5)
    store = JobStore(settings.database_url).init()
    app = RecordingApp(settings, store)
    yield DistillService(settings, app=app, store=store), app, store
    store.close()


def _request(job_id: str, bench: Path) -> distill_pb2.SubmitJobRequest:
    params = struct_pb2.Struct()
    params.update({"benchmark": str(bench)})
    return distill_pb2.SubmitJobRequest(job_id=job_id, kind="profile", params=params)


async def test_publish_once_and_recover_a_job_the_broker_did_not_take(parts, tiny_benchmark) -> None:
    service, app, store = parts
    app.down = True
    with pytest.raises(BrokerUnavailable) as err:
        await service.SubmitJob(_request("j1", tiny_benchmark), None)
    assert err.value.code.name == "UNAVAILABLE" and "submit the same id again" in str(err.value)
    assert store.get("j1").state is JobState.QUEUED and store.get("j1").enqueued_at is None

    app.down = False
    again = await service.SubmitJob(_request("j1", tiny_benchmark), None)
    assert not again.created and app.sent == [("j1", "cpu")] and store.get("j1").enqueued_at is not None
    third = await service.SubmitJob(_request("j1", tiny_benchmark), None)
    assert not third.created and app.sent == [("j1", "cpu")]  # published: not again


async def test_the_reaper_publishes_jobs_nobody_resubmitted(parts, tiny_benchmark) -> None:
    service, app, store = parts
    app.down = True
    with pytest.raises(BrokerUnavailable):
        await service.SubmitJob(_request("orphan", tiny_benchmark), None)
    app.down = False
    assert runner.reap(app) == []  # younger than a lease: the front may still be publishing it
    old = store.get("orphan").created_at - dt.timedelta(seconds=10)
    with store.engine.begin() as conn:
        from escalon.distill.store import jobs

        conn.execute(jobs.update().where(jobs.c.job_id == "orphan").values(created_at=old))
    assert runner.reap(app) == ["orphan"] and app.sent == [("orphan", "cpu")]
    assert runner.reap(app) == []


async def test_get_and_cancel_unknown_ids(parts) -> None:
    service, _, _ = parts
    with pytest.raises(NotFound, match="'ghost'"):
        await service.GetJob(distill_pb2.GetJobRequest(job_id="ghost"), None)
    with pytest.raises(NotFound, match="'ghost'"):
        await service.CancelJob(distill_pb2.CancelJobRequest(job_id="ghost"), None)


def test_settings_accept_field_names_as_well_as_env_names(tmp_path: Path) -> None:
    assert DistillSettings(data_dir=tmp_path).database_url == f"sqlite:///{tmp_path}/jobs.sqlite"
    assert DistillSettings(ESCALON_DATA_DIR=str(tmp_path)).data_dir == tmp_path

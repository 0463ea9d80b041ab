"""The job store on SQLite and PostgreSQL (skipped with the reason when PostgreSQL does not answer)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading

import pytest

from escalon.distill.store import ClaimOutcome, JobState, JobStore, LeaseLost, make_owner

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _new(store: JobStore, job_id: str = "j1", **kw):
    return store.create_if_absent(job_id, kind=kw.pop("kind", "profile"), queue="cpu", params={"x": 1}, **kw)


def test_create_if_absent_is_idempotent(store: JobStore) -> None:
    job, created = _new(store)
    assert created and job.state is JobState.QUEUED and job.attempts == 0 and job.params == {"x": 1}
    assert job.created_at.tzinfo is not None
    again, created_again = store.create_if_absent("j1", kind="other", queue="gpu", params={})
    assert not created_again and again.kind == "profile" and again.created_at == job.created_at


def test_concurrent_creates_make_one_job(store: JobStore) -> None:
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def create() -> None:
        barrier.wait()
        results.append(_new(store, "race")[1])

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(store.list(page_size=10).jobs) == 1


def test_claim_lease_and_takeover(store: JobStore) -> None:
    _new(store)
    first, second = make_owner(), make_owner()
    claim = store.claim("j1", first, 10, now=T0)
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.job.state is JobState.RUNNING and claim.job.attempts == 1
    # a duplicate delivery while the first worker holds a live lease does not run it
    assert store.claim("j1", second, 10, now=T0 + dt.timedelta(seconds=5)).outcome is ClaimOutcome.BUSY
    # the first worker checkpoints (renewing its lease to T0+20s)
    assert (
        store.save_checkpoint(
            "j1",
            first,
            {"rows": 10},
            lease_s=10,
            progress=0.5,
            message="half",
            step=0,
            now=T0 + dt.timedelta(seconds=10),
        )
        is False
    )
    assert store.claim("j1", second, 10, now=T0 + dt.timedelta(seconds=15)).outcome is ClaimOutcome.BUSY
    # ... then stops renewing: after expiry another worker takes over, with the checkpoint, attempt 2
    took = store.claim("j1", second, 10, now=T0 + dt.timedelta(seconds=21))
    assert took.outcome is ClaimOutcome.CLAIMED and took.job.attempts == 2 and took.job.checkpoint == {"rows": 10}
    # the old worker comes back: every write of it is refused, nothing of the new owner's is overwritten
    with pytest.raises(LeaseLost):
        store.save_checkpoint("j1", first, {"rows": 99}, lease_s=10, progress=0.9, message="stale")
    with pytest.raises(LeaseLost):
        store.finish("j1", first, JobState.SUCCEEDED, result={})
    with pytest.raises(LeaseLost):
        store.heartbeat("j1", first, 10)
    done = store.finish("j1", second, JobState.SUCCEEDED, result={"ok": True})
    assert done.state is JobState.SUCCEEDED and done.progress == 1.0 and done.result == {"ok": True}
    assert done.lease_owner is None and done.finished_at is not None
    assert store.claim("j1", make_owner(), 10).outcome is ClaimOutcome.FINISHED
    events = [(e.event, e.attempt, e.step) for e in store.events("j1")]
    assert events == [("started", 1, None), ("checkpoint", 1, 0), ("started", 2, None), ("succeeded", 2, None)]


def test_a_dead_local_owner_is_taken_over_at_once(store: JobStore) -> None:
    """What a killed prefork pool process leaves: a live lease held by a pid that no longer exists."""
    _new(store)
    proc = subprocess.run(
        [sys.executable, "-c", "from escalon.distill.store import make_owner; print(make_owner())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_owner = proc.stdout.strip()
    assert store.claim("j1", dead_owner, 600).outcome is ClaimOutcome.CLAIMED
    took = store.claim("j1", make_owner(), 600)
    assert took.outcome is ClaimOutcome.CLAIMED and took.job.attempts == 2


def test_expired_leases_are_requeued_once(store: JobStore) -> None:
    _new(store)
    _new(store, "j2")
    owner = make_owner()
    store.claim("j1", owner, 10, now=T0)
    store.claim("j2", make_owner(), 10, now=T0 + dt.timedelta(seconds=30))
    later = T0 + dt.timedelta(seconds=20)
    assert [j.job_id for j in store.expired_leases(now=later)] == ["j1"]
    assert store.mark_requeued("j1", now=later) is True
    assert store.mark_requeued("j1", now=later) is False  # another reaper, or the job was claimed again
    job = store.get("j1")
    assert job.state is JobState.QUEUED and job.lease_owner is None and "requeued" in job.message
    assert store.claim("j1", make_owner(), 10, now=later).job.attempts == 2


def test_cancel(store: JobStore) -> None:
    _new(store, "queued")
    cancelled = store.request_cancel("queued")
    assert cancelled.state is JobState.CANCELLED and cancelled.cancel_requested
    assert store.claim("queued", make_owner(), 10).outcome is ClaimOutcome.FINISHED

    _new(store, "running")
    owner = make_owner()
    store.claim("running", owner, 10)
    flagged = store.request_cancel("running")
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert store.heartbeat("running", owner, 10) is True
    assert store.save_checkpoint("running", owner, {}, lease_s=10, progress=0.1, message="m") is True
    store.finish("running", owner, JobState.CANCELLED)

    _new(store, "done")
    owner = make_owner()
    store.claim("done", owner, 10)
    store.finish("done", owner, JobState.SUCCEEDED, result={})
    assert store.request_cancel("done").state is JobState.SUCCEEDED  # a no-op on a finished job
    assert store.request_cancel("missing") is None


def test_release_and_fail_unowned(store: JobStore) -> None:
    _new(store)
    owner = make_owner()
    store.claim("j1", owner, 10)
    store.release("j1", owner, "transient error, will retry")
    job = store.get("j1")
    assert job.state is JobState.QUEUED and job.lease_owner is None
    store.fail_unowned("j1", "gave up after 5 retries")
    job = store.get("j1")
    assert job.state is JobState.FAILED and job.error == "gave up after 5 retries"


def test_list_pages_newest_first_with_filters(store: JobStore) -> None:
    for i in range(7):
        _new(store, f"job-{i}", kind="profile" if i % 2 else "evaluate", now=T0 + dt.timedelta(seconds=i))
    seen, token = [], ""
    while True:
        page = store.list(page_size=3, page_token=token)
        seen += [j.job_id for j in page.jobs]
        token = page.next_token
        if not token:
            break
    assert seen == [f"job-{i}" for i in range(6, -1, -1)]
    profiles = store.list(page_size=2, kind="profile")
    assert [j.job_id for j in profiles.jobs] == ["job-5", "job-3"] and profiles.next_token
    assert [j.job_id for j in store.list(page_size=2, kind="profile", page_token=profiles.next_token).jobs] == ["job-1"]
    assert store.list(page_size=5, state=JobState.RUNNING).jobs == []
    with pytest.raises(ValueError, match="other filters"):
        store.list(page_size=2, kind="evaluate", page_token=profiles.next_token)
    with pytest.raises(ValueError, match="not a page token"):
        store.list(page_size=2, page_token="garbage!")


def test_same_created_at_pages_by_id(store: JobStore) -> None:
    for name in "abcde":
        _new(store, name, now=T0)
    first = store.list(page_size=2)
    rest = store.list(page_size=10, page_token=first.next_token)
    assert [j.job_id for j in first.jobs + rest.jobs] == list("edcba")

"""Running one job from the store, without Celery: claim, run with a store-backed context, record the end.

The Celery task (escalon.distill.tasks) is a thin adapter over `execute`; tests call `execute` directly.
Also here: the lease heartbeat, the reaper that requeues jobs of vanished workers, the retry backoff, and
the one function that publishes a job's message (`send_job`), used by SubmitJob and the reaper alike.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc

from escalon.distill import jobs
from escalon.distill.jobs.base import JobCancelled, TransientJobError, safe_child
from escalon.distill.settings import DistillSettings
from escalon.distill.store import ClaimOutcome, Job, JobState, JobStore, LeaseLost, make_owner
from escalon.files import atomic_write
from escalon.telemetry import ATTR_JOB_ID, ATTR_JOB_KIND, current_trace_id, tracer

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

#: Errors worth retrying with backoff: the broker or a database is unreachable or busy right now.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    TransientJobError,
)


def backoff_delay(retries: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half the step is fixed, half random, so delays grow and
    retries of many jobs that failed together spread out."""
    step = min(cap_s, base_s * 2 ** max(retries, 0))
    return step / 2 + (rng or random).uniform(0, step / 2)


def job_dir(settings: DistillSettings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def send_job(app: Celery, job: Job) -> None:
    """Publish the job's one message: task id = job id, to the job's queue. Trace context rides along."""
    from escalon.distill.celery_app import TASK_NAME

    app.send_task(TASK_NAME, args=[job.job_id], task_id=job.job_id, queue=job.queue, routing_key=job.queue)


@dataclass(frozen=True)
class Outcome:
    job_id: str
    state: str  # the job's JobState value after this delivery (NOT_FOUND for an unknown id)
    reason: str = ""
    attempts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "reason": self.reason, "attempts": self.attempts}


class StoreContext:
    """The JobContext a worker gives a job function: checkpoints and progress go to the job store."""

    def __init__(self, store: JobStore, job: Job, owner: str, lease_s: float, artefact_dir: Path) -> None:
        self.store = store
        self.job_id = job.job_id
        self.attempt = job.attempts
        self.artefact_dir = artefact_dir
        self._checkpoint = job.checkpoint
        self._owner = owner
        self._lease_s = lease_s

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self._checkpoint

    def save_checkpoint(
        self,
        state: dict[str, Any],
        *,
        progress: float,
        message: str,
        step: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        cancel = self.store.save_checkpoint(
            self.job_id,
            self._owner,
            state,
            lease_s=self._lease_s,
            progress=_clamp(progress),
            message=message,
            step=step,
            metrics=metrics,
        )
        self._checkpoint = state
        if cancel:
            raise JobCancelled(f"cancelled after: {message}")

    def report(self, progress: float, message: str) -> None:
        if self.store.heartbeat(self.job_id, self._owner, self._lease_s, progress=_clamp(progress), message=message):
            raise JobCancelled(f"cancelled after: {message}")

    def write_artefact(self, name: str, data: str | bytes) -> Path:
        return atomic_write(safe_child(self.artefact_dir, name), data)


def _clamp(progress: float) -> float:
    return min(1.0, max(0.0, float(progress)))


class Heartbeat:
    """Renews the job's lease every lease/3 while the job function runs, whatever its step length."""

    def __init__(self, store: JobStore, job_id: str, owner: str, lease_s: float) -> None:
        self._store, self._job_id, self._owner, self._lease_s = store, job_id, owner, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                self._store.heartbeat(self._job_id, self._owner, self._lease_s)
            except LeaseLost:
                log.warning("job %s: lease lost; the job's next write will stop it", self._job_id)
                return
            except Exception:  # the database may be back by the next beat
                log.warning("job %s: could not renew the lease", self._job_id, exc_info=True)


def execute(store: JobStore, settings: DistillSettings, job_id: str, *, owner: str | None = None) -> Outcome:
    """Run the job if it is this worker's to run. Transient errors propagate (the caller retries them)."""
    owner = owner or make_owner()
    claim = store.claim(job_id, owner, settings.lease_s, details={"trace_id": current_trace_id()})
    if claim.outcome is not ClaimOutcome.CLAIMED:
        # A duplicate or stale delivery: report the job as it stands (what AsyncResult(job_id) then shows).
        log.info("job %s not run: %s", job_id, claim.outcome.value)
        if claim.job is None:
            log.warning(
                "job %s is not in the job store %s: do this worker and the front share ESCALON_DISTILL_DATABASE_URL?",
                job_id,
                store.engine.url.render_as_string(hide_password=True),
            )
            return Outcome(job_id, "NOT_FOUND", "no such job in the store")
        return Outcome(job_id, claim.job.state.value, f"not run: {claim.outcome.value}", claim.job.attempts)
    job = claim.job
    assert job is not None
    ctx = StoreContext(store, job, owner, settings.lease_s, job_dir(settings, job_id))
    with tracer(__name__).start_as_current_span(f"job {job.kind}") as span:
        span.set_attribute(ATTR_JOB_ID, job_id)
        span.set_attribute(ATTR_JOB_KIND, job.kind)
        try:
            with Heartbeat(store, job_id, owner, settings.lease_s):
                result = jobs.run(job.kind, job.params, ctx)
        except JobCancelled as exc:
            return _finish(store, job, owner, JobState.CANCELLED, message=str(exc))
        except LeaseLost as exc:
            return _lease_lost(job, exc)
        except TRANSIENT_ERRORS as exc:
            try:
                store.release(job_id, owner, f"transient error, will retry: {type(exc).__name__}: {exc}")
            except Exception:  # the store may be what failed; the lease then expires
                log.warning("job %s: could not release after a transient error", job_id, exc_info=True)
            raise
        except Exception as exc:  # the job's own failure: recorded, not retried
            log.exception("job %s failed", job_id)
            return _finish(store, job, owner, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
        return _finish(store, job, owner, JobState.SUCCEEDED, result=result, message="succeeded")


def _finish(store: JobStore, job: Job, owner: str, state: JobState, **kw: Any) -> Outcome:
    try:
        store.finish(job.job_id, owner, state, **kw)
    except LeaseLost as exc:
        return _lease_lost(job, exc)
    return Outcome(job.job_id, state.value, kw.get("error", ""), job.attempts)


def _lease_lost(job: Job, exc: LeaseLost) -> Outcome:
    log.warning("job %s: %s; leaving it to the worker that took over", job.job_id, exc)
    return Outcome(job.job_id, JobState.RUNNING.value, "lease lost to another worker", job.attempts)


def reap(app: Any) -> list[str]:
    """Send a new message for each RUNNING job whose lease expired, then mark it requeued; and publish the
    jobs whose message was never confirmed sent. Sending first means a failed send changes nothing (the
    next pass tries again); two reapers racing send twice, and the second delivery finds the job leased or
    finished."""
    store: JobStore = app.job_store()
    sent = []
    for job in store.unsent(older_than_s=app.settings.lease_s):
        try:
            send_job(app, job)
        except Exception:  # the broker is down: the next pass tries again
            log.warning("could not publish job %s", job.job_id, exc_info=True)
            continue
        store.mark_enqueued(job.job_id)
        log.warning("job %s was stored but never published; published now", job.job_id)
        sent.append(job.job_id)
    for job in store.expired_leases():
        try:
            send_job(app, job)
        except Exception:  # broker down: the next pass tries again
            log.warning("could not requeue job %s", job.job_id, exc_info=True)
            continue
        if store.mark_requeued(job.job_id):
            log.warning("job %s: its worker stopped renewing the lease; requeued", job.job_id)
        sent.append(job.job_id)
    return sent


class Reaper:
    """In each worker's main process: `reap` every `reap_interval_s`."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._interval = app.settings.reap_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="escalon-distill-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                reap(self._app)
            except Exception:  # keep reaping after a database hiccup
                log.warning("lease reaper pass failed", exc_info=True)

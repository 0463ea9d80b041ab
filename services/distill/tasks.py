"""The Celery task: a thin adapter over escalon.distill.runner (STYLE practice 8).

One task, `escalon.distill.run_job(job_id)`. It only routes (a message that reached the wrong queue is
forwarded to the job's own), calls `runner.execute`, and retries transient errors with exponential
backoff and jitter. Everything a job does lives in escalon.distill.jobs; everything about its state in
the job store. Anyone can start a stored job by name:

    app.send_task("escalon.distill.run_job", args=[job_id], task_id=job_id, queue="cpu")

A redelivered or duplicate message is harmless: the job is claimed through its lease, and a finished job
is never run again.

Celery users can also skip the gRPC front and send a job by its kind's task name, with the params as
keyword arguments; the task id is the job id (the idempotency key), so the job is stored, visible to
GetJob/WatchJob/`escalon jobs`, and runs once however often the message is sent or delivered:

    app.send_task("escalon.distill.undo", kwargs={"teacher": "program:arith", "student": "smollm2-135m",
                  "data": "jobs/h1/dataset.jsonl"}, task_id="undo-1", queue="cpu")

Params are validated exactly as SubmitJob validates them; invalid ones fail the task with the reason and
store nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from escalon.distill import jobs, runner
from escalon.errors import AlreadyExists

if TYPE_CHECKING:
    from escalon.distill.celery_app import DistillCelery

log = logging.getLogger(__name__)


def register(app: DistillCelery) -> Any:
    """Define the task on `app` (name fixed, so senders need no import of this module)."""
    from escalon.distill.celery_app import TASK_NAME

    # shared=False: Celery would otherwise add this app's task to every app created later in the process.
    @app.task(
        name=TASK_NAME,
        bind=True,
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=app.settings.max_retries,
    )
    def run_job(self: Any, job_id: str) -> dict[str, Any]:
        app: DistillCelery = self.app
        settings = app.settings
        try:
            store = app.job_store()
            job = store.get(job_id)
            delivered = (self.request.delivery_info or {}).get("routing_key")
            if job is not None and not job.finished and delivered and delivered != job.queue:
                log.info("job %s arrived on %r; forwarding to its queue %r", job_id, delivered, job.queue)
                runner.send_job(app, job)
                forwarded = runner.Outcome(job_id, job.state.value, f"forwarded to queue {job.queue}", job.attempts)
                return forwarded.as_dict()
            return runner.execute(store, settings, job_id).as_dict()
        except runner.TRANSIENT_ERRORS as exc:
            _retry_or_give_up(self, job_id, exc)

    for kind_name in jobs.KINDS:
        _register_kind(app, kind_name)
    _register_maintenance(app)
    return run_job


def _register_maintenance(app: DistillCelery) -> None:
    """`escalon.distill.prune_route_log(retention_days=None)`: the route log's retention (maintenance.py)."""
    from escalon.distill.maintenance import PRUNE_TASK, prune_route_log

    @app.task(name=PRUNE_TASK, shared=False, acks_late=True, autoretry_for=runner.TRANSIENT_ERRORS,
              retry_backoff=True, retry_jitter=True, max_retries=app.settings.max_retries)
    def prune(retention_days: float | None = None) -> dict[str, Any]:
        from escalon.config import load_settings
        from escalon.db.settings import DatabaseSettings

        return prune_route_log(load_settings(DatabaseSettings), retention_days)


def _register_kind(app: DistillCelery, kind_name: str) -> None:
    """`escalon.distill.<kind>(**params)`: store the job under the task id, then run it in this delivery."""

    @app.task(
        name=f"escalon.distill.{kind_name}",
        bind=True,
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=app.settings.max_retries,
    )
    def submit_and_run(self: Any, **params: Any) -> dict[str, Any]:
        app_: DistillCelery = self.app
        settings = app_.settings
        job_id = self.request.id
        kind, parsed = jobs.validate(kind_name, params, settings.data_dir)  # InvalidInput: fails, nothing stored
        stored = parsed.model_dump(mode="json")
        queue = (self.request.delivery_info or {}).get("routing_key") or kind.default_queue
        try:
            store = app_.job_store()
            job, created = store.create_if_absent(job_id, kind=kind.name, queue=queue, params=stored)
            if not created and (job.kind, job.params) != (kind.name, stored):
                raise AlreadyExists(f"job {job_id!r} exists with a different kind or params; use another task id",
                                    field="task_id")
            if job.enqueued_at is None:
                store.mark_enqueued(job_id)  # its message is this one: the reaper must not publish another
            return runner.execute(store, settings, job_id).as_dict()
        except runner.TRANSIENT_ERRORS as exc:
            _retry_or_give_up(self, job_id, exc)


def _retry_or_give_up(task: Any, job_id: str, exc: BaseException) -> None:
    """A transient failure: retry the delivery with backoff, or after max_retries fail the job and re-raise."""
    app: DistillCelery = task.app
    settings = app.settings
    retries = task.request.retries
    if retries >= task.max_retries:
        _give_up(app, job_id, exc, retries)
        raise exc
    delay = runner.backoff_delay(retries, settings.retry_backoff_s, settings.retry_backoff_max_s)
    log.warning("job %s: %s: %s; retry %d in %.1fs", job_id, type(exc).__name__, exc, retries + 1, delay)
    raise task.retry(exc=exc, countdown=delay) from exc


def _give_up(app: DistillCelery, job_id: str, exc: BaseException, retries: int) -> None:
    try:
        app.job_store().fail_unowned(job_id, f"gave up after {retries} retries: {type(exc).__name__}: {exc}")
    except Exception:  # the store is likely what is down; the lease will expire
        log.exception("job %s: could not record the failure", job_id)

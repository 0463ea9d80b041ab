"""DistillService: the gRPC front of the job queue (escalon.distill.v1).

SubmitJob validates everything it can before anything is stored or queued (kind, params, input files),
creates the job under its id if absent, and publishes one message with task id = job id. Submitting an
id again with the same kind, params and queue returns the existing job (`created=false`) and queues
nothing; the same id with different ones is ALREADY_EXISTS. The job store is the source of truth: GetJob,
WatchJob and ListJobs read it, never the broker.

CancelJob: a QUEUED job becomes CANCELLED at once (its message, when a worker gets it, is dropped); a
RUNNING job is flagged and stops CANCELLED at its next checkpoint (cooperative: the job's last checkpoint
and the artefacts it already wrote stay consistent). On brokers with remote control (Redis, RabbitMQ)
the task id is also revoked, so workers discard its message without opening the store. Cancelling a job
that already finished changes nothing and returns it as it is: cancel is idempotent, and the response's
state says whether the job ended cancelled.

Store and broker calls are blocking; they run on worker threads (asyncio.to_thread copies the context,
so the trace of the RPC reaches the published message).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import sqlalchemy.exc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from escalon.auth import Gate, KeyInterceptor
from escalon.db.engine import LazyDatabase
from escalon.db.settings import DatabaseSettings
from escalon.distill import jobs
from escalon.distill.celery_app import DistillCelery, create_celery, instrument_celery
from escalon.distill import metrics as distill_metrics
from escalon.distill.runner import send_job
from escalon.distill.settings import QUEUES, DistillSettings
from escalon.distill.store import Job, JobState, JobStore
from escalon.errors import AlreadyExists, EscalonError, InvalidInput, NotFound, clip, shown
from escalon.gen.distill.v1 import distill_pb2, distill_pb2_grpc
from escalon.metrics import metrics

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class BrokerUnavailable(EscalonError):
    """The broker did not take the job's message. The job is stored: submitting the same id again publishes it
    (and a worker's reaper publishes it after a lease period)."""

    code = grpc.StatusCode.UNAVAILABLE


class StoreUnavailable(EscalonError):
    """The job store's database cannot be reached; jobs already stored are safe, the call can be retried."""

    code = grpc.StatusCode.UNAVAILABLE


_TO_PB = {s: getattr(distill_pb2, f"JOB_STATE_{s.value}") for s in JobState}
_FROM_PB = {v: k for k, v in _TO_PB.items()}


class DistillService(distill_pb2_grpc.DistillServiceServicer):
    """The service handed to escalon.grpc.serve."""

    service_names = (distill_pb2.DESCRIPTOR.services_by_name["DistillService"].full_name,)

    def __init__(
        self, settings: DistillSettings, *, app: DistillCelery | None = None, store: JobStore | None = None,
        database: DatabaseSettings | None = None,
    ) -> None:
        """`database`: API keys (escalon.auth, scope `jobs`) from Escalon's database; None (tests) = open."""
        self.settings = settings
        self._app = app
        self._store = store
        self._keys = LazyDatabase(database.database_url) if database is not None else None
        self._gate = Gate(database, self._keys, service="distill") if database is not None else None
        self.interceptors = (KeyInterceptor(self._gate, "jobs"),) if self._gate is not None else ()
        # One thread publishes: kombu producers are not shared across threads, and SubmitJob is not hot.
        self._broker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-broker")

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise RuntimeError("DistillService.start() has not run")
        return self._store

    @property
    def app(self) -> DistillCelery:
        if self._app is None:
            raise RuntimeError("DistillService.start() has not run")
        return self._app

    def register(self, server: grpc.aio.Server) -> None:
        distill_pb2_grpc.add_DistillServiceServicer_to_server(self, server)

    async def start(self) -> None:
        if self._gate is not None:
            await self._gate.start()  # outside the dev profile, no keys: the start stops here
        if self._store is None:
            self._store = await asyncio.to_thread(lambda: JobStore(self.settings.database_url).init())
        if self._app is None:
            self._app = create_celery(self.settings)
        instrument_celery()  # publishes from here carry the RPC's trace into the worker
        distill_metrics.install(self._store, self._app)

    async def close(self) -> None:
        distill_metrics.uninstall()
        self._broker.shutdown(wait=True)
        if self._app is not None:
            await asyncio.to_thread(self._app.close)
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
        if self._keys is not None:
            self._keys.dispose()

    async def _stored(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A job store call on a worker thread; the database being away is UNAVAILABLE (retry), not INTERNAL.
        The driver's message names the database host, so the caller gets the kind of error only."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            log.warning("job store unreachable in %s: %s", getattr(fn, "__name__", "a call"), clip(str(exc), 200))
            raise StoreUnavailable(f"the job store's database does not answer ({type(exc).__name__}); "
                                   "retry shortly") from None

    async def _on_broker(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._broker, lambda: ctx.run(fn, *args))

    # ---- RPCs

    async def SubmitJob(self, request: distill_pb2.SubmitJobRequest, context: Any) -> distill_pb2.SubmitJobResponse:
        job_id = request.job_id or uuid.uuid4().hex
        if not JOB_ID.match(job_id):
            raise InvalidInput(
                f"job id {shown(job_id)} must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter "
                "or digit",
                field="job_id",
            )
        raw = _params_of(request) if request.HasField("params") else {}
        kind, params = await asyncio.to_thread(jobs.validate, request.kind, raw, self.settings.data_dir)
        queue = request.queue or kind.default_queue
        if queue not in QUEUES:
            raise InvalidInput(f"unknown queue {shown(queue)}; use one of {', '.join(QUEUES)}", field="queue")
        stored_params = params.model_dump(mode="json")
        job, created = await self._stored(
            self.store.create_if_absent, job_id, kind=kind.name, queue=queue, params=stored_params
        )
        if not created and (job.kind, job.queue, job.params) != (kind.name, queue, stored_params):
            raise AlreadyExists(
                f"job {job_id!r} exists with a different kind, queue or params; choose another id", field="job_id"
            )
        if created:
            metrics().jobs_submitted.labels(kind.name).inc()
        if created or (job.state is JobState.QUEUED and job.enqueued_at is None):
            # A new job, or a resubmission of one whose message never reached the broker: publish it.
            await self._publish(job)
        return distill_pb2.SubmitJobResponse(job=to_proto(job), created=created)

    async def _publish(self, job: Job) -> None:
        try:
            await self._on_broker(send_job, self.app, job)
        except Exception as exc:
            log.warning("could not publish job %s", job.job_id, exc_info=True)
            raise BrokerUnavailable(
                f"job {job.job_id!r} is stored but the broker did not take it ({type(exc).__name__}: {exc}); "
                "submit the same id again to retry",
                field="job_id",
            ) from None
        await self._stored(self.store.mark_enqueued, job.job_id)

    async def GetJob(self, request: distill_pb2.GetJobRequest, context: Any) -> distill_pb2.GetJobResponse:
        return distill_pb2.GetJobResponse(job=to_proto(await self._get(request.job_id)))

    async def WatchJob(self, request: distill_pb2.WatchJobRequest, context: Any):
        job = await self._get(request.job_id)
        last = None
        while True:
            # What a watcher sees; lease heartbeats alone (updated_at) are not news.
            seen = (job.state, job.progress, job.message, job.attempts, job.error)
            if seen != last:
                yield distill_pb2.WatchJobResponse(job=to_proto(job))
                last = seen
            if job.finished:
                return
            await asyncio.sleep(self.settings.watch_interval_s)
            job = await self._get(request.job_id)

    async def ListJobs(self, request: distill_pb2.ListJobsRequest, context: Any) -> distill_pb2.ListJobsResponse:
        if request.page_size < 0:
            raise InvalidInput(f"must be 0 (= {DEFAULT_PAGE_SIZE}) or more, got {request.page_size}", field="page_size")
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        state = None
        if request.state != distill_pb2.JOB_STATE_UNSPECIFIED:
            if request.state not in _FROM_PB:
                raise InvalidInput(f"unknown state {request.state}", field="state")
            state = _FROM_PB[request.state]
        try:
            page = await self._stored(
                self.store.list, page_size=page_size, page_token=request.page_token, state=state, kind=request.kind
            )
        except ValueError as exc:
            raise InvalidInput(str(exc), field="page_token") from None
        return distill_pb2.ListJobsResponse(jobs=[to_proto(j) for j in page.jobs], next_page_token=page.next_token)

    async def CancelJob(self, request: distill_pb2.CancelJobRequest, context: Any) -> distill_pb2.CancelJobResponse:
        _require_id(request.job_id)
        job = await self._stored(self.store.request_cancel, request.job_id)
        if job is None:
            raise NotFound(f"no job with id {shown(request.job_id)}", field="job_id")
        if job.cancel_requested and self.app.conf.worker_enable_remote_control:
            try:
                await self._on_broker(self.app.control.revoke, job.job_id)
            except Exception:  # revoking is an optimisation; the store already says cancel
                log.warning("could not revoke job %s on the broker", job.job_id, exc_info=True)
        return distill_pb2.CancelJobResponse(job=to_proto(job))

    async def _get(self, job_id: str) -> Job:
        _require_id(job_id)
        job = await self._stored(self.store.get, job_id)
        if job is None:
            raise NotFound(f"no job with id {shown(job_id)}", field="job_id")
        return job


def _params_of(request: distill_pb2.SubmitJobRequest) -> dict[str, Any]:
    """The params Struct as plain values; NaN and infinities (which JSON cannot hold, nor the job store) are
    refused here, naming the key."""
    try:
        return json_format.MessageToDict(request.params)
    except (json_format.SerializeToJsonError, ValueError) as exc:
        bad = _non_finite(request.params)
        where = f"params.{clip(bad)}" if bad else "params"
        raise InvalidInput(f"numbers must be finite, not NaN or infinite ({clip(str(exc))})", field=where) from None


def _non_finite(value: Any, path: str = "") -> str | None:
    import math

    if isinstance(value, struct_pb2.Struct):
        items = ((f"{path}.{k}" if path else k, v) for k, v in value.fields.items())
    elif isinstance(value, struct_pb2.ListValue):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value.values))
    else:
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            return path
        inner = value.struct_value if kind == "struct_value" else value.list_value if kind == "list_value" else None
        return _non_finite(inner, path) if inner is not None else None
    for where, item in items:
        if (found := _non_finite(item, where)) is not None:
            return found
    return None


def _require_id(job_id: str) -> None:
    if not job_id:
        raise InvalidInput("give the id of a job (SubmitJob returns it)", field="job_id")


def _timestamp(value: Any) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(value)
    return out


def to_proto(job: Job) -> distill_pb2.Job:
    return distill_pb2.Job(
        job_id=job.job_id,
        kind=job.kind,
        state=_TO_PB[job.state],
        progress=job.progress,
        message=job.message,
        params=_struct(job.params),
        result=_struct(job.result),
        error=job.error,
        queue=job.queue,
        attempts=job.attempts,
        created_at=_timestamp(job.created_at),
        updated_at=_timestamp(job.updated_at),
    )

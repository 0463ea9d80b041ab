"""The Celery app of the distill service: configuration, queues, per-broker options, worker signals.

`create_celery(settings)` builds an app and connects to nothing. `celery -A escalon.distill.celery_app
worker` also works: the module's `app` is built on first access from the environment (PEP 562 lazy
attribute), still without connecting; `python -m escalon.distill worker` is the supported entry point.

Delivery guarantees (STYLE practice 8): `task_acks_late` (a message is acknowledged after the job ran),
`worker_prefetch_multiplier=1` (a worker reserves one job per process, so a long job does not hold others
hostage), `task_reject_on_worker_lost` (a pool process killed mid-job puts the message back). These are
safe because a job is keyed on its id, fenced by a lease in the job store, checkpointed, and writes its
artefacts atomically. What each broker does with a worker that vanishes entirely:

  amqp://    the broker redelivers at once when the connection drops.
  redis://   the message is restored after `visibility_timeout` (ESCALON_DISTILL_VISIBILITY_TIMEOUT_S).
  sqla+...   kombu never redelivers (a fetched row stays invisible); the job store's lease does it:
             every worker requeues RUNNING jobs whose lease expired (escalon.distill.runner.reap).
Duplicates that this may produce are harmless: a second delivery finds the job finished or leased.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import cache
from typing import Any

import kombu.transport.sqlalchemy
from celery import Celery, signals
from kombu import Exchange, Queue

from escalon.distill.maintenance import PRUNE_EVERY_S, PRUNE_TASK
from escalon.distill.settings import QUEUES, DistillSettings
from escalon.distill.store import JobStore

log = logging.getLogger(__name__)

TASK_NAME = "escalon.distill.run_job"
WORKER_TELEMETRY_NAME = "escalon-distill-worker"


class DistillCelery(Celery):
    """A Celery app that also carries the distill settings and a per-process job store."""

    def __init__(self, settings: DistillSettings) -> None:
        super().__init__("escalon.distill", set_as_current=False)
        self.settings = settings
        self._store: JobStore | None = None
        self._store_pid = 0
        self._store_lock = threading.Lock()
        self.reaper: Any = None  # the lease reaper, in a worker's main process

    def job_store(self) -> JobStore:
        """The job store of this process, opened on first use (engines must not cross a fork)."""
        with self._store_lock:
            if self._store is None or self._store_pid != os.getpid():
                self._store = JobStore(self.settings.database_url).init()
                self._store_pid = os.getpid()
            return self._store

    def forget_inherited_store(self) -> None:
        """In a freshly forked pool process: drop the parent's engine without closing its connections."""
        with self._store_lock:
            if self._store is not None and self._store_pid != os.getpid():
                self._store.engine.dispose(close=False)
                self._store = None

    def close_store(self) -> None:
        with self._store_lock:
            if self._store is not None and self._store_pid == os.getpid():
                self._store.close()
            self._store = None


def broker_transport_options(settings: DistillSettings) -> dict[str, Any]:
    """Options that fit the configured broker."""
    kind = settings.broker_kind
    if kind == "redis":
        # Unacknowledged messages come back after this long; with acks_late it bounds how soon a job
        # of a vanished worker restarts, and must exceed the longest retry countdown.
        return {"visibility_timeout": settings.visibility_timeout_s}
    if kind == "amqp":
        # Publisher confirms: SubmitJob returns only once RabbitMQ has the message.
        return {"confirm_publish": True}
    if kind == "sqlalchemy":
        # kombu hands every transport option to create_engine: only engine arguments may go here.
        return {"connect_args": {"timeout": 30}} if "sqlite" in settings.broker_url else {"pool_pre_ping": True}
    return {}


def create_celery(settings: DistillSettings) -> DistillCelery:
    """The distill app for these settings. Registers the task; opens no connection."""
    from escalon.distill import tasks  # here, not at the top: tasks imports this module

    app = DistillCelery(settings)
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="cpu",
        task_queues=[Queue(name, Exchange("escalon.distill", type="direct"), routing_key=name) for name in QUEUES],
        task_routes={TASK_NAME: {"queue": "cpu", "routing_key": "cpu"}},
        task_default_exchange="escalon.distill",
        task_default_routing_key="cpu",
        task_create_missing_queues=False,
        result_expires=7 * 24 * 3600,
        result_extended=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=settings.broker_kind in {"redis", "amqp"},
        # How long the pool waits for the result of a process that died before it calls the job lost and
        # requeues it (Celery: 10 s). Safe to shorten: a job that did finish is recorded in the job store,
        # so its requeued message finds it finished and does nothing.
        worker_lost_wait=2.0,
        # On a lost broker connection, let running jobs finish: their redelivered copies find them leased or
        # finished and do nothing, so no work is thrown away (and Celery's warning about it is answered).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
        # beat (worker --beat, or `celery beat`): the route log's retention, daily (escalon.distill.maintenance)
        beat_schedule={"prune-route-log": {"task": PRUNE_TASK, "schedule": PRUNE_EVERY_S,
                                           "options": {"queue": "cpu", "routing_key": "cpu"}}},
    )
    if settings.broker_kind == "sqlalchemy":
        # FEASIBILITY.md: `polling_interval` in the transport options reaches create_engine and raises
        # TypeError; the transport class attribute is the working knob (1 s by default in kombu).
        kombu.transport.sqlalchemy.Transport.polling_interval = settings.broker_polling_interval_s
    if settings.result_backend.startswith("db+"):
        app.conf.database_engine_options = {"pool_pre_ping": True}
    tasks.register(app)
    _connect_signals(app)
    return app


def instrument_celery() -> None:
    """Trace Celery in this process: publishes carry the current trace context, task runs continue it."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def _worker_telemetry() -> None:
    from escalon.telemetry import configure_telemetry

    configure_telemetry(WORKER_TELEMETRY_NAME)
    instrument_celery()


def _connect_signals(app: DistillCelery) -> None:
    """Worker lifecycle hooks for this app (Celery's signals are process-wide; they fire in workers only)."""
    uid = f"escalon.distill.{id(app)}"

    def _pool_process_init(**_: Any) -> None:
        # Each prefork pool process: its own tracer provider and exporter thread, its own store.
        _worker_telemetry()
        app.forget_inherited_store()

    def _pool_process_shutdown(**_: Any) -> None:
        # Flush the spans of the last jobs before a pool process exits (max-tasks-per-child, shutdown).
        from escalon.telemetry import configure_telemetry

        configure_telemetry(WORKER_TELEMETRY_NAME).shutdown()

    def _worker_init(sender: Any = None, **_: Any) -> None:
        # The solo and thread pools run tasks in the main process, where worker_process_init never fires.
        pool = str(getattr(sender, "pool_cls", "")).lower()
        if getattr(sender, "app", None) is app and ("solo" in pool or "thread" in pool):
            _worker_telemetry()

    def _worker_ready(sender: Any = None, **_: Any) -> None:
        from escalon.distill.runner import Reaper

        if getattr(sender, "app", None) is app and app.reaper is None:
            app.reaper = Reaper(app)
            app.reaper.start()

    def _worker_shutdown(**_: Any) -> None:
        if app.reaper is not None:
            app.reaper.stop()
            app.reaper = None
        app.close_store()

    signals.worker_process_init.connect(_pool_process_init, weak=False, dispatch_uid=uid)
    signals.worker_process_shutdown.connect(_pool_process_shutdown, weak=False, dispatch_uid=uid)
    signals.worker_init.connect(_worker_init, weak=False, dispatch_uid=uid)
    signals.worker_ready.connect(_worker_ready, weak=False, dispatch_uid=uid)
    signals.worker_shutdown.connect(_worker_shutdown, weak=False, dispatch_uid=uid)


@cache
def _default_app() -> DistillCelery:
    from escalon.config import load_settings

    return create_celery(load_settings(DistillSettings))


def __getattr__(name: str) -> Any:
    """`celery -A escalon.distill.celery_app` looks up `app`: build it then, from the environment."""
    if name == "app":
        return _default_app()
    raise AttributeError(name)

"""What the distill front and the workers add to the metrics endpoint (escalon.metrics): jobs by kind and state
from the job store, each queue's length from the broker (the workers' autoscaling signal), and the worker's
own task counts. The store and the broker are read at scrape time, at most every few seconds."""

from __future__ import annotations

from typing import Any

from escalon.distill.settings import QUEUES
from escalon.metrics import CachedGauges, metrics


def job_counts(store: Any) -> CachedGauges:
    """escalon_jobs{escalon_job_kind, state}: every job the store holds, by kind and state."""
    def read() -> dict[tuple[str, ...], float]:
        return {(kind, state.lower()): float(n) for (kind, state), n in store.counts().items()}

    return CachedGauges("escalon_jobs", "Jobs in the job store by kind and state", ["escalon_job_kind", "state"], read)


def queue_lengths(app: Any, queues: tuple[str, ...] = QUEUES) -> CachedGauges:
    """escalon_distill_queue_length{queue}: messages waiting in each Celery queue (a passive declare: Redis list
    length, RabbitMQ message count, rows of the SQLite transport). A queue no one declared yet is 0."""
    def read() -> dict[tuple[str, ...], float]:
        lengths: dict[tuple[str, ...], float] = {}
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            for queue in queues:
                try:
                    lengths[(queue,)] = float(channel.queue_declare(queue=queue, passive=True).message_count)
                except Exception:  # noqa: BLE001 - not declared yet (a 404 from AMQP, ChannelError elsewhere)
                    lengths[(queue,)] = 0.0
                    channel = conn.default_channel  # AMQP closes the channel on a failed passive declare
        return lengths

    return CachedGauges("escalon_distill_queue_length", "Job messages waiting in a Celery queue", ["queue"], read)


def install(store: Any, app: Any) -> None:
    """The distill front's scrape-time gauges (one set per process; a later front replaces them)."""
    metrics().set_collector("distill.jobs", job_counts(store))
    metrics().set_collector("distill.queues", queue_lengths(app))


def uninstall() -> None:
    metrics().set_collector("distill.jobs", None)
    metrics().set_collector("distill.queues", None)

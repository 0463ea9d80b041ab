"""The route log's writer: records go into a bounded in-memory queue and a background task writes them to the
database in batches, off the request path.

    submit(record)   never blocks, never raises: the route has answered; a full queue drops the record and
                     counts it (`dropped`, logged once per outage, and escalon_route_log_dropped_total)
    the task         waits for a first record, gathers more for up to `flush_s` (at most `batch` of them),
                     inserts them in one transaction from a worker thread. The database down or slow: the
                     batch is kept and retried with backoff (1 s doubling to 30 s), records keep queueing
                     until the queue is full; once the database answers again everything queued is written.
                     The schema is migrated by the task too, so a database that does not answer at start
                     leaves the router serving and says once that logging is degraded and why.
    close()          writes what is queued for up to `timeout_s`; what is left then is counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert

from escalon.db.engine import ready_database
from escalon.db.models import Route

log = logging.getLogger(__name__)
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0


@dataclass
class LogStats:
    written: int = 0
    dropped: int = 0
    queued: int = 0
    degraded: str = ""  # why writes fail now; empty when they succeed


class RouteLogWriter:
    def __init__(self, url: str, *, queue_size: int = 10_000, batch: int = 200, flush_s: float = 0.5,
                 engine_factory: Callable[[str], Engine] = ready_database) -> None:
        self.url = url
        self.batch = batch
        self.flush_s = flush_s
        self._engine_factory = engine_factory
        self._engine: Engine | None = None
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._pending: list[dict[str, Any]] = []  # a batch the database refused, retried first
        self._task: asyncio.Task | None = None
        self._closing = False
        self._drop_logged = False
        self.stats = LogStats()
        from escalon.metrics import metrics  # escalon_route_log_* on the router's /metrics

        self._metrics = metrics()

    # ---- the request side

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue one record; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(record)
            self._metrics.route_log_queued.inc()
            return True
        except asyncio.QueueFull:
            self._drop(1, "the queue is full")
            return False

    def _drop(self, n: int, why: str) -> None:
        self.stats.dropped += n
        self._metrics.route_log_dropped.inc(n)
        if not self._drop_logged:
            self._drop_logged = True
            log.error("route log: dropping records (%s; %s); %d dropped so far, counted in "
                      "escalon_route_log_dropped_total", why, self.stats.degraded or "database slower than traffic",
                      self.stats.dropped)

    def snapshot(self) -> LogStats:
        return LogStats(self.stats.written, self.stats.dropped, self._queue.qsize() + len(self._pending),
                        self.stats.degraded)

    # ---- the background side

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="route-log-writer")

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        while not (self._closing and self._queue.empty() and not self._pending):
            batch = self._pending or await self._gather()
            if not batch:
                continue
            try:
                await asyncio.to_thread(self._write, batch)
            except asyncio.CancelledError:
                self._pending = batch
                raise
            except Exception as exc:  # noqa: BLE001 - any database failure degrades logging, never routing
                self._pending = batch
                self._degrade(exc)
                if self._closing:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._pending = []
            delay = RETRY_FIRST_S
            self.stats.written += len(batch)
            self._metrics.route_log_written.inc(len(batch))
            self._metrics.route_log_queued.dec(len(batch))
            if self.stats.degraded:
                log.warning("route log recovered: writing again (%d records written, %d dropped in all)",
                            self.stats.written, self.stats.dropped)
                self.stats.degraded = ""
                self._drop_logged = False

    async def _gather(self) -> list[dict[str, Any]]:
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout=None if not self._closing else 0.05)
        except TimeoutError:
            return []
        batch = [first]
        deadline = asyncio.get_running_loop().time() + (0 if self._closing else self.flush_s)
        while len(batch) < self.batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=left))
            except TimeoutError:
                break
        return batch

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if self._engine is None:
            self._engine = self._engine_factory(self.url)
        with self._engine.begin() as conn:
            conn.execute(insert(Route), batch)

    def _degrade(self, exc: BaseException) -> None:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        if not self.stats.degraded:
            log.warning("route log degraded: cannot write to %s (%s); routes still answer, records wait in memory "
                        "(up to %d) and are written when the database answers", _safe(self.url), why,
                        self._queue.maxsize)
        self.stats.degraded = why
        if self._engine is not None and "does not exist" not in why:
            with contextlib.suppress(Exception):
                self._engine.dispose()

    async def close(self, timeout_s: float = 5.0) -> LogStats:
        """Write what is queued (for up to timeout_s), then stop; what could not be written is counted."""
        self._closing = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout_s)
            except (TimeoutError, Exception):  # noqa: BLE001
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        left = self._queue.qsize() + len(self._pending)
        self._metrics.route_log_queued.dec(left)
        if left:
            self._drop(left, "the router stopped before the database took them")
        if self._engine is not None:
            self._engine.dispose()
        return self.snapshot()


def _safe(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url

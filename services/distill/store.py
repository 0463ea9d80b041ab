"""The job store: the source of truth for every distill job, in SQLAlchemy 2 Core (SQLite or PostgreSQL).

Two tables (escalon.distill.schema): jobs, one row per job keyed on the caller's job id (the idempotency key),
and job_events, an append-only history per job. The domain types are in escalon.distill.records, lease owners
in escalon.distill.leases, ListJobs' page tokens in escalon.distill.paging.

Ownership of a running job is a lease (`lease_owner`, `lease_expires_at`), renewed by the worker that runs it.
Every write a worker makes is fenced on `lease_owner = me`: a worker that stalled past its lease and comes
back finds it lost (`LeaseLost`) instead of overwriting the checkpoint of the worker that took over. A job
whose lease expired (its worker was killed) is requeued by the worker's reaper (escalon.distill.runner: `expired_leases`, then
`mark_requeued`), which every worker runs periodically; this is what makes a killed job come back on brokers that never redeliver by themselves.

SQLite: WAL journal, a 30 s busy timeout, and `BEGIN IMMEDIATE` for writing transactions so that two
processes never deadlock upgrading a read lock. PostgreSQL: `SELECT ... FOR UPDATE` where a row is read
then written. Both: `INSERT ... ON CONFLICT DO NOTHING` for the idempotent create.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, and_, create_engine, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, ProgrammingError

from escalon.distill.leases import make_owner, owner_is_dead
from escalon.distill.paging import decode_page_token, encode_page_token
from escalon.distill.records import (
    FINISHED,
    UTC,
    Claim,
    ClaimOutcome,
    Job,
    JobEvent,
    JobState,
    LeaseLost,
    Page,
    job_from_row,
    utcnow,
)
from escalon.distill.schema import job_events, jobs, metadata, sqlite_path, sqlite_pragmas

__all__ = ["FINISHED", "UTC", "Claim", "ClaimOutcome", "Job", "JobEvent", "JobState", "JobStore", "LeaseLost", "Page",
           "decode_page_token", "encode_page_token", "job_events", "jobs", "make_owner", "metadata", "owner_is_dead",
           "utcnow"]


class JobStore:
    """All reads and writes of job state. Thread-safe; one per process (engines do not survive fork)."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        if self.dialect == "sqlite":
            engine_kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        else:
            engine_kwargs.setdefault("pool_pre_ping", True)
        self.engine: Engine = create_engine(url, **engine_kwargs)
        if self.dialect == "sqlite":
            sqlite_pragmas(self.engine)

    # ---- lifecycle

    def init(self) -> JobStore:
        """Create the tables (and the SQLite folder) when missing. Safe to call from several processes."""
        path = sqlite_path(self.url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            metadata.create_all(self.engine)
        except (IntegrityError, ProgrammingError):
            # Another process created them between the existence check and CREATE (PostgreSQL).
            metadata.create_all(self.engine)
        return self

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(escalon_write=write)
            with conn.begin():
                yield conn

    # ---- create and read

    def create_if_absent(
        self, job_id: str, *, kind: str, queue: str, params: dict[str, Any], now: dt.datetime | None = None
    ) -> tuple[Job, bool]:
        """Insert the job unless its id exists; return (job, created). Concurrent callers create one row."""
        now = now or utcnow()
        values = dict(
            job_id=job_id,
            kind=kind,
            queue=queue,
            state=JobState.QUEUED.value,
            progress=0.0,
            message="queued",
            params=params,
            error="",
            attempts=0,
            cancel_requested=False,
            created_at=now,
            updated_at=now,
        )
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = insert(jobs).values(**values).on_conflict_do_nothing(index_elements=["job_id"]).returning(jobs.c.job_id)
        with self._tx(write=True) as conn:
            created = conn.execute(stmt).first() is not None
            row = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).one()
        return job_from_row(row), created

    def get(self, job_id: str) -> Job | None:
        with self._tx(write=False) as conn:
            row = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).one_or_none()
        return job_from_row(row) if row is not None else None

    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs there are per (kind, state): one GROUP BY, for the metrics endpoint."""
        query = select(jobs.c.kind, jobs.c.state, func.count()).group_by(jobs.c.kind, jobs.c.state)
        with self._tx(write=False) as conn:
            return {(kind, state): int(n) for kind, state, n in conn.execute(query).all()}

    def events(self, job_id: str) -> list[JobEvent]:
        with self._tx(write=False) as conn:
            rows = conn.execute(select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)).all()
        return [JobEvent(**r._mapping) for r in rows]

    def list(self, *, page_size: int, page_token: str = "", state: JobState | None = None, kind: str = "") -> Page:
        """Newest first, keyset-paginated. A token is only valid with the filters it was made for."""
        filters = {"state": state.value if state else "", "kind": kind}
        query = select(jobs)
        if state is not None:
            query = query.where(jobs.c.state == state.value)
        if kind:
            query = query.where(jobs.c.kind == kind)
        if page_token:
            created_at, job_id = decode_page_token(page_token, filters)
            query = query.where(
                or_(jobs.c.created_at < created_at, and_(jobs.c.created_at == created_at, jobs.c.job_id < job_id))
            )
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc()).limit(page_size + 1)
        with self._tx(write=False) as conn:
            rows = [job_from_row(r) for r in conn.execute(query).all()]
        more = len(rows) > page_size
        rows = rows[:page_size]
        token = encode_page_token(rows[-1].created_at, rows[-1].job_id, filters) if more and rows else ""
        return Page(rows, token)

    # ---- what a worker does

    def claim(
        self,
        job_id: str,
        owner: str,
        lease_s: float,
        *,
        details: dict[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> Claim:
        """Take the job for `owner`: RUNNING, attempts + 1, a fresh lease; or say why not. `details` go
        into the `started` event (host, pid, trace id)."""
        now = now or utcnow()
        with self._tx(write=True) as conn:
            row = conn.execute(self._locked(job_id)).one_or_none()
            if row is None:
                return Claim(ClaimOutcome.NOT_FOUND, None)
            job = job_from_row(row)
            if job.finished:
                return Claim(ClaimOutcome.FINISHED, job)
            held = (
                job.lease_owner is not None
                and job.lease_owner != owner
                and job.lease_expires_at is not None
                and job.lease_expires_at > now
            )
            if held and not owner_is_dead(job.lease_owner):
                return Claim(ClaimOutcome.BUSY, job)
            attempt = job.attempts + 1
            if job.cancel_requested:
                self._finish_row(conn, job_id, JobState.CANCELLED, now, message="cancelled before it started")
                self._event(conn, job_id, job.attempts, "cancelled", now, message="cancelled before it started")
                return Claim(ClaimOutcome.CANCELLED, self._get(conn, job_id))
            conn.execute(
                update(jobs)
                .where(jobs.c.job_id == job_id)
                .values(
                    state=JobState.RUNNING.value,
                    attempts=attempt,
                    lease_owner=owner,
                    lease_expires_at=now + dt.timedelta(seconds=lease_s),
                    started_at=job.started_at or now,
                    message=f"attempt {attempt} started" + (" (resuming from checkpoint)" if job.checkpoint else ""),
                    updated_at=now,
                )
            )
            host, pid, _ = owner.rsplit(":", 2) if owner.count(":") >= 2 else (owner, "", "")
            self._event(
                conn,
                job_id,
                attempt,
                "started",
                now,
                message=f"attempt {attempt} on {host}",
                metrics={
                    "owner": owner,
                    "host": host,
                    "pid": int(pid) if pid.isdigit() else None,
                    "resumed": job.checkpoint is not None,
                    **(details or {}),
                },
            )
            return Claim(ClaimOutcome.CLAIMED, self._get(conn, job_id))

    def heartbeat(
        self,
        job_id: str,
        owner: str,
        lease_s: float,
        *,
        progress: float | None = None,
        message: str | None = None,
        now: dt.datetime | None = None,
    ) -> bool:
        """Renew the lease (and record progress); return whether cancellation was requested."""
        now = now or utcnow()
        values: dict[str, Any] = {"lease_expires_at": now + dt.timedelta(seconds=lease_s), "updated_at": now}
        if progress is not None:
            values["progress"] = progress
        if message is not None:
            values["message"] = message
        with self._tx(write=True) as conn:
            self._owned_update(conn, job_id, owner, values)
            return bool(conn.execute(select(jobs.c.cancel_requested).where(jobs.c.job_id == job_id)).scalar())

    def save_checkpoint(
        self,
        job_id: str,
        owner: str,
        checkpoint: dict[str, Any],
        *,
        lease_s: float,
        progress: float,
        message: str,
        step: int | None = None,
        metrics: dict[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> bool:
        """Store the checkpoint, progress and a `checkpoint` event in one transaction; return cancel flag."""
        now = now or utcnow()
        with self._tx(write=True) as conn:
            attempts = self._owned_update(
                conn,
                job_id,
                owner,
                {
                    "checkpoint": checkpoint,
                    "progress": progress,
                    "message": message,
                    "lease_expires_at": now + dt.timedelta(seconds=lease_s),
                    "updated_at": now,
                },
            )
            self._event(conn, job_id, attempts, "checkpoint", now, step=step, message=message, metrics=metrics)
            return bool(conn.execute(select(jobs.c.cancel_requested).where(jobs.c.job_id == job_id)).scalar())

    def finish(
        self,
        job_id: str,
        owner: str,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error: str = "",
        message: str = "",
        now: dt.datetime | None = None,
    ) -> Job:
        """End the job in a final state (fenced on the lease) and release the lease."""
        if not state.finished:
            raise ValueError(f"{state} is not a final state")
        now = now or utcnow()
        with self._tx(write=True) as conn:
            attempts = self._owned_update(conn, job_id, owner, {})
            self._finish_row(conn, job_id, state, now, result=result, error=error, message=message or state.lower())
            self._event(conn, job_id, attempts, state.lower(), now, message=error or message)
            return self._get(conn, job_id)

    def release(self, job_id: str, owner: str, message: str, *, now: dt.datetime | None = None) -> None:
        """Give the job back to the queue (a transient error; a retry message follows)."""
        now = now or utcnow()
        with self._tx(write=True) as conn:
            attempts = self._owned_update(
                conn,
                job_id,
                owner,
                {
                    "state": JobState.QUEUED.value,
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "message": message,
                    "updated_at": now,
                },
            )
            self._event(conn, job_id, attempts, "retry", now, message=message)

    def fail_unowned(self, job_id: str, error: str, *, now: dt.datetime | None = None) -> None:
        """Mark an unfinished job FAILED whoever holds it (retries exhausted: nobody will run it again)."""
        now = now or utcnow()
        with self._tx(write=True) as conn:
            job = conn.execute(self._locked(job_id)).one_or_none()
            if job is None or JobState(job.state).finished:
                return
            self._finish_row(conn, job_id, JobState.FAILED, now, error=error, message="failed")
            self._event(conn, job_id, job.attempts, "failed", now, message=error)

    def mark_enqueued(self, job_id: str, *, now: dt.datetime | None = None) -> None:
        """Its message is on the broker (set after a confirmed publish)."""
        now = now or utcnow()
        with self._tx(write=True) as conn:
            conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(enqueued_at=now))

    def unsent(self, *, older_than_s: float, now: dt.datetime | None = None, limit: int = 100) -> list[Job]:
        """QUEUED jobs whose message was never confirmed published (the front died between storing the job
        and publishing it, or the broker was down) for longer than `older_than_s`."""
        now = now or utcnow()
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(jobs)
                .where(
                    jobs.c.state == JobState.QUEUED.value,
                    jobs.c.enqueued_at.is_(None),
                    jobs.c.created_at < now - dt.timedelta(seconds=older_than_s),
                )
                .order_by(jobs.c.created_at)
                .limit(limit)
            ).all()
        return [job_from_row(r) for r in rows]

    def expired_leases(self, *, now: dt.datetime | None = None, limit: int = 100) -> list[Job]:
        """RUNNING jobs whose worker stopped renewing the lease (killed, frozen or cut off)."""
        now = now or utcnow()
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(jobs)
                .where(jobs.c.state == JobState.RUNNING.value, jobs.c.lease_expires_at < now)
                .order_by(jobs.c.lease_expires_at)
                .limit(limit)
            ).all()
        return [job_from_row(r) for r in rows]

    def mark_requeued(self, job_id: str, *, now: dt.datetime | None = None) -> bool:
        """RUNNING with an expired lease → QUEUED (after its new message was sent). False when a worker
        already claimed it again, or another reaper got there first."""
        now = now or utcnow()
        message = "requeued: its worker stopped renewing the lease (killed or cut off)"
        with self._tx(write=True) as conn:
            done = conn.execute(
                update(jobs)
                .where(
                    jobs.c.job_id == job_id,
                    jobs.c.state == JobState.RUNNING.value,
                    jobs.c.lease_expires_at < now,
                )
                .values(
                    state=JobState.QUEUED.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    message=message,
                    enqueued_at=now,
                    updated_at=now,
                )
            ).rowcount
            if done:
                attempts = conn.execute(select(jobs.c.attempts).where(jobs.c.job_id == job_id)).scalar_one()
                self._event(conn, job_id, attempts, "requeued", now, message=message)
        return bool(done)

    # ---- what a caller does

    def request_cancel(self, job_id: str, *, now: dt.datetime | None = None) -> Job | None:
        """Ask the job to stop. QUEUED → CANCELLED at once; RUNNING → flag for the job to see between steps;
        a finished job is left as it is (cancelling is idempotent). None when the id is unknown."""
        now = now or utcnow()
        with self._tx(write=True) as conn:
            row = conn.execute(self._locked(job_id)).one_or_none()
            if row is None:
                return None
            job = job_from_row(row)
            if job.finished:
                return job
            conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(cancel_requested=True, updated_at=now))
            if job.state is JobState.QUEUED:
                self._finish_row(conn, job_id, JobState.CANCELLED, now, message="cancelled before it started")
                self._event(conn, job_id, job.attempts, "cancelled", now, message="cancelled while queued")
            else:
                conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(message="cancel requested"))
            return self._get(conn, job_id)

    # ---- helpers

    def _locked(self, job_id: str):
        query = select(jobs).where(jobs.c.job_id == job_id)
        return query.with_for_update() if self.dialect == "postgresql" else query

    @staticmethod
    def _get(conn: Connection, job_id: str) -> Job:
        return job_from_row(conn.execute(select(jobs).where(jobs.c.job_id == job_id)).one())

    @staticmethod
    def _owned_update(conn: Connection, job_id: str, owner: str, values: dict[str, Any]) -> int:
        """Update the row only while `owner` holds the lease; return the attempt number. Else LeaseLost."""
        row = conn.execute(
            select(jobs.c.attempts, jobs.c.state).where(jobs.c.job_id == job_id, jobs.c.lease_owner == owner)
        ).one_or_none()
        if row is None:
            raise LeaseLost(f"job {job_id!r} is no longer owned by {owner}")
        if values:
            conn.execute(update(jobs).where(jobs.c.job_id == job_id, jobs.c.lease_owner == owner).values(**values))
        return int(row.attempts)

    @staticmethod
    def _finish_row(
        conn: Connection,
        job_id: str,
        state: JobState,
        now: dt.datetime,
        *,
        result: dict[str, Any] | None = None,
        error: str = "",
        message: str = "",
    ) -> None:
        values: dict[str, Any] = dict(
            state=state.value,
            error=error,
            message=message,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        if result is not None:
            values["result"] = result
        if state is JobState.SUCCEEDED:
            values["progress"] = 1.0
        conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(**values))

    @staticmethod
    def _event(
        conn: Connection,
        job_id: str,
        attempt: int,
        name: str,
        now: dt.datetime,
        *,
        step: int | None = None,
        message: str = "",
        metrics: dict[str, Any] | None = None,
    ) -> None:
        conn.execute(
            job_events.insert().values(
                job_id=job_id,
                attempt=attempt,
                event=name,
                step=step,
                message=message,
                metrics=metrics,
                created_at=now,
            )
        )

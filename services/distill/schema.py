"""The job store's two tables, in SQLAlchemy 2 Core, and the SQLite connection settings.

  jobs        one row per job, keyed on the caller's job id (the idempotency key)
  job_events  an append-only history per job: started, checkpoint (with per-step metrics), requeued,
              cancelled, finished; what `escalon jobs` and the tests read to see what a job did

SQLite: WAL journal, a 30 s busy timeout, and `BEGIN IMMEDIATE` for writing transactions so that two
processes never deadlock upgrading a read lock (sqlite_pragmas).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    event,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from escalon.distill.records import UTC


class _UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on both databases (SQLite keeps no zone: store naive UTC, read back aware)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_JSON = JSON().with_variant(postgresql.JSONB(), "postgresql")
_ID = Integer().with_variant(postgresql.BIGINT(), "postgresql")

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(128), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("queue", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("progress", Float, nullable=False, default=0.0),
    Column("message", Text, nullable=False, default=""),
    Column("params", _JSON, nullable=False),
    Column("result", _JSON),
    Column("error", Text, nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=0),
    Column("checkpoint", _JSON),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("lease_owner", String(200)),
    Column("lease_expires_at", _UTCDateTime),
    Column("created_at", _UTCDateTime, nullable=False),
    Column("updated_at", _UTCDateTime, nullable=False),
    Column("enqueued_at", _UTCDateTime),  # when its message was last published; NULL: never confirmed
    Column("started_at", _UTCDateTime),
    Column("finished_at", _UTCDateTime),
    Index("ix_jobs_created", "created_at", "job_id"),
    Index("ix_jobs_state_lease", "state", "lease_expires_at"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("job_id", String(128), ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("event", String(32), nullable=False),
    Column("step", Integer),
    Column("message", Text, nullable=False, default=""),
    Column("metrics", _JSON),
    Column("created_at", _UTCDateTime, nullable=False),
    Index("ix_job_events_job", "job_id", "id"),
)


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        return Path(url[len(prefix) :])
    return None


def sqlite_pragmas(engine: Engine) -> None:
    """WAL (readers never block the writer), a busy timeout, and explicit BEGIN so writers take the write
    lock up front (SQLAlchemy's documented recipe for pysqlite's transaction handling)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("escalon_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

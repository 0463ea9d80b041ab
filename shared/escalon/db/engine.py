"""Opening Escalon's database and bringing its schema up to date, with Alembic, from code.

`open_database(url)` returns an engine (SQLite: WAL journal and a busy timeout, so the router's writer and
the CLI's readers do not block each other; PostgreSQL: pre-ping, so a restarted server is reconnected to).
`migrate(engine)` runs every migration in migrations/versions/ up to head, under a lock on PostgreSQL so
that replicas starting together migrate once. Nothing else creates or alters a table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "escalon_alembic_version"
_LOCK_ID = 0x65736361  # "esca": the advisory lock replicas take while migrating


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        return Path(url[len(prefix):])
    return None


def open_database(url: str, **engine_kwargs: Any) -> Engine:
    """An engine for `url`; connects to nothing yet (the first query does)."""
    if url.startswith("sqlite"):
        engine_kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **engine_kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    engine_kwargs.setdefault("pool_pre_ping", True)
    engine_kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", 5)
    return create_engine(url, **engine_kwargs)


def alembic_config(connection=None):  # noqa: ANN001, ANN201
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to `revision`. Safe to call from several processes at once."""
    from alembic import command

    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
            conn.commit()
        try:
            command.upgrade(alembic_config(conn), revision)
            conn.commit()
        finally:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
                conn.commit()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def ready_database(url: str, **engine_kwargs: Any) -> Engine:
    """open_database + migrate: what a process that reads or writes the tables calls first."""
    engine = open_database(url, **engine_kwargs)
    migrate(engine)
    return engine


class LazyDatabase:
    """One migrated engine per process, made on first use (from any thread); a failed open or migration is
    tried again on the next use, so a database that comes up later is picked up."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        import threading

        self.url = url
        self._kwargs = engine_kwargs
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Engine:
        with self._lock:
            if self._engine is None:
                engine = open_database(self.url, **self._kwargs)
                try:
                    migrate(engine)
                except Exception:
                    engine.dispose()
                    raise
                self._engine = engine
            return self._engine

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

"""A router over real servers (serving with the replay rungs of the demo sample, the judge) with Escalon's
database behind it: SQLite in a temporary folder, or a throwaway PostgreSQL database on 127.0.0.1:5432
(skipped, with the reason, when no server answers there)."""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

from escalon.db.engine import open_database
from escalon.db.settings import DatabaseSettings
from escalon.offline.stack import services_in_process
from escalon.registry import Catalogue, load_catalogue

PG_ADMIN = os.environ.get("ESCALON_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_database() -> str:
    """A fresh database on the test server; pytest.skip when none answers."""
    from sqlalchemy import text

    admin = open_database(PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 2})
    name = f"escalon_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no PostgreSQL at {PG_ADMIN} ({type(exc).__name__}); set ESCALON_TEST_POSTGRES to test it")
    finally:
        admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def _drop_pg(url: str) -> None:
    from sqlalchemy import text

    admin = open_database(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with contextlib.suppress(Exception), admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'escalon.sqlite'}"
        return
    url = _pg_database()
    yield url
    _drop_pg(url)


def two_rungs() -> Catalogue:
    default = load_catalogue()
    return Catalogue(rungs=[default.get("mixtral-8x7b"), default.get("gpt-4")])


@contextlib.asynccontextmanager
async def router_stack(data_dir, database: DatabaseSettings | None, catalogue: Catalogue | None = None):
    async with services_in_process(catalogue or two_rungs(), data_dir, database=database) as (router, service):
        yield router, service

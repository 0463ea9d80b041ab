"""Escalon's database without servers: migrations agree with the models, the writer keeps records through a
database outage and counts what it must drop, pruning, time filters, the spend ledger under concurrency."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from escalon.db.engine import ready_database
from escalon.db.keys import create_key
from escalon.db.models import Base
from escalon.db.routelog import RouteLogWriter
from escalon.db.routes import RouteFilter, list_routes, parse_when, prune
from escalon.db.spend import SpendLedger
from escalon.errors import BudgetExceeded, InvalidInput

pytestmark = pytest.mark.unit
UTC = dt.UTC


def row(i: int, *, when: dt.datetime | None = None, **fields) -> dict:
    base = {"created_at": when or dt.datetime.now(UTC), "request_id": f"r{i}", "trace_id": "", "replica": "t",
            "tenant": None, "key_id": None, "status": "OK", "error": "", "operating_point": "", "knob": {},
            "answer_type": "number", "task": None, "policy": "p", "plan": {"rungs": []}, "attempts": [], "rung": "a",
            "confidence": 0.9, "total_cost_usd": 0.001, "latency_ms": 1.0, "prompt": None, "prompt_sha256": "0" * 64,
            "prompt_chars": 1, "answer": None, "answer_sha256": "", "answer_chars": 0}
    return {**base, **fields}


def test_the_migrations_make_exactly_the_models_tables(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = ready_database(f"sqlite:///{tmp_path / 'm.sqlite'}")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": "escalon_alembic_version"})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []
    ready_database(f"sqlite:///{tmp_path / 'm.sqlite'}")  # a second start migrates nothing and does not fail


def test_a_database_made_by_the_first_migration_is_upgraded_in_place(tmp_path):
    from sqlalchemy import text

    from escalon.db.engine import current_revision, migrate, open_database

    engine = open_database(f"sqlite:///{tmp_path / 'old.sqlite'}")
    migrate(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO api_keys (key_id, tenant, name, salt, secret_sha256, scopes, revoked, "
                          "created_at) VALUES ('abcdef012345', 'acme', '', '00', 'ff', '[\"route\"]', 0, "
                          "'2026-12-01 00:00:00')"))
    migrate(engine)
    from escalon.db.keys import get_key

    assert current_revision(engine) != "0001"
    assert get_key(engine, "abcdef012345").store_prompts is False


async def test_records_wait_through_an_outage_and_none_is_lost(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    down = {"left": 3}

    def factory(u: str):
        if down["left"] > 0:
            down["left"] -= 1
            raise ConnectionError("database restarting")
        return ready_database(u)

    import escalon.db.routelog as routelog

    routelog.RETRY_FIRST_S = 0.01  # the outage lasts three retries, not seconds
    try:
        writer = RouteLogWriter(url, queue_size=100, batch=7, flush_s=0.01, engine_factory=factory)
        await writer.start()
        for i in range(40):
            assert writer.submit(row(i))
        await asyncio.sleep(0.05)
        assert writer.snapshot().degraded.startswith("ConnectionError")
        for _ in range(200):
            if writer.snapshot().written == 40:
                break
            await asyncio.sleep(0.02)
        stats = await writer.close()
    finally:
        routelog.RETRY_FIRST_S = 1.0
    assert (stats.written, stats.dropped, stats.queued, stats.degraded) == (40, 0, 0, "")
    assert len(list_routes(ready_database(url), RouteFilter(), limit=100)) == 40


async def test_a_full_queue_drops_counts_and_never_blocks(tmp_path):
    def never(u: str):
        raise ConnectionError("down")

    writer = RouteLogWriter("sqlite:///x", queue_size=3, batch=1, flush_s=0.01, engine_factory=never)
    accepted = [writer.submit(row(i)) for i in range(10)]  # no task running: nothing drains
    assert accepted == [True] * 3 + [False] * 7
    stats = await writer.close(timeout_s=0.1)
    assert stats.dropped == 10 and stats.written == 0  # the 3 queued could not be written either, and say so


def test_pruning_keeps_the_retention_window(tmp_path):
    engine = ready_database(f"sqlite:///{tmp_path / 'p.sqlite'}")
    now = dt.datetime.now(UTC)
    with engine.begin() as conn:
        from sqlalchemy import insert

        from escalon.db.models import Route

        conn.execute(insert(Route), [row(1, when=now - dt.timedelta(days=40)), row(2, when=now - dt.timedelta(days=2)),
                                     row(3, when=now)])
    assert prune(engine, 30) == 1 and prune(engine, 30) == 0
    assert sorted(r["request_id"] for r in list_routes(engine, RouteFilter())) == ["r2", "r3"]
    assert [r["request_id"] for r in list_routes(engine, RouteFilter(since=parse_when("1d", field="since")))] == ["r3"]
    with pytest.raises(InvalidInput, match="retention"):
        prune(engine, 0)


@pytest.mark.parametrize("text", ["yesterday", "5 parsecs", "2026-13-01", ""])
def test_malformed_times_say_what_is_expected(text):
    with pytest.raises(InvalidInput, match="is not a time"):
        parse_when(text, field="since")


def test_a_window_that_ends_before_it_starts_is_refused():
    with pytest.raises(InvalidInput, match="must come before"):
        RouteFilter(since=parse_when("1h", field="since"), until=parse_when("2h", field="until"))


async def test_concurrent_reservations_never_overspend(tmp_path):
    """20 routes of one key in flight at once, each possibly costing up to its bound: the reservations alone
    keep the sum of what they may spend within the budget."""
    engine = ready_database(f"sqlite:///{tmp_path / 's.sqlite'}")
    key, _ = create_key(engine, tenant="acme", budget_day_usd=1.0)
    ledger = SpendLedger(lambda: engine, sync_s=0.05)
    await ledger.ensure_loaded(key.key_id)
    spent, refused = 0.0, 0

    async def client() -> None:
        nonlocal spent, refused
        for _ in range(10):
            try:
                r = ledger.reserve(key, least=0.01, most=0.12)
            except BudgetExceeded:
                refused += 1
                return
            await asyncio.sleep(0.001)
            cost = r.amount  # the worst case: every route costs all it reserved
            ledger.settle(r, cost)
            spent += cost
            await ledger.sync()

    await asyncio.gather(*(client() for _ in range(20)))
    assert spent <= 1.0 + 1e-9 and spent > 0.95 and refused == 20
    await ledger.sync()
    fresh = SpendLedger(lambda: engine)  # another replica reads the total back
    await fresh.ensure_loaded(key.key_id)
    from escalon.db.spend import periods

    assert fresh.spent(key.key_id, periods(dt.datetime.now(UTC))[0]) == pytest.approx(spent)

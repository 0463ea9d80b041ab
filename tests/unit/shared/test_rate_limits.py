"""Rate limits of API keys: per process without Redis; one limit across replicas with it (two gates stand for
two router replicas; Redis on 127.0.0.1:6379, skipped with the reason when none answers)."""

from __future__ import annotations

import os

import pytest

from escalon.auth import Gate
from escalon.db.engine import LazyDatabase
from escalon.db.keys import create_key
from escalon.db.settings import DatabaseSettings
from escalon.errors import RateLimited

pytestmark = pytest.mark.unit
REDIS = os.environ.get("ESCALON_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Redis at {REDIS} ({type(exc).__name__}); set ESCALON_TEST_REDIS to test shared limits")


async def _admitted(gates: list[Gate], key: str, calls: int) -> int:
    ok = 0
    for i in range(calls):
        try:
            await gates[i % len(gates)].check((("authorization", f"Bearer {key}"),), "route")
            ok += 1
        except RateLimited as exc:
            assert "over its rate limit of 3 per 1 minute" in str(exc) and "retry in" in str(exc)
    return ok


@pytest.mark.parametrize("shared", [False, True])
async def test_a_key_gets_its_rate_across_replicas_only_with_redis(tmp_path, shared):
    if shared:
        _redis_or_skip()
    db = DatabaseSettings(data_dir=tmp_path, redis_url=REDIS if shared else "")
    engine = LazyDatabase(db.database_url)
    _, key = create_key(engine(), tenant="acme", rate_limit="3/minute")
    gates = [Gate(db, engine, service="router"), Gate(db, engine, service="router")]
    for gate in gates:
        await gate.start()
    # six calls spread over two replicas: shared, 3 pass in all; in-process, each replica lets 3 through
    assert await _admitted(gates, key, 6) == (3 if shared else 6)
    engine.dispose()


async def test_with_the_database_away_known_keys_still_pass_and_unknown_ones_are_told_to_retry(tmp_path):
    db = DatabaseSettings(data_dir=tmp_path, key_cache_s=0)
    engine = LazyDatabase(db.database_url)
    _, known = create_key(engine(), tenant="acme")
    _, other = create_key(engine(), tenant="acme")
    gate = Gate(db, engine, service="router")
    await gate.start()
    assert (await gate.check((("authorization", f"Bearer {known}"),), "route")).tenant == "acme"

    def away():
        raise ConnectionError("database restarting")

    gate._engine = away
    assert (await gate.check((("authorization", f"Bearer {known}"),), "route")).tenant == "acme"
    from escalon.auth import NotReady

    with pytest.raises(NotReady, match="does not answer"):
        await gate.check((("authorization", f"Bearer {other}"),), "route")
    engine.dispose()


async def test_a_limit_store_that_does_not_answer_lets_routes_through(tmp_path, caplog):
    db = DatabaseSettings(data_dir=tmp_path, redis_url="redis://127.0.0.1:9/0")
    engine = LazyDatabase(db.database_url)
    _, key = create_key(engine(), tenant="acme", rate_limit="1/minute")
    gate = Gate(db, engine, service="router")
    await gate.start()
    assert await _admitted([gate], key, 3) == 3
    assert gate.limiter.degraded and sum("rate limits not enforced" in r.getMessage() for r in caplog.records) == 1
    engine.dispose()


async def test_refusals_and_the_route_log_show_on_metrics(tmp_path):
    from escalon.db.routelog import RouteLogWriter
    from escalon.errors import Unauthenticated
    from escalon.metrics import metrics

    db = DatabaseSettings(data_dir=tmp_path)
    engine = LazyDatabase(db.database_url)
    create_key(engine(), tenant="acme")
    gate = Gate(db, engine, service="router")
    await gate.start()
    registry = metrics().registry
    before = registry.get_sample_value("escalon_key_refusals_total", {"reason": "unauthenticated"}) or 0
    with pytest.raises(Unauthenticated):
        await gate.check((), "route")
    assert registry.get_sample_value("escalon_key_refusals_total", {"reason": "unauthenticated"}) == before + 1
    dropped = registry.get_sample_value("escalon_route_log_dropped_total") or 0
    writer = RouteLogWriter(db.database_url, queue_size=1)
    writer.submit({})
    writer.submit({})  # the queue holds one: this one is dropped
    assert registry.get_sample_value("escalon_route_log_dropped_total") == dropped + 1
    await writer.close(timeout_s=0.1)
    engine.dispose()

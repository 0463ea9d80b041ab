"""API keys at the Router API over real gRPC, on SQLite and PostgreSQL: who may call, what they may use, what
they may spend, how fast; and a production router that refuses to start open."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from escalon.auth import key_interceptors
from escalon.db.engine import ready_database
from escalon.db.keys import create_key, revoke_key
from escalon.db.settings import DatabaseSettings
from escalon.errors import ConfigError, InvalidInput
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.offline.stack import DEMO_PROMPT
from tests.integration.tenancy.stack import router_stack, two_rungs

pytestmark = pytest.mark.integration
NUMBER = AnswerType.ANSWER_TYPE_NUMBER
POINTS = ("economy", "balanced", "max-quality")


def _key(engine, **fields):
    return create_key(engine, known_rungs=two_rungs().names, known_points=POINTS, **fields)


async def _route(stub, key=None, **fields):
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    return await stub.Route(router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=NUMBER, **fields),
                            metadata=metadata, timeout=30)


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_keys_decide_who_may_route_and_with_what(tmp_path, database_url):
    engine = ready_database(database_url)
    _, plain = _key(engine, tenant="acme")
    _, economy_only = _key(engine, tenant="acme", allowed_operating_points=["economy"], allowed_rungs=["mixtral-8x7b"])
    revoked_record, revoked = _key(engine, tenant="gone")
    _, jobs_only = _key(engine, tenant="ops", scopes=["jobs"])
    _, limited = _key(engine, tenant="slow", rate_limit="2/minute")
    _, opted_in = _key(engine, tenant="open-book", store_prompts=True)
    db = DatabaseSettings(data_dir=tmp_path, database_url=database_url, key_cache_s=0, route_log_flush_s=0.05)
    async with router_stack(tmp_path, db) as (router, service):
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            assert (await _route(stub, plain, request_id="plain")).rung == "gpt-4"
            assert (await _route(stub, opted_in, request_id="opted-in")).rung == "gpt-4"
            err = await _refused(_route(stub))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "no API key" in err.details()
            err = await _refused(_route(stub, "sk-not-ours"))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "malformed" in err.details()
            err = await _refused(_route(stub, plain[:-4] + "AAAA"))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "unknown API key" in err.details()
            revoke_key(engine, revoked_record.key_id)
            err = await _refused(_route(stub, revoked))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in err.details()
            err = await _refused(_route(stub, jobs_only))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "scopes" in err.details()
            # allow-lists: the operating point is checked, the cascade runs over the allowed rungs only
            err = await _refused(_route(stub, economy_only, operating_point="balanced"))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "economy" in err.details()
            err = await _refused(_route(stub, economy_only, operating_point="economy", pin_rung="gpt-4"))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "gpt-4" in err.details()
            narrowed = await _route(stub, economy_only, operating_point="economy")
            assert [a.rung for a in narrowed.attempts] == ["mixtral-8x7b"]
            # rate limit: 2 per minute, the third is refused with when to retry
            await _route(stub, limited)
            await _route(stub, limited)
            err = await _refused(_route(stub, limited))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit of 2 per 1 minute" in err.details()
            assert "retry in" in err.details()
        # what `escalon ask` / `escalon jobs` send with ESCALON_API_KEY set (escalon.auth.key_interceptors)
        async with grpc.aio.insecure_channel(router.address, interceptors=key_interceptors(plain)) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            assert (await _route(stub)).rung == "gpt-4"
            streamed = [m async for m in stub.RouteStream(router_pb2.RouteStreamRequest(request=router_pb2.RouteRequest(
                prompt=DEMO_PROMPT, answer_type=NUMBER, operating_point="economy")))]
            assert streamed[-1].result.rung
        async with grpc.aio.insecure_channel(router.address) as channel:  # the stream wants a key too
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [m async for m in router_pb2_grpc.RouterServiceStub(channel).RouteStream(
                    router_pb2.RouteStreamRequest(request=router_pb2.RouteRequest(prompt=DEMO_PROMPT)))]
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for _ in range(100):
            if service.tenancy.writer.snapshot().written >= 4:
                break
            await asyncio.sleep(0.05)
    from escalon.db.routes import get_route

    # the tenant opted in (the key's store_prompts): its prompt is kept although the operator's setting is off
    assert get_route(engine, "opted-in")["prompt"] == DEMO_PROMPT and get_route(engine, "plain")["prompt"] is None
    engine.dispose()


async def test_a_budget_holds_and_says_when_it_resets(tmp_path, database_url):
    engine = ready_database(database_url)
    budget = 0.0005  # the cheap rung alone fits a few times; the dear one never (its bound is above it)
    record, key = _key(engine, tenant="acme", budget_day_usd=budget)
    db = DatabaseSettings(data_dir=tmp_path, database_url=database_url, spend_sync_s=0.1)
    async with router_stack(tmp_path, db) as (router, service):
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            spent, refused = 0.0, None
            for _ in range(40):
                try:
                    spent += (await _route(stub, key, max_tokens=200)).total_cost_usd
                except grpc.aio.AioRpcError as exc:
                    refused = exc
                    break
        assert refused is not None, "the budget never ran out"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = refused.details()
        assert details.startswith("budget: the daily budget of $0.0005") and record.key_id in details
        assert "resets at" in details and details.endswith("T00:00:00Z")
        assert budget / 2 <= spent <= budget  # used up to what the cheapest attempt needs, never beyond
        ledger = service.tenancy.ledger
        await ledger.sync()
    from sqlalchemy import text

    with engine.connect() as conn:
        charged = conn.execute(text("SELECT spent_usd FROM key_spend WHERE key_id = :k AND period LIKE 'day:%'"),
                               {"k": record.key_id}).scalar()
    assert charged == pytest.approx(spent)
    engine.dispose()


async def test_outside_the_dev_profile_a_router_without_keys_refuses_to_start(tmp_path):
    db = DatabaseSettings(data_dir=tmp_path, profile="production")
    with pytest.raises(ConfigError, match="no API keys exist and ESCALON_PROFILE=production"):
        async with router_stack(tmp_path, db):
            pass
    opened = DatabaseSettings(data_dir=tmp_path, profile="production", auth="open")
    async with router_stack(tmp_path, opened) as (router, _):
        async with grpc.aio.insecure_channel(router.address) as channel:
            assert (await _route(router_pb2_grpc.RouterServiceStub(channel))).rung == "gpt-4"


@pytest.mark.parametrize("fields, field", [
    ({"budget_day_usd": 0}, "budget_day_usd"), ({"budget_month_usd": -1}, "budget_month_usd"),
    ({"allowed_rungs": ["gpt-9"]}, "allowed_rungs"), ({"allowed_operating_points": ["cheap"]}, "allowed_operating_points"),
    ({"rate_limit": "fast"}, "rate_limit"), ({"scopes": ["admin"]}, "scopes"), ({"tenant": "a b"}, "tenant"),
])
def test_keys_that_cannot_work_are_refused_at_creation(tmp_path, fields, field):
    engine = ready_database(f"sqlite:///{tmp_path / 'k.sqlite'}")
    with pytest.raises(InvalidInput) as err:
        _key(engine, **{"tenant": "acme", **fields})
    assert str(err.value).startswith(f"{field}: ")

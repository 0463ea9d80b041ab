"""Through the HTTP gateway: the caller's key reaches the Router API, its refusals come back as the OpenAI SDK
expects them (401, 403, 429 with Retry-After), and the operator's page counts routes from the route log."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn

from escalon.db.engine import ready_database
from escalon.db.keys import create_key
from escalon.db.settings import DatabaseSettings
from escalon.gateway.app import create_app
from escalon.gateway.settings import GatewaySettings
from escalon.offline.stack import DEMO_PROMPT
from tests.integration.tenancy.stack import router_stack, two_rungs

pytestmark = pytest.mark.integration


async def test_the_gateway_passes_the_key_through_and_maps_refusals(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'escalon.sqlite'}"
    monkeypatch.setenv("ESCALON_DATABASE_URL", url)
    engine = ready_database(url)
    _, key = create_key(engine, tenant="acme", rate_limit="2/minute", allowed_rungs=["mixtral-8x7b", "gpt-4"],
                        known_rungs=two_rungs().names)
    _, economy = create_key(engine, tenant="acme", allowed_operating_points=["economy"],
                            known_points=["economy", "balanced"])
    db = DatabaseSettings(data_dir=tmp_path, database_url=url, route_log_flush_s=0.02)
    async with router_stack(tmp_path, db) as (router, service):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        settings = GatewaySettings(port=sock.getsockname()[1], router_address=router.address,
                                   serving_address="127.0.0.1:9", distill_address="127.0.0.1:9",
                                   traffic_source="route_log", grace_seconds=1)
        server = uvicorn.Server(uvicorn.Config(create_app(settings), lifespan="on", log_config=None,
                                               access_log=False, timeout_graceful_shutdown=1))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.02)
        base = f"http://127.0.0.1:{settings.port}"
        body = {"model": "escalon/auto", "messages": [{"role": "user", "content": DEMO_PROMPT}]}
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                async def chat(k: str | None, **extra):
                    headers = {"authorization": f"Bearer {k}"} if k else {}
                    return await http.post("/v1/chat/completions", json={**body, **extra}, headers=headers)

                ok = await chat(key)
                assert ok.status_code == 200 and ok.headers["x-escalon-rung"] == "gpt-4"
                missing = await chat(None)
                assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
                denied = await chat(economy, model="escalon/balanced")
                assert denied.status_code == 403 and "economy" in denied.json()["error"]["message"]
                assert (await chat(key)).status_code == 200
                limited = await chat(key)
                assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
                assert int(limited.headers["retry-after"]) >= 1
                for _ in range(100):  # the route log is written off the request path
                    if service.tenancy.writer.snapshot().written >= 3:
                        break
                    await asyncio.sleep(0.02)
                traffic = (await http.get("/ops/api/traffic")).json()
            assert "route log" in traffic["scope"] and traffic["routes"] == 2
            # refused before any route (no key, over the rate limit): not routes; refused by the key's allow-list: a
            # route that did not run, recorded with its status
            assert traffic["rungs"]["gpt-4"]["answered"] == 2 and traffic["errors"] == {"403": 1}
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
    engine.dispose()

"""The gateway's bound on chat completions in flight (escalon.gateway.admission), on a stand-in app that takes
0.3 s per request (the router behind the gateway is not what is tested here)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from escalon.gateway.admission import AdmissionMiddleware

pytestmark = pytest.mark.unit


async def _slow_app(scope, receive, send) -> None:
    await asyncio.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def test_a_burst_over_the_bound_gets_503_overloaded_with_retry_headers_and_the_rest_answers():
    app = AdmissionMiddleware(_slow_app, max_in_flight=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json={}) for _ in range(6)))
        statuses = sorted(r.status_code for r in replies)
        assert statuses.count(200) == 2 and statuses.count(503) == 4
        for reply in replies:
            if reply.status_code == 503:
                error = reply.json()["error"]
                assert error["code"] == "overloaded" and error["message"].startswith("overloaded: the gateway is")
                assert "ESCALON_GATEWAY_MAX_IN_FLIGHT=2" in error["message"]
                assert int(reply.headers["retry-after"]) >= 1 and int(reply.headers["retry-after-ms"]) >= 100
        # other paths are not bounded, and the slots come back once the requests end
        others = await asyncio.gather(*(client.get("/v1/models") for _ in range(4)))
        assert {r.status_code for r in others} == {200}
        assert (await client.post("/v1/chat/completions", json={})).status_code == 200
    assert app.admission.in_flight == 0

"""Resilient rungs against a real HTTP server on 127.0.0.1 that answers 429, 500, or hangs on cue.

The server stands in for a remote provider (none can be reached from here); it is the only stand-in. The
OpenAI-compatible backend, its httpx client, tenacity's retries, the serving front, the router's circuit
breakers and its planner are all the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from aiohttp import web

from escalon.backends import GenerateParams
from escalon.backends.openai_compat import OpenAICompatBackend
from escalon.errors import InvalidInput, RungUnavailable
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.grpc import running_server
from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.metrics import metrics
from escalon.offline.stack import DEMO_PROMPT
from escalon.registry import Catalogue, Rung, load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings

pytestmark = pytest.mark.integration

PARAMS = GenerateParams(prompt="What is 12 x 7?", max_tokens=16)


class ScriptedProvider:
    """Answers /v1/chat/completions from a script, one entry per request: "ok", 500, (429, retry_after), "hang".
    When the script runs out it repeats `then`."""

    def __init__(self) -> None:
        self.script: list = []
        self.then: object = "ok"
        self.times: list[float] = []
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.times.append(time.monotonic())
        step = self.script.pop(0) if self.script else self.then
        if step == "hang":
            await asyncio.sleep(30)
        if isinstance(step, tuple):
            status, retry_after = step
            return web.json_response({"error": {"message": "slow down"}}, status=status,
                                     headers={"Retry-After": str(retry_after)})
        if isinstance(step, int):
            return web.json_response({"error": {"message": f"failure {step}"}}, status=step)
        return web.json_response({"choices": [{"index": 0, "message": {"content": "The answer is 84."},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 9, "completion_tokens": 6}})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"

    def reset(self, script: list, then: object = "ok") -> None:
        self.script, self.then, self.times = list(script), then, []


@pytest.fixture(scope="module")
async def provider():
    p = ScriptedProvider()
    await p.start()
    yield p
    await p.runner.cleanup()


def remote(base_url: str, **overrides) -> Rung:
    fields = dict(name="cheap-remote", family="remote", backend="openai", model="gpt-4o-mini", base_url=base_url,
                  price={"input_per_1m": 0.01, "output_per_1m": 0.01}, timeout_s=5,
                  retries={"attempts": 3, "initial_backoff_s": 0.05, "max_backoff_s": 0.1, "max_retry_after_s": 1})
    return Rung(**(fields | overrides))


@contextlib.asynccontextmanager
async def loaded(rung: Rung):
    backend = OpenAICompatBackend(rung)
    backend.load()
    try:
        yield backend
    finally:
        await backend.close()


def retries_counted(rung: str, error_type: str) -> float:
    return metrics().rung_retries.labels(rung, error_type)._value.get()


# ---- the backend's retries -----------------------------------------------------------------------------------

async def test_a_429_is_retried_after_the_providers_retry_after(provider):
    provider.reset([(429, 0.3), (429, 0.3)])
    before = retries_counted("cheap-remote", "429")
    async with loaded(remote(provider.base_url)) as backend:
        result = await backend.generate(PARAMS)
    assert result.samples[0].text == "The answer is 84."
    assert len(provider.times) == 3
    gaps = [b - a for a, b in zip(provider.times, provider.times[1:])]
    assert all(0.28 <= g < 1.0 for g in gaps), gaps  # Retry-After, not the 50-100 ms backoff
    assert retries_counted("cheap-remote", "429") == before + 2


async def test_5xx_are_retried_with_backoff_then_unavailable_naming_the_tries(provider):
    provider.reset([], then=500)
    async with loaded(remote(provider.base_url)) as backend:
        with pytest.raises(RungUnavailable, match=r"answered HTTP 500: failure 500 \(after 3 tries\)"):
            await backend.generate(PARAMS)
    assert len(provider.times) == 3
    gaps = [b - a for a, b in zip(provider.times, provider.times[1:])]
    assert all(g < 0.5 for g in gaps), gaps  # jittered backoff capped at max_backoff_s (0.1 s)


async def test_a_retry_after_longer_than_accepted_is_not_waited_for(provider):
    provider.reset([(429, 60)])
    started = time.monotonic()
    async with loaded(remote(provider.base_url)) as backend:
        with pytest.raises(RungUnavailable, match="HTTP 429"):
            await backend.generate(PARAMS)
    assert len(provider.times) == 1 and time.monotonic() - started < 1


async def test_a_hung_provider_times_out_at_the_first_token_timeout_each_try(provider):
    provider.reset(["hang", "hang"])
    started = time.monotonic()
    async with loaded(remote(provider.base_url, first_token_timeout_s=0.2, retries={"attempts": 2})) as backend:
        with pytest.raises(RungUnavailable, match=r"did not answer within 0.2s \(after 2 tries\)"):
            await backend.generate(PARAMS)
    assert len(provider.times) == 2 and time.monotonic() - started < 2.5


async def test_the_callers_mistake_is_not_retried(provider):
    provider.reset([400])
    async with loaded(remote(provider.base_url)) as backend:
        with pytest.raises(InvalidInput, match="HTTP 400"):
            await backend.generate(PARAMS)
    assert len(provider.times) == 1


# ---- the router's circuit breaker and planner ----------------------------------------------------------------

async def test_the_router_routes_around_a_dead_rung_and_back_when_it_recovers(provider, tmp_path):
    provider.reset([], then=500)
    cheap = remote(provider.base_url, retries={"attempts": 1}, circuit={"failures": 2, "cooldown_s": 0.5})
    catalogue = Catalogue(rungs=[cheap, load_catalogue().get("gpt-4")])
    async with contextlib.AsyncExitStack() as stack:
        serving_settings = ServingSettings(port=0, runtime="inprocess", data_dir=tmp_path)
        serving = await stack.enter_async_context(
            running_server(ServingService(serving_settings, catalogue), serving_settings, "escalon-serving"))
        judge_settings = JudgeSettings(port=0)
        judge = await stack.enter_async_context(
            running_server(JudgeService(judge_settings), judge_settings, "escalon-judge"))
        router_settings = RouterSettings(port=0, serving_address=serving.address, judge_address=judge.address,
                                         data_dir=tmp_path)
        router = await stack.enter_async_context(
            running_server(RouterService(router_settings, catalogue), router_settings, "escalon-router"))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(router.address))
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def route() -> router_pb2.RouteResponse:
            return await stub.Route(router_pb2.RouteRequest(prompt=DEMO_PROMPT), timeout=30)

        # Two failures in a row open the circuit; the answers still come, from the dearer rung.
        for _ in range(2):
            response = await route()
            assert response.rung == "gpt-4"
            assert response.attempts[0].rung == "cheap-remote" and "HTTP 500" in response.attempts[0].note
        assert len(provider.times) == 2

        # Open: the plan skips the rung without calling it, and says why.
        response = await route()
        assert len(provider.times) == 2 and response.rung == "gpt-4"
        assert "skipped cheap-remote: circuit open after 2 failures" in response.reason
        assert response.attempts[0].note.startswith("skipped: circuit open")
        assert metrics().circuit.labels("cheap-remote")._value.get() == 2  # open

        # After the cooldown one trial goes through; the rung has recovered, so the circuit closes.
        provider.then = "ok"
        await asyncio.sleep(0.6)
        response = await route()
        assert len(provider.times) == 3 and response.attempts[0].rung == "cheap-remote"
        assert response.attempts[0].samples == 1
        assert metrics().circuit.labels("cheap-remote")._value.get() == 0  # closed

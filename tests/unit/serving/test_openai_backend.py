"""The OpenAI-compatible backend, against a real HTTP server on 127.0.0.1 speaking the OpenAI shape.

The server stands in for a remote provider, which cannot be reached from here: it is the one thing
mocked. Everything on Escalon's side — the httpx client, request bodies, parsing, error mapping — is real.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from escalon.errors import ConfigError, InvalidInput, RungUnavailable
from escalon.backends import GenerateParams
from escalon.backends.openai_compat import OpenAICompatBackend
from servingkit import openai_rung

pytestmark = pytest.mark.unit


class FakeProvider:
    """Answers /v1/chat/completions and /v1/completions; `reply` can be swapped to misbehave."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, dict]] = []
        self.reply = None  # None: a well-formed answer; else (status, json body) or "slow" or "garbage"
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body, dict(request.headers)))
        if self.reply == "slow":
            await asyncio.sleep(1)
        elif self.reply == "garbage":
            return web.json_response({"unexpected": True})
        elif self.reply is not None:
            status, payload = self.reply
            return web.json_response(payload, status=status)
        if request.path.endswith("/chat/completions"):
            return web.json_response({
                "object": "chat.completion",
                "choices": [
                    {"index": i, "message": {"role": "assistant", "content": f"answer {i}"},
                     "finish_reason": "length" if i else "stop",
                     "logprobs": {"content": [
                         {"token": "answer", "logprob": -0.25, "top_logprobs": [
                             {"token": "answer", "logprob": -0.25}, {"token": "reply", "logprob": -1.5}]},
                         {"token": f" {i}", "logprob": -0.5, "top_logprobs": []},
                     ]} if body.get("logprobs") else None}
                    for i in range(body["n"])
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 2 * body["n"], "total_tokens": 11 + 2 * body["n"]},
            })
        return web.json_response({
            "object": "text_completion",
            "choices": [{"index": 0, "text": " 84", "finish_reason": "stop",
                         "logprobs": {"tokens": [" 84"], "token_logprobs": [-0.1], "top_logprobs": [{" 84": -0.1, " 85": -3.0}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        })

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_post("/v1/completions", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
async def provider():
    provider = FakeProvider()
    await provider.start()
    yield provider
    await provider.runner.cleanup()


@pytest.fixture
async def backend(provider, monkeypatch):
    provider.reply = None
    provider.requests.clear()
    monkeypatch.setenv("ESCALON_TEST_API_KEY", "sk-test-123")
    backend = OpenAICompatBackend(openai_rung(provider.base_url, api_key_env="ESCALON_TEST_API_KEY"))
    backend.load()
    yield backend
    await backend.close()


PARAMS = GenerateParams(prompt="What is 12 x 7?", max_tokens=32, n=2, temperature=0.7, stop=("\n",),
                        logprobs=True, top_logprobs=2, seed=7)


async def test_chat_request_carries_every_parameter_and_the_answer_is_parsed(backend, provider):
    result = await backend.generate(PARAMS)
    path, body, headers = provider.requests[-1]
    assert path == "/v1/chat/completions"
    assert body == {"model": "gpt-test", "n": 2, "temperature": 0.7, "max_tokens": 32, "stop": ["\n"], "seed": 7,
                    "messages": [{"role": "user", "content": "What is 12 x 7?"}], "logprobs": True, "top_logprobs": 2}
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert [s.text for s in result.samples] == ["answer 0", "answer 1"]
    assert [s.finish_reason for s in result.samples] == ["stop", "length"]
    assert (result.input_tokens, result.output_tokens) == (11, 4)
    first = result.samples[0].logprobs[0]
    assert (first.token, first.logprob, first.top) == ("answer", -0.25, [("answer", -0.25), ("reply", -1.5)])
    assert first.entropy is None and first.self_certainty is None  # the provider does not give the distribution
    assert result.cost_usd is None  # priced by the servicer at the rung's price


async def test_completion_rungs_use_the_completions_endpoint(provider, monkeypatch):
    backend = OpenAICompatBackend(openai_rung(provider.base_url, prompt_format="completion"))
    backend.load()
    result = await backend.generate(GenerateParams(prompt="12 x 7 =", max_tokens=4, logprobs=True, top_logprobs=2))
    path, body, headers = provider.requests[-1]
    assert path == "/v1/completions" and body["prompt"] == "12 x 7 =" and body["logprobs"] == 2
    assert "Authorization" not in headers  # no api_key_env: a local endpoint without auth
    assert result.samples[0].text == " 84" and result.samples[0].logprobs[0].top == [(" 84", -0.1), (" 85", -3.0)]
    await backend.close()


async def test_the_callers_mistakes_are_invalid_input_with_the_providers_message(backend, provider):
    provider.reply = (400, {"error": {"message": "max_tokens is too large: 99999", "type": "invalid_request_error"}})
    with pytest.raises(InvalidInput) as err:
        await backend.generate(PARAMS)
    assert f"{provider.base_url}/chat/completions answered HTTP 400: max_tokens is too large: 99999" == str(err.value)


@pytest.mark.parametrize("status", [500, 503, 429, 401])
async def test_provider_failures_and_refusals_are_unavailable(backend, provider, status):
    provider.reply = (status, {"error": {"message": "try later"}})
    with pytest.raises(RungUnavailable, match=f"answered HTTP {status}: try later"):
        await backend.generate(PARAMS)


async def test_a_slow_endpoint_times_out_as_unavailable_naming_it(provider):
    provider.reply = "slow"
    backend = OpenAICompatBackend(openai_rung(provider.base_url, timeout_s=0.3))
    backend.load()
    with pytest.raises(RungUnavailable, match=r"/v1/chat/completions did not answer within 0.3s"):
        await backend.generate(PARAMS)
    await backend.close()


async def test_an_unreachable_endpoint_is_unavailable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAICompatBackend(openai_rung(f"http://127.0.0.1:{port}/v1"))
    backend.load()
    with pytest.raises(RungUnavailable, match=f"http://127.0.0.1:{port}/v1/chat/completions unreachable: ConnectError"):
        await backend.generate(PARAMS)
    await backend.close()


async def test_an_answer_in_another_shape_is_unavailable(backend, provider):
    provider.reply = "garbage"
    with pytest.raises(RungUnavailable, match="unexpected shape"):
        await backend.generate(PARAMS)


def test_a_missing_api_key_names_the_variable(provider, monkeypatch):
    monkeypatch.delenv("ESCALON_TEST_MISSING_KEY", raising=False)
    backend = OpenAICompatBackend(openai_rung(provider.base_url, api_key_env="ESCALON_TEST_MISSING_KEY"))
    with pytest.raises(ConfigError, match="API key in the environment variable ESCALON_TEST_MISSING_KEY, which is not set"):
        backend.load()

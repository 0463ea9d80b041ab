"""Any OpenAI-compatible endpoint (OpenAI, vLLM, TGI, llama.cpp server, Together, ...) over HTTP.

prompt_format chat → POST {base_url}/chat/completions; completion → POST {base_url}/completions.
Errors say which endpoint failed and why: the caller's fault (HTTP 400/404/413/422 with the provider's
message) is InvalidInput; everything else — timeouts, refused connections, 5xx, and also 401/403/429,
which a caller cannot fix by changing the request — is RungUnavailable.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from escalon.errors import ConfigError, InvalidInput, RungUnavailable
from escalon.registry import Rung

from escalon.tokens import estimate_tokens

from .base import Backend, GenerateParams, GenerateResult, Sample, TokenLogprob

# Status codes that mean "the rung cannot answer now", though they are 4xx.
_NOT_THE_CALLERS_FAULT = {401, 403, 408, 429}


class OpenAICompatBackend(Backend):
    def __init__(self, rung: Rung) -> None:
        super().__init__(rung)
        if not rung.base_url:
            raise ConfigError(f"openai rung {rung.name} needs base_url (the endpoint's /v1 URL)")
        self.base_url = rung.base_url.rstrip("/")
        self.path = "/chat/completions" if rung.prompt_format == "chat" else "/completions"
        self._client: httpx.AsyncClient | None = None

    def load(self) -> None:
        headers = {}
        if self.rung.api_key_env:
            key = os.environ.get(self.rung.api_key_env)
            if not key:
                raise ConfigError(
                    f"openai rung {self.rung.name} needs an API key in the environment variable "
                    f"{self.rung.api_key_env}, which is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(self.rung.timeout_s, connect=10.0)
        )

    @property
    def endpoint(self) -> str:
        return self.base_url + self.path

    async def generate(self, params: GenerateParams) -> GenerateResult:
        if self._client is None:
            raise RungUnavailable(f"openai rung {self.rung.name} is closed")
        try:
            response = await self._client.post(self.path, json=self._body(params))
        except httpx.TimeoutException:
            raise RungUnavailable(f"{self.endpoint} did not answer within {self.rung.timeout_s:g}s") from None
        except httpx.TransportError as exc:
            raise RungUnavailable(f"{self.endpoint} unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            message = f"{self.endpoint} answered HTTP {response.status_code}: {_provider_message(response)}"
            if response.status_code >= 500 or response.status_code in _NOT_THE_CALLERS_FAULT:
                raise RungUnavailable(message)
            raise InvalidInput(message)
        try:
            return self._parse(response.json(), params)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise RungUnavailable(f"{self.endpoint} answered in an unexpected shape: {exc!r}") from None

    def _body(self, params: GenerateParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.rung.model,
            "n": params.n,
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if self.rung.prompt_format == "chat":
            body["messages"] = [{"role": "user", "content": params.prompt}]
            if params.logprobs:
                body["logprobs"] = True
                if params.top_logprobs:
                    body["top_logprobs"] = params.top_logprobs
        else:
            body["prompt"] = params.prompt
            if params.logprobs:  # the legacy API: an integer, the number of alternatives
                body["logprobs"] = params.top_logprobs
        return body

    def _parse(self, data: dict[str, Any], params: GenerateParams) -> GenerateResult:
        samples = []
        for choice in sorted(data["choices"], key=lambda c: c.get("index", 0)):
            if self.rung.prompt_format == "chat":
                text = (choice.get("message") or {}).get("content") or ""
                logprobs = _chat_logprobs(choice.get("logprobs"))
            else:
                text = choice.get("text") or ""
                logprobs = _completion_logprobs(choice.get("logprobs"))
            finish = "length" if choice.get("finish_reason") == "length" else "stop"
            samples.append(Sample(text=text, finish_reason=finish, output_tokens=0, logprobs=logprobs))
        usage = data.get("usage") or {}
        for sample in samples:
            sample.output_tokens = len(sample.logprobs) or estimate_tokens(sample.text)
        if len(samples) == 1 and usage.get("completion_tokens") is not None:
            samples[0].output_tokens = int(usage["completion_tokens"])
        return GenerateResult(
            samples=samples,
            input_tokens=int(usage.get("prompt_tokens") or estimate_tokens(params.prompt)),
            output_tokens=int(usage.get("completion_tokens") or sum(s.output_tokens for s in samples)),
        )

    async def health(self) -> str:
        # The endpoint is not probed: a remote outage is not fixed by restarting this replica, and it
        # shows up per call as RungUnavailable naming the endpoint.
        if self._client is None or self._client.is_closed:
            raise RuntimeError(f"openai rung {self.rung.name}: HTTP client closed")
        return f"{self.rung.model} at {self.endpoint} (not probed)"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _chat_logprobs(block: dict | None) -> list[TokenLogprob]:
    if not block or not block.get("content"):
        return []
    return [
        TokenLogprob(
            token=item["token"],
            logprob=float(item["logprob"]),
            top=[(alt["token"], float(alt["logprob"])) for alt in item.get("top_logprobs") or []],
        )
        for item in block["content"]
    ]


def _completion_logprobs(block: dict | None) -> list[TokenLogprob]:
    if not block or not block.get("tokens"):
        return []
    tops = block.get("top_logprobs") or [None] * len(block["tokens"])
    return [
        TokenLogprob(token=token, logprob=float(lp), top=[(t, float(v)) for t, v in (top or {}).items()])
        for token, lp, top in zip(block["tokens"], block["token_logprobs"], tops)
        if lp is not None
    ]


def _provider_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    except ValueError:
        pass
    return response.text[:500] or response.reason_phrase

"""Any OpenAI-compatible endpoint (OpenAI, vLLM, TGI, llama.cpp server, Together, ...) over HTTP.

prompt_format chat → POST {base_url}/chat/completions; completion → POST {base_url}/completions.
Errors say which endpoint failed and why: the caller's fault (HTTP 400/404/413/422 with the provider's
message) is InvalidInput; everything else — timeouts, refused connections, 5xx, and also 401/403/429,
which a caller cannot fix by changing the request — is RungUnavailable.

Transient failures are retried (tenacity) before they become RungUnavailable: 408, 429, 500, 502, 503, 504,
timeouts and refused connections, up to `retries.attempts` tries, waiting exponentially longer with full jitter
(`initial_backoff_s` doubling up to `max_backoff_s`), or what the provider's Retry-After says when it says —
unless that is longer than `retries.max_retry_after_s`, or longer than the rung's `timeout_s` leaves, in which
case the rung is unavailable now and the cascade moves on. Timeouts: `connect_timeout_s` to open the connection,
`first_token_timeout_s` (or `timeout_s`) for the answer to arrive, `timeout_s` for the whole call, retries
included.
"""

from __future__ import annotations

import email.utils
import os
import time
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from escalon.errors import ConfigError, InvalidInput, RungUnavailable
from escalon.registry import Rung

from escalon.tokens import TokenCounters

from .base import Backend, GenerateParams, GenerateResult, Sample, TokenLogprob

# Status codes that mean "the rung cannot answer now", though they are 4xx.
_NOT_THE_CALLERS_FAULT = {401, 403, 408, 429}
# Worth another try: the provider is busy, restarting, or a proxy in front of it timed out.
_TRANSIENT = {408, 429, 500, 502, 503, 504}


class _Transient(Exception):
    """One try failed in a way another try may not; `retry_after` is the provider's Retry-After in seconds."""

    def __init__(self, message: str, error_type: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.error_type, self.retry_after = error_type, retry_after


class OpenAICompatBackend(Backend):
    def __init__(self, rung: Rung) -> None:
        super().__init__(rung)
        if not rung.base_url:
            raise ConfigError(f"openai rung {rung.name} needs base_url (the endpoint's /v1 URL)")
        self.base_url = rung.base_url.rstrip("/")
        self.path = "/chat/completions" if rung.prompt_format == "chat" else "/completions"
        self._client: httpx.AsyncClient | None = None
        self.tokens = TokenCounters()  # where the provider reports no usage: tiktoken for OpenAI models

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
        answer_s = self.rung.first_token_timeout_s or self.rung.timeout_s
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(answer_s, connect=self.rung.connect_timeout_s, write=answer_s, pool=answer_s),
        )

    @property
    def endpoint(self) -> str:
        return self.base_url + self.path

    async def generate(self, params: GenerateParams) -> GenerateResult:
        if self._client is None:
            raise RungUnavailable(f"openai rung {self.rung.name} is closed")
        retries = self.rung.retries
        deadline = time.monotonic() + self.rung.timeout_s
        body = self._body(params)
        tries = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(retries.attempts),
            wait=_RetryAfterOrJitter(retries.initial_backoff_s, retries.max_backoff_s),
            retry=retry_if_exception_type(_Transient) & _WorthWaiting(retries.max_retry_after_s, deadline),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    tries += 1
                    response = await self._post(body)
        except _Transient as exc:
            again = f" (after {tries} tries)" if tries > 1 else ""
            raise RungUnavailable(f"{exc}{again}") from None
        try:
            return self._parse(response.json(), params)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise RungUnavailable(f"{self.endpoint} answered in an unexpected shape: {exc!r}") from None

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        """One try: the response when it is usable, _Transient when another try may help, else the error."""
        try:
            response = await self._client.post(self.path, json=body)
        except httpx.ConnectTimeout:
            raise _Transient(f"{self.endpoint} did not accept a connection within {self.rung.connect_timeout_s:g}s",
                             "ConnectTimeout") from None
        except httpx.TimeoutException as exc:
            waited = self.rung.first_token_timeout_s or self.rung.timeout_s
            raise _Transient(f"{self.endpoint} did not answer within {waited:g}s", type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise _Transient(f"{self.endpoint} unreachable: {type(exc).__name__}: {exc}", type(exc).__name__) from None
        if response.status_code < 400:
            return response
        message = f"{self.endpoint} answered HTTP {response.status_code}: {_provider_message(response)}"
        if response.status_code in _TRANSIENT:
            raise _Transient(message, str(response.status_code), _retry_after(response))
        if response.status_code >= 500 or response.status_code in _NOT_THE_CALLERS_FAULT:
            raise RungUnavailable(message)
        raise InvalidInput(message)

    def _count_retry(self, state: RetryCallState) -> None:
        from escalon.metrics import metrics

        error = state.outcome.exception() if state.outcome else None
        metrics().rung_retries.labels(self.rung.name, getattr(error, "error_type", "unknown")).inc()

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
            sample.output_tokens = len(sample.logprobs) or self.tokens.count(self.rung, sample.text)
        if len(samples) == 1 and usage.get("completion_tokens") is not None:
            samples[0].output_tokens = int(usage["completion_tokens"])
        return GenerateResult(
            samples=samples,
            input_tokens=int(usage.get("prompt_tokens") or self.tokens.count(self.rung, params.prompt)),
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


class _RetryAfterOrJitter:
    """tenacity wait: the provider's Retry-After when it sent one, else exponential backoff with full jitter."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.jitter = wait_random_exponential(multiplier=initial_s, max=max_s)

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        return retry_after if retry_after is not None else self.jitter(state)


class _WorthWaiting:
    """tenacity retry condition: no retry when the provider asks for a longer wait than we accept, or when the
    wait would end past the call's total timeout (the cascade is better off moving on)."""

    def __init__(self, max_retry_after_s: float, deadline: float) -> None:
        self.max_retry_after_s, self.deadline = max_retry_after_s, deadline

    def __call__(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None and retry_after > self.max_retry_after_s:
            return False
        return time.monotonic() + (retry_after or 0.0) < self.deadline


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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

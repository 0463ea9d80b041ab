"""Who may call a gRPC API: API keys from the database, checked on every call by one server interceptor.

    metadata   `authorization: Bearer esk_<id>_<secret>` (what the gateway forwards from its own caller)
    no key, a malformed or unknown key                     UNAUTHENTICATED, with what to send
    a revoked key, a scope the key lacks                   PERMISSION_DENIED, naming the key
    over the key's rate limit                              RESOURCE_EXHAUSTED, with the retry delay

The gate decides at start whether keys are required (ESCALON_AUTH, ESCALON_PROFILE, escalon.db.settings):
`open` never asks; `keys` always does; `auto` asks once any key exists, and outside the dev profile refuses
to start when none does (an API that would otherwise be open to anyone). Health and reflection stay open.

Keys are looked up once per `key_cache_s` per replica (so a revocation takes effect within it everywhere).
Rate limits use the `limits` library: a moving window in Redis when ESCALON_REDIS_URL is set (every replica
shares it), in this process otherwise. The key the handler runs for is `current_key()`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from escalon.db.keys import KeyRecord, count_active_keys, get_key, parse_key
from escalon.db.settings import DatabaseSettings
from escalon.errors import ConfigError, EscalonError, PermissionDenied, RateLimited, Unauthenticated

log = logging.getLogger(__name__)
OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
_current: contextvars.ContextVar[KeyRecord | None] = contextvars.ContextVar("escalon_key", default=None)


def current_key() -> KeyRecord | None:
    """The key of the call being handled (None when the API runs open)."""
    return _current.get()


def bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else str(value).strip()
        if key.lower() == "x-api-key":
            return str(value).strip()
    return ""


class NotReady(EscalonError):
    code = grpc.StatusCode.UNAVAILABLE


class RateLimiter:
    def __init__(self, redis_url: str = "") -> None:
        from limits.aio import storage, strategies

        self.shared = bool(redis_url)
        store = storage.RedisStorage("async+" + redis_url,
                                     implementation="redispy") if redis_url else storage.MemoryStorage()
        self._limiter = strategies.MovingWindowRateLimiter(store)
        self._items: dict[str, Any] = {}
        self.degraded = ""

    async def hit(self, key: KeyRecord) -> None:
        if not key.rate_limit:
            return
        from limits import parse_many

        items = self._items.get(key.rate_limit) or self._items.setdefault(key.rate_limit, parse_many(key.rate_limit))
        for item in items:
            try:
                allowed = await self._limiter.hit(item, "key", key.key_id)
            except Exception as exc:  # noqa: BLE001 - Redis away: routes go on (budgets still hold), said once
                if not self.degraded:
                    log.warning("rate limits not enforced: the limit store does not answer (%s: %s)",
                                type(exc).__name__, exc)
                self.degraded = f"{type(exc).__name__}: {exc}"
                return
            if self.degraded:
                log.warning("rate limits enforced again: the limit store answers")
                self.degraded = ""
            if not allowed:
                stats = await self._limiter.get_window_stats(item, "key", key.key_id)
                wait = max(0.0, stats.reset_time - time.time())
                raise RateLimited(f"key {key.key_id} (tenant {key.tenant}) is over its rate limit of {item}; "
                                  f"retry in {wait:.1f}s", field="rate_limit")


class Gate:
    """Authentication for one service: the key directory (cached), rate limits, and the open/keys decision."""

    def __init__(self, settings: DatabaseSettings, engine: Callable[[], Any], *, service: str) -> None:
        self.settings = settings
        self._engine = engine
        self.service = service
        self.required = False
        self.decided = False  # until start() has decided, every call is refused (never open by accident)
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self.limiter: RateLimiter | None = None

    async def start(self) -> None:
        """Decide whether keys are required; ConfigError when the API would run open where it may not."""
        try:
            await self._decide()
        finally:
            self.decided = True

    async def _decide(self) -> None:
        s = self.settings
        if s.auth == "open":
            log.warning("%s: running open (ESCALON_AUTH=open): no API key is checked", self.service)
            return
        try:
            active = await asyncio.to_thread(lambda: count_active_keys(self._engine()))
        except Exception as exc:  # noqa: BLE001
            if s.may_run_open and s.auth == "auto":
                log.warning("%s: cannot read the key table (%s: %s); running open (dev profile)", self.service,
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                return
            raise ConfigError(f"{self.service}: cannot read the API keys from ESCALON_DATABASE_URL "
                              f"({type(exc).__name__}: {exc}); keys are required outside the dev profile") from None
        if active == 0 and s.auth == "auto":
            if s.profile == "dev":
                log.info("%s: no API keys exist; running open (dev profile). `escalon keys create` adds one",
                         self.service)
                return
            raise ConfigError(f"{self.service}: no API keys exist and ESCALON_PROFILE={s.profile}: the API would be "
                              "open to anyone. Create one (`escalon keys create --tenant <name>`) or set "
                              "ESCALON_AUTH=open to run open on purpose")
        self.required = True
        self.limiter = RateLimiter(s.redis_url)
        log.info("%s: API keys required (%d active; rate limits %s)", self.service, active,
                 "shared in Redis" if s.redis_url else "in this process")

    async def lookup(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached and now - cached[0] < self.settings.key_cache_s:
            return cached[1]
        try:
            record = await asyncio.to_thread(lambda: get_key(self._engine(), key_id))
        except Exception as exc:  # noqa: BLE001 - the database is away: a key seen before stays trusted
            if cached:
                return cached[1]
            raise NotReady(f"cannot check API key {key_id}: the key database does not answer "
                           f"({type(exc).__name__}); retry shortly") from None
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key_id] = (now, record)
        return record

    async def check(self, metadata: Any, scope: str) -> KeyRecord | None:
        """The caller's key, or Unauthenticated / PermissionDenied / RateLimited. None when open."""
        try:
            return await self._check(metadata, scope)
        except (Unauthenticated, PermissionDenied, RateLimited) as exc:
            from escalon.metrics import metrics

            reason = {Unauthenticated: "unauthenticated", PermissionDenied: "permission_denied"}.get(
                type(exc), "rate_limit")
            metrics().key_refusals.labels(reason).inc()
            raise

    async def _check(self, metadata: Any, scope: str) -> KeyRecord | None:
        if not self.decided:
            raise NotReady(f"the {self.service} API is starting; retry shortly")
        if not self.required:
            return None
        token = bearer(metadata)
        if not token:
            raise Unauthenticated("no API key: send metadata `authorization: Bearer <key>` (HTTP: the "
                                  "Authorization header); `escalon keys create` issues keys")
        parsed = parse_key(token)
        if parsed is None:
            raise Unauthenticated("malformed API key: keys read esk_<12 hex digits>_<secret>")
        key_id, secret = parsed
        record = await self.lookup(key_id)
        if record is None or not record.matches(secret):
            raise Unauthenticated(f"unknown API key {key_id}: not issued here, or its secret does not match")
        if record.revoked:
            raise PermissionDenied(f"API key {key_id} (tenant {record.tenant}) was revoked"
                                   f"{f' at {record.revoked_at:%Y-%m-%d %H:%M}Z' if record.revoked_at else ''}")
        if scope not in record.scopes:
            raise PermissionDenied(f"API key {key_id} may not call the {self.service} API (its scopes: "
                                   f"{', '.join(record.scopes)}; this API needs {scope})")
        if self.limiter is not None:
            await self.limiter.hit(record)
        return record


class KeyInterceptor(grpc.aio.ServerInterceptor):
    """Checks the key before the handler runs and makes it `current_key()` inside it. Place it after the
    error-mapping interceptor, which turns the errors above into their status codes."""

    def __init__(self, gate: Gate, scope: str) -> None:
        self.gate = gate
        self.scope = scope

    async def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        gate, scope = self.gate, self.scope
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):  # noqa: ANN001, ANN202
                _current.set(await gate.check(context.invocation_metadata(), scope))
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):  # noqa: ANN001, ANN202
                _current.set(await gate.check(context.invocation_metadata(), scope))
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                        response_serializer=handler.response_serializer)
        return handler


Check = Callable[[Any, str], Awaitable[KeyRecord | None]]


def _with_key(details, key: str):  # noqa: ANN001, ANN202
    metadata = [(k, v) for k, v in (details.metadata or ()) if k.lower() != "authorization"]
    metadata.append(("authorization", f"Bearer {key}"))
    return details._replace(metadata=tuple(metadata))


class _KeyUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return await continuation(_with_key(client_call_details, self.key), request)


class _KeyStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return await continuation(_with_key(client_call_details, self.key), request)


def key_interceptors(key: str | None = None) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send `key` (ESCALON_API_KEY when not given) on every call; none without one."""
    import os

    key = (key if key is not None else os.environ.get("ESCALON_API_KEY", "")).strip()
    return [_KeyUnary(key), _KeyStream(key)] if key else []

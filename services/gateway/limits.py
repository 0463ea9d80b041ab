"""Who may call, and how fast: bearer API keys and a token bucket per key.

Keys: with ESCALON_GATEWAY_API_KEYS set, every /v1 and /ops/api call needs `Authorization: Bearer <key>`;
no key (or an empty one) is 401, a key that is not one of them is 403. Keys are compared in constant time.
The caller's Authorization header is passed on to the Router and Distill APIs (`caller_key`), which check
keys from Escalon's database (`escalon keys`); with those, leave ESCALON_GATEWAY_API_KEYS unset.
Rate: each key (each client address when there are no keys) has a bucket of `burst` tokens refilled at
`rps` per second; a call takes one token or is refused with 429 and a Retry-After. Buckets live in this
process (one gateway replica); the number of buckets is bounded, the least recently used go first.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import Request

from escalon.gateway.errors import APIError
from escalon.gateway.settings import GatewaySettings

MAX_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    def __init__(self, rate: float, burst: int, *, clock=time.monotonic, max_buckets: int = MAX_BUCKETS) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token for `key`: 0 when allowed, else the seconds until a token is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


class Guard:
    """Authentication and rate limiting for one gateway."""

    def __init__(self, settings: GatewaySettings) -> None:
        settings.check_api_keys()
        # Only digests are kept: comparing equal-length digests in constant time leaks neither key nor length.
        self._digests = [_digest(k.get_secret_value()) for k in settings.api_keys]
        self.buckets = TokenBuckets(settings.rate_limit_rps, settings.rate_limit_burst)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def caller(self, request: Request) -> str:
        """The caller's identity (a key fingerprint or the client address), or APIError 401 / 403."""
        if not self._digests:
            return f"addr:{request.client.host if request.client else 'unknown'}"
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "no API key: send `Authorization: Bearer <key>`", type="invalid_request_error",
                           code="missing_api_key", headers={"www-authenticate": "Bearer"})
        digest = _digest(key)
        if not any(hmac.compare_digest(digest, known) for known in self._digests):
            raise APIError(403, "this API key is not allowed to use the gateway", type="invalid_request_error",
                           code="invalid_api_key")
        return f"key:{digest.hex()[:16]}"

    def admit(self, request: Request) -> str:
        """caller() plus one token from the caller's bucket, or APIError 429."""
        who = self.caller(request)
        wait = self.buckets.take(who)
        if wait > 0:
            raise APIError(429, f"rate limit of {self.buckets.rate:g} requests/s (burst {self.buckets.burst}) "
                           f"reached; retry in {wait:.1f}s", type="requests", code="rate_limit_exceeded",
                           headers={"retry-after": str(max(1, math.ceil(wait)))})
        return who


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def caller_key(request: Request) -> tuple[tuple[str, str], ...] | None:
    """The caller's `Authorization` header as gRPC metadata, passed through so that the Router API (and the
    Distill API) check the caller's own key (escalon.auth): no client can go around them through the gateway."""
    value = request.headers.get("authorization", "").strip()
    return (("authorization", value),) if value else None

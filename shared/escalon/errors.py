"""Domain errors. Servicers raise these; one interceptor (escalon.grpc) maps them to status codes.

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations

import grpc


class EscalonError(Exception):
    """Base of the errors a caller can act on."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = ""  # a finer reason than the code, sent as trailing metadata to Escalon's own clients

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class ConfigError(EscalonError):
    """Configuration is missing or malformed; raised at start, before anything listens."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidInput(EscalonError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(EscalonError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(EscalonError):
    code = grpc.StatusCode.ALREADY_EXISTS


class RungUnavailable(EscalonError):
    """A model tier cannot answer now (dead engine, unreachable endpoint, prompt not recorded)."""

    code = grpc.StatusCode.UNAVAILABLE


class NotAnswerable(RungUnavailable):
    """This rung cannot answer this prompt though it is healthy (a replay rung with no recording of it): the
    cascade moves on, and no circuit breaker counts it as the rung failing. Across gRPC it stays UNAVAILABLE,
    with the reason in the trailing metadata (escalon.grpc.REASON_KEY)."""

    reason = "not-answerable"


class BudgetExceeded(EscalonError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(EscalonError):
    """A service is at its bound on calls in flight (escalon.grpc.Admission) and shed this one: retry after
    `retry_after_ms`. Raised by a client that was shed downstream, so the shed reaches the original caller
    with its hint instead of counting as the dependency failing (no circuit opens for it)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "overloaded"

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class DeadlineExceeded(EscalonError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ServiceStarting(EscalonError):
    """A call arrived before the service was ready (models loading, dependencies connecting): retry."""

    code = grpc.StatusCode.UNAVAILABLE


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters, saying how much was left out: error messages never carry a caller's
    input unbounded (a 100 KB field echoed into grpc-message breaks the reply's headers)."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def shown(value: object, limit: int = 80) -> str:
    """repr() of a caller's value for an error message, at most `limit` characters of it."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(value) if isinstance(value, str) else text
    return f"{text[:limit]!r}… ({len(text) - limit} more characters)"


class Unauthenticated(EscalonError):
    """No key, a malformed key, or a key nobody issued."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(EscalonError):
    """A valid key that may not do this: revoked, outside its scopes or its allow-lists."""

    code = grpc.StatusCode.PERMISSION_DENIED


class RateLimited(EscalonError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

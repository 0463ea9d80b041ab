"""Errors in the OpenAI shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status the
OpenAI SDK maps to its exception classes (400 BadRequestError, 401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, >= 500 InternalServerError).

gRPC statuses from the Router API are mapped here, once: INVALID_ARGUMENT 400 (param = the field the
details name before the ':'), RESOURCE_EXHAUSTED 429 (a key's rate limit with Retry-After; a budget with
x-should-retry: false) or 503 (a service shed the call at its in-flight limit, "overloaded:", with Retry-After
and retry-after-ms from its hint), UNAUTHENTICATED 401, PERMISSION_DENIED 403, UNAVAILABLE 503, NOT_FOUND 404, DEADLINE_EXCEEDED 504,
anything else 500.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import grpc
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from escalon.grpc import overloaded, retry_after_ms

# What the Router API calls a field, as the OpenAI request calls it.
_PARAM_OF_FIELD = {
    "prompt": "messages",
    "operating_point": "model",
    "pin_rung": "model",
    "rung": "model",
    "max_tokens": "max_tokens",
    "max_cost_usd": "max_cost_usd",
    "min_quality": "min_quality",
    "answer_type": "answer_type",
}
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*$")
_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?)s")
_RUNG_PREFIX = re.compile(r"^rung [a-z0-9][a-z0-9.\-]*$")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error envelope (what the OpenAI SDKs parse into their exception's `body`)."""

    error: ErrorBody = Field(description="what went wrong, and which request field caused it")


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, type="invalid_request_error", param=param, code=code)


def from_grpc(exc: grpc.aio.AioRpcError, what: str = "router") -> APIError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return invalid(details, param_of(details))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if overloaded(exc):  # shed at an in-flight limit (escalon.grpc.Admission): retry after the hint
            return _overloaded(details, retry_after_ms(exc))
        retry = _RETRY_IN.search(details)
        if details.startswith("rate_limit: ") and retry:  # a key's rate limit (escalon.auth): it passes
            return APIError(429, details, type="requests", code="rate_limit_exceeded",
                            headers={"retry-after": str(max(1, math.ceil(float(retry.group(1)))))})
        # A budget the cheapest rung cannot meet, or a key's budget used up, does not pass by retrying now.
        return APIError(429, details, type="insufficient_quota", param=param_of(details), code="budget_exceeded",
                        headers={"x-should-retry": "false"})
    if code == grpc.StatusCode.UNAUTHENTICATED:  # the key the caller sent, checked by the router (escalon.auth)
        return APIError(401, details, type="invalid_request_error", code="invalid_api_key",
                        headers={"www-authenticate": "Bearer"})
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return APIError(403, details, type="invalid_request_error", param=param_of(details), code="permission_denied")
    if code == grpc.StatusCode.UNAVAILABLE:
        # The router's own verdict names rungs ("no rung could answer (...)"); anything else is the transport.
        if "rung" in details:
            return APIError(503, details, type="service_unavailable_error", code="rung_unavailable")
        return APIError(503, f"the {what} is unavailable: {details}", type="service_unavailable_error",
                        code="upstream_unavailable")
    if code == grpc.StatusCode.NOT_FOUND:
        return APIError(404, details, type="invalid_request_error", param=param_of(details), code="not_found")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return APIError(504, f"the {what} did not answer in time: {details}", type="timeout_error",
                        code="deadline_exceeded")
    return APIError(500, f"{what} error {code.name}: {details}", type="server_error", code=code.name.lower())


def overloaded_response(message: str, wait_ms: int | None) -> JSONResponse:
    """The 503 `overloaded` answer of a shed request (the gateway's own bound, escalon.gateway.admission)."""
    return _overloaded(message, wait_ms).response()


def _overloaded(details: str, wait_ms: int | None) -> APIError:
    """503 with Retry-After (whole seconds, at least 1) and retry-after-ms (what the OpenAI SDKs read first):
    the SDKs retry a 503 by themselves, after the wait given."""
    wait_ms = 1000 if wait_ms is None else wait_ms
    return APIError(503, details, type="service_unavailable_error", code="overloaded",
                    headers={"retry-after": str(max(1, math.ceil(wait_ms / 1000))), "retry-after-ms": str(wait_ms)})


def param_of(details: str) -> str | None:
    """The request field a Router API message names: `field: message`, or `rung <name>: field: message` when a
    rung rejected the request. Mapped to the OpenAI request's name for it (prompt -> messages, ...)."""
    parts = details.split(": ")
    if len(parts) < 2:
        return None
    first = parts[0]
    if _RUNG_PREFIX.match(first) and len(parts) >= 3:
        first = parts[1]
    if not _FIELD.match(first):
        return None
    field = first.removeprefix("request.")
    return _PARAM_OF_FIELD.get(field, field)


def param_of_loc(loc: Sequence[str | int]) -> str | None:
    """A pydantic error location, ('body', 'messages', 0, 'content'), as messages[0].content."""
    parts = [p for p in loc if p != "body"] if loc and loc[0] == "body" else list(loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[...]") or "[" in str(part) or part.startswith("function-"):
            continue  # a union member's name, not a field
        else:
            out += f".{part}" if out else str(part)
    return out or None

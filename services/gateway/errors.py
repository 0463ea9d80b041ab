"""Errors in the OpenAI shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status the
OpenAI SDK maps to its exception classes (400 BadRequestError, 401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, >= 500 InternalServerError).

gRPC statuses from the Router API are mapped here, once: INVALID_ARGUMENT 400 (param = the field the
details name before the ':'), RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, NOT_FOUND 404, DEADLINE_EXCEEDED 504,
anything else 500.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

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
        # A budget the cheapest rung cannot meet does not pass by retrying: tell the SDK not to.
        return APIError(429, details, type="insufficient_quota", param=param_of(details), code="budget_exceeded",
                        headers={"x-should-retry": "false"})
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

"""What the gateway checks before it reads a request's body: the API key, then the body's size.

FastAPI parses (and so buffers) the body before an endpoint runs, so a check in the endpoint comes after a
keyless caller's 200 MB upload is in memory. This ASGI middleware sits in front of that: with API keys set,
a /v1 or /ops/api request without a good key is answered 401/403 from its headers alone; any body over
ESCALON_GATEWAY_MAX_BODY_BYTES is 413, at once when Content-Length says so, else as soon as the bytes
received pass the limit (chunked uploads) — the rest is never read. Rate limits stay in the endpoints
(Guard.admit), which run once the request is known to be small and authenticated.
"""

from __future__ import annotations

from starlette.requests import Request

from escalon.gateway.errors import APIError

GUARDED = ("/v1/", "/ops/api/")


class BodyGuardMiddleware:
    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway = getattr(scope["app"].state, "gateway", None) if "app" in scope else None
        if gateway is not None and gateway.guard.enabled and scope["path"].startswith(GUARDED):
            try:
                gateway.guard.caller(Request(scope))  # headers only: the body is not touched
            except APIError as exc:
                await exc.response()(scope, receive, send)
                return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        await self.app(scope, *self._counting(scope, receive, send))

    def _counting(self, scope, receive, send):
        """receive() that stops at the limit (answering 413 itself) and a send() that then stays quiet."""
        state = {"seen": 0, "answered": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_body_bytes and not state["answered"]:
                    state["answered"] = True
                    await self._too_large(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def quiet_send(message):
            if not state["answered"]:
                await send(message)

        return counted_receive, quiet_send

    async def _too_large(self, scope, receive, send) -> None:
        error = APIError(413, f"the request body is over the limit of {self.max_body_bytes} bytes "
                         "(ESCALON_GATEWAY_MAX_BODY_BYTES)", type="invalid_request_error", code="body_too_large")
        await error.response()(scope, receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

"""The gateway's bound on chat completions in flight: beyond ESCALON_GATEWAY_MAX_IN_FLIGHT, a request is answered
503 `overloaded` at once, from its headers alone, with Retry-After and retry-after-ms (the OpenAI SDKs wait that
long and retry by themselves).

Without it an overloaded gateway takes every request, its event loop falls behind, and the requests wait until
their callers' timeouts: measured at 100 req/s on a loaded 2-core machine, 8,192 of 30,000 timed out after 30 s
and the gateway grew from 75 to 249 MB. The bound and the hint are escalon.grpc.Admission's, as for the gRPC
services behind it (whose own sheds arrive here as RESOURCE_EXHAUSTED "overloaded:" and get the same 503).
"""

from __future__ import annotations

from escalon.gateway.errors import overloaded_response
from escalon.grpc import Admission
from escalon.metrics import metrics

BOUNDED = ("/v1/chat/completions",)


class AdmissionMiddleware:
    def __init__(self, app, max_in_flight: int) -> None:
        self.app = app
        self.admission = Admission(max_in_flight, f"ESCALON_GATEWAY_MAX_IN_FLIGHT={max_in_flight}")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope["path"] not in BOUNDED:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if admission.full:
            metrics().http_shed.labels(scope["path"]).inc()
            message = (f"overloaded: the gateway is handling {admission.in_flight} requests, its limit "
                       f"({admission.setting})")
            await overloaded_response(message, admission.retry_after_ms())(scope, receive, send)
            return
        started = admission.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            admission.leave(started)

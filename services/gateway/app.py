"""The gateway's FastAPI app: the OpenAI-compatible API over the Router API, and the operator's page.

`create_app(settings)` builds an app with no I/O; its lifespan opens the gRPC channels and closes them
after uvicorn has drained the in-flight requests. `python -m escalon.gateway` runs it (see __main__).

Streaming (`stream: true`) answers only once the cascade has decided. The router streams the tokens of
every rung it tries, but a rung's tokens are not the answer until the judges accept it, and even then the
text the judges pick may be another of the rung's samples than the one streamed. So the gateway reads
RouteStream to the end and then sends the decided answer as chat.completion.chunk events: the status is
a true one (a bad request, a budget or no rung is a 400, 429 or 503 with the OpenAI error body, never an
error in the middle of a 200 stream), the headers carry the rung and cost, and nothing a client shows
ever has to be taken back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import propagate, trace
from starlette.exceptions import HTTPException as StarletteHTTPException

from escalon.gateway import ops
from escalon.gateway.admission import AdmissionMiddleware
from escalon.gateway.bodyguard import BodyGuardMiddleware
from escalon.gateway.chat import (
    AUTO,
    POLICY_PREFIX,
    ChatCompletion,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    completion,
    escalon_headers,
    operating_label,
    route_request,
    stream_chunks,
)
from escalon.gateway.errors import APIError, ErrorResponse, from_grpc, param_of_loc
from escalon.gateway.limits import Guard, caller_key
from escalon.gateway.settings import GatewaySettings
from escalon.gateway.traffic import TrafficWindow, record_of
from escalon.gateway.upstream import Upstreams
from escalon.gen.router.v1 import router_pb2
from escalon.gen.serving.v1 import serving_pb2
from escalon.metrics import metrics, serve_metrics
from escalon.telemetry import ATTR_COST_USD, ATTR_RUNG, Telemetry, tracer

log = logging.getLogger(__name__)
T = TypeVar("T")
CHAT_PATH = "/v1/chat/completions"
_ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in {
    400: "bad input; `param` names the field", 401: "no API key", 403: "API key not allowed",
    413: "the body is over ESCALON_GATEWAY_MAX_BODY_BYTES",
    429: "rate limit, or a budget below the cheapest rung's cost", 503: "no rung is available",
    504: "the route did not finish in time"}.items()}


@dataclass
class Gateway:
    """What a running app holds: its settings, gRPC clients, guard and traffic window."""

    settings: GatewaySettings
    upstreams: Upstreams
    guard: Guard
    traffic: TrafficWindow
    route_log: Any = None  # escalon.db.engine.LazyDatabase when the page reads the route log


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


class ClientGone(Exception):
    """The HTTP client disconnected before the route finished; its gRPC call was cancelled."""


def create_app(settings: GatewaySettings, telemetry: Telemetry | None = None) -> FastAPI:
    """The app. With `telemetry`, its spans are flushed as the last step of the lifespan's shutdown (after
    uvicorn drained the requests and the channels are closed): uvicorn ends a signalled process right after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstreams = Upstreams(settings)
        route_log = None
        if settings.traffic_source == "route_log":
            from escalon.config import load_settings
            from escalon.db.engine import LazyDatabase
            from escalon.db.settings import DatabaseSettings

            route_log = LazyDatabase(load_settings(DatabaseSettings).database_url)
        app.state.gateway = Gateway(settings, upstreams, Guard(settings),
                                    TrafficWindow(settings.traffic_window_s, settings.traffic_max_routes), route_log)
        endpoint = serve_metrics(settings.metrics_port, settings.host, setting="ESCALON_GATEWAY_METRICS_PORT")
        app.state.metrics_port = endpoint.port if endpoint else None
        try:
            yield
        finally:
            await upstreams.close()
            if route_log is not None:
                route_log.dispose()
            if endpoint is not None:
                endpoint.close()
            if telemetry is not None:
                telemetry.shutdown()

    app = FastAPI(
        title="Escalon gateway",
        version="1",
        description="OpenAI-compatible HTTP face of Escalon's Router API: each query is answered by the cheapest "
                    "rung its judges trust. `model` picks a policy (`escalon/auto`, `escalon/<operating point>`) "
                    "or pins a rung. The operator's page is at `/ops`.",
        lifespan=lifespan,
    )
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"],
                           expose_headers=["x-escalon-rung", "x-escalon-cost-usd", "x-escalon-confidence",
                                           "x-escalon-trace-id", "x-request-id", "retry-after"])
    app.add_middleware(BodyGuardMiddleware, max_body_bytes=settings.max_body_bytes)  # key, size: before the body
    app.add_middleware(AdmissionMiddleware, max_in_flight=settings.max_in_flight)  # overload: shed, never queue
    app.add_middleware(TracingMiddleware)
    app.add_middleware(MetricsMiddleware)  # outermost: its duration includes the tracing and the error handlers
    _install_error_handlers(app)
    _add_api_routes(app)
    app.include_router(ops.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without its 422 responses: validation errors are 400s in the OpenAI error shape."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None and "400" not in responses:
                    error = {"$ref": "#/components/schemas/ErrorResponse"}
                    responses["400"] = {"description": "bad input; `param` names the field",
                                        "content": {"application/json": {"schema": error}}}
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


# ---- routes ------------------------------------------------------------------------------------------------

def _add_api_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"], summary="Readiness: 200 once the router is SERVING, else 503",
             responses={503: {"description": "the router is not ready"}})
    async def healthz(request: Request) -> JSONResponse:
        ready, detail = await gateway_of(request).upstreams.router_ready()
        return JSONResponse({"status": "ok" if ready else "unavailable", "router": detail},
                            status_code=200 if ready else 503)

    @app.get("/livez", tags=["health"], summary="Liveness: 200 while the process answers")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(CHAT_PATH, tags=["openai"], summary="Create a chat completion (OpenAI-compatible)",
              response_model=ChatCompletion, responses={
                  200: {"description": "the completion; with `stream: true`, `text/event-stream` of "
                                       "chat.completion.chunk events then `data: [DONE]`",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                  **_ERRORS})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        gw = gateway_of(request)
        gw.guard.admit(request)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        route = route_request(body, completion_id)
        created = int(time.time())
        timeout = gw.settings.request_timeout_s
        try:
            if body.stream:
                response = await _until_disconnected(request, _route_streamed(gw, route, timeout, caller_key(request)))
            else:
                response = await _until_disconnected(request, gw.upstreams.router.Route(
                    route, timeout=timeout, metadata=caller_key(request)))
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        gw.traffic.add(record_of(operating_label(body), response))
        span = trace.get_current_span()
        span.set_attribute(ATTR_RUNG, response.rung)
        span.set_attribute(ATTR_COST_USD, response.total_cost_usd)
        headers = escalon_headers(response)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = stream_chunks(response, completion_id, created, include_usage)
            return StreamingResponse(_sse(chunks), media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
        return JSONResponse(completion(response, completion_id, created).model_dump(), headers=headers)

    @app.get("/v1/models", tags=["openai"], summary="Policies, operating points and rungs a request may name",
             response_model=ModelList, responses={401: _ERRORS[401], 403: _ERRORS[403], 429: _ERRORS[429]})
    async def list_models(request: Request) -> ModelList:
        gw = gateway_of(request)
        gw.guard.admit(request)
        return ModelList(data=await _models(gw))

    @app.get("/v1/models/{model_id:path}", tags=["openai"], summary="One model a request may name",
             response_model=ModelCard, responses={404: {"model": ErrorResponse, "description": "unknown model"},
                                                  401: _ERRORS[401], 403: _ERRORS[403], 429: _ERRORS[429]})
    async def get_model(model_id: str, request: Request) -> ModelCard:
        gw = gateway_of(request)
        gw.guard.admit(request)
        for card in await _models(gw):
            if card.id == model_id:
                return card
        raise APIError(404, f"the model {model_id!r} does not exist; GET /v1/models lists them",
                       type="invalid_request_error", param="model", code="model_not_found")


async def _models(gw: Gateway) -> list[ModelCard]:
    cards = [ModelCard(id=AUTO, owned_by="escalon", description="the router's default operating point and policy")]
    cards += [ModelCard(id=f"{POLICY_PREFIX}{point}", owned_by="escalon", description=f"operating point {point}")
              for point in gw.settings.operating_points]
    try:
        reply = await gw.upstreams.serving.ListModels(serving_pb2.ListModelsRequest(),
                                                      timeout=gw.settings.upstream_timeout_s)
    except grpc.aio.AioRpcError as exc:  # the policies still work; the rungs are listed when serving answers
        log.warning("ListModels failed, listing policies only: %s: %s", exc.code().name, exc.details())
        return cards
    cards += [ModelCard(id=r.name, owned_by=r.family, description=f"pin rung {r.name} ({r.backend} {r.model})",
                        healthy=r.healthy, input_usd_per_1m=r.input_usd_per_1m, output_usd_per_1m=r.output_usd_per_1m,
                        context_limit=r.context_limit) for r in reply.rungs]
    return cards


async def _route_streamed(gw: Gateway, route: router_pb2.RouteRequest, timeout: float,
                          metadata: tuple[tuple[str, str], ...] | None = None) -> router_pb2.RouteResponse:
    """Read RouteStream to its result. Token chunks are dropped (they may belong to an answer the judges
    reject); decision events are logged."""
    result = None
    async for item in gw.upstreams.router.RouteStream(router_pb2.RouteStreamRequest(request=route), timeout=timeout,
                                                      metadata=metadata):
        kind = item.WhichOneof("payload")
        if kind == "result":
            result = item.result
        elif kind == "event":
            log.debug("route %s: %s", route.request_id, item.event.message)
    if result is None:
        raise APIError(502, "the router's stream ended without a result", type="server_error", code="incomplete_stream")
    return result


async def _sse(chunks: list[dict[str, Any]]) -> AsyncIterator[str]:
    for item in chunks:
        yield f"data: {json.dumps(item, separators=(',', ':'))}\n\n"
    yield "data: [DONE]\n\n"


async def _until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so the gRPC call, and the router's decoding) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientGone()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _disconnected(request: Request) -> None:
    # The body has been read: the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---- errors ------------------------------------------------------------------------------------------------

def _install_error_handlers(app: FastAPI) -> None:
    def count(request: Request, status: int) -> None:
        gw = getattr(request.app.state, "gateway", None)
        if gw is not None and request.url.path == CHAT_PATH:
            gw.traffic.add_error(status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        count(request, exc.status)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            err = APIError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                           type="invalid_request_error", code="invalid_json")
        else:
            param = param_of_loc(first.get("loc", ()))
            more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
            err = APIError(400, f"{param or 'request'}: {first['msg']}{more}", type="invalid_request_error",
                           param=param, code="invalid_value")
        count(request, 400)
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), type=kind, code=code,
                        headers=dict(exc.headers or {})).response()

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        log.info("%s %s: the client disconnected; route call cancelled", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        count(request, 500)
        return APIError(500, f"internal error: {type(exc).__name__}", type="server_error",
                        code="internal_error").response()


# ---- metrics -----------------------------------------------------------------------------------------------

class MetricsMiddleware:
    """http.server.request.duration by method, route template and status, and requests in flight. A path no
    route matched counts as http_route="" (a bounded label set, whatever clients send)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = metrics()
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"  # as the conventions say
        status = 500  # what the client sees when the app dies before it answers

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m.http_active.labels(method).inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_counted)
        finally:
            m.http_active.labels(method).dec()
            route = getattr(scope.get("route"), "path", None) or ""
            m.http_duration.labels(method, route, str(status)).observe(time.perf_counter() - started)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


# ---- tracing -----------------------------------------------------------------------------------------------

class TracingMiddleware:
    """A server span per HTTP request, continuing the caller's W3C trace context (traceparent) when sent. It
    is current while the endpoint runs, so the gRPC client interceptors take it on to the router."""

    UNTRACED = ("/healthz", "/livez")

    def __init__(self, app) -> None:
        self.app = app
        self.tracer = tracer("escalon.gateway")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.UNTRACED:
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"]
        with self.tracer.start_as_current_span(method, context=propagate.extract(carrier),
                                               kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("http.request.method", scope["method"])
            span.set_attribute("url.path", scope["path"])

            async def send_traced(message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(trace.StatusCode.ERROR)
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                # Named after the route template once routing chose one: a bounded set of span names.
                route = getattr(scope.get("route"), "path", None)
                span.update_name(f"{method} {route or '(no route)'}")
                if route:
                    span.set_attribute("http.route", route)

"""The one aio gRPC server bootstrap every Escalon service uses, and the one way to open a client channel.

Order of life (STYLE.md practices 3-5):
  start: telemetry → server with [metrics, tracing, error-mapping] interceptors, /metrics → health (NOT_SERVING) +
         reflection → bind → start → service.start() (load models, open clients) → SERVING
  stop:  NOT_SERVING → server.stop(grace) → service.close() (clients, Ray handles, brokers) → flush telemetry
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from escalon.config import ServiceSettings
from escalon.errors import EscalonError
from escalon.metrics import GrpcMetricsInterceptor, serve_metrics
from escalon.telemetry import configure_telemetry

log = logging.getLogger(__name__)

# Prompts are bounded by the services (they reject oversized ones with a clear message); the transport
# limit sits above that so the message, not a transport error, is what callers see.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
]


class Service(Protocol):
    """What a service hands to the bootstrap."""

    #: full names of the gRPC services it registers, e.g. "escalon.router.v1.RouterService"
    service_names: tuple[str, ...]

    def register(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None:
        """Get ready to answer: load models, open clients. Health says SERVING only after this returns."""

    async def close(self) -> None:
        """Release clients and connections; called after the server has stopped taking calls."""


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns EscalonError into its status code and message; anything else into INTERNAL, logged once."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client- and bidi-streaming: none in Escalon's contracts


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(exc, EscalonError):
        await context.abort(exc.code, str(exc))
    log.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}")


def _guard_unary(fn: Callable[..., Awaitable[Any]], method: str):
    async def call(request, context):
        try:
            return await fn(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never swallowed
            await _abort_for(exc, context, method)

    return call


def _guard_stream(fn: Callable[..., AsyncIterator[Any]], method: str):
    async def call(request, context):
        try:
            async for item in fn(request, context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort_for(exc, context, method)

    return call


def _tracing_server_interceptor() -> grpc.aio.ServerInterceptor:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return aio_server_interceptor()


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service: Service
    metrics_port: int | None = None  # the bound /metrics port; None when the endpoint is off

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service.service_names):
            await self.health.set(name, status)


@contextlib.asynccontextmanager
async def running_server(service: Service, settings: ServiceSettings, telemetry_name: str) -> AsyncIterator[RunningServer]:
    """Start the service's server; on exit stop it in the fixed order. Tests use this with port 0."""
    telemetry = configure_telemetry(telemetry_name)
    server = grpc.aio.server(
        interceptors=[GrpcMetricsInterceptor(), _tracing_server_interceptor(), ErrorMappingInterceptor()],
        options=_CHANNEL_OPTIONS,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.register(server)
    reflection.enable_server_reflection(
        (*service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}; is another process using the port?")
    running = RunningServer(server, port, health_servicer, service)
    metrics_endpoint = serve_metrics(settings.metrics_port, settings.host,
                                     setting=f"{settings.model_config.get('env_prefix', '')}METRICS_PORT")
    running.metrics_port = metrics_endpoint.port if metrics_endpoint else None
    await running.set_serving(False)
    await server.start()
    try:
        await service.start()
        await running.set_serving(True)
        log.info("%s serving on %s:%d", telemetry_name, settings.host, port)
        yield running
    finally:
        await running.set_serving(False)
        await server.stop(settings.grace_seconds)
        await service.close()
        if metrics_endpoint is not None:
            metrics_endpoint.close()
        telemetry.shutdown()


async def serve(service: Service, settings: ServiceSettings, telemetry_name: str) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully. What `python -m escalon.<service>` calls."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_server(service, settings, telemetry_name):
        await stop.wait()
        log.info("%s stopping (grace %.1fs)", telemetry_name, settings.grace_seconds)


def open_channel(address: str) -> grpc.aio.Channel:
    """A client channel that carries the trace context to the next service."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS, interceptors=aio_client_interceptors())

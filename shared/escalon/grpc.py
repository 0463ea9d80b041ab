"""The one aio gRPC server bootstrap every Escalon service uses, and the one way to open a client channel.

Order of life (STYLE.md practices 3-5):
  start: telemetry → server with [metrics, tracing, error-mapping] interceptors, /metrics → health (NOT_SERVING) +
         reflection → bind → start → service.start() (load models, open clients) → SERVING
         → service.watch() when it has one (flips health while a dependency is away)
  stop:  NOT_SERVING → server.stop(grace) → service.close() (clients, Ray handles, brokers) → flush telemetry

What every server refuses the same way, so no servicer has to:
  - a second server on a taken port: SO_REUSEPORT is off, so the bind fails, naming the port and its holder;
  - calls before start() returned: UNAVAILABLE "starting, retry" (health and reflection still answer);
  - a call beyond max_in_flight (ESCALON_<SERVICE>_MAX_IN_FLIGHT) calls in progress: RESOURCE_EXHAUSTED
    "overloaded: ..." at once, with a retry hint in the trailing metadata (retry-after-ms), never a queue;
  - bytes that are not the request message (bad wire format, invalid UTF-8 in a string field):
    INVALID_ARGUMENT, logged as one line per client address per minute, never a traceback;
  - messages over MAX_MESSAGE_BYTES: RESOURCE_EXHAUSTED from gRPC itself;
  - error messages are capped at MAX_ERROR_CHARS (grpc-message is a header; a huge one breaks the reply).

Deadlines travel on: while a call is handled, `time_left(limit)` is what remains of its caller's deadline (or
`limit`, when nearer or when the caller set none), so a client call made on its behalf (router → serving,
router → judge) never outlives the caller. A caller that hangs up cancels the handler's task, and with it the
calls it made downstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from escalon.config import ServiceSettings
from escalon.errors import EscalonError, clip
from escalon.metrics import GrpcMetricsInterceptor, metrics, serve_metrics, split_method
from escalon.telemetry import configure_telemetry

log = logging.getLogger(__name__)

# Prompts are bounded by the services (they reject oversized ones with a clear message); the transport
# limit sits above that so the message, not a transport error, is what callers see.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    # A restarted dependency is found again within seconds (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
# grpcio turns SO_REUSEPORT on by default: a second stack on the same ports would then listen beside the
# first and the kernel would split clients between them. Off, the second bind fails.
_SERVER_OPTIONS = [*_CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]
MAX_ERROR_CHARS = 1000
try:  # what grpcio raises when a handler writes to, or aborts, a call that already ended
    from grpc._cython.cygrpc import ExecuteBatchError as _CALL_OVER
except ImportError:  # pragma: no cover - another grpcio layout
    _CALL_OVER = ()
DECODE_LOG_INTERVAL_S = 60.0
_ALWAYS_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# When the call being handled in this task must be answered by (time.monotonic()); None: no deadline.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("escalon_call_deadline", default=None)


def time_left(limit: float) -> float:
    """Seconds a call made now may take: `limit`, or less when the call being handled must be answered sooner
    (its caller's deadline). Never below zero: a passed deadline makes the next call fail at once."""
    deadline = _DEADLINE.get()
    return limit if deadline is None else max(0.0, min(limit, deadline - time.monotonic()))


def _track_deadline(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    _DEADLINE.set(time.monotonic() + remaining if remaining is not None else None)


#: trailing metadata of a shed call: how long to wait before retrying, in milliseconds
RETRY_AFTER_KEY = "retry-after-ms"
OVERLOADED = "overloaded: "  # the prefix of every shed call's message, which clients (the gateway) look for
RETRY_AFTER_MIN_MS, RETRY_AFTER_MAX_MS = 100, 10_000


class Admission:
    """The bound on calls a server handles at once (load shedding), and the retry hint a shed call gets.

    A call over the bound is refused at once rather than queued: a queue in front of a saturated service
    only turns overload into timeouts for everyone, including the calls that arrive after the burst. The
    hint is the recent mean duration of admitted calls (the time in which the calls now running turn over),
    within [RETRY_AFTER_MIN_MS, RETRY_AFTER_MAX_MS]. All of it runs on the server's one event loop: no lock.
    """

    def __init__(self, limit: int = 0, setting: str = "max_in_flight") -> None:
        self.limit = limit  # 0: no bound
        self.setting = setting  # the environment variable, for the message
        self.in_flight = 0
        self._mean_s = RETRY_AFTER_MIN_MS / 1000

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.in_flight >= self.limit

    def enter(self) -> float:
        self.in_flight += 1
        return time.perf_counter()

    def leave(self, started: float) -> None:
        self.in_flight -= 1
        self._mean_s += 0.05 * (time.perf_counter() - started - self._mean_s)  # EWMA over ~20 calls

    def retry_after_ms(self) -> int:
        return int(min(RETRY_AFTER_MAX_MS, max(RETRY_AFTER_MIN_MS, self._mean_s * 1000)))


class Service(Protocol):
    """What a service hands to the bootstrap."""

    #: full names of the gRPC services it registers, e.g. "escalon.router.v1.RouterService"
    service_names: tuple[str, ...]
    #: optional: server interceptors of its own, run after error mapping (escalon.auth.KeyInterceptor)
    # interceptors: tuple[grpc.aio.ServerInterceptor, ...]

    def register(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None:
        """Get ready to answer: load models, open clients. Health says SERVING only after this returns."""

    async def close(self) -> None:
        """Release clients and connections; called after the server has stopped taking calls."""

    # Optional: `async def watch(self, set_serving: Callable[[bool], Awaitable[None]]) -> None`, run from
    # SERVING until the stop; it calls set_serving(False) while something the service needs is away and
    # set_serving(True) when it is back (the router watches serving and the judge).


@dataclass(frozen=True)
class _Undecodable:
    """What the deserializer hands on when the bytes are not the request message."""

    error: Exception


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, and whatever else a parser raises on junk
            return _Undecodable(exc)

    return decode


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns EscalonError into its status code and message; undecodable requests into INVALID_ARGUMENT; calls
    before the service is ready into UNAVAILABLE; calls over the in-flight bound into RESOURCE_EXHAUSTED
    "overloaded:" (Admission); anything else into INTERNAL, logged once."""

    def __init__(self, name: str = "the service", admission: Admission | None = None) -> None:
        self.name = name
        self.ready = False  # set by running_server once service.start() returned
        self.admission = admission or Admission()
        self._decode_logged: dict[str, float] = {}  # client address -> when its last decode error was logged

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._guard_unary(handler.unary_unary, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(handler.unary_stream, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler  # client- and bidi-streaming: none in Escalon's contracts

    async def _admit(self, request: Any, context: grpc.aio.ServicerContext, method: str) -> float | None:
        """Refuse the call (abort) or let it in; returns when it started when it counts against the bound."""
        if isinstance(request, _Undecodable):
            self._log_decode_error(context.peer(), method, request.error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid {method.rsplit('/', 1)[-1]} message "
                                f"({clip(str(request.error) or type(request.error).__name__, 200)})")
        if method.startswith(_ALWAYS_OPEN):
            return None
        _track_deadline(context)  # in this handler's context: tasks it starts inherit it
        if not self.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{self.name} is starting (loading models, connecting); retry in a few seconds")
        if self.admission.full:
            await self._shed(context, method)
        return self.admission.enter()

    async def _shed(self, context: grpc.aio.ServicerContext, method: str) -> None:
        admission = self.admission
        wait_ms = admission.retry_after_ms()
        metrics().rpc_shed.labels(*split_method(method)).inc()
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{OVERLOADED}{self.name} is handling {admission.in_flight} calls, its limit ({admission.setting}); "
            f"retry in {wait_ms / 1000:.1f}s",
            trailing_metadata=((RETRY_AFTER_KEY, str(wait_ms)),),
        )

    def _log_decode_error(self, peer: str | None, method: str, error: Exception) -> None:
        client = (peer or "unknown").rsplit(":", 1)[0]  # the address without the client's port
        now = time.monotonic()
        if now - self._decode_logged.get(client, -DECODE_LOG_INTERVAL_S) < DECODE_LOG_INTERVAL_S:
            return
        if len(self._decode_logged) > 10_000:  # bounded: forget the clients not seen for a minute
            self._decode_logged = {k: t for k, t in self._decode_logged.items() if now - t < DECODE_LOG_INTERVAL_S}
        self._decode_logged[client] = now
        log.warning("undecodable %s request from %s (%s: %s); further ones from this client are not logged "
                    "for %.0fs", method, client, type(error).__name__, clip(str(error), 200), DECODE_LOG_INTERVAL_S)

    def _guard_unary(self, fn: Callable[..., Awaitable[Any]], method: str):
        async def call(request, context):
            started = None
            try:
                started = await self._admit(request, context, method)
                return await fn(request, context)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status, never swallowed
                await _abort_for(exc, context, method)
            finally:
                if started is not None:
                    self.admission.leave(started)

        return call

    def _guard_stream(self, fn: Callable[..., AsyncIterator[Any]], method: str):
        async def call(request, context):
            started = None
            try:
                started = await self._admit(request, context, method)
                async for item in fn(request, context):
                    yield item
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001
                await _abort_for(exc, context, method)
            finally:
                if started is not None:
                    self.admission.leave(started)

        return call


REASON_KEY = "escalon-reason"


def retry_after_ms(exc: grpc.aio.AioRpcError) -> int | None:
    """The retry hint of a shed call (trailing metadata retry-after-ms), None when it carries none."""
    value = dict(exc.trailing_metadata() or ()).get(RETRY_AFTER_KEY)
    try:
        return max(0, int(value)) if value is not None else None
    except ValueError:
        return None


def overloaded(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a call failed because the service it reached shed it (Admission), not because it is broken."""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and (exc.details() or "").startswith(OVERLOADED)


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    if context.done() or isinstance(exc, _CALL_OVER):
        # The caller's deadline passed or it hung up while the answer was being made: nobody to tell, nothing
        # went wrong here. Ending the handler as cancelled keeps gRPC from logging it as a servicer error.
        log.debug("%s ended before its answer (%s)", method, type(exc).__name__)
        raise asyncio.CancelledError()
    if isinstance(exc, EscalonError):
        trailing = []
        if exc.reason:  # a finer reason the status code cannot carry, for Escalon's own clients
            trailing.append((REASON_KEY, exc.reason))
        if getattr(exc, "retry_after_ms", None) is not None:  # Overloaded: a service further down shed the call
            trailing.append((RETRY_AFTER_KEY, str(exc.retry_after_ms)))
        await context.abort(exc.code, clip(str(exc), MAX_ERROR_CHARS), trailing_metadata=tuple(trailing))
    log.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL,
                        clip(f"internal error in {method}: {type(exc).__name__}: {exc}", MAX_ERROR_CHARS))


def _tracing_server_interceptor() -> grpc.aio.ServerInterceptor:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return aio_server_interceptor()


class _CallOverFilter(logging.Filter):
    """Two tracebacks that follow from a caller leaving, not from a fault here, become one debug line each:
    gRPC's, for a handler that ends after its caller's deadline passed (its final status cannot be sent), and
    OpenTelemetry's, for the span of a stream the caller abandoned between two messages (its generator is
    closed later by the event loop, in another context; the span still ends)."""

    NOISE = ("ExecuteBatchError raised in core by servicer method", "Failed to detach context")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(self.NOISE):
            log.debug("%s (the call had ended: deadline passed or the caller left)", record.getMessage())
            return False
        return True


_CALL_OVER_FILTER = _CallOverFilter()


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
    for noisy in ("grpc._cython.cygrpc", "opentelemetry.context"):
        if _CALL_OVER_FILTER not in logging.getLogger(noisy).filters:
            logging.getLogger(noisy).addFilter(_CALL_OVER_FILTER)
    limit_setting = f"{settings.model_config.get('env_prefix', 'ESCALON_')}MAX_IN_FLIGHT={settings.max_in_flight}"
    errors = ErrorMappingInterceptor(telemetry_name, Admission(settings.max_in_flight, limit_setting))
    server = grpc.aio.server(
        # a service's own interceptors (API keys: escalon.auth) run inside error mapping, which maps what they raise
        interceptors=[GrpcMetricsInterceptor(), _tracing_server_interceptor(), errors,
                      *getattr(service, "interceptors", ())],
        options=_SERVER_OPTIONS,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.register(server)
    reflection.enable_server_reflection(
        (*service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError:  # grpcio >= 1.6x raises where older ones returned 0
        port = 0
    if port == 0:
        telemetry.shutdown()
        raise PortInUse(settings.host, settings.port)
    running = RunningServer(server, port, health_servicer, service)
    metrics_endpoint = serve_metrics(settings.metrics_port, settings.host,
                                     setting=f"{settings.model_config.get('env_prefix', '')}METRICS_PORT")
    running.metrics_port = metrics_endpoint.port if metrics_endpoint else None
    await running.set_serving(False)
    await server.start()
    watcher: asyncio.Task | None = None
    try:
        await service.start()
        errors.ready = True
        await running.set_serving(True)
        log.info("%s serving on %s:%d", telemetry_name, settings.host, port)
        watch = getattr(service, "watch", None)
        if watch is not None:
            watcher = asyncio.create_task(watch(running.set_serving), name=f"{telemetry_name}-watch")
        yield running
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        await running.set_serving(False)
        await server.stop(settings.grace_seconds)
        await service.close()
        if metrics_endpoint is not None:
            metrics_endpoint.close()
        telemetry.shutdown()


class PortInUse(EscalonError):
    """The port is taken (SO_REUSEPORT is off, so a second server cannot share it)."""

    def __init__(self, host: str, port: int) -> None:
        holder = port_holder(port) if port else None
        who = f" by {holder}" if holder else ""
        super().__init__(f"port {port} on {host} is in use{who}; stop that process or choose another port "
                         "(ESCALON_<SERVICE>_PORT or --port)")
        self.port = port


def port_holder(port: int) -> str | None:
    """'pid 1234 (python -m escalon.router)' for the process listening on TCP `port`, when this user may see it."""
    try:
        import psutil
    except ImportError:  # psutil comes with Ray; without it the message just names the port
        return None
    with contextlib.suppress(Exception):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                if conn.pid == os.getpid():
                    return f"this process (pid {conn.pid})"
                with contextlib.suppress(psutil.Error):
                    command = " ".join(psutil.Process(conn.pid).cmdline()[:4])
                    return f"pid {conn.pid} ({clip(command, 120)})"
                return f"pid {conn.pid}"
    return None


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

"""The one place Prometheus metrics are defined, and the `/metrics` endpoint every process serves.

Names follow the OpenTelemetry semantic conventions where one exists, written as Prometheus writes OTel names
(dots to underscores, the unit as a suffix): `rpc.server.call.duration` → `rpc_server_call_duration_seconds`
with `rpc_system`, `rpc_service`, `rpc_method`, `rpc_grpc_status_code`; `http.server.request.duration` →
`http_server_request_duration_seconds` with `http_request_method`, `http_route`, `http_response_status_code`;
`gen_ai.client.token.usage` (`gen_ai_token_type` input | output); `gen_ai.server.time_to_first_token`.
Escalon's own metrics are namespaced `escalon_` and label a rung `escalon_rung`, as the spans do
(escalon.telemetry.ATTR_RUNG).

One registry per process (`metrics()`), built on first use and never at import; each service serves it on
ESCALON_<SERVICE>_METRICS_PORT (unset = no endpoint, 0 = a free port, as tests use). ESCALON_METRICS=off
makes every instrument a no-op (what `python -m escalon.offline.bench.operability` compares against). Processes that run
several services (tests, `escalon up` is not one) share the registry, so any of their endpoints shows all.

What each service adds:
  every gRPC service  rpc_server_call_duration_seconds, escalon_rpc_server_active_calls,
                      escalon_rpc_server_shed_total (calls refused at the in-flight limit) (escalon.grpc)
  gateway             http_server_request_duration_seconds, http_server_active_requests,
                      escalon_http_server_shed_total (requests refused at the in-flight limit)
  router              escalon_route_decision_duration_seconds, escalon_route_duration_seconds, escalon_routes_total,
                      escalon_rung_attempts_total / _accepts_total / _escalations_total / _failures_total /
                      _skips_total, escalon_rung_judge_confidence, escalon_rung_cost_usd_total,
                      gen_ai_client_token_usage, escalon_rung_circuit_state, escalon_route_log_written_total /
                      _dropped_total / _queued, escalon_key_refusals_total (also the distill front)
  serving             escalon_serving_requests_in_flight, escalon_serving_output_tokens_total (rate = tokens/s),
                      gen_ai_server_request_duration_seconds, gen_ai_server_time_to_first_token_seconds,
                      escalon_rung_retries_total (remote rungs' retried calls)
  judge               escalon_judge_verdicts_total, escalon_judge_confidence
  distill front       escalon_jobs (by kind and state, read from the job store), escalon_distill_queue_length,
                      escalon_jobs_submitted_total
  worker              escalon_worker_tasks_received_total
  every process       process_cpu_seconds_total, process_resident_memory_bytes, ...
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from escalon.errors import ConfigError

log = logging.getLogger(__name__)

# Latency buckets (seconds): the OTel semantic conventions' advice for http/rpc durations, plus the long tail
# of a cascade that climbs to a slow rung.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60, 120)
DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
# gen_ai.client.token.usage: the conventions' advised buckets (powers of 4).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

RUNG = "escalon_rung"
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """Every instrument Escalon records, on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # ---- transport: every gRPC service and the gateway
        self.rpc_duration = Histogram(
            "rpc_server_call_duration", "Duration of gRPC calls handled (OTel rpc.server.call.duration)",
            ["rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code"], unit="seconds",
            buckets=DURATION_BUCKETS, registry=r)
        self.rpc_active = Gauge(
            "escalon_rpc_server_active_calls", "gRPC calls being handled now (the autoscaling signal)",
            ["rpc_service", "rpc_method"], registry=r)
        self.rpc_shed = Counter(
            "escalon_rpc_server_shed", "gRPC calls refused at once because the service was at its in-flight limit "
            "(RESOURCE_EXHAUSTED 'overloaded:', escalon.grpc.Admission)", ["rpc_service", "rpc_method"], registry=r)
        self.http_duration = Histogram(
            "http_server_request_duration", "Duration of HTTP requests handled (OTel http.server.request.duration)",
            ["http_request_method", "http_route", "http_response_status_code"], unit="seconds",
            buckets=DURATION_BUCKETS, registry=r)
        self.http_shed = Counter(
            "escalon_http_server_shed", "HTTP requests refused at once (503 overloaded) because the gateway was at its "
            "in-flight limit (escalon.gateway.admission)", ["http_route"], registry=r)
        self.http_active = Gauge(
            "http_server_active_requests", "HTTP requests being handled now (OTel http.server.active_requests)",
            ["http_request_method"], registry=r)
        # ---- router: the plan and the cascade
        self.decision_duration = Histogram(
            "escalon_route_decision_duration", "Time the routing policy took to plan a route",
            ["escalon_route_policy"], unit="seconds", buckets=DECISION_BUCKETS, registry=r)
        self.route_duration = Histogram(
            "escalon_route_duration", "Whole route: plan, every attempt and its judging",
            ["escalon_route_policy"], unit="seconds", buckets=DURATION_BUCKETS, registry=r)
        self.routes = Counter(
            "escalon_routes", "Routes answered, by the rung whose answer was returned",
            [RUNG, "escalon_route_policy"], registry=r)
        self.attempts = Counter("escalon_rung_attempts", "Cascade attempts sent to a rung", [RUNG], registry=r)
        self.accepts = Counter("escalon_rung_accepts", "Attempts whose answer the judges accepted", [RUNG],
                               registry=r)
        self.escalations = Counter("escalon_rung_escalations", "Attempts judged below the threshold: the cascade "
                                   "climbed past the rung", [RUNG], registry=r)
        self.failures = Counter("escalon_rung_failures", "Attempts the rung could not answer",
                                [RUNG, "error_type"], registry=r)
        self.skips = Counter("escalon_rung_skips", "Rungs of a plan not tried (budget, open circuit)",
                             [RUNG, "reason"], registry=r)
        self.confidence = Histogram("escalon_rung_judge_confidence", "Judge panel confidence in a rung's answer",
                                    [RUNG], buckets=CONFIDENCE_BUCKETS, registry=r)
        self.spend = Counter("escalon_rung_cost_usd", "USD spent on a rung's attempts", [RUNG], registry=r)
        self.tokens = Histogram(
            "gen_ai_client_token_usage", "Tokens per attempt (OTel gen_ai.client.token.usage)",
            [RUNG, "gen_ai_token_type"], buckets=TOKEN_BUCKETS, registry=r)
        self.circuit = Gauge("escalon_rung_circuit_state", "Circuit breaker per rung: 0 closed, 1 half-open, 2 open",
                             [RUNG], registry=r)
        # ---- router: the route log and API keys (escalon.db.routelog, escalon.auth, escalon.db.spend)
        self.route_log_written = Counter("escalon_route_log_written", "Route records written to the database",
                                         registry=r)
        self.route_log_dropped = Counter("escalon_route_log_dropped", "Route records dropped: the queue was full "
                                         "while the database was away or slow, or the router stopped first",
                                         registry=r)
        self.route_log_queued = Gauge("escalon_route_log_queued", "Route records waiting for the database",
                                      registry=r)
        self.key_refusals = Counter("escalon_key_refusals", "Calls refused for their API key: unauthenticated, "
                                    "permission_denied, rate_limit, budget", ["reason"], registry=r)
        # ---- serving
        self.serving_in_flight = Gauge("escalon_serving_requests_in_flight",
                                       "Generate calls waiting for or running on a rung", [RUNG], registry=r)
        self.serving_output_tokens = Counter("escalon_serving_output_tokens", "Tokens generated (rate = tokens/s)",
                                             [RUNG], registry=r)
        self.serving_duration = Histogram(
            "gen_ai_server_request_duration", "Generate call duration (OTel gen_ai.server.request.duration)",
            [RUNG, "error_type"], unit="seconds", buckets=DURATION_BUCKETS, registry=r)
        self.serving_ttft = Histogram(
            "gen_ai_server_time_to_first_token", "Time to the first streamed text (OTel gen_ai.server."
            "time_to_first_token)", [RUNG], unit="seconds", buckets=DURATION_BUCKETS, registry=r)
        self.rung_retries = Counter("escalon_rung_retries", "Calls to a remote rung retried after a 429, 5xx or "
                                    "timeout", [RUNG, "error_type"], registry=r)
        # ---- judge
        self.verdicts = Counter("escalon_judge_verdicts", "Judge results, scored or skipped",
                                ["escalon_judge", "outcome"], registry=r)
        self.judge_confidence = Histogram("escalon_judge_confidence", "Panel confidence returned by Score",
                                          buckets=CONFIDENCE_BUCKETS, registry=r)
        # ---- distill
        self.jobs_submitted = Counter("escalon_jobs_submitted", "Jobs stored by SubmitJob (new ids only)",
                                      ["escalon_job_kind"], registry=r)
        self.tasks_received = Counter("escalon_worker_tasks_received", "Job messages a worker took from its queue",
                                      ["queue"], registry=r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

        self._collectors: dict[str, Collector] = {}

    def set_collector(self, key: str, collector: Collector | None) -> None:
        """Install (or, with None, remove) the collector read at scrape time under `key`: job counts from the
        store, queue lengths from the broker. A second service of the same kind in one process replaces it."""
        with _lock:
            previous = self._collectors.pop(key, None)
            if previous is not None:
                self.registry.unregister(previous)
            if collector is not None:
                self.registry.register(collector)
                self._collectors[key] = collector


_lock = threading.Lock()
_metrics: Metrics | None = None


class _Null:
    """An instrument that records nothing: what every instrument is with ESCALON_METRICS=off."""

    def labels(self, *_: object, **__: object) -> _Null:
        return self

    def inc(self, *_: object) -> None: ...
    def dec(self, *_: object) -> None: ...
    def set(self, *_: object) -> None: ...
    def observe(self, *_: object) -> None: ...


class NullMetrics(Metrics):
    """Metrics switched off (ESCALON_METRICS=off): the same attributes, each recording nothing; the endpoint,
    where one is configured, serves an empty registry. For measuring what the metrics cost, or opting out."""

    def __init__(self) -> None:  # noqa: D107 - no instruments on purpose
        self.registry = CollectorRegistry()
        self._collectors = {}

    def __getattr__(self, name: str) -> _Null:
        return _Null()


def metrics() -> Metrics:
    """This process's instruments (built on first use; ESCALON_METRICS=off makes them record nothing)."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                off = os.environ.get("ESCALON_METRICS", "").strip().lower() in ("off", "0", "false", "none")
                _metrics = NullMetrics() if off else Metrics()
    return _metrics


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server; `port` is the bound one (useful when 0 was asked for)."""

    port: int
    _server: Any
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(port: int | None, host: str = "127.0.0.1", *, setting: str = "the metrics port") -> MetricsEndpoint | None:
    """Serve this process's registry on http://host:port/metrics (any path answers); None when port is None.
    A taken port is a ConfigError naming `setting` (the environment variable)."""
    if port is None:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics().registry)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot serve /metrics on {host}:{port} ({exc.strerror or exc}); "
                          "choose another port or leave it unset") from None
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsEndpoint(bound, server, thread)


class CachedGauges(Collector):
    """Gauges computed by `read` (a store query, a broker call) at most every `ttl_s`, so a scrape every few
    seconds from several Prometheus replicas costs one query. `read` returns {labels tuple: value}; when it
    fails, the last values stay and the failure is logged once per failure streak."""

    def __init__(self, name: str, documentation: str, labels: Iterable[str],
                 read: Callable[[], dict[tuple[str, ...], float]], ttl_s: float = 5.0) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.read, self.ttl_s = read, ttl_s
        self._values: dict[tuple[str, ...], float] = {}
        self._at = float("-inf")
        self._failing = False
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            if time.monotonic() - self._at >= self.ttl_s:
                try:
                    self._values = dict(self.read())
                    self._failing = False
                except Exception as exc:  # noqa: BLE001 - a scrape must not fail because a store is away
                    if not self._failing:
                        log.warning("metric %s: could not read (%s: %s); keeping the last values",
                                    self.name, type(exc).__name__, exc)
                    self._failing = True
                self._at = time.monotonic()
            values = dict(self._values)
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in sorted(values.items()):
            family.add_metric(list(labels), value)
        yield family

    def describe(self):
        # Describing without reading keeps registration free of I/O.
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labels)]


# ---- gRPC: one server interceptor (installed by escalon.grpc.running_server) ------------------------------

def split_method(method: str) -> tuple[str, str]:
    """'/escalon.router.v1.RouterService/Route' → ('escalon.router.v1.RouterService', 'Route')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or method


def _status(context: Any, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        return grpc.StatusCode.OK.name if error is None else grpc.StatusCode.UNKNOWN.name
    if isinstance(code, int):  # a bare int when set through abort() on some grpcio versions
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    return code.name


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Duration by method and status (rpc.server.call.duration) and calls in flight, for every RPC the server
    handles, the health checks and reflection included. Outermost, so it sees the status the error-mapping
    interceptor set. A streaming call lasts until its last message."""

    def __init__(self) -> None:
        self._instruments: dict[str, _MethodInstruments] = {}  # per method: its labelled children, built once

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        instruments = self._instruments.get(handler_call_details.method)
        if instruments is None:
            instruments = self._instruments[handler_call_details.method] = _MethodInstruments(
                *split_method(handler_call_details.method))
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _measured_unary(handler.unary_unary, instruments),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _measured_stream(handler.unary_stream, instruments),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler


class _MethodInstruments:
    """One method's in-flight gauge and its duration histogram per status code, labelled once (labels() takes a
    lock and builds a key: a few microseconds a call, on every RPC)."""

    def __init__(self, service: str, name: str) -> None:
        self.service, self.name = service, name
        self.active = metrics().rpc_active.labels(service, name)
        self._durations: dict[str, Any] = {}

    def record(self, context: Any, error: BaseException | None, started: float) -> None:
        code = _status(context, error)
        duration = self._durations.get(code)
        if duration is None:
            duration = self._durations[code] = metrics().rpc_duration.labels("grpc", self.service, self.name, code)
        duration.observe(time.perf_counter() - started)
        self.active.dec()


def _measured_unary(fn: Callable[..., Any], instruments: _MethodInstruments):
    async def call(request, context):
        instruments.active.inc()
        started, error = time.perf_counter(), None
        try:
            return await fn(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            instruments.record(context, error, started)

    return call


def _measured_stream(fn: Callable[..., Any], instruments: _MethodInstruments):
    async def call(request, context):
        instruments.active.inc()
        started, error = time.perf_counter(), None
        try:
            async for item in fn(request, context):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            instruments.record(context, error, started)

    return call

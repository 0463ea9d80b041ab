"""The one place tracing is configured, and the span attribute names Escalon uses (metrics: escalon.metrics).

Honours the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT (export over OTLP/gRPC when set),
OTEL_TRACES_EXPORTER (`otlp`, `console` or `none`), OTEL_TRACES_SAMPLER / _ARG, OTEL_SERVICE_NAME.
Called by each gRPC service at start, by Celery workers in worker_process_init, and by each
Ray Serve deployment in its __init__ (each is its own process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

# Span attributes, namespaced and listed once.
ATTR_RUNG = "escalon.rung"
ATTR_RUNG_BACKEND = "escalon.rung.backend"
ATTR_SAMPLES = "escalon.samples"
ATTR_COST_USD = "escalon.cost_usd"
ATTR_CONFIDENCE = "escalon.judge.confidence"
ATTR_ACCEPTED = "escalon.cascade.accepted"
ATTR_POLICY = "escalon.route.policy"
ATTR_JOB_ID = "escalon.job.id"
ATTR_JOB_KIND = "escalon.job.kind"


@dataclass
class Telemetry:
    provider: TracerProvider

    def shutdown(self) -> None:
        """Flush spans still buffered, then stop exporting. The last step of a graceful stop."""
        self.provider.force_flush(timeout_millis=5000)
        self.provider.shutdown()


_configured: Telemetry | None = None


def configure_telemetry(service_name: str) -> Telemetry:
    """Install a tracer provider for this process (once; later calls return the first)."""
    global _configured
    if _configured is not None:
        return _configured
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter_name != "none" and (exporter_name == "otlp" or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    _configured = Telemetry(provider)
    return _configured


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""

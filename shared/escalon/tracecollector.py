"""A tiny in-process OTLP/gRPC trace receiver for one machine.

`escalon up` starts it and points the services' OTEL_EXPORTER_OTLP_ENDPOINT at it, so a person can see
one Route call as a tree of spans across router, serving and judge without running a collector; the
end-to-end tests use it the same way. In production, point OTEL_EXPORTER_OTLP_ENDPOINT at a real collector.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class CollectedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: TraceCollector) -> None:
        self.sink = sink

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "?")
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    span = CollectedSpan(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                         s.start_time_unix_nano, s.end_time_unix_nano)
                    self.sink.traces[span.trace_id].append(span)
        return trace_service_pb2.ExportTraceServiceResponse()


class TraceCollector:
    def __init__(self) -> None:
        self.traces: dict[str, list[CollectedSpan]] = defaultdict(list)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Receiver(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server:
            await self._server.stop(1)

    async def wait_for(self, trace_id: str, services: set[str], timeout_s: float = 10) -> list[CollectedSpan]:
        """The spans of one trace, once spans from all these services have arrived (or the timeout passed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if services <= {s.service for s in self.traces.get(trace_id, [])}:
                break
            await asyncio.sleep(0.1)
        return list(self.traces.get(trace_id, []))


def render_tree(spans: list[CollectedSpan]) -> str:
    """Indented span tree, parents before children, each with its service and duration."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[CollectedSpan]] = defaultdict(list)
    for s in spans:
        children[s.parent_id if s.parent_id in ids else ""].append(s)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x.start_ns):
            lines.append(f"{'  ' * depth}{s.name}  [{s.service}]  {s.duration_ms:.1f} ms")
            walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)

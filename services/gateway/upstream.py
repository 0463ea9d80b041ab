"""The gateway's gRPC clients: the Router API (every answer), ModelServing (the rung list and its health) and
Distill (jobs), over `escalon.grpc.open_channel` so each call carries the HTTP request's trace context.

Readiness asks the router's own health service (SERVING only once the router has its serving and judge
clients) over a separate plain channel: probes every few seconds should not fill the trace store.
"""

from __future__ import annotations

import contextlib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.gen.distill.v1 import distill_pb2_grpc
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.gen.serving.v1 import serving_pb2_grpc
from escalon.gateway.settings import GatewaySettings
from escalon.grpc import open_channel

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


class Upstreams:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._channels = {
            "router": open_channel(settings.router_address),
            "serving": open_channel(settings.serving_address),
            "distill": open_channel(settings.distill_address),
            # Short reconnect backoff: readiness should follow a router that comes back within seconds.
            "health": grpc.aio.insecure_channel(settings.router_address, options=[
                ("grpc.initial_reconnect_backoff_ms", 500), ("grpc.max_reconnect_backoff_ms", 5000)]),
        }
        self.router = router_pb2_grpc.RouterServiceStub(self._channels["router"])
        self.serving = serving_pb2_grpc.ModelServingServiceStub(self._channels["serving"])
        self.distill = distill_pb2_grpc.DistillServiceStub(self._channels["distill"])
        self._health = health_pb2_grpc.HealthStub(self._channels["health"])

    async def router_ready(self) -> tuple[bool, str]:
        """Whether the router says SERVING, and what it said."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=ROUTER_SERVICE),
                                             timeout=min(self.settings.upstream_timeout_s, 2.0))
        except grpc.aio.AioRpcError as exc:
            return False, f"router at {self.settings.router_address}: {exc.code().name}: {exc.details()}"
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        ready = reply.status == health_pb2.HealthCheckResponse.SERVING
        return ready, f"router at {self.settings.router_address}: {status}"

    async def close(self) -> None:
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close()

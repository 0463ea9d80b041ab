"""One rung's engine as a Ray Serve deployment, and the same class called directly by the in-process runtime.

`RungReplica` holds no Ray code: Serve wraps it (`serve.deployment(RungReplica)`) only in `bind_rung`,
so the in-process runtime and the unit tests use exactly what runs in a replica, without importing Ray.
Requests carry the caller's W3C trace context in a plain dict (`carrier`), so a Route trace continues
into the replica's process.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace

from escalon.backends import GenerateParams, GenerateResult, make_backend
from escalon.registry import Rung
from escalon.telemetry import ATTR_RUNG, ATTR_RUNG_BACKEND, ATTR_SAMPLES, configure_telemetry, tracer

if TYPE_CHECKING:
    from ray.serve import Application

_tracer = tracer("escalon.serving.replica")


class RungReplica:
    """Loads one rung's backend in its constructor (Serve waits for it before routing to the replica)."""

    def __init__(self, rung: Rung, models_dir: Path, torch_threads: int | None = None) -> None:
        configure_telemetry(f"escalon-serving-{rung.name}")  # a no-op when the process already has it
        self.rung = rung
        self.backend = make_backend(rung, models_dir=Path(models_dir), torch_threads=torch_threads)
        self.backend.load()

    async def generate(self, params: GenerateParams, carrier: dict[str, str] | None = None) -> GenerateResult:
        with _tracer.start_as_current_span(
            "escalon.serving.replica/Generate",
            context=propagate.extract(carrier or {}),
            kind=trace.SpanKind.SERVER,
            attributes=self._attributes(params),
        ):
            return await self.backend.generate(params)

    async def stream(
        self, params: GenerateParams, carrier: dict[str, str] | None = None
    ) -> AsyncIterator[str | GenerateResult]:
        # Not a current span: an async generator may be resumed (and closed) in another context.
        span = _tracer.start_span(
            "escalon.serving.replica/GenerateStream",
            context=propagate.extract(carrier or {}),
            kind=trace.SpanKind.SERVER,
            attributes=self._attributes(params),
        )
        try:
            async for item in self.backend.stream(params):
                yield item
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, str(exc))
            raise
        finally:
            span.end()

    async def health(self) -> str:
        """A status line for ListModels; raises when the engine is dead."""
        return await self.backend.health()

    async def check_health(self) -> None:
        """Called by Serve every few seconds: raising makes Serve replace this replica."""
        await self.backend.health()

    async def close(self) -> None:
        await self.backend.close()

    def _attributes(self, params: GenerateParams) -> dict[str, object]:
        return {ATTR_RUNG: self.rung.name, ATTR_RUNG_BACKEND: self.rung.backend, ATTR_SAMPLES: params.n}


def deployment_options(rung: Rung) -> dict[str, object]:
    """A tier's Serve options, from its catalogue entry: autoscaling on ongoing requests, CPU/GPU per replica."""
    auto = rung.autoscaling
    return {
        "name": rung.name,
        "autoscaling_config": {
            "min_replicas": auto.min_replicas,
            "initial_replicas": max(auto.min_replicas, 1),  # start warm even where the tier may scale to zero
            "max_replicas": auto.max_replicas,
            "target_ongoing_requests": auto.target_ongoing_requests,
        },
        # Serve's default cap (5) would queue requests in front of a tier that targets more than that.
        "max_ongoing_requests": max(5, math.ceil(2 * auto.target_ongoing_requests)),
        "ray_actor_options": {"num_cpus": rung.resources.num_cpus, "num_gpus": rung.resources.num_gpus},
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        # A replica being scaled down or replaced finishes the answers it is producing (up to the rung's timeout).
        "graceful_shutdown_timeout_s": max(5.0, min(rung.timeout_s, 60.0)),
    }


def bind_rung(rung: Rung, models_dir: Path, torch_threads: int | None = None) -> Application:
    """The Serve application for one rung (its only deployment is its ingress)."""
    from ray import serve

    return serve.deployment(RungReplica).options(**deployment_options(rung)).bind(rung, Path(models_dir), torch_threads)

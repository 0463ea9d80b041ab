"""How the gRPC front reaches the rungs: through Ray Serve deployment handles, or in-process.

`make_tiers` picks, per rung, in one place (`through_ray`): under the ray runtime, a rung whose engine computes
here (local-gguf, hf: a model in memory) is a Ray Serve deployment with replicas and autoscaling; a rung that
does no local compute (replay, a remote OpenAI-compatible endpoint, whose backend holds one pooled keep-alive
HTTP client) is called from the front directly, since a Ray hop would add latency and CPU and no capacity
(ESCALON_SERVING_DIRECT_RUNGS=false puts those behind Serve as well). The inprocess runtime calls every rung
directly.

Every runtime takes the same (params, carrier) and returns the same GenerateResult, so the servicer does
not know which one it talks to. A call cancelled by its caller (or past its timeout) is cancelled in the
engine too: in-process by cancelling its task, through Ray by cancelling the Serve request, whose replica
then cancels its task (a local engine stops decoding at its next token). Each call gets a client span and the W3C trace context is injected into
the carrier, which the replica extracts (deployment.RungReplica): one trace spans both processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

from opentelemetry import propagate, trace

from escalon.backends import GenerateParams, GenerateResult
from escalon.errors import ConfigError, EscalonError, RungUnavailable
from escalon.registry import Rung
from escalon.telemetry import ATTR_RUNG, tracer

from .deployment import RungReplica
from .settings import ServingSettings

log = logging.getLogger(__name__)
_tracer = tracer("escalon.serving.tiers")


class Tiers(Protocol):
    async def start(self) -> None: ...

    async def generate(self, rung: str, params: GenerateParams, timeout: float) -> GenerateResult: ...

    def stream(self, rung: str, params: GenerateParams, timeout: float) -> AsyncIterator[str | GenerateResult]: ...

    async def health(self, rung: str) -> tuple[bool, str]: ...

    async def add(self, rung: Rung) -> None:
        """Start serving one more rung without a restart (a promoted student); returns once it can answer."""
        ...

    async def close(self) -> None: ...


@contextlib.contextmanager
def _client_span(name: str, rung: str):
    """A span around one call to a rung, and the carrier that takes its context to the replica."""
    with _tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes={ATTR_RUNG: rung}):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


#: engines that compute in their own process (a model in memory): these get Ray Serve replicas
REPLICATED_BACKENDS = frozenset({"local-gguf", "hf"})


def through_ray(rung: Rung, settings: ServingSettings) -> bool:
    """Whether the front reaches `rung` through a Ray Serve deployment (else it calls the backend directly)."""
    if settings.runtime == "inprocess":
        return False
    return rung.backend in REPLICATED_BACKENDS or not settings.direct_rungs


def make_tiers(rungs: list[Rung], settings: ServingSettings) -> Tiers:
    """The tiers for the configured runtime: in-process only, or Ray Serve for the rungs `through_ray` picks."""
    if settings.runtime == "inprocess":
        return InProcessTiers(rungs, settings)
    return SplitTiers(rungs, settings)


class InProcessTiers:
    """The rungs' backends in this process: no Ray, no hop. For tests of other services and benchmarks."""

    def __init__(self, rungs: list[Rung], settings: ServingSettings) -> None:
        self.rungs = rungs
        self.settings = settings
        self.replicas: dict[str, RungReplica] = {}

    async def start(self) -> None:
        async def load(rung: Rung) -> None:
            self.replicas[rung.name] = await asyncio.to_thread(
                RungReplica, rung, self.settings.models_dir, self.settings.torch_threads
            )

        await asyncio.gather(*(load(rung) for rung in self.rungs))

    async def add(self, rung: Rung) -> None:
        replica = await asyncio.to_thread(RungReplica, rung, self.settings.models_dir, self.settings.torch_threads)
        self.replicas[rung.name] = replica
        self.rungs = [*self.rungs, rung]

    async def generate(self, rung: str, params: GenerateParams, timeout: float) -> GenerateResult:
        with _client_span("escalon.serving.inprocess/Generate", rung) as carrier:
            try:
                return await asyncio.wait_for(self.replicas[rung].generate(params, carrier), timeout)
            except TimeoutError:
                raise RungUnavailable(f"rung {rung} did not answer within {timeout:g}s") from None

    async def stream(self, rung: str, params: GenerateParams, timeout: float) -> AsyncIterator[str | GenerateResult]:
        with _client_span("escalon.serving.inprocess/GenerateStream", rung) as carrier:
            try:
                async with asyncio.timeout(timeout):
                    async for item in self.replicas[rung].stream(params, carrier):
                        yield item
            except TimeoutError:
                raise RungUnavailable(f"rung {rung} did not finish within {timeout:g}s") from None

    async def health(self, rung: str) -> tuple[bool, str]:
        replica = self.replicas.get(rung)
        if replica is None:
            return False, "not loaded"
        try:
            return True, await asyncio.wait_for(replica.health(), self.settings.health_timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported, not raised: ListModels lists every rung
            return False, _describe(exc)

    async def close(self) -> None:
        for replica in self.replicas.values():
            await replica.close()
        self.replicas.clear()


class SplitTiers:
    """The ray runtime: rungs that compute locally through Ray Serve (RayTiers), the others called directly
    (InProcessTiers). Ray is started only when some rung needs it, so a front of replay and remote rungs has no
    Ray at all."""

    def __init__(self, rungs: list[Rung], settings: ServingSettings) -> None:
        self.settings = settings
        self.ray = RayTiers([r for r in rungs if through_ray(r, settings)], settings)
        self.direct = InProcessTiers([r for r in rungs if not through_ray(r, settings)], settings)
        self._where: dict[str, Tiers] = {r.name: self.ray if through_ray(r, settings) else self.direct for r in rungs}

    async def start(self) -> None:
        await asyncio.gather(self.direct.start(), self.ray.start())

    async def add(self, rung: Rung) -> None:
        tiers = self.ray if through_ray(rung, self.settings) else self.direct
        await tiers.add(rung)
        self._where[rung.name] = tiers

    async def generate(self, rung: str, params: GenerateParams, timeout: float) -> GenerateResult:
        return await self._where[rung].generate(rung, params, timeout)

    def stream(self, rung: str, params: GenerateParams, timeout: float) -> AsyncIterator[str | GenerateResult]:
        return self._where[rung].stream(rung, params, timeout)

    async def health(self, rung: str) -> tuple[bool, str]:
        tiers = self._where.get(rung)
        return (False, "not served") if tiers is None else await tiers.health(rung)

    async def close(self) -> None:
        await self.direct.close()
        await self.ray.close()


class RayTiers:
    """Each rung a Ray Serve application named after it; the front holds one DeploymentHandle per rung.

    start: ray.init (a local Ray, or ray_address) → with deploy, serve.run_many(one app per rung) and wait
    until every app is RUNNING (health says SERVING only after this) → a handle per rung.
    close: Serve and Ray are shut down only if this process started them; apps on a shared cluster stay.
    """

    def __init__(self, rungs: list[Rung], settings: ServingSettings) -> None:
        self.rungs = rungs
        self.settings = settings
        self.handles: dict[str, Any] = {}
        self._started_ray = False
        self._idle = False  # start() found no rung to serve and connected nothing; add() connects first

    async def start(self) -> None:
        if not self.rungs:
            self._idle = True
            return
        await asyncio.to_thread(self._start_blocking)

    def _start_blocking(self) -> None:
        ray, serve = _import_ray()

        if not ray.is_initialized():
            if self.settings.ray_address:
                ray.init(address=self.settings.ray_address, namespace="escalon")
            else:
                session_dir = self.settings.ray_session_dir
                session_dir.mkdir(parents=True, exist_ok=True)
                ray.init(
                    num_cpus=self.settings.ray_num_cpus,
                    _temp_dir=str(session_dir.resolve()),
                    include_dashboard=False,  # ~1 s and ~100 MB we do not need; the Serve API gives status
                    # a private Ray: its node advertises loopback and its dashboard agent binds there. (Ray's core
                    # gRPC servers still listen on every interface; Ray's token auth guards them, and in the
                    # chart the pod's NetworkPolicy. docs/operations.md)
                    _node_ip_address="127.0.0.1",
                    namespace="escalon",
                )
                self._started_ray = True
        if self.settings.deploy:
            from .deployment import bind_rung

            # Handles only, no HTTP/gRPC proxies: the front is the one entry point.
            serve.start(proxy_location="Disabled")
            targets = [
                serve.RunTarget(
                    target=bind_rung(rung, self.settings.models_dir, self.settings.torch_threads),
                    name=rung.name,
                    route_prefix=None,
                )
                for rung in self.rungs
            ]
            try:
                serve.run_many(targets, wait_for_applications_running=True)
            except Exception as exc:  # noqa: BLE001 - a replica failed to start: say which rung and why, once
                raise ConfigError(f"deploying the rungs failed: {_deploy_failures(serve) or exc}") from None
        missing = []
        for rung in self.rungs:
            try:
                self.handles[rung.name] = serve.get_app_handle(rung.name)
            except Exception:  # noqa: BLE001 - collected and reported together below
                missing.append(rung.name)
        if missing:
            raise RungUnavailable(
                f"no Serve application named {', '.join(missing)} on the Ray cluster "
                f"{self.settings.ray_address or '(local)'}; deploy them (RayService) or set ESCALON_SERVING_DEPLOY=true"
            )

    async def add(self, rung: Rung) -> None:
        if self._idle:  # the first rung that needs Ray: start it (and Serve) now
            self.rungs = [rung]
            await asyncio.to_thread(self._start_blocking)
            self._idle = False
            return
        await asyncio.to_thread(self._add_blocking, rung)
        self.rungs = [*self.rungs, rung]

    def _add_blocking(self, rung: Rung) -> None:
        """Deploy one more Serve application next to the running ones (or attach to it when not deploying)."""
        _, serve = _import_ray()
        if self.settings.deploy:
            from .deployment import bind_rung

            try:
                serve.run(bind_rung(rung, self.settings.models_dir, self.settings.torch_threads), name=rung.name,
                          route_prefix=None)
            except Exception as exc:  # noqa: BLE001 - the replica failed to start: say which rung and why
                raise RungUnavailable(f"deploying rung {rung.name} failed: {_deploy_failures(serve) or exc}") from None
        try:
            self.handles[rung.name] = serve.get_app_handle(rung.name)
        except Exception:  # noqa: BLE001
            raise RungUnavailable(f"no Serve application named {rung.name} on the Ray cluster; deploy it "
                                  "(RayService) or set ESCALON_SERVING_DEPLOY=true") from None

    async def generate(self, rung: str, params: GenerateParams, timeout: float) -> GenerateResult:
        with _client_span("escalon.serving.ray/Generate", rung) as carrier:
            response = self.handles[rung].generate.remote(params, carrier)
            try:
                return await asyncio.wait_for(_awaited(response), timeout)
            except asyncio.CancelledError:  # the caller went away
                response.cancel()  # the replica cancels its task: a local engine stops at its next token
                raise
            except TimeoutError:
                response.cancel()
                raise RungUnavailable(f"rung {rung} did not answer within {timeout:g}s") from None
            except Exception as exc:
                raise _unwrap(exc, rung) from None

    async def stream(self, rung: str, params: GenerateParams, timeout: float) -> AsyncIterator[str | GenerateResult]:
        with _client_span("escalon.serving.ray/GenerateStream", rung) as carrier:
            try:
                async with asyncio.timeout(timeout):
                    items = self.handles[rung].options(stream=True).stream.remote(params, carrier)
                    try:
                        async for item in items:
                            yield item
                    except BaseException:  # timeout, a caller gone (CancelledError, GeneratorExit), a failure
                        items.cancel()
                        raise
            except TimeoutError:
                raise RungUnavailable(f"rung {rung} did not finish within {timeout:g}s") from None
            except Exception as exc:
                raise _unwrap(exc, rung) from None

    async def health(self, rung: str) -> tuple[bool, str]:
        handle = self.handles.get(rung)
        if handle is None:
            return False, "no Serve application"
        try:
            return True, await asyncio.wait_for(handle.health.remote(), self.settings.health_timeout_s)
        except TimeoutError:
            return False, f"no answer to a health check within {self.settings.health_timeout_s:g}s"
        except Exception as exc:  # noqa: BLE001 - reported, not raised: ListModels lists every rung
            return False, _describe(_unwrap(exc, rung))

    async def close(self) -> None:
        self.handles.clear()
        if self._started_ray:
            await asyncio.to_thread(self._shutdown_blocking)

    def _shutdown_blocking(self) -> None:
        import ray
        from ray import serve

        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        self._started_ray = False


async def _awaited(response: Any) -> Any:
    """A Serve DeploymentResponse as a coroutine (what asyncio.wait_for takes)."""
    return await response


def _unwrap(exc: BaseException, rung: str) -> Exception:
    """Ray wraps a replica's exception (RayTaskError(InvalidInput) with .cause); give back the domain error,
    and turn Ray's own failures (dead actor, unavailable deployment, back-pressure) into RungUnavailable."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, EscalonError):
        return cause
    if isinstance(exc, EscalonError):
        return exc
    if cause is not None and type(exc).__module__.startswith("ray.exceptions") and "RayTaskError" in type(exc).__name__:
        return RuntimeError(f"rung {rung} failed: {type(cause).__name__}: {cause}")
    return RungUnavailable(f"rung {rung} is unavailable: {type(exc).__name__}: {_first_line(exc)}")


def _deploy_failures(serve) -> str:
    """Why each failed application failed: the last line of its replica's error (Serve keeps the traceback)."""
    reasons = []
    with contextlib.suppress(Exception):
        for name, app in serve.status().applications.items():
            for deployment in app.deployments.values():
                if deployment.status == "DEPLOY_FAILED":
                    lines = [line for line in deployment.message.strip().splitlines() if line.strip()]
                    reasons.append(f"{name}: {lines[-1] if lines else deployment.status}")
    return "; ".join(reasons)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_ray():
    """Import Ray without its C++ crash handler in this process: it dumps a stack trace on every SIGTERM,
    which makes each graceful stop look like a crash in the logs (our own handler does the stop). The
    variable is read at import and restored before ray.init, so Ray's own processes keep their handler."""
    import sys

    if "ray" not in sys.modules:
        previous = os.environ.get("RAY_DISABLE_FAILURE_SIGNAL_HANDLER")
        os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
        try:
            import ray  # noqa: F401
        finally:
            if previous is None:
                del os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"]
            else:
                os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = previous
    import ray
    from ray import serve

    return ray, serve

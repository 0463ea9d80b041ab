"""RouterService: the public API. Validates the request, asks the policy for a plan, runs the cascade."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from escalon.answer_format import expected_answer_type
from escalon.auth import current_key
from escalon.db.settings import DatabaseSettings
from escalon.errors import InvalidInput, ServiceStarting, shown
from escalon.gen.common.v1 import common_pb2
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.grpc import open_channel
from escalon.metrics import metrics
from escalon.tokens import TokenCounters
from escalon.registry import Catalogue, LiveCatalogue
from escalon.router.cascade import Attempt, Cascade, CascadeResult, SamplingConfig
from escalon.router.clients import JudgeClient, ServingClient, wait_until_serving
from escalon.router.policy import CheapestFirstPolicy, RoutePlan, RouteQuery, RoutingPolicy
from escalon.router.settings import RouterSettings
from escalon.router.tenancy import Admission, Tenancy
from escalon.telemetry import ATTR_COST_USD, ATTR_POLICY, ATTR_RUNG, current_trace_id, tracer

log = logging.getLogger(__name__)

_EVENT_KINDS = {
    "started": router_pb2.ROUTE_EVENT_KIND_ATTEMPT_STARTED,
    "judged": router_pb2.ROUTE_EVENT_KIND_ATTEMPT_JUDGED,
    "escalated": router_pb2.ROUTE_EVENT_KIND_ESCALATED,
}


class Router:
    """Request validation and the route itself, independent of how the cascade reaches its rungs."""

    def __init__(self, settings: RouterSettings, catalogue: Catalogue, cascade: Cascade,
                 policy: RoutingPolicy | None = None) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.cascade = cascade
        self.policy = policy or CheapestFirstPolicy()
        for name in settings.rungs:
            catalogue.get(name, field="ESCALON_ROUTER_RUNGS")
        self.rungs = list(settings.rungs) or catalogue.names
        self.live: LiveCatalogue | None = None  # set by RouterService: rungs promoted by distillation join

    def refresh_catalogue(self) -> None:
        """Take in rungs promoted since the last request (one stat() when nothing changed). A router configured
        with an explicit rung list (ESCALON_ROUTER_RUNGS) keeps it; one routing every rung routes them too."""
        if self.live is None:
            return
        catalogue = self.live.current()
        if catalogue is self.catalogue:
            return
        self.catalogue = self.cascade.catalogue = catalogue
        if not self.settings.rungs:
            self.rungs = catalogue.names

    def query_from(self, request: router_pb2.RouteRequest) -> RouteQuery:
        prompt = request.prompt
        if not prompt.strip():
            raise InvalidInput("the prompt is empty; send the question to answer", field="prompt")
        if len(prompt) > self.settings.max_prompt_chars:
            raise InvalidInput(
                f"the prompt has {len(prompt)} characters, over the limit of {self.settings.max_prompt_chars}; "
                "shorten it (or raise ESCALON_ROUTER_MAX_PROMPT_CHARS)", field="prompt")
        if request.HasField("max_cost_usd") and not (math.isfinite(request.max_cost_usd) and request.max_cost_usd >= 0):
            # NaN compares false with everything: unchecked, it would switch the budget off
            raise InvalidInput(f"a budget is a finite amount in USD, 0 or more (got {request.max_cost_usd})",
                               field="max_cost_usd")
        if request.HasField("min_quality") and not 0 <= request.min_quality <= 1:  # false for NaN too
            raise InvalidInput(f"min_quality is a confidence in [0, 1] (got {request.min_quality})",
                               field="min_quality")
        if request.max_tokens < 0:
            raise InvalidInput(f"max_tokens cannot be negative (got {request.max_tokens})", field="max_tokens")
        if request.answer_type not in common_pb2.AnswerType.values():
            raise InvalidInput(f"unknown answer type {request.answer_type}", field="answer_type")
        if request.pin_rung:
            self.catalogue.get(request.pin_rung, field="pin_rung")
            if request.pin_rung not in self.rungs:
                raise InvalidInput(f"rung {shown(request.pin_rung)} is not routed by this router; routed rungs: "
                                   f"{', '.join(self.rungs)}", field="pin_rung")
        return RouteQuery(
            prompt=prompt,
            threshold=self._threshold(request),
            # resolved once: the rungs are asked for (escalon.answer_format) and the judges parse the same kind
            answer_type=expected_answer_type(prompt, request.answer_type),
            max_cost_usd=request.max_cost_usd if request.HasField("max_cost_usd") else None,
            pin_rung=request.pin_rung or None,
            max_tokens=request.max_tokens,
        )

    def _threshold(self, request: router_pb2.RouteRequest) -> float:
        if request.HasField("min_quality"):
            return request.min_quality
        point = request.operating_point or self.settings.default_operating_point
        if point not in self.settings.operating_points:
            raise InvalidInput(f"unknown operating point {shown(point)}; known: "
                               f"{', '.join(self.settings.operating_points)}", field="operating_point")
        return self.settings.operating_points[point]

    async def route(self, request: router_pb2.RouteRequest, on_event=None, on_text=None, *,
                    admission: Admission | None = None) -> router_pb2.RouteResponse:
        """`admission` (a key's allow-lists and budget, escalon.router.tenancy) narrows the rungs and caps the
        query before the plan, and is told the plan."""
        self.refresh_catalogue()
        query = self.query_from(request)
        rungs = self.rungs
        if admission is not None:
            rungs = admission.rungs(self.rungs)
            asked = query
            query = await admission.admit(asked, rungs,
                                          lambda name: self.cascade.cost_bound(self.catalogue.get(name), asked))
        request_id = request.request_id or uuid.uuid4().hex
        started = time.perf_counter()
        with tracer(__name__).start_as_current_span("escalon.route") as span:
            decided = time.perf_counter()
            plan = self.policy.plan(query, self.catalogue, rungs)
            metrics().decision_duration.labels(plan.policy).observe(time.perf_counter() - decided)
            skipped: dict[str, str] = {}
            if getattr(plan, "stepper", None) is None:  # open circuits: route around them, saying so
                plan, skipped = self.cascade.breakers.route_around(plan, self.catalogue, rungs)
            if admission is not None:
                admission.planned(plan)
            span.set_attribute(ATTR_POLICY, plan.policy)
            if on_event:
                await on_event(router_pb2.RouteEvent(kind=router_pb2.ROUTE_EVENT_KIND_DECIDED,
                                                     message=f"{plan.policy}: {', '.join(plan.rungs)}"))

            async def event(kind: str, attempt: Attempt | None, message: str) -> None:
                if on_event:
                    await on_event(router_pb2.RouteEvent(kind=_EVENT_KINDS[kind], rung=attempt.rung if attempt else "",
                                                         message=message, attempt=_attempt_pb(attempt)))

            result = await self.cascade.run(query, plan, event, on_text, skipped=skipped)
            span.set_attribute(ATTR_RUNG, result.rung)
            span.set_attribute(ATTR_COST_USD, result.total_cost_usd)
            metrics().routes.labels(result.rung, plan.policy).inc()
            metrics().route_duration.labels(plan.policy).observe(time.perf_counter() - started)
            return _response_pb(result, plan, request_id, (time.perf_counter() - started) * 1000, current_trace_id())


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, router_ref: RouterService) -> None:
        self._service = router_ref

    @property
    def _router(self) -> Router:
        router = self._service.router
        if router is None:  # the bootstrap refuses calls before start() returned; this is the second lock
            raise ServiceStarting("the router is starting (waiting for serving and the judge); retry shortly")
        return router

    async def Route(self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext) -> router_pb2.RouteResponse:
        return await self._service.route(self._router, request)

    async def RouteStream(self, request: router_pb2.RouteStreamRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[router_pb2.RouteStreamResponse]:
        queue: asyncio.Queue[router_pb2.RouteStreamResponse | None] = asyncio.Queue()

        async def on_event(event: router_pb2.RouteEvent) -> None:
            await queue.put(router_pb2.RouteStreamResponse(event=event))

        async def on_text(rung: str, text: str) -> None:
            await queue.put(router_pb2.RouteStreamResponse(token=router_pb2.TokenChunk(rung=rung, text=text)))

        async def produce() -> router_pb2.RouteResponse:
            try:
                return await self._service.route(self._router, request.request, on_event, on_text)
            finally:
                await queue.put(None)

        task = asyncio.create_task(produce())
        try:
            while (item := await queue.get()) is not None:
                yield item
            yield router_pb2.RouteStreamResponse(result=await task)
        finally:
            task.cancel()


class RouterService:
    """What the shared bootstrap runs: opens the serving and judge channels, waits for them, then serves."""

    service_names = (router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name,)

    def __init__(self, settings: RouterSettings, catalogue: Catalogue, policy: RoutingPolicy | None = None,
                 database: DatabaseSettings | None = None) -> None:
        """`database`: the route log, API keys and budgets (escalon.db); None (tests, benches) = none of them."""
        self.settings = settings
        self.catalogue = catalogue
        self.policy = policy
        self.router: Router | None = None
        self._channels: list[grpc.aio.Channel] = []
        self.tenancy = Tenancy(database, settings, service="router") if database is not None else None
        self.interceptors = self.tenancy.interceptors if self.tenancy else ()

    async def route(self, router: Router, request: router_pb2.RouteRequest, on_event=None,
                    on_text=None) -> router_pb2.RouteResponse:
        if self.tenancy is None:
            return await router.route(request, on_event, on_text)
        return await self.tenancy.accounting.route(router, request, current_key(), on_event, on_text)

    def register(self, server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(self), server)

    async def start(self) -> None:
        if self.tenancy is not None:
            await self.tenancy.start()  # a production router without keys stops here (escalon.auth)
        if self.policy is None and self.settings.artefact is not None:
            # a missing or broken artefact stops the start here, naming ESCALON_ROUTER_ARTEFACT
            from escalon.router.artefact import LiveArtefact
            from escalon.router.routing import ArtefactPolicy

            self.policy = ArtefactPolicy(LiveArtefact(self.settings.artefact))
            log.info("routing with artefact %s (version %s)", self.settings.artefact, self.policy.current().version)
        serving = open_channel(self.settings.serving_address)
        judge = open_channel(self.settings.judge_address)
        self._channels = [serving, judge]
        await wait_until_serving(serving, f"serving at {self.settings.serving_address}", self.settings.dependency_wait_s)
        await wait_until_serving(judge, f"judge at {self.settings.judge_address}", self.settings.dependency_wait_s)
        sampling = SamplingConfig(self.settings.local_samples, self.settings.remote_samples, self.settings.temperature)
        # Local rungs' tokenizers where the serving side converted them under the shared data dir.
        tokens = TokenCounters(self.settings.data_dir / "models")
        cascade = Cascade(self.catalogue, ServingClient(serving), JudgeClient(judge), sampling, tokens=tokens)
        self.router = Router(self.settings, self.catalogue, cascade, self.policy)
        self.router.live = LiveCatalogue(self.catalogue, self.settings.promoted_overlay)

    async def watch(self, set_serving) -> None:
        """Health that tells the truth: NOT_SERVING while serving or the judge does not answer SERVING (so the
        gateway's /healthz is 503 and Kubernetes takes the pod out of rotation), SERVING once both are back."""
        names = (f"serving at {self.settings.serving_address}", f"judge at {self.settings.judge_address}")
        stubs = [health_pb2_grpc.HealthStub(c) for c in self._channels]
        healthy = True
        while True:
            await asyncio.sleep(self.settings.dependency_check_s)
            problems = []
            for name, stub in zip(names, stubs, strict=True):
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=self.settings.dependency_check_s)
                    if reply.status != health_pb2.HealthCheckResponse.SERVING:
                        problems.append(f"{name}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
                except grpc.aio.AioRpcError as exc:
                    problems.append(f"{name}: {exc.code().name}")
            if problems and healthy:
                log.warning("NOT_SERVING: %s", "; ".join(problems))
            elif not problems and not healthy:
                log.info("SERVING again: serving and the judge answer")
                self._close_circuits()
            if bool(problems) == healthy:
                healthy = not problems
                await set_serving(healthy)

    def _close_circuits(self) -> None:
        """Circuits that opened while serving or the judge was away blamed the rungs for an outage of the hop:
        with both back, every rung may be tried again (a rung that still fails opens its circuit again)."""
        breakers = getattr(self.router.cascade, "breakers", None) if self.router else None
        if breakers is not None:
            for rung in self.router.catalogue.rungs:
                breakers.success(rung)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        if self.tenancy is not None:
            await self.tenancy.close()  # writes the route log's queue, then the spend


def _attempt_pb(a: Attempt | None) -> router_pb2.RungAttempt | None:
    if a is None:
        return None
    return router_pb2.RungAttempt(
        rung=a.rung, family=a.family, answer=a.answer, parsed_answer=a.parsed_answer, cost_usd=a.cost_usd,
        latency_ms=a.latency_ms, confidence=a.confidence, accepted=a.accepted, samples=a.samples, note=a.note,
        judge_scores=[common_pb2.JudgeScore(judge=s.judge, score=s.score, skipped=s.skipped, reason=s.reason)
                      for s in a.scores],
        usage=common_pb2.Usage(input_tokens=a.input_tokens, output_tokens=a.output_tokens, cost_usd=a.cost_usd),
    )


def _response_pb(result: CascadeResult, plan: RoutePlan, request_id: str, latency_ms: float,
                 trace_id: str) -> router_pb2.RouteResponse:
    return router_pb2.RouteResponse(
        answer=result.answer, rung=result.rung, attempts=[_attempt_pb(a) for a in result.attempts],
        total_cost_usd=result.total_cost_usd, total_latency_ms=latency_ms, confidence=result.confidence,
        labels=[router_pb2.TaxonomyLabel(dimension=l.dimension, label=l.label, probability=l.probability)
                for l in plan.labels],
        policy=plan.policy, reason=f"{plan.reason}. {result.reason}", request_id=request_id, trace_id=trace_id,
    )

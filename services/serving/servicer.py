"""ModelServingService: validates requests, calls a rung through the tiers, prices and reports the answer.

Validation lives here, in front of Ray, so a bad request costs a microsecond and never a Ray hop; each
message names the field. Exact token limits of local rungs are checked again by their tokenizer in the
replica. Errors are raised as escalon.errors types; the bootstrap's interceptor maps them to status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator

import grpc
from opentelemetry import trace

from escalon.backends import GenerateParams, GenerateResult
from escalon.errors import ConfigError, InvalidInput
from escalon.gen.common.v1 import common_pb2
from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc
from escalon.metrics import metrics
from escalon.registry import Catalogue, LiveCatalogue, Rung
from escalon.telemetry import ATTR_COST_USD, ATTR_RUNG, ATTR_RUNG_BACKEND, ATTR_SAMPLES
from escalon.tokens import TokenCounters

from .settings import ServingSettings
from .tiers import Tiers, make_tiers

log = logging.getLogger(__name__)

MAX_SAMPLES = 32
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16


class ServingService(serving_pb2_grpc.ModelServingServiceServicer):
    """The servicer and the Service the shared bootstrap (escalon.grpc) runs."""

    service_names = (serving_pb2.DESCRIPTOR.services_by_name["ModelServingService"].full_name,)

    def __init__(self, settings: ServingSettings, catalogue: Catalogue, tiers: Tiers | None = None) -> None:
        unknown = [name for name in settings.rungs if name not in catalogue.by_name]
        if unknown:
            raise ConfigError(
                f"ESCALON_SERVING_RUNGS names rungs not in the catalogue: {', '.join(unknown)}; "
                f"known rungs: {', '.join(catalogue.names)}"
            )
        self.settings = settings
        self.catalogue = catalogue
        self.rungs = [catalogue.get(name) for name in settings.rungs] if settings.rungs else list(catalogue.rungs)
        self._served = {rung.name for rung in self.rungs}
        self.tiers: Tiers = tiers or make_tiers(self.rungs, settings)
        # Rungs promoted by distillation appear in an overlay file; each is loaded the first time it is seen.
        self.live = LiveCatalogue(catalogue, settings.promoted_overlay if settings.serve_promoted else None)
        self._adding = asyncio.Lock()
        # A promoted rung that could not load is tried again after this long (in a cluster its Serve application
        # may still be deploying when the ConfigMap's new overlay arrives), not only when the overlay changes.
        self.promoted_retry_s = 10.0
        self._retry_at: float | None = None
        self.tokens = TokenCounters(settings.models_dir)  # context checks with each rung's tokenizer where known

    # ---- the Service protocol of escalon.grpc ----------------------------------------------------------

    def register(self, server: grpc.aio.Server) -> None:
        serving_pb2_grpc.add_ModelServingServiceServicer_to_server(self, server)

    async def start(self) -> None:
        await self.tiers.start()

    async def close(self) -> None:
        await self.tiers.close()

    # ---- RPCs ------------------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Serve the rungs promoted since the last look (one stat() when nothing changed)."""
        catalogue = self.live.current()
        if catalogue is self.catalogue and (self._retry_at is None or time.monotonic() < self._retry_at):
            return
        async with self._adding:
            catalogue = self.live.current()
            failed = False
            for rung in catalogue.rungs:
                if rung.name not in self._served and rung in self.live.promoted:
                    try:
                        await self.tiers.add(rung)
                    except Exception:  # noqa: BLE001 - one bad promotion must not take the other rungs down
                        log.exception("could not load promoted rung %s; trying again in %.0f s", rung.name,
                                      self.promoted_retry_s)
                        failed = True
                        continue
                    log.info("serving promoted rung %s (%s %s)", rung.name, rung.backend, rung.model)
                    self.rungs.append(rung)
                    self._served.add(rung.name)
            self.catalogue = catalogue
            self._retry_at = time.monotonic() + self.promoted_retry_s if failed else None

    async def Generate(self, request: serving_pb2.GenerateRequest, context) -> serving_pb2.GenerateResponse:
        await self._refresh()
        rung, params = self._validate(request)
        started = time.perf_counter()
        with _measured(rung):
            result = await self.tiers.generate(rung.name, params, self._timeout(rung, context))
        return self._response(rung, params, result, started)

    async def GenerateStream(self, request: serving_pb2.GenerateStreamRequest, context):
        await self._refresh()
        rung, params = self._validate(request.request, prefix="request.")
        if params.n != 1:
            raise InvalidInput(f"GenerateStream streams one sample; use Generate for n > 1 (got {params.n})",
                               field="request.n")
        started = time.perf_counter()
        first = True
        with _measured(rung):
            async for item in self.tiers.stream(rung.name, params, self._timeout(rung, context)):
                if isinstance(item, GenerateResult):
                    response = self._response(rung, params, item, started)
                    yield serving_pb2.GenerateStreamResponse(done=True, response=response)
                elif item:
                    if first:
                        metrics().serving_ttft.labels(rung.name).observe(time.perf_counter() - started)
                        first = False
                    yield serving_pb2.GenerateStreamResponse(text=item)

    async def ListModels(self, request: serving_pb2.ListModelsRequest, context) -> serving_pb2.ListModelsResponse:
        await self._refresh()
        health = await asyncio.gather(*(self.tiers.health(rung.name) for rung in self.rungs))
        return serving_pb2.ListModelsResponse(
            rungs=[
                serving_pb2.Rung(
                    name=rung.name,
                    family=rung.family,
                    backend=rung.backend,
                    model=rung.model,
                    prompt_format=rung.prompt_format,
                    input_usd_per_1m=rung.price.input_per_1m,
                    output_usd_per_1m=rung.price.output_per_1m,
                    context_limit=rung.context_limit,
                    healthy=healthy,
                    status=status,
                )
                for rung, (healthy, status) in zip(self.rungs, health)
            ]
        )

    # ---- helpers ---------------------------------------------------------------------------------------

    def _validate(self, request: serving_pb2.GenerateRequest, prefix: str = "") -> tuple[Rung, GenerateParams]:
        served = ", ".join(r.name for r in self.rungs)
        if not request.rung:
            raise InvalidInput(f"required; served rungs: {served}", field=f"{prefix}rung")
        rung = self.catalogue.get(request.rung, field=f"{prefix}rung")
        if rung.name not in self._served:
            raise InvalidInput(f"rung {rung.name!r} is in the catalogue but not served here; served rungs: {served}",
                               field=f"{prefix}rung")
        prompt = request.prompt
        if not prompt.strip():
            raise InvalidInput("must not be empty", field=f"{prefix}prompt")
        if len(prompt) > self.settings.max_prompt_chars:
            raise InvalidInput(
                f"{len(prompt)} characters exceeds the limit of {self.settings.max_prompt_chars} "
                "(ESCALON_SERVING_MAX_PROMPT_CHARS)",
                field=f"{prefix}prompt",
            )
        counter = self.tokens.for_rung(rung)
        if (tokens := counter.count(prompt)) >= rung.context_limit:
            raise InvalidInput(
                f"{'' if counter.exact else 'about '}{tokens} tokens ({counter.name}) does not fit rung {rung.name}'s "
                f"context limit of {rung.context_limit} tokens",
                field=f"{prefix}prompt",
            )
        n = request.n or 1
        if not 1 <= n <= MAX_SAMPLES:
            raise InvalidInput(f"must be between 1 and {MAX_SAMPLES} (0 means 1), got {request.n}", field=f"{prefix}n")
        if not (math.isfinite(request.temperature) and 0 <= request.temperature <= 2):
            raise InvalidInput(f"must be between 0 and 2, got {request.temperature}", field=f"{prefix}temperature")
        if request.max_tokens < 0 or request.max_tokens > rung.context_limit:
            raise InvalidInput(
                f"must be between 0 (the rung's default, {rung.max_tokens}) and rung {rung.name}'s context limit "
                f"of {rung.context_limit}, got {request.max_tokens}",
                field=f"{prefix}max_tokens",
            )
        if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"must be between 0 and {MAX_TOP_LOGPROBS}, got {request.top_logprobs}",
                               field=f"{prefix}top_logprobs")
        if len(request.stop) > MAX_STOP_STRINGS or any(not s for s in request.stop):
            raise InvalidInput(f"at most {MAX_STOP_STRINGS} non-empty strings", field=f"{prefix}stop")
        if request.answer_type not in common_pb2.AnswerType.values():
            raise InvalidInput(f"unknown answer type {request.answer_type}; known: "
                               f"{', '.join(common_pb2.AnswerType.keys())}", field=f"{prefix}answer_type")
        params = GenerateParams(
            prompt=prompt,
            max_tokens=request.max_tokens or rung.max_tokens,
            n=n,
            temperature=request.temperature,
            stop=tuple(request.stop),
            logprobs=request.logprobs or request.top_logprobs > 0,
            top_logprobs=request.top_logprobs,
            seed=request.seed if request.HasField("seed") else None,
            answer_type=request.answer_type or None,  # UNSPECIFIED: the prompt as sent
        )
        span = trace.get_current_span()
        span.set_attribute(ATTR_RUNG, rung.name)
        span.set_attribute(ATTR_RUNG_BACKEND, rung.backend)
        span.set_attribute(ATTR_SAMPLES, n)
        return rung, params

    @staticmethod
    def _timeout(rung: Rung, context) -> float:
        """The rung's timeout, or less when the caller's deadline is nearer."""
        remaining = context.time_remaining() if context is not None else None
        return min(rung.timeout_s, remaining) if remaining is not None else rung.timeout_s

    @staticmethod
    def _response(rung: Rung, params: GenerateParams, result: GenerateResult, started: float) -> serving_pb2.GenerateResponse:
        cost = result.cost_usd if result.cost_usd is not None else rung.cost(result.input_tokens, result.output_tokens)
        metrics().serving_output_tokens.labels(rung.name).inc(result.output_tokens)
        trace.get_current_span().set_attribute(ATTR_COST_USD, cost)
        response = serving_pb2.GenerateResponse(
            rung=rung.name,
            samples=[
                serving_pb2.Sample(
                    text=sample.text,
                    finish_reason=sample.finish_reason,
                    output_tokens=sample.output_tokens,
                    logprobs=[_token_pb(t) for t in sample.logprobs] if params.logprobs else [],
                )
                for sample in result.samples
            ],
            usage=common_pb2.Usage(input_tokens=result.input_tokens, output_tokens=result.output_tokens, cost_usd=cost),
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        if result.reference_score is not None:
            response.reference_score = result.reference_score
        return response


@contextlib.contextmanager
def _measured(rung: Rung) -> Iterator[None]:
    """In flight while the call waits for or runs on the rung; its duration by outcome (error.type)."""
    m = metrics()
    m.serving_in_flight.labels(rung.name).inc()
    started, error = time.perf_counter(), ""
    try:
        yield
    except BaseException as exc:
        error = type(exc).__name__
        raise
    finally:
        m.serving_in_flight.labels(rung.name).dec()
        m.serving_duration.labels(rung.name, error).observe(time.perf_counter() - started)


def _token_pb(token) -> common_pb2.TokenLogprob:
    message = common_pb2.TokenLogprob(
        token=token.token,
        logprob=token.logprob,
        top=[common_pb2.TopLogprob(token=t, logprob=lp) for t, lp in token.top],
    )
    if token.entropy is not None:
        message.entropy = token.entropy
    if token.self_certainty is not None:
        message.self_certainty = token.self_certainty
    return message


"""The judged cascade (docs/routing.md, Methods and sources): climb the plan's rungs cheapest first, ask the judges about each
rung's answers, stop at the first answer they trust; otherwise fuse or return the best seen.

The cascade talks to two small protocols, Generator and Scorer. Over gRPC they are the serving and judge
clients; in the evaluation harness they are in-process replays — the same decisions either way.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from escalon.answer_keys import answer_evidence
from escalon.execution import has_checks
from escalon.errors import BudgetExceeded, NotAnswerable, RungUnavailable
from escalon.judging import Candidate, Judgement, JudgeResult
from escalon.metrics import metrics
from escalon.registry import Catalogue, Rung
from escalon.router.circuit import OPEN, RungBreakers
from escalon.router.policy import RoutePlan, RouteQuery
from escalon.telemetry import ATTR_ACCEPTED, ATTR_CONFIDENCE, ATTR_COST_USD, ATTR_RUNG, tracer
from escalon.tokens import TokenCounters


@dataclass(frozen=True)
class Generation:
    texts: list[str]
    cost_usd: float
    latency_ms: float
    input_tokens: int = 0
    output_tokens: int = 0
    truncated: tuple[bool, ...] = ()  # per text: stopped at the token limit (empty: none was)


class Generator(Protocol):
    async def generate(self, rung: Rung, prompt: str, *, n: int, temperature: float, max_tokens: int,
                       on_text: Callable[[str], Awaitable[None]] | None = None, answer_type: int = 0) -> Generation:
        """`answer_type` (escalon.common.v1.AnswerType): the answer the query expects, so that local rungs are asked
        for it in a form they follow (escalon.answer_format); 0: the prompt as sent."""


class Scorer(Protocol):
    async def score(self, prompt: str, candidates: list[Candidate], references: list[Candidate],
                    answer_type: int, **signals) -> Judgement:
        """`signals` (only when the plan has them): predicted_success (float), weights (JudgeWeights)."""


@dataclass
class Attempt:
    rung: str
    family: str
    answer: str = ""
    parsed_answer: str = ""
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    confidence: float = 0.0
    scores: tuple[JudgeResult, ...] = ()
    accepted: bool = False
    samples: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    note: str = ""

    @property
    def answered(self) -> bool:
        return self.samples > 0


@dataclass
class CascadeResult:
    answer: str
    rung: str
    confidence: float
    reason: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def total_cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)


@dataclass(frozen=True)
class SamplingConfig:
    local_samples: int = 3  # self-hosted rungs: n > 1 lets the consistency judges see agreement
    remote_samples: int = 1  # paid endpoints and replays: one call
    temperature: float = 0.7


EventSink = Callable[[str, Attempt | None, str], Awaitable[None]]


async def _evidence(prompt: str, answer: Candidate) -> tuple[str | None, float]:
    """The answer's key and the share of the prompt's tests it passes (NaN: not executed). A prompt that
    states tests has its code answer run in the sandbox, off the event loop."""
    if answer.truncated:
        return None, float("nan")
    if has_checks(prompt):
        keys, checks = await asyncio.to_thread(answer_evidence, prompt, [answer.text])
    else:
        keys, checks = answer_evidence(prompt, [answer.text])
    return keys[0], checks[0]


async def _no_event(kind: str, attempt: Attempt | None, message: str) -> None:
    return None


class Cascade:
    def __init__(self, catalogue: Catalogue, generator: Generator, scorer: Scorer,
                 sampling: SamplingConfig = SamplingConfig(), breakers: RungBreakers | None = None,
                 tokens: TokenCounters | None = None) -> None:
        self.catalogue = catalogue
        self.generator = generator
        self.scorer = scorer
        self.sampling = sampling
        self.breakers = breakers or RungBreakers()
        self.tokens = tokens or TokenCounters()  # each rung's tokenizer where known (escalon.tokens)

    def samples_for(self, rung: Rung) -> int:
        return self.sampling.local_samples if rung.is_local else self.sampling.remote_samples

    def cost_bound(self, rung: Rung, query: RouteQuery) -> float:
        """An upper estimate of one attempt's cost: every sample runs to max_tokens."""
        n = self.samples_for(rung)
        max_tokens = query.max_tokens or rung.max_tokens
        return rung.cost(self.tokens.count(rung, query.prompt) * n, max_tokens * n)

    def check_budget(self, plan: RoutePlan, query: RouteQuery) -> None:
        if query.max_cost_usd is None or not plan.rungs:
            return
        candidates = [n for n in plan.stepper.names if n] if plan.stepper is not None else plan.rungs
        cheapest = min(candidates, key=lambda name: self.cost_bound(self.catalogue.get(name), query))
        bound = self.cost_bound(self.catalogue.get(cheapest), query)
        if bound > query.max_cost_usd:
            raise BudgetExceeded(
                f"budget ${query.max_cost_usd:.6f} is below the cheapest candidate's estimated cost "
                f"${bound:.6f} (rung {cheapest}); raise max_cost_usd or drop it",
                field="max_cost_usd",
            )

    async def run(self, query: RouteQuery, plan: RoutePlan, on_event: EventSink = _no_event,
                  on_text: Callable[[str, str], Awaitable[None]] | None = None,
                  skipped: dict[str, str] | None = None) -> CascadeResult:
        """`skipped`: rungs the planner left out for their open circuit (escalon.router.circuit.route_around),
        listed first among the attempts with the reason."""
        skipped = skipped or {}
        self.check_budget(plan, query)
        if plan.stepper is not None:
            return await self._run_stepped(query, plan, on_event, on_text)
        attempts: list[Attempt] = [Attempt(name, self.catalogue.get(name).family, note=f"skipped: {why}")
                                   for name, why in skipped.items()]
        references: list[Candidate] = []
        spent = 0.0
        m = metrics()
        for name in plan.rungs:
            rung = self.catalogue.get(name)
            attempt = Attempt(rung.name, rung.family)
            attempts.append(attempt)
            if query.max_cost_usd is not None and spent + self.cost_bound(rung, query) > query.max_cost_usd:
                attempt.note = f"skipped: could exceed the budget (spent ${spent:.6f} of ${query.max_cost_usd:.6f})"
                m.skips.labels(rung.name, "budget").inc()
                continue
            if not (ticket := self.breakers.allow(rung)):  # opened by a concurrent request since the plan
                attempt.note = f"skipped: {self.breakers.why(rung)}"
                m.skips.labels(rung.name, "circuit_open").inc()
                continue
            await on_event("started", attempt, f"asking {rung.name}")
            m.attempts.labels(rung.name).inc()
            with tracer(__name__).start_as_current_span("escalon.cascade.attempt") as span:
                span.set_attribute(ATTR_RUNG, rung.name)
                if (answers := await self._call_rung(rung, query, attempt, on_text, ticket)) is None:
                    await on_event("judged", attempt, attempt.note)
                    continue
                spent += attempt.cost_usd
                signals = {}
                if rung.name in plan.predicted_success:
                    signals["predicted_success"] = float(plan.predicted_success[rung.name])
                if plan.judge_weights is not None:
                    signals["weights"] = plan.judge_weights
                judgement = await self.scorer.score(query.prompt, answers, references, query.answer_type, **signals)
                attempt.confidence = judgement.confidence
                attempt.scores = judgement.scores
                attempt.parsed_answer = judgement.answer
                attempt.answer = judgement.answer_text or answers[0].text
                attempt.accepted = (judgement.confidence >= plan.threshold
                                    and judgement.agreeing_share >= plan.min_agreeing_share)
                span.set_attribute(ATTR_CONFIDENCE, attempt.confidence)
                m.confidence.labels(rung.name).observe(attempt.confidence)
                (m.accepts if attempt.accepted else m.escalations).labels(rung.name).inc()
                span.set_attribute(ATTR_ACCEPTED, attempt.accepted)
                span.set_attribute(ATTR_COST_USD, attempt.cost_usd)
            references.extend(answers)
            await on_event("judged", attempt, f"{rung.name}: confidence {attempt.confidence:.2f}")
            if attempt.accepted:
                return CascadeResult(attempt.answer, rung.name, attempt.confidence,
                                     f"{rung.name} accepted at confidence {attempt.confidence:.2f} ≥ {plan.threshold:.2f}",
                                     attempts)
            await on_event("escalated", attempt, f"{rung.name} below {plan.threshold:.2f}: escalating")
        return self._fallback(attempts, plan)

    async def _call_rung(self, rung: Rung, query: RouteQuery, attempt: Attempt,
                         on_text: Callable[[str, str], Awaitable[None]] | None, ticket: int) -> list[Candidate] | None:
        """One rung's answers, with its circuit and metrics kept; None (and the attempt's note) when it could
        not answer."""
        m = metrics()
        try:
            answers = await self._generate(rung, query, attempt, on_text)
        except (RungUnavailable, asyncio.TimeoutError) as exc:
            attempt.note = f"skipped: {exc or f'timed out after {rung.timeout_s:g}s'}"
            self._count_failure(rung, exc, ticket)
            m.failures.labels(rung.name, type(exc).__name__).inc()
            return None
        except BaseException:
            self.breakers.release(rung, ticket)
            raise
        self.breakers.success(rung, ticket)
        m.spend.labels(rung.name).inc(attempt.cost_usd)
        m.tokens.labels(rung.name, "input").observe(attempt.input_tokens)
        m.tokens.labels(rung.name, "output").observe(attempt.output_tokens)
        return answers

    def _count_failure(self, rung: Rung, exc: BaseException, ticket: int) -> None:
        """A rung that could not answer: a fault its circuit counts, unless it is healthy but has no answer for
        this prompt (NotAnswerable: a replay rung without its recording)."""
        if isinstance(exc, NotAnswerable):
            self.breakers.release(rung, ticket)
        else:
            self.breakers.failure(rung, str(exc)[:120] or type(exc).__name__, ticket)

    async def _run_stepped(self, query: RouteQuery, plan: RoutePlan, on_event: EventSink,
                           on_text: Callable[[str, str], Awaitable[None]] | None) -> CascadeResult:
        """Cascade routing: the plan's stepper picks each next rung from the answers so far, or stops; the
        answer returned is the answered rung with the highest post-hoc estimate. The judges still score every
        answer for the trace; their verdicts do not decide here (the estimator's features do)."""
        stepper = plan.stepper
        if query.max_cost_usd is not None:
            stepper.limit_budget([self.cost_bound(self.catalogue.get(n), query) if n else float("inf")
                                  for n in stepper.names], query.max_cost_usd)
        attempts: list[Attempt] = []
        references: list[Candidate] = []
        by_rung: dict[str, Attempt] = {}
        m = metrics()
        for name in [n for n in stepper.names if n and self.breakers.state(self.catalogue.get(n)) == OPEN]:
            stepper.failed(name)  # an open circuit: planned around from the start (the reason's attempts say so)
            attempts.append(Attempt(name, self.catalogue.get(name).family,
                                    note=f"skipped: {self.breakers.why(self.catalogue.get(name))}"))
        while (name := stepper.next()) is not None:
            rung = self.catalogue.get(name)
            attempt = Attempt(rung.name, rung.family)
            attempts.append(attempt)
            if not (ticket := self.breakers.allow(rung)):  # opened by a concurrent request meanwhile
                attempt.note = f"skipped: {self.breakers.why(rung)}"
                m.skips.labels(rung.name, "circuit_open").inc()
                stepper.failed(rung.name)
                continue
            await on_event("started", attempt, f"asking {rung.name} (best set: "
                           f"{', '.join(stepper.names[c] for c in stepper.last_set)}; value {stepper.last_value:.3f})")
            m.attempts.labels(rung.name).inc()
            with tracer(__name__).start_as_current_span("escalon.cascade.attempt") as span:
                span.set_attribute(ATTR_RUNG, rung.name)
                if (answers := await self._call_rung(rung, query, attempt, on_text, ticket)) is None:
                    stepper.failed(rung.name)
                    await on_event("judged", attempt, attempt.note)
                    continue
                judgement = await self.scorer.score(query.prompt, answers, references, query.answer_type)
                attempt.scores = judgement.scores
                attempt.parsed_answer = judgement.answer
                attempt.answer = judgement.answer_text or answers[0].text
                first = answers[0]
                key, check = await _evidence(query.prompt, first)
                stepper.observe(rung.name, key, len(first.text), self.cost_bound(rung, query), check)
                attempt.confidence = float(stepper.estimates()[0][stepper.names.index(rung.name)])
                span.set_attribute(ATTR_CONFIDENCE, attempt.confidence)
                span.set_attribute(ATTR_COST_USD, attempt.cost_usd)
            references.extend(answers)
            by_rung[rung.name] = attempt
            await on_event("judged", attempt, f"{rung.name}: post-hoc quality {attempt.confidence:.2f}")
        chosen, quality = stepper.best()
        if chosen is None:
            notes = "; ".join(f"{a.rung}: {a.note}" for a in attempts) or "no rung fits"
            raise RungUnavailable(f"no rung could answer ({notes})")
        q, _ = stepper.estimates()
        for a in by_rung.values():  # the final estimates, now that every answer is in
            a.confidence = float(q[stepper.names.index(a.rung)])
        winner = by_rung[chosen]
        winner.accepted = True
        answered = [a for a in attempts if a.answered]
        return CascadeResult(winner.answer, chosen, quality,
                             f"cascade routing stopped after {len(answered)} answer(s): {chosen} has the highest "
                             f"post-hoc quality estimate ({quality:.2f})", attempts)

    async def _generate(self, rung: Rung, query: RouteQuery, attempt: Attempt,
                        on_text: Callable[[str, str], Awaitable[None]] | None) -> list[Candidate]:
        started = time.perf_counter()
        stream = (lambda text: on_text(rung.name, text)) if on_text else None
        generation = await asyncio.wait_for(
            self.generator.generate(rung, query.prompt, n=self.samples_for(rung), temperature=self.sampling.temperature,
                                    max_tokens=query.max_tokens or rung.max_tokens, on_text=stream,
                                    answer_type=query.answer_type),
            timeout=rung.timeout_s,
        )
        if not generation.texts:
            raise RungUnavailable(f"{rung.name} returned no samples")
        attempt.samples = len(generation.texts)
        attempt.cost_usd = generation.cost_usd
        attempt.input_tokens, attempt.output_tokens = generation.input_tokens, generation.output_tokens
        attempt.latency_ms = generation.latency_ms or (time.perf_counter() - started) * 1000
        cut = generation.truncated or (False,) * len(generation.texts)
        return [Candidate(text, rung.name, rung.family, truncated) for text, truncated in zip(generation.texts, cut)]

    def _fallback(self, attempts: list[Attempt], plan: RoutePlan) -> CascadeResult:
        answered = [a for a in attempts if a.answered]
        if not answered:
            notes = "; ".join(f"{a.rung}: {a.note}" for a in attempts)
            raise RungUnavailable(f"no rung could answer ({notes})")
        # Fusion: vote over parsed answers weighted by confidence; the winner must beat the best single attempt.
        votes: dict[str, float] = defaultdict(float)
        for a in answered:
            if a.parsed_answer:
                votes[a.parsed_answer] += a.confidence
        best = max(answered, key=lambda a: (a.confidence, attempts.index(a)))
        if votes:
            winner, weight = max(votes.items(), key=lambda kv: kv[1])
            supporters = [a for a in answered if a.parsed_answer == winner]
            if len(supporters) > 1 and weight > best.confidence:
                chosen = max(supporters, key=lambda a: (a.confidence, attempts.index(a)))
                return CascadeResult(chosen.answer, chosen.rung, min(1.0, weight),
                                     f"no rung reached {plan.threshold:.2f}; {len(supporters)} rungs agreed on "
                                     f"'{winner}' (fused confidence {weight:.2f})", attempts)
        strongest = answered[-1]
        ran = [s for s in strongest.scores if not s.skipped]
        if not ran:
            # No judge could weigh the strongest rung's answer (e.g. one sample, no other family agreeing or
            # disagreeing): absence of evidence is not evidence against the strongest model.
            return CascadeResult(strongest.answer, strongest.rung, strongest.confidence,
                                 f"no rung reached {plan.threshold:.2f}; no judge had evidence on {strongest.rung}, "
                                 "the strongest rung tried, so its answer stands", attempts)
        if all(s.judge == "cross_model" for s in ran):
            # Its only evidence is agreement with the rungs below it, and none agreed enough to fuse: it disagrees
            # with answers the judges already turned down. That is no evidence against the strongest model either
            # (the demo: GPT-4's right "8" scored 0 for disagreeing with Mixtral's wrong "1.97").
            return CascadeResult(strongest.answer, strongest.rung, strongest.confidence,
                                 f"no rung reached {plan.threshold:.2f}; {strongest.rung}, the strongest rung tried, "
                                 "only disagreed with answers already below the threshold, so its answer stands",
                                 attempts)
        return CascadeResult(best.answer, best.rung, best.confidence,
                             f"no rung reached {plan.threshold:.2f}; returning the most confident answer "
                             f"({best.rung}, {best.confidence:.2f})", attempts)

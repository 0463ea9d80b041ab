"""A circuit breaker per rung, and the re-plan around the rungs whose circuit is open.

A rung that fails `circuit.failures` times in a row (unreachable, 5xx or 429 after the serving side's own
retries, a timeout) is *open* for `circuit.cooldown_s`: plans skip it, so no request waits for its timeout.
After the cooldown it is *half-open*: one request may try it; success closes it, failure opens it again for
twice as long (up to `circuit.max_cooldown_s`). Only the rung's own failures count: a request the rung
refuses as the caller's fault (InvalidInput) or an answer the judges reject says nothing about its health.
A rung that hangs fails no call until its timeouts run out, so it is also open while `circuit.failures` calls
have been pending for over `circuit.slow_call_s` with no answer from it since they began: requests stop
queueing behind it within that time, not after every pending call has timed out.

The planner sees the breakers through `route_around`: an open rung is dropped from the plan, and when it was
the strongest rung the plan had, the cheapest closed rung at least as dear (the catalogue's proxy for
expected quality) takes its place, so the route never settles for less than the plan asked for. The route's
reason and its attempts say what was skipped and why.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from escalon.errors import RungUnavailable
from escalon.metrics import CIRCUIT_STATES, metrics
from escalon.registry import Catalogue, Rung
from escalon.router.policy import RoutePlan

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


@dataclass
class _State:
    failures: int = 0  # consecutive
    opened_at: float | None = None
    cooldown_s: float = 0.0
    probing: bool = False  # half-open: a trial request is in flight
    last_error: str = ""
    pending: dict[int, float] = field(default_factory=dict)  # ticket -> when that call began
    last_success_at: float = float("-inf")


class RungBreakers:
    """The breakers of one router process (each replica judges the rungs by what it sees)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._states: dict[str, _State] = {}
        self._tickets = itertools.count(1)

    def _state(self, name: str) -> _State:
        return self._states.setdefault(name, _State())

    def state(self, rung: Rung) -> str:
        s = self._states.get(rung.name)
        if s is None:
            return CLOSED
        if s.opened_at is None:
            return OPEN if self._stalled(rung, s) >= rung.circuit.failures else CLOSED
        return OPEN if self.clock() - s.opened_at < s.cooldown_s else HALF_OPEN

    def _stalled(self, rung: Rung, s: _State) -> int:
        """Calls pending for over slow_call_s that began after the rung last answered."""
        cutoff = self.clock() - rung.circuit.slow_call_s
        return sum(1 for began in s.pending.values() if s.last_success_at < began < cutoff)

    def remaining_s(self, rung: Rung) -> float:
        s = self._states.get(rung.name)
        if s is None or s.opened_at is None:
            return 0.0
        return max(0.0, s.cooldown_s - (self.clock() - s.opened_at))

    def allow(self, rung: Rung) -> int:
        """May a request try this rung now? A ticket (truthy) to hand back to success/failure/release, or 0.
        Half-open admits one trial at a time."""
        state = self.state(rung)
        metrics().circuit.labels(rung.name).set(CIRCUIT_STATES[state])  # the gauge follows what requests see
        if state == OPEN:
            return 0
        s = self._state(rung.name)
        if state == HALF_OPEN:
            if s.probing:
                return 0
            s.probing = True
        ticket = next(self._tickets)
        s.pending[ticket] = self.clock()
        return ticket

    def success(self, rung: Rung, ticket: int = 0) -> None:
        s = self._state(rung.name)
        s.pending.pop(ticket, None)
        s.failures, s.opened_at, s.cooldown_s, s.probing, s.last_error = 0, None, 0.0, False, ""
        s.last_success_at = self.clock()
        self._publish(rung)

    def failure(self, rung: Rung, error: str, ticket: int = 0) -> None:
        s = self._state(rung.name)
        s.pending.pop(ticket, None)
        s.failures += 1
        s.last_error = error
        was_probing, s.probing = s.probing, False
        if was_probing or s.failures >= rung.circuit.failures:
            previous = s.cooldown_s
            s.cooldown_s = min(rung.circuit.max_cooldown_s, previous * 2 if was_probing and previous else
                               rung.circuit.cooldown_s)
            s.opened_at = self.clock()
        self._publish(rung)

    def release(self, rung: Rung, ticket: int = 0) -> None:
        """A call that ended without a verdict on the rung's health (cancelled, the caller's fault)."""
        s = self._state(rung.name)
        s.pending.pop(ticket, None)
        s.probing = False

    def _publish(self, rung: Rung) -> None:
        metrics().circuit.labels(rung.name).set(CIRCUIT_STATES[self.state(rung)])

    def why(self, rung: Rung) -> str:
        s = self._state(rung.name)
        if s.opened_at is None and (stalled := self._stalled(rung, s)):
            return (f"circuit open: {stalled} calls pending for over {rung.circuit.slow_call_s:g}s with no answer "
                    "since (the rung looks hung)")
        if self.state(rung) == HALF_OPEN:
            return f"circuit half-open after {s.failures} failures (last: {s.last_error or 'unknown'}); a trial is in flight"
        return (f"circuit open after {s.failures} failure{'s' if s.failures != 1 else ''} in a row "
                f"(last: {s.last_error or 'unknown'}); cools down in {self.remaining_s(rung):.0f}s")

    def route_around(self, plan: RoutePlan, catalogue: Catalogue, allowed: list[str]) -> tuple[RoutePlan, dict[str, str]]:
        """The plan without open rungs (a stronger closed rung replacing the strongest one dropped), and the
        skipped rungs with the reason. RungUnavailable when no rung of the plan or above it is closed."""
        names = list(plan.rungs)
        skipped = {n: self.why(catalogue.get(n)) for n in names if self.state(catalogue.get(n)) == OPEN}
        if not skipped:
            return plan, {}
        for name in skipped:
            metrics().skips.labels(name, "circuit_open").inc()
        kept = [n for n in names if n not in skipped]
        notes = [f"skipped {n}: {why}" for n, why in skipped.items()]
        if names[-1] in skipped and plan.policy != "pinned":
            floor = catalogue.get(names[-1])
            cost = _expected_cost(floor)
            stronger = sorted((catalogue.get(n) for n in allowed if n not in names),
                              key=lambda r: (_expected_cost(r), r.name))
            substitute = next((r for r in stronger if _expected_cost(r) >= cost and self.state(r) != OPEN), None)
            if substitute is not None:
                kept.append(substitute.name)
                notes.append(f"{substitute.name} stands in for {floor.name} (as dear or dearer)")
        if not kept:
            raise RungUnavailable("every rung of the route is cooling down: " + "; ".join(notes))
        reason = f"{plan.reason}; {'; '.join(notes)}"
        return dataclasses.replace(plan, rungs=tuple(kept), reason=reason), skipped


def _expected_cost(rung: Rung, prompt_tokens: int = 200) -> float:
    return rung.cost(prompt_tokens, rung.max_tokens)

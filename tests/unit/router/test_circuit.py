"""The circuit breaker per rung and the planner's route around open rungs (a fake clock; no servers)."""

from __future__ import annotations

import pytest

from escalon.errors import RungUnavailable
from escalon.registry import Catalogue, Rung
from escalon.router.circuit import CLOSED, HALF_OPEN, OPEN, RungBreakers
from escalon.router.policy import RoutePlan

pytestmark = pytest.mark.unit


PRICE = {"input_per_1m": 1.0, "output_per_1m": 1.0}


def rung(name: str, price: float) -> Rung:
    return Rung(name=name, family=name, backend="openai", model=name, base_url="http://127.0.0.1:9/v1",
                price={"input_per_1m": price, "output_per_1m": price},
                circuit={"failures": 2, "cooldown_s": 10, "max_cooldown_s": 25})


CATALOGUE = Catalogue(rungs=[rung("small", 0.1), rung("medium", 1.0), rung("large", 10.0), rung("huge", 30.0)])
SMALL, MEDIUM, LARGE, HUGE = (CATALOGUE.get(n) for n in ("small", "medium", "large", "huge"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_failures_in_a_row_open_the_circuit_and_a_success_resets_the_count():
    clock = Clock()
    b = RungBreakers(clock)
    b.failure(SMALL, "HTTP 500")
    b.success(SMALL)
    b.failure(SMALL, "HTTP 500")
    assert b.state(SMALL) == CLOSED  # not two in a row
    b.failure(SMALL, "HTTP 500")
    assert b.state(SMALL) == OPEN and not b.allow(SMALL)
    assert "2 failures in a row (last: HTTP 500); cools down in 10s" in b.why(SMALL)


def test_half_open_admits_one_trial_and_a_failed_trial_doubles_the_cooldown_up_to_the_cap():
    clock = Clock()
    b = RungBreakers(clock)
    b.failure(SMALL, "x")
    b.failure(SMALL, "x")
    clock.now = 10
    assert b.state(SMALL) == HALF_OPEN
    assert b.allow(SMALL) and not b.allow(SMALL)  # one trial at a time
    assert "half-open after 2 failures (last: x); a trial is in flight" in b.why(SMALL)
    b.failure(SMALL, "x")
    clock.now = 29.9
    assert b.state(SMALL) == OPEN  # 20 s now
    clock.now = 30
    assert b.allow(SMALL)
    b.failure(SMALL, "x")
    assert b.remaining_s(SMALL) == 25  # capped at max_cooldown_s
    clock.now = 55
    assert b.allow(SMALL)
    b.success(SMALL)
    assert b.state(SMALL) == CLOSED and b.allow(SMALL)


def test_a_cancelled_trial_frees_the_half_open_slot():
    clock = Clock()
    b = RungBreakers(clock)
    b.failure(SMALL, "x")
    b.failure(SMALL, "x")
    clock.now = 10
    assert b.allow(SMALL)
    b.release(SMALL)
    assert b.allow(SMALL)


def plan(*names: str, policy: str = "learned") -> RoutePlan:
    return RoutePlan(tuple(names), policy, "the plan", 0.7)


def opened(b: RungBreakers, *rungs: Rung) -> None:
    for r in rungs:
        b.failure(r, "HTTP 503")
        b.failure(r, "HTTP 503")


def test_an_open_cheap_rung_is_dropped_and_the_reason_says_so():
    b = RungBreakers(Clock())
    opened(b, SMALL)
    new, skipped = b.route_around(plan("small", "large"), CATALOGUE, CATALOGUE.names)
    assert new.rungs == ("large",) and list(skipped) == ["small"]
    assert "skipped small: circuit open after 2 failures in a row (last: HTTP 503)" in new.reason


def test_when_the_strongest_rung_is_open_the_cheapest_as_dear_or_dearer_stands_in():
    b = RungBreakers(Clock())
    opened(b, LARGE)
    new, _ = b.route_around(plan("small", "large"), CATALOGUE, CATALOGUE.names)
    assert new.rungs == ("small", "huge")  # not medium: it is cheaper than the rung it would replace
    assert "huge stands in for large" in new.reason
    opened(b, HUGE)
    new, _ = b.route_around(plan("small", "large"), CATALOGUE, CATALOGUE.names)
    assert new.rungs == ("small",)  # nothing as strong is closed: the rest of the plan still answers


def test_a_plan_with_every_rung_open_fails_fast_naming_them():
    b = RungBreakers(Clock())
    opened(b, MEDIUM)
    with pytest.raises(RungUnavailable, match="every rung of the route is cooling down: skipped medium"):
        b.route_around(plan("medium", policy="pinned"), CATALOGUE, CATALOGUE.names)


def test_closed_circuits_leave_the_plan_untouched():
    b = RungBreakers(Clock())
    original = plan("small", "large")
    assert b.route_around(original, CATALOGUE, CATALOGUE.names) == (original, {})


def test_calls_pending_too_long_open_the_circuit_before_any_fails():
    clock = Clock()
    b = RungBreakers(clock)
    slow = Rung(name="slow", family="x", backend="openai", model="x", base_url="http://127.0.0.1:9/v1", price=PRICE,
                circuit={"failures": 2, "slow_call_s": 5})
    first, second = b.allow(slow), b.allow(slow)
    clock.now = 4.9
    assert b.state(slow) == CLOSED
    clock.now = 5.1
    assert b.state(slow) == OPEN and not b.allow(slow)  # two calls stuck for over 5 s: the rung looks hung
    assert "2 calls pending for over 5s with no answer since" in b.why(slow)
    b.success(slow, first)  # it answered after all: calls that began before that answer no longer count
    assert b.state(slow) == CLOSED and b.allow(slow)
    b.failure(slow, "timed out", second)
    assert b.state(slow) == CLOSED  # one failure of two


def test_a_call_that_ends_frees_its_slot():
    clock = Clock()
    b = RungBreakers(clock)
    slow = Rung(name="slow", family="x", backend="openai", model="x", base_url="http://127.0.0.1:9/v1", price=PRICE,
                circuit={"failures": 2, "slow_call_s": 5})
    tickets = [b.allow(slow), b.allow(slow)]
    b.release(slow, tickets[0])
    clock.now = 10
    assert b.state(slow) == CLOSED  # one call pending is not enough

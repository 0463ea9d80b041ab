"""Cascade decisions with the real judge panel in-process. The generator is a scripted stand-in for
models (what each rung says is fixed by the test), so every escalation and stop can be checked exactly."""

import pytest

from escalon.errors import BudgetExceeded, RungUnavailable
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.registry import Catalogue, Rung
from escalon.router.cascade import Cascade, Generation, SamplingConfig
from escalon.offline.evaluation.inprocess import PanelScorer
from escalon.router.policy import CheapestFirstPolicy, RouteQuery

pytestmark = pytest.mark.unit
NUMBER = AnswerType.ANSWER_TYPE_NUMBER


def rung(name, family, backend, price):
    extra = {"benchmark": "x.parquet"} if backend == "replay" else {}
    return Rung(name=name, family=family, backend=backend, model=name, max_tokens=100,
                price={"input_per_1m": price, "output_per_1m": price}, **extra)


CATALOGUE = Catalogue(rungs=[rung("small", "smollm", "hf", 0.01), rung("mid", "mistral", "replay", 1.0),
                             rung("big", "openai", "replay", 10.0)])


class ScriptedGenerator:
    def __init__(self, answers):
        self.answers = answers  # rung -> list of sample texts, or an exception
        self.calls = []

    async def generate(self, rung, prompt, *, n, temperature, max_tokens, on_text=None, answer_type=0):
        self.calls.append((rung.name, n))
        said = self.answers[rung.name]
        if isinstance(said, Exception):
            raise said
        return Generation(texts=said[:n], cost_usd=rung.cost(10 * n, 20 * n), latency_ms=1.0)


async def route(answers, threshold=0.7, max_cost=None):
    generator = ScriptedGenerator(answers)
    cascade = Cascade(CATALOGUE, generator, PanelScorer(), SamplingConfig(local_samples=3, remote_samples=1))
    query = RouteQuery("How many? 3 and 4", threshold, NUMBER, max_cost_usd=max_cost)
    plan = CheapestFirstPolicy().plan(query, CATALOGUE, CATALOGUE.names)
    return await cascade.run(query, plan), generator


async def test_consistent_cheap_rung_is_accepted_without_escalating():
    result, gen = await route({"small": ["7", "7", "it is 7"], "mid": ["7"], "big": ["7"]})
    assert result.rung == "small" and result.answer in ("7", "it is 7")
    assert gen.calls == [("small", 3)]
    assert result.attempts[0].accepted and result.confidence == 1.0


async def test_disagreement_escalates_until_another_family_agrees():
    result, gen = await route({"small": ["5", "6", "8"], "mid": ["9"], "big": ["#### 9"]})
    # small: samples disagree; mid: one sample, only small's (different) answers to compare; big agrees with mid
    assert [c[0] for c in gen.calls] == ["small", "mid", "big"]
    assert result.rung == "big" and result.attempts[-1].accepted
    assert result.total_cost_usd == pytest.approx(sum(a.cost_usd for a in result.attempts))


async def test_when_nobody_is_confident_the_best_seen_or_fused_answer_returns():
    result, _ = await route({"small": ["5", "6", "8"], "mid": ["9"], "big": ["10"]})
    assert not any(a.accepted for a in result.attempts)
    assert "no rung reached" in result.reason


async def test_an_unavailable_rung_is_skipped_with_its_reason():
    result, gen = await route({"small": ["5", "6", "8"], "mid": RungUnavailable("prompt not recorded"),
                               "big": ["5"]})
    assert result.attempts[1].note == "skipped: prompt not recorded" and result.attempts[1].samples == 0
    # small split three ways, so it casts no cross-model vote: no judge can weigh big, the strongest rung tried
    assert result.rung == "big" and "no judge had evidence on big" in result.reason


async def test_disagreeing_with_answers_already_turned_down_does_not_overrule_the_strongest_rung():
    # The demo's shape: the cheap rungs fall short (small 2 of 3, mid alone), the strongest rung's one sample
    # agrees with neither, so cross-model agreement scores it 0 — it used to lose to small's 0.36.
    result, _ = await route({"small": ["5", "5", "8"], "mid": ["1.97"], "big": ["7"]})
    small, mid, big = result.attempts
    assert 0 < small.confidence < 0.7 and big.confidence == 0.0
    assert [s.judge for s in big.scores if not s.skipped] == ["cross_model"]
    assert result.rung == "big" and result.answer == "7" and "only disagreed" in result.reason


async def test_the_budget_is_never_exceeded_and_impossible_budgets_are_refused():
    result, gen = await route({"small": ["5", "6", "8"], "mid": ["9"], "big": ["9"]}, max_cost=0.0002)
    assert result.total_cost_usd <= 0.0002
    assert "could exceed the budget" in result.attempts[-1].note and [c[0] for c in gen.calls] == ["small", "mid"]
    with pytest.raises(BudgetExceeded, match="raise max_cost_usd"):
        await route({"small": ["5"], "mid": ["9"], "big": ["9"]}, max_cost=1e-12)


async def test_no_rung_answering_is_unavailable_with_every_reason():
    with pytest.raises(RungUnavailable, match="small: skipped: down.*big: skipped: down"):
        await route({n: RungUnavailable("down") for n in ("small", "mid", "big")})


async def test_a_rung_shed_downstream_ends_the_route_overloaded_and_opens_no_circuit():
    from escalon.errors import Overloaded

    shed = Overloaded("overloaded: escalon-serving is handling 64 calls (rung mid)", retry_after_ms=200)
    for _ in range(10):  # more than any breaker's failure threshold
        generator = ScriptedGenerator({"small": ["5", "6", "8"], "mid": shed, "big": ["5"]})
        cascade = Cascade(CATALOGUE, generator, PanelScorer(), SamplingConfig(local_samples=3, remote_samples=1),
                          breakers=breakers if _ else None)
        breakers = cascade.breakers
        query = RouteQuery("How many? 3 and 4", 0.7, NUMBER)
        with pytest.raises(Overloaded) as caught:
            await cascade.run(query, CheapestFirstPolicy().plan(query, CATALOGUE, CATALOGUE.names))
        assert caught.value.retry_after_ms == 200 and [c[0] for c in generator.calls] == ["small", "mid"]
    assert breakers.state(CATALOGUE.get("mid")) == "closed"

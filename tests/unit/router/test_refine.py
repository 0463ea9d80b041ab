"""SCREWS and ART control flow over the cascade's protocols, with the judge panel in-process."""

import pytest

from escalon.errors import RungUnavailable
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.registry import Price, Rung
from escalon.router.cascade import Generation
from escalon.router.inprocess import PanelScorer
from escalon.router.refine import Art, NoRefinement, RefinementConfig, Sampling, Screws

pytestmark = pytest.mark.unit
NUMBER = AnswerType.ANSWER_TYPE_NUMBER
RUNG = Rung(name="small", family="smollm", backend="local-gguf", model="m", price=Price(input_per_1m=1, output_per_1m=1))
ASKER = Rung(name="asker", family="gemma", backend="local-gguf", model="g", price=Price(input_per_1m=1, output_per_1m=1))
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


class ScriptedGenerator:
    """Answers by the strategy the prompt asks for; records every call."""

    def __init__(self, by_marker):
        self.by_marker = by_marker
        self.calls = []

    async def generate(self, rung, prompt, *, n, temperature, max_tokens, on_text=None):
        self.calls.append((rung.name, prompt))
        for marker, texts in self.by_marker.items():
            if marker in prompt:
                if isinstance(texts, Exception):
                    raise texts
                return Generation(texts=list(texts)[:n], cost_usd=0.001 * n, latency_ms=1)
        raise AssertionError(f"unscripted prompt {prompt!r}")


COT = "Think step by step"
DECOMPOSE = "Break the problem"
ASK = "Write up to three short sub-questions"
REFINE = "A previous attempt answered"
SCORER = PanelScorer(judges=("agreement", "fsd"))


async def _run(policy, generator):
    return await policy.refine(RUNG, QUESTION, answer_type=NUMBER, generator=generator, scorer=SCORER,
                               sampling=Sampling(n=3))


async def test_screws_keeps_a_trusted_first_sample_without_resampling():
    gen = ScriptedGenerator({COT: ["The answer is 7"] * 3})
    out = await _run(Screws(), gen)
    assert out.parsed == "7" and out.chosen == "original" and not out.revised and len(gen.calls) == 1


async def test_screws_resamples_with_another_strategy_and_takes_a_more_trusted_revision():
    gen = ScriptedGenerator({COT: ["The answer is 7", "The answer is 12", "The answer is 1"],
                             DECOMPOSE: ["The answer is 7"] * 3})
    out = await _run(Screws(resample_below=0.7), gen)
    assert [p for _, p in gen.calls][1].count(DECOMPOSE) == 1  # heterogeneous resampling
    assert out.revised and out.parsed == "7"
    assert [s.stage for s in out.steps] == ["sample", "resample", "select"]
    assert out.cost_usd == pytest.approx(0.006)


async def test_screws_rolls_back_a_revision_that_is_not_more_trusted():
    gen = ScriptedGenerator({COT: ["The answer is 7", "The answer is 7", "The answer is 1"],
                             DECOMPOSE: ["The answer is 5", "The answer is 9", "The answer is 2"]})
    out = await _run(Screws(resample_below=0.9), gen)
    assert out.revised and out.chosen == "original" and out.parsed == "7" and "rolled back" in out.steps[-1].note


async def test_screws_agreement_across_strategies_is_judged_together():
    gen = ScriptedGenerator({COT: ["The answer is 7", "The answer is 7", "The answer is 3"],
                             DECOMPOSE: ["The answer is 7", "The answer is 7", "The answer is 7"]})
    out = await _run(Screws(resample_below=0.9), gen)
    assert out.parsed == "7" and "judged together" in out.steps[-1].note and out.confidence > 0.8


def test_screws_needs_two_different_known_strategies():
    with pytest.raises(ValueError, match="different"):
        Screws(first="cot", resample="cot")
    with pytest.raises(ValueError, match="unknown strategy"):
        Screws(resample="vibes")


async def test_art_refines_only_when_the_asker_says_so_and_trusts_the_better():
    asked_no = ScriptedGenerator({COT: ["The answer is 7"] * 3, ASK: ["Q: Is 3 + 4 = 7?\nRefine: no"]})
    out = await _run(Art(asker=ASKER), asked_no)
    assert not out.revised and [c[0] for c in asked_no.calls] == ["small", "asker"]

    asked_yes = ScriptedGenerator({COT: ["The answer is 12", "The answer is 7", "The answer is 1"],
                                   ASK: ["Q: How many apples at first?\nQ: How many bought?\nRefine: yes"],
                                   REFINE: ["The answer is 7"] * 3})
    out = await _run(Art(asker=ASKER), asked_yes)
    refine_prompt = asked_yes.calls[-1][1]
    assert "- How many apples at first?" in refine_prompt and "- How many bought?" in refine_prompt
    assert out.chosen == "revision" and out.parsed == "7" and [s.stage for s in out.steps][-2:] == ["refine", "trust"]


async def test_art_falls_back_to_the_judges_when_the_asker_cannot_decide():
    down = ScriptedGenerator({COT: ["The answer is 7"] * 3, ASK: RungUnavailable("asker down")})
    out = await _run(Art(asker=ASKER), down)
    assert not out.revised and "unavailable" in out.steps[1].note
    unsure = ScriptedGenerator({COT: ["The answer is 5", "The answer is 6", "The answer is 7"],
                                ASK: ["I am not sure."], REFINE: ["The answer is 5", "The answer is 9", "The answer is 2"]})
    out = await _run(Art(asker=ASKER), unsure)
    assert out.revised and out.chosen == "original" and "no 'Refine" in out.steps[1].note


async def test_policies_are_chosen_per_task_type():
    config = RefinementConfig(per_task={"math_reasoning": "screws", "qa_factual": "art"},
                              options={"screws": {"resample_below": 0.5}})
    assert isinstance(config.policy_for("math_reasoning"), Screws)
    assert config.policy_for("math_reasoning").resample_below == 0.5
    assert isinstance(config.policy_for("qa_factual"), Art)
    assert isinstance(config.policy_for("chit_chat"), NoRefinement)
    with pytest.raises(ValueError, match="unknown refinement"):
        RefinementConfig(per_task={"x": "magic"})
    out = await NoRefinement().refine(RUNG, QUESTION, answer_type=NUMBER,
                                      generator=ScriptedGenerator({QUESTION: ["7", "7", "7"]}), scorer=SCORER)
    assert out.parsed == "7" and out.confidence == 1.0

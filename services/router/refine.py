"""Refinement policies (ALGORITHMS.md §4): spend a second call on a rung's answer only when the judges doubt it,
and keep the revision only when it is better. Built on the cascade's own Generator and Scorer protocols, so a
policy runs against the real serving and judge services or in-process replays alike.

- SCREWS [code]: Sample with one strategy → Conditional resampling, only when the judges' confidence is below
  `resample_below`, with a *different* strategy (heterogeneous resampling is what matters most) → Selection
  between original and revision by the judges' confidence, so a bad revision is rolled back (a tie keeps the
  original). When both give the same parsed answer, the two sample sets are judged together: agreement across
  strategies is stronger evidence than agreement within one.
- ART [paper]: Ask — a small asker rung writes sub-questions that check the answer and says whether it needs
  refining ("Refine: yes/no"); when no asker is set or its reply does not parse, the judges' confidence
  decides → Refine, only then, with the sub-questions in the prompt → Trust: keep the better of initial and
  refined by the judges' confidence (a tie keeps the initial).

Strategies are prompt templates (answer only, chain of thought, sub-question decomposition). Judges always see
the original question, never the strategy's wrapper. A policy is chosen per task type (`RefinementConfig`);
none is wired into the default route until measurements show it helps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from escalon.errors import RungUnavailable
from escalon.registry import Rung
from escalon.router.cascade import Answer, Generator, Judgement, Scorer

STRATEGIES: Mapping[str, str] = {
    "direct": "{prompt}",
    "answer_only": "{prompt}\n\nGive only the final answer, nothing else.",
    "cot": "{prompt}\n\nThink step by step, then give the final answer on the last line as 'The answer is ...'.",
    "decompose": ("{prompt}\n\nBreak the problem into smaller sub-questions, answer each one in turn, then give the "
                  "final answer on the last line as 'The answer is ...'."),
}

ASK_TEMPLATE = (
    "Question: {prompt}\n\nProposed answer: {answer}\n\n"
    "Write up to three short sub-questions whose answers would check the proposed answer, one per line, each "
    "starting with 'Q:'. Then, on the last line, write 'Refine: yes' if the proposed answer looks wrong or "
    "incomplete, or 'Refine: no' if it looks right."
)
REFINE_TEMPLATE = (
    "{prompt}\n\nA previous attempt answered:\n{answer}\n\nCheck it against these sub-questions:\n{questions}\n\n"
    "Answer each sub-question, correct any mistake, then give the final answer on the last line as "
    "'The answer is ...'."
)
_REFINE_DECISION = re.compile(r"refine\s*:\s*(yes|no)\b", re.IGNORECASE)
_SUBQUESTION = re.compile(r"^\s*(?:Q\s*\d*\s*[:.)-]|\d+[.)]\s)\s*(.+\?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Step:
    stage: str  # sample | resample | select | ask | refine | trust
    strategy: str
    answer_text: str = ""
    parsed: str = ""
    confidence: float = 0.0
    cost_usd: float = 0.0
    note: str = ""


@dataclass
class Refined:
    answer_text: str
    parsed: str
    confidence: float
    chosen: str  # "original" | "revision"
    steps: list[Step] = field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.steps)

    @property
    def revised(self) -> bool:
        return any(s.stage in ("resample", "refine") for s in self.steps)


@dataclass(frozen=True)
class Sampling:
    n: int = 3
    temperature: float = 0.7
    max_tokens: int = 256


@dataclass
class _Attempt:
    answers: list[Answer]
    judgement: Judgement
    cost_usd: float
    strategy: str


class RefinementPolicy(Protocol):
    name: str

    async def refine(self, rung: Rung, prompt: str, *, answer_type: int, generator: Generator, scorer: Scorer,
                     references: Sequence[Answer] = (), sampling: Sampling = Sampling()) -> Refined: ...


async def _attempt(rung: Rung, prompt: str, strategy: str, *, answer_type: int, generator: Generator,
                   scorer: Scorer, references: Sequence[Answer], sampling: Sampling,
                   wrapped: str | None = None) -> _Attempt:
    text = wrapped if wrapped is not None else STRATEGIES[strategy].format(prompt=prompt)
    generation = await generator.generate(rung, text, n=sampling.n, temperature=sampling.temperature,
                                          max_tokens=sampling.max_tokens)
    if not generation.texts:
        raise RungUnavailable(f"{rung.name} returned no samples")
    answers = [Answer(t, rung.name, rung.family) for t in generation.texts]
    judgement = await scorer.score(prompt, answers, list(references), answer_type)  # the question, not the wrapper
    return _Attempt(answers, judgement, generation.cost_usd, strategy)


def _step(stage: str, attempt: _Attempt, note: str = "") -> Step:
    j = attempt.judgement
    return Step(stage, attempt.strategy, j.answer_text, j.answer, j.confidence, attempt.cost_usd, note)


class NoRefinement:
    """One attempt with the prompt as given: what the cascade does today."""

    name = "none"

    def __init__(self, strategy: str = "direct") -> None:
        self.strategy = strategy

    async def refine(self, rung: Rung, prompt: str, *, answer_type: int, generator: Generator, scorer: Scorer,
                     references: Sequence[Answer] = (), sampling: Sampling = Sampling()) -> Refined:
        first = await _attempt(rung, prompt, self.strategy, answer_type=answer_type, generator=generator,
                               scorer=scorer, references=references, sampling=sampling)
        j = first.judgement
        return Refined(j.answer_text, j.answer, j.confidence, "original", [_step("sample", first)])


class Screws:
    name = "screws"

    def __init__(self, first: str = "cot", resample: str = "decompose", resample_below: float = 0.7) -> None:
        if first == resample:
            raise ValueError("SCREWS resamples with a different strategy than the first sample")
        for s in (first, resample):
            if s not in STRATEGIES:
                raise ValueError(f"unknown strategy {s!r}; known: {', '.join(STRATEGIES)}")
        self.first, self.resample, self.resample_below = first, resample, resample_below

    async def refine(self, rung: Rung, prompt: str, *, answer_type: int, generator: Generator, scorer: Scorer,
                     references: Sequence[Answer] = (), sampling: Sampling = Sampling()) -> Refined:
        kw = dict(answer_type=answer_type, generator=generator, scorer=scorer, references=references, sampling=sampling)
        original = await _attempt(rung, prompt, self.first, **kw)
        steps = [_step("sample", original)]
        o = original.judgement
        if o.confidence >= self.resample_below:
            steps.append(Step("select", self.first, o.answer_text, o.answer, o.confidence,
                              note=f"confidence {o.confidence:.2f} ≥ {self.resample_below:.2f}: no resampling"))
            return Refined(o.answer_text, o.answer, o.confidence, "original", steps)
        revision = await _attempt(rung, prompt, self.resample, **kw)
        r = revision.judgement
        steps.append(_step("resample", revision, f"confidence {o.confidence:.2f} < {self.resample_below:.2f}: "
                                                 f"resampled with {self.resample}"))
        if o.answer and o.answer == r.answer:
            joint = await scorer.score(prompt, original.answers + revision.answers, list(references), answer_type)
            steps.append(Step("select", f"{self.first}+{self.resample}", joint.answer_text or o.answer_text, o.answer,
                              joint.confidence, note="both strategies agree: judged together"))
            return Refined(o.answer_text, o.answer, max(joint.confidence, o.confidence, r.confidence), "original", steps)
        if r.confidence > o.confidence:
            steps.append(Step("select", self.resample, r.answer_text, r.answer, r.confidence,
                              note=f"revision more trusted ({r.confidence:.2f} > {o.confidence:.2f})"))
            return Refined(r.answer_text, r.answer, r.confidence, "revision", steps)
        steps.append(Step("select", self.first, o.answer_text, o.answer, o.confidence,
                          note=f"revision not more trusted ({r.confidence:.2f} ≤ {o.confidence:.2f}): rolled back"))
        return Refined(o.answer_text, o.answer, o.confidence, "original", steps)


class Art:
    name = "art"

    def __init__(self, asker: Rung | None = None, *, strategy: str = "cot", refine_below: float = 0.7,
                 ask_max_tokens: int = 160) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.asker, self.strategy, self.refine_below, self.ask_max_tokens = asker, strategy, refine_below, ask_max_tokens

    async def refine(self, rung: Rung, prompt: str, *, answer_type: int, generator: Generator, scorer: Scorer,
                     references: Sequence[Answer] = (), sampling: Sampling = Sampling()) -> Refined:
        kw = dict(answer_type=answer_type, generator=generator, scorer=scorer, references=references, sampling=sampling)
        initial = await _attempt(rung, prompt, self.strategy, **kw)
        i = initial.judgement
        steps = [_step("sample", initial)]
        needs, questions, ask_step = await self._ask(prompt, i, generator)
        steps.append(ask_step)
        if not needs:
            steps.append(Step("trust", self.strategy, i.answer_text, i.answer, i.confidence, note="no refinement needed"))
            return Refined(i.answer_text, i.answer, i.confidence, "original", steps)
        listed = "\n".join(f"- {q}" for q in questions) or "- Is every step of the previous attempt correct?"
        wrapped = REFINE_TEMPLATE.format(prompt=prompt, answer=i.answer_text, questions=listed)
        refined = await _attempt(rung, prompt, "refine", wrapped=wrapped, **kw)
        r = refined.judgement
        steps.append(_step("refine", refined, f"{len(questions)} sub-questions"))
        if r.confidence > i.confidence:
            steps.append(Step("trust", "refine", r.answer_text, r.answer, r.confidence,
                              note=f"refined more trusted ({r.confidence:.2f} > {i.confidence:.2f})"))
            return Refined(r.answer_text, r.answer, r.confidence, "revision", steps)
        steps.append(Step("trust", self.strategy, i.answer_text, i.answer, i.confidence,
                          note=f"refined not more trusted ({r.confidence:.2f} ≤ {i.confidence:.2f}): initial kept"))
        return Refined(i.answer_text, i.answer, i.confidence, "original", steps)

    async def _ask(self, prompt: str, initial: Judgement, generator: Generator) -> tuple[bool, list[str], Step]:
        by_judges = initial.confidence < self.refine_below
        fallback = f"judges' confidence {initial.confidence:.2f} {'<' if by_judges else '≥'} {self.refine_below:.2f}"
        if self.asker is None:
            return by_judges, [], Step("ask", "judges", note=f"no asker rung; {fallback}")
        try:
            reply = await generator.generate(self.asker, ASK_TEMPLATE.format(prompt=prompt, answer=initial.answer_text),
                                             n=1, temperature=0.0, max_tokens=self.ask_max_tokens)
        except RungUnavailable as exc:
            return by_judges, [], Step("ask", "judges", note=f"asker {self.asker.name} unavailable ({exc}); {fallback}")
        text = reply.texts[0] if reply.texts else ""
        questions = [q.strip() for q in _SUBQUESTION.findall(text)][:3]
        decision = _REFINE_DECISION.findall(text)
        if not decision:
            return by_judges, questions, Step("ask", self.asker.name, text, cost_usd=reply.cost_usd,
                                              note=f"asker gave no 'Refine: yes/no'; {fallback}")
        needs = decision[-1].lower() == "yes"
        return needs, questions, Step("ask", self.asker.name, text, "yes" if needs else "no", cost_usd=reply.cost_usd,
                                      note=f"asker says refine: {'yes' if needs else 'no'}")


REFINERS: Mapping[str, Callable[..., RefinementPolicy]] = {"none": NoRefinement, "screws": Screws, "art": Art}


@dataclass(frozen=True)
class RefinementConfig:
    """Which policy each task type gets; task types not listed get `default`."""

    per_task: Mapping[str, str] = field(default_factory=dict)
    default: str = "none"
    options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # policy → constructor arguments

    def __post_init__(self) -> None:
        unknown = sorted({self.default, *self.per_task.values()} - set(REFINERS))
        if unknown:
            raise ValueError(f"unknown refinement policies {', '.join(unknown)}; known: {', '.join(REFINERS)}")

    def policy_for(self, task_type: str) -> RefinementPolicy:
        name = self.per_task.get(task_type, self.default)
        return REFINERS[name](**dict(self.options.get(name, {})))

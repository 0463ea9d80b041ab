"""Teachers: who writes the rationales a student learns from, and rewrites them where the student fails.

A teacher is named in a job's params either as a catalogue rung or as a program:

    "gpt-4"            any rung: a local model, an OpenAI-compatible endpoint, or a replay of recorded
                       outputs; called through the serving backends (escalon.backends.make_backend)
    "program:arith"    the programmatic teacher of the synthetic arithmetic task (training/arith.py)

Every teacher answers two requests through one interface:

    solve(item, strategy)                      -> TeacherAnswer   (strategy: cot | l2m | pot)
    refine(item, previous, student_answer, score, similar)  -> TeacherAnswer

For a rung, `refine` sends the REFINE prompt (docs/distillation.md) through the same generate call as `solve`
— real for local and OpenAI-compatible teachers. A replay rung can only return what was recorded, so
REFINE is not in its recording (RungUnavailable); it then falls back, and says which fallback it used in
`TeacherAnswer.source`:
  1. `alternate:<rung>`  another replay rung's recorded answer to the same question (e.g. Mixtral's), when
                         that answer is correct and differs from the rationales already used;
  2. `restructured`      its own recorded rationale split into numbered steps with the final answer stated
                         on its own line. This is a rewrite of form only — it is NOT aimed at the
                         student's error — and the report says how many refinements were of this kind.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from escalon.distill.training import arith
from escalon.distill.training.data import Item, final_answer
from escalon.errors import RungUnavailable
from escalon.registry import Catalogue, Rung

STRATEGIES = ("cot", "l2m", "pot")

SOLVE_PROMPTS = {
    "cot": "Solve the problem step by step. End with a last line of the form '#### <answer>'.\n\nProblem: {q}",
    "l2m": ("Solve the problem by least-to-most decomposition: write the sub-questions it needs, answer each one "
            "in order, then end with a last line of the form '#### <answer>'.\n\nProblem: {q}"),
    "pot": ("Write a short Python program that computes the answer to the problem and prints it. Use only "
            "arithmetic, variables and print. Reply with the program only.\n\nProblem: {q}"),
}

REFINE_PROMPT = """You are teaching a small student model to solve problems like this one.

Problem: {q}

Your earlier explanation(s):
{previous}

The student, trained on your explanation, answered:
{student}
(score {score:.0f}: the final answer is wrong)
{similar}
Write a new step-by-step explanation aimed at the student's misunderstanding: make the step it got wrong
explicit and easy to follow. Keep the same format and end with a last line of the form '#### <answer>'."""


@dataclass
class TeacherAnswer:
    text: str
    cost_usd: float = 0.0
    calls: int = 1
    source: str = "teacher"  # teacher | program | alternate:<rung> | restructured
    input_tokens: int = 0
    output_tokens: int = 0


class Teacher(Protocol):
    name: str
    kind: str  # "rung" | "program"

    def solve(self, item: Item, strategy: str = "cot") -> TeacherAnswer: ...

    def refine(self, item: Item, previous: list[str], student_answer: str, score: float,
               similar: list[tuple[str, str]]) -> TeacherAnswer: ...

    def close(self) -> None: ...


class ArithTeacher:
    """The programmatic teacher of the arithmetic task: computed solutions, diagnosis-driven rewrites."""

    kind = "program"

    def __init__(self, name: str = "program:arith") -> None:
        self.name = name

    def solve(self, item: Item, strategy: str = "cot") -> TeacherAnswer:
        spec = _spec(item)
        return TeacherAnswer(arith.solve(spec, strategy), source="program")

    def refine(self, item: Item, previous: list[str], student_answer: str, score: float,
               similar: list[tuple[str, str]]) -> TeacherAnswer:
        spec = _spec(item)
        diagnosis = arith.diagnose(spec, student_answer, final_answer(student_answer, item.answer_type))
        text = arith.refine(spec, diagnosis)
        return TeacherAnswer(text, source=f"program:{diagnosis.kind}")

    def close(self) -> None:
        return None


def _spec(item: Item) -> dict[str, Any]:
    spec = item.meta.get("arith")
    if not spec:
        raise ValueError(f"item {item.id} has no arithmetic structure (meta.arith): the program:arith teacher "
                         "only teaches the synthetic arithmetic task; use a rung as teacher for other data")
    return spec


class RungTeacher:
    """Any catalogue rung as teacher, through the serving backends (the same code serving runs)."""

    kind = "rung"

    def __init__(self, rung: Rung, *, models_dir: Path, catalogue: Catalogue, alternates: list[str] | None = None,
                 max_tokens: int = 512, threads: int | None = None) -> None:
        from escalon.backends import make_backend

        self.rung = rung
        self.name = rung.name
        self.max_tokens = max_tokens
        self._loop = asyncio.new_event_loop()
        self.backend = make_backend(rung, models_dir=models_dir, torch_threads=threads)
        self.backend.load()
        self.alternates = []
        for name in alternates or []:
            alt = catalogue.get(name, field="params.refine_alternates")
            backend = make_backend(alt, models_dir=models_dir, torch_threads=threads)
            backend.load()
            self.alternates.append((alt, backend))

    @property
    def is_replay(self) -> bool:
        return self.rung.backend == "replay"

    def _call(self, backend: Any, rung: Rung, prompt: str) -> TeacherAnswer:
        from escalon.backends import GenerateParams

        try:
            result = self._loop.run_until_complete(
                backend.generate(GenerateParams(prompt=prompt, max_tokens=min(self.max_tokens, rung.max_tokens * 4),
                                                temperature=0.0, seed=0)))
        except RungUnavailable as exc:
            from escalon.distill.jobs.base import TransientJobError  # here: the jobs package imports this module

            if rung.backend == "replay":  # not in the recording: a fact, not an outage (refine falls back)
                raise
            # An endpoint down or a model that failed: retried with backoff; the job resumes at its checkpoint.
            raise TransientJobError(f"teacher {rung.name} unavailable: {exc}") from exc
        cost = result.cost_usd if result.cost_usd is not None else rung.cost(result.input_tokens, result.output_tokens)
        return TeacherAnswer(result.samples[0].text, cost_usd=cost, source="teacher",
                             input_tokens=result.input_tokens, output_tokens=result.output_tokens)

    def solve(self, item: Item, strategy: str = "cot") -> TeacherAnswer:
        # A recording answers the question as it was asked; live models get the strategy's instructions.
        prompt = item.prompt if self.is_replay else SOLVE_PROMPTS[strategy].format(q=item.prompt)
        if self.is_replay and strategy != "cot":
            raise RungUnavailable(f"replay rung {self.name} has only its recorded answers; it cannot use "
                                  f"strategy {strategy!r}")
        return self._call(self.backend, self.rung, prompt)

    def refine(self, item: Item, previous: list[str], student_answer: str, score: float,
               similar: list[tuple[str, str]]) -> TeacherAnswer:
        prompt = refine_prompt(item, previous, student_answer, score, similar)
        try:
            return self._call(self.backend, self.rung, prompt)
        except RungUnavailable:
            if not self.is_replay:
                raise
        for alt, backend in self.alternates:  # replay: another recorded model's correct rationale
            try:
                answer = self._call(backend, alt, item.prompt)
            except RungUnavailable:
                continue
            text = answer.text
            if text.strip() and all(text.strip() != p.strip() for p in previous) and _correct(text, item):
                answer.source = f"alternate:{alt.name}"
                return answer
        own = previous[0] if previous else self.solve(item).text
        return TeacherAnswer(restructure(own, item), cost_usd=0.0, calls=0, source="restructured")

    def close(self) -> None:
        self._loop.run_until_complete(self.backend.close())
        for _, backend in self.alternates:
            self._loop.run_until_complete(backend.close())
        self._loop.close()


def _correct(text: str, item: Item) -> bool:
    from escalon.distill.training.data import canonical

    return final_answer(text, item.answer_type) == canonical(item.answer, item.answer_type)


def refine_prompt(item: Item, previous: list[str], student_answer: str, score: float,
                  similar: list[tuple[str, str]]) -> str:
    similar_text = ""
    if similar:
        similar_text = "\nThe student also failed on similar validation problems:\n" + "\n".join(
            f"- {q}\n  student: {a[:300]}" for q, a in similar) + "\n"
    return REFINE_PROMPT.format(
        q=item.prompt,
        previous="\n---\n".join(p[:1500] for p in previous) or "(none)",
        student=student_answer[:1500] or "(no answer)",
        score=score,
        similar=similar_text,
    )


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z$0-9])")


def restructure(text: str, item: Item) -> str:
    """A recorded rationale as numbered steps with the final answer on its own '####' line (form only)."""
    body = re.sub(r"####.*$", "", text, flags=re.DOTALL).strip()
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    sentences = [s.strip() for ln in lines for s in _SENTENCE.split(ln) if s.strip()]
    steps = "\n".join(f"Step {i}: {s}" for i, s in enumerate(sentences, 1))
    return f"{steps}\n#### {item.answer}".strip()


def make_teacher(spec: str, *, catalogue: Catalogue, models_dir: Path, alternates: list[str] | None = None,
                 threads: int | None = None, max_tokens: int = 512) -> Teacher:
    if spec.startswith("program:"):
        if spec != "program:arith":
            raise ValueError(f"unknown programmatic teacher {spec!r}; known: program:arith")
        return ArithTeacher(spec)
    return RungTeacher(catalogue.get(spec, field="params.teacher"), models_dir=models_dir, catalogue=catalogue,
                       alternates=alternates, threads=threads, max_tokens=max_tokens)

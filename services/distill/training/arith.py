"""A small task whose answers can be checked and whose explanations a program can write: two- and three-step
arithmetic word problems, generated from templates with a fixed seed.

Each problem keeps its structure (`meta["arith"]`: template, numbers), so the programmatic teacher
(`ArithTeacher`) can write a solution in any of three strategies and, for UNDO, rewrite its explanation
aimed at the kind of mistake a student made:

    cot   step-by-step sentences ending "#### <answer>"
    l2m   least-to-most: numbered sub-questions, each answered, then the final answer
    pot   a short Python program that prints the answer (run by escalon.distill.training.sandbox)

`diagnose` classifies a student's wrong answer by checking the arithmetic it wrote against the problem's
steps: no final answer (format), a wrong result of a correct operation (arithmetic slip, with the failing
operation), the right number at an intermediate step (stopped early), or a wrong choice of operation.
`refine` writes a new explanation for that diagnosis: arithmetic slips get the failing computation broken
into place-value parts, early stops get an explicit "not done yet" bridge, wrong operations get the reason
for each operation spelled out, format errors get a plainer final line. This is an honest, checkable
teacher: every explanation it writes is computed, so it is always correct, and it is labelled "program".
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

NAMES = ("Sam", "Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lily", "Ravi", "Emma", "Ken", "Ana")
THINGS = ("marbles", "stickers", "apples", "pencils", "cards", "shells", "coins", "books")


@dataclass(frozen=True)
class Step:
    op: str  # "+", "-", "*", "/"
    a: int
    b: int
    why: str  # the sentence that explains the operation
    question: str  # the sub-question this step answers (least-to-most)
    var: str  # a Python name for the result (program of thought)

    @property
    def result(self) -> int:
        return apply(self.op, self.a, self.b)


def apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a // b
    raise ValueError(op)


SYMBOL = {"+": "+", "-": "-", "*": "x", "/": "/"}
PY = {"+": "+", "-": "-", "*": "*", "/": "//"}


# ---- templates: text and steps from the numbers ------------------------------------------------------------


def _bags(n: dict[str, Any]) -> tuple[str, list[Step]]:
    who, thing, a, b, c = n["who"], n["thing"], n["a"], n["b"], n["c"]
    text = f"{who} has {a} {thing}. {who} buys {b} bags with {c} {thing} in each bag. How many {thing} does {who} have now?"
    s1 = Step("*", b, c, f"There are {b} bags with {c} {thing} each, so we multiply", f"How many {thing} are in the bags?", "in_bags")
    s2 = Step("+", a, s1.result, f"{who} already had {a}, so we add", f"How many {thing} does {who} have now?", "total")
    return text, [s1, s2]


def _sold(n: dict[str, Any]) -> tuple[str, list[Step]]:
    thing, a, b, c = n["thing"], n["a"], n["b"], n["c"]
    text = f"A shop had {a} {thing}. It sold {b} {thing} in the morning and {c} {thing} in the afternoon. How many {thing} are left?"
    s1 = Step("+", b, c, "The shop sold some in the morning and some in the afternoon, so we add them", f"How many {thing} were sold?", "sold")
    s2 = Step("-", a, s1.result, "The sold ones are gone, so we subtract them from what the shop had", f"How many {thing} are left?", "left")
    return text, [s1, s2]


def _wage(n: dict[str, Any]) -> tuple[str, list[Step]]:
    who, a, b, c = n["who"], n["a"], n["b"], n["c"]
    text = f"{who} earns {a} dollars per hour and works {b} hours. Then {who} spends {c} dollars. How many dollars does {who} have left?"
    s1 = Step("*", a, b, f"{who} earns {a} dollars for each of {b} hours, so we multiply", f"How many dollars did {who} earn?", "earned")
    s2 = Step("-", s1.result, c, "Spending takes money away, so we subtract", f"How many dollars are left?", "left")
    return text, [s1, s2]


def _share(n: dict[str, Any]) -> tuple[str, list[Step]]:
    thing, a, b, c = n["thing"], n["a"], n["b"], n["c"]
    text = f"There are {a} boxes with {b} {thing} in each box. The {thing} are shared equally among {c} children. How many {thing} does each child get?"
    s1 = Step("*", a, b, f"There are {a} boxes with {b} {thing} each, so we multiply", f"How many {thing} are there in all?", "total")
    s2 = Step("/", s1.result, c, f"Sharing equally among {c} children means we divide", f"How many {thing} does each child get?", "each")
    return text, [s1, s2]


def _reading(n: dict[str, Any]) -> tuple[str, list[Step]]:
    who, a, b, c = n["who"], n["a"], n["b"], n["c"]
    text = f"{who} reads {a} pages a day for {b} days, and then reads {c} more pages. How many pages did {who} read in all?"
    s1 = Step("*", a, b, f"{a} pages on each of {b} days, so we multiply", f"How many pages did {who} read in {b} days?", "days")
    s2 = Step("+", s1.result, c, f"Then {c} more pages, so we add", f"How many pages did {who} read in all?", "total")
    return text, [s1, s2]


def _three(n: dict[str, Any]) -> tuple[str, list[Step]]:
    who, thing, a, b, c, d = n["who"], n["thing"], n["a"], n["b"], n["c"], n["d"]
    text = (f"{who} has {a} {thing}. {who} gets {b} packs with {c} {thing} in each pack, then gives away {d} {thing}. "
            f"How many {thing} does {who} have now?")
    s1 = Step("*", b, c, f"There are {b} packs with {c} {thing} each, so we multiply", f"How many {thing} are in the packs?", "in_packs")
    s2 = Step("+", a, s1.result, f"{who} already had {a}, so we add", f"How many {thing} does {who} have before giving any away?", "before")
    s3 = Step("-", s2.result, d, "Giving away takes some away, so we subtract", f"How many {thing} does {who} have now?", "now")
    return text, [s1, s2, s3]


TEMPLATES = {"bags": _bags, "sold": _sold, "wage": _wage, "share": _share, "reading": _reading, "three": _three}


def _numbers(template: str, rng: random.Random) -> dict[str, Any]:
    n: dict[str, Any] = {"who": rng.choice(NAMES), "thing": rng.choice(THINGS)}
    if template == "bags":
        n.update(a=rng.randint(2, 40), b=rng.randint(2, 9), c=rng.randint(3, 25))
    elif template == "sold":
        b, c = rng.randint(5, 60), rng.randint(5, 60)
        n.update(a=b + c + rng.randint(1, 80), b=b, c=c)
    elif template == "wage":
        a, b = rng.randint(5, 25), rng.randint(2, 9)
        n.update(a=a, b=b, c=rng.randint(1, a * b - 1))
    elif template == "share":
        c, each = rng.randint(2, 9), rng.randint(2, 15)
        total = c * each
        divisors = [d for d in range(2, 13) if total % d == 0 and 2 <= total // d <= 30]
        a = rng.choice(divisors) if divisors else 1
        n.update(a=a, b=total // a, c=c)
    elif template == "reading":
        n.update(a=rng.randint(5, 30), b=rng.randint(2, 9), c=rng.randint(3, 50))
    elif template == "three":
        b, c = rng.randint(2, 6), rng.randint(3, 12)
        a = rng.randint(2, 30)
        n.update(a=a, b=b, c=c, d=rng.randint(1, a + b * c - 1))
    return n


def problem(spec: dict[str, Any]) -> tuple[str, list[Step]]:
    return TEMPLATES[spec["template"]](spec)


def answer_of(spec: dict[str, Any]) -> int:
    return problem(spec)[1][-1].result


def generate(n: int, seed: int = 0, templates: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """n distinct problems as dataset items (id, prompt, answer, answer_type, source, meta)."""
    rng = random.Random(seed)
    names = templates or tuple(TEMPLATES)
    items, seen = [], set()
    while len(items) < n:
        template = names[len(items) % len(names)] if len(items) < len(names) else rng.choice(names)
        spec = {"template": template, **_numbers(template, rng)}
        text, steps = problem(spec)
        if text in seen or any(s.result < 0 for s in steps):
            continue
        seen.add(text)
        items.append({
            "id": "arith-" + hashlib.sha1(text.encode()).hexdigest()[:12],
            "prompt": text,
            "answer": str(steps[-1].result),
            "answer_type": "number",
            "source": f"synthetic:arith seed={seed}",
            "meta": {"arith": spec},
        })
    return items


# ---- writing solutions ---------------------------------------------------------------------------------------


def eq(step: Step) -> str:
    return f"{step.a} {SYMBOL[step.op]} {step.b} = {step.result}"


def solve(spec: dict[str, Any], strategy: str = "cot") -> str:
    """The teacher's solution in one strategy; the final line carries '#### <answer>' (cot, l2m) or the
    program prints the answer (pot)."""
    _, steps = problem(spec)
    answer = steps[-1].result
    if strategy == "cot":
        return " ".join(f"{s.why}: {eq(s)}." for s in steps) + f" #### {answer}"
    if strategy == "l2m":
        parts = [f"Q{i}: {s.question} {eq(s)}." for i, s in enumerate(steps, 1)]
        return " ".join(parts) + f" #### {answer}"
    if strategy == "pot":
        return program(spec)
    raise ValueError(f"unknown strategy {strategy!r}")


def program(spec: dict[str, Any]) -> str:
    _, steps = problem(spec)
    lines, names = [], {}
    for s in steps:
        a = names.get(s.a, str(s.a))
        b = names.get(s.b, str(s.b))
        lines.append(f"{s.var} = {a} {PY[s.op]} {b}")
        names[s.result] = s.var
    lines.append(f"print({steps[-1].var})")
    return "\n".join(lines)


# ---- diagnosing a student's mistake, and explaining again ----------------------------------------------------

_EQUATION = re.compile(r"(-?\d+)\s*([+\-x*×/÷])\s*(-?\d+)\s*=\s*(-?\d+)")
_OPS = {"+": "+", "-": "-", "x": "*", "*": "*", "×": "*", "/": "/", "÷": "/"}


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # "format" | "arithmetic" | "early_stop" | "operation" | "other"
    step: int | None = None  # the index of the step concerned
    detail: str = ""


def diagnose(spec: dict[str, Any], student_answer: str, parsed: str | None) -> Diagnosis:
    _, steps = problem(spec)
    if parsed is None:
        return Diagnosis("format", detail="no final number")
    written = [(int(a), _OPS[op], int(b), int(r)) for a, op, b, r in _EQUATION.findall(student_answer)]
    for a, op, b, r in written:
        for i, s in enumerate(steps):
            if op == s.op and {a, b} == {s.a, s.b} and r != s.result:
                return Diagnosis("arithmetic", i, f"wrote {a} {SYMBOL[op]} {b} = {r}")
        if (op != "/" or b != 0) and r != apply(op, a, b):  # a wrong sum on numbers of its own making
            step = next((i for i, s in enumerate(steps) if s.op == op), None)
            if step is not None:
                return Diagnosis("arithmetic", step, f"wrote {a} {SYMBOL[op]} {b} = {r}")
    try:
        value = int(float(parsed))
    except ValueError:
        value = None
    for i, s in enumerate(steps[:-1]):
        if value == s.result:
            return Diagnosis("early_stop", i, f"stopped at {s.result} after step {i + 1}")
    for i, s in enumerate(steps):
        if any(op != s.op and {a, b} == {s.a, s.b} for a, op, b, _ in written):
            return Diagnosis("operation", i, "used the wrong operation")
    return Diagnosis("other", detail="wrong final answer")


def decompose(step: Step) -> str:
    """The computation of a step broken into place-value parts a small model can follow."""
    a, b, op = step.a, step.b, step.op
    if op == "*":
        big, small = (a, b) if a >= b else (b, a)
        if big >= 10 and big % 10:
            tens, ones = big - big % 10, big % 10
            return (f"{big} {SYMBOL[op]} {small} = {tens} {SYMBOL[op]} {small} + {ones} {SYMBOL[op]} {small} = "
                    f"{tens * small} + {ones * small} = {big * small}")
        return eq(step)  # a times-table fact: nothing smaller to break it into
    if op == "+":
        if b >= 10 and b % 10 and (a % 10) + (b % 10) >= 10:  # only sums that carry
            tens, ones = b - b % 10, b % 10
            return f"{a} + {b} = {a} + {tens} + {ones} = {a + tens} + {ones} = {a + b}"
        return eq(step)
    if op == "-":
        if b >= 10 and b % 10 and (a % 10) < (b % 10):  # only differences that borrow
            tens, ones = b - b % 10, b % 10
            return f"{a} - {b} = {a} - {tens} - {ones} = {a - tens} - {ones} = {a - b}"
        return eq(step)
    if op == "/":
        return f"{a} / {b} = {a // b}, because {a // b} x {b} = {a}"
    return eq(step)


def refine(spec: dict[str, Any], diagnosis: Diagnosis) -> str:
    """A new chain-of-thought explanation aimed at the diagnosed mistake, same '#### <answer>' format."""
    _, steps = problem(spec)
    answer = steps[-1].result
    parts = []
    for i, s in enumerate(steps):
        # Break down the computation that failed; when the failing step is unknown, the multiplications
        # (where a small model slips most). Other steps stay as they were: a longer answer is harder to produce.
        careful = (diagnosis.kind == "arithmetic" and diagnosis.step == i) or (
            diagnosis.kind == "other" and s.op == "*")
        if careful:
            parts.append(f"{s.why}: {decompose(s)}.")
        elif diagnosis.kind == "operation" and diagnosis.step == i:
            parts.append(f"{s.why} (not {_other_op(s.op)}): {eq(s)}.")
        else:
            parts.append(f"{s.why}: {eq(s)}.")
        if diagnosis.kind == "early_stop" and i < len(steps) - 1 and (diagnosis.step is None or i >= diagnosis.step):
            parts.append(f"{s.result} is not the answer yet.")
    if diagnosis.kind == "format":
        parts.append(f"The answer is {answer}.")
    return " ".join(parts) + f" #### {answer}"


def _other_op(op: str) -> str:
    return {"+": "subtract", "-": "add", "*": "add", "/": "multiply"}[op]

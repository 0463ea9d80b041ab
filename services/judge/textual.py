"""Judges that read only the answer text: free, instant, and weak alone — the calibrated panel decides how much
they count.

- format: is the final answer stated in the form the answer type asks for? 0 = it does not parse at all.
  number: 0.5 for a parseable number, +0.25 when it is marked as final ("####", "the answer is", \\boxed{},
  "final answer"), +0.25 when it is a non-negative integer (word problems' answers almost always are: on
  GSM8K, Mixtral's non-integer answers are right 7% of the time, its integer ones 68%).
  choice: 1 when the letter is stated ("answer is B", "B." first), 0.5 when it is only found in parentheses.
  yes/no: 1 when the answer opens with it, 0.5 when yes/no appears later, lower when both appear.
  code: 1 for code that parses as Python, 0.5 for code that does not parse as Python (another language, or
  broken), 0 for no code. free text: 1 for a short first line (≤ 12 words), 0.5 for a longer one.
- hedging: 1 / (1 + hedge markers) — "approximately", "assume", "I think", "wait", "recalculate", …
- brevity: 1 / (1 + characters / 1000): long answers go wrong more often (GSM8K: GPT-4's shortest quarter is
  right 95% of the time, its longest 77%).
- arithmetic: the share of the answer's worked equations ("3 * 4 = 12", calculator notes "<<3*4=12>>") whose
  left side evaluates to the right side (within the precision the answer shows); skipped when the answer has
  no arithmetic to check. Word problems go wrong through arithmetic slips: on GSM8K, Mixtral's answers with
  a wrong equation are right 32% of the time, those whose equations all hold 70%.

Each is the mean over the candidates that gave the majority answer.
"""

from __future__ import annotations

import ast
import re

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.answers import (
    _CHOICE_LEADING,
    _CHOICE_STATED,
    _CODE_FENCE,
    _YES_NO,
    parse_answer,
)

TEXT_JUDGES = ("format", "hedging", "brevity", "arithmetic")

_FINAL_MARKER = re.compile(r"####|\banswer\s*(?:is|:)|\\boxed\{|final answer", re.IGNORECASE)
_HEDGES = re.compile(
    r"\b(approximately|approx|assum(?:e|ed|ing|ption)|roughly|estimat(?:e|ed|ion)|i think|i believe|probably|"
    r"perhaps|maybe|might|not sure|unclear|unsure|it seems|seems to|cannot be determined|can't be determined|"
    r"not enough information|wait|actually|mistake|re-?calculat\w*|re-?evaluat\w*|let me re\w*|however)\b",
    re.IGNORECASE,
)


def format_score(text: str, answer_type: int) -> float:
    if answer_type == AnswerType.ANSWER_TYPE_NUMBER:
        parsed = parse_answer(text, answer_type)
        if parsed is None:
            return 0.0
        score = 0.5
        if _FINAL_MARKER.search(text):
            score += 0.25
        if "." not in parsed and not parsed.startswith("-"):
            score += 0.25
        return score
    if answer_type == AnswerType.ANSWER_TYPE_CHOICE:
        if parse_answer(text, answer_type) is None:
            return 0.0
        return 1.0 if _CHOICE_STATED.search(text) or _CHOICE_LEADING.search(text) else 0.5
    if answer_type == AnswerType.ANSWER_TYPE_YES_NO:
        found = {m.lower() in ("yes", "true") for m in _YES_NO.findall(text)}
        if not found:
            return 0.0
        opens = re.match(r"^\W*(yes|no|true|false)\b", text, re.IGNORECASE) is not None
        return (1.0 if opens else 0.5) * (0.5 if len(found) > 1 else 1.0)
    if answer_type == AnswerType.ANSWER_TYPE_CODE:
        fenced = _CODE_FENCE.search(text)
        body = (fenced.group(1) if fenced else text).strip()
        if not body:
            return 0.0
        try:
            ast.parse(body)
        except (SyntaxError, ValueError):
            return 0.5
        return 1.0
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    if not line:
        return 0.0
    return 1.0 if len(line.split()) <= 12 else 0.5


def hedging_score(text: str) -> float:
    return 1.0 / (1.0 + len(_HEDGES.findall(text)))


def brevity_score(text: str) -> float:
    return 1.0 / (1.0 + len(text) / 1000.0)


_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?%?"
_OPERAND = rf"(?:{_NUM}|[()])"
_EQUATION = re.compile(rf"({_OPERAND}(?:\s*(?:\*\*|[-+*/x×÷])\s*{_OPERAND}|[()])+)\s*=\s*\$?(-?\d[\d,]*(?:\.\d+)?(?:/\d+(?!\.\d))?)")
_SAFE = re.compile(r"[\d\s.+\-*/()]+")


def _evaluate(expr: str) -> float | None:
    text = expr.replace("\\*", "*").replace("$", "").replace(",", "").replace("×", "*").replace("÷", "/")
    text = re.sub(r"(?<=\d)\s*x\s*(?=[\d(])", "*", text.replace("%", "/100"))
    if not _SAFE.fullmatch(text) or "**" in text:
        return None
    try:
        return float(eval(compile(text, "<arithmetic>", "eval"), {"__builtins__": {}}))  # digits and + - * / ( ) only
    except (SyntaxError, ZeroDivisionError, OverflowError, TypeError, ValueError):
        return None


def arithmetic_counts(text: str) -> tuple[int, int]:
    """(equations that hold, equations that do not) among those the answer writes out."""
    right = wrong = 0
    for match in _EQUATION.finditer(text.replace("\\*", "*")):
        lhs, rhs = match.group(1), match.group(2)
        if not re.search(r"[-+*/x×÷]", lhs.strip().lstrip("-$")):
            continue
        value = _evaluate(lhs)
        target = _evaluate(rhs)
        if value is None or target is None:
            continue
        decimals = len(rhs.split(".")[1]) if "." in rhs and "/" not in rhs else None
        tolerance = 0.5 * 10 ** -decimals + 1e-9 if decimals else 1e-6 * max(1.0, abs(target))
        if abs(value - target) <= tolerance:
            right += 1
        else:
            wrong += 1
    return right, wrong


def arithmetic_score(text: str) -> float | None:
    right, wrong = arithmetic_counts(text)
    return right / (right + wrong) if right + wrong else None


def text_judge(name: str, texts: list[str], answer_type: int) -> float | None:
    """The judge's mean over the texts that it can score; None when it can score none of them."""
    fn = {"format": lambda t: format_score(t, answer_type), "hedging": hedging_score, "brevity": brevity_score,
          "arithmetic": arithmetic_score}[name]
    values = [v for v in (fn(t) for t in texts) if v is not None]
    return sum(values) / len(values) if values else None

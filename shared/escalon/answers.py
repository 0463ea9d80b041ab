"""Parse free-form model output into a comparable final answer, per answer type.

Two answers agree when their parsed forms are equal. A text that does not parse gives None
("[invalid]" in the papers); judges drop invalid answers when valid ones exist.
"""

from __future__ import annotations

import re
import string
from decimal import Decimal, InvalidOperation

from escalon.gen.common.v1.common_pb2 import AnswerType

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_GSM8K_FINAL = re.compile(r"####\s*(.+)")
_CHOICE_STATED = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:)?\s*(?:\*\*)?\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE
)
_CHOICE_LEADING = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])(?:[.):]|\s*$))")
_CHOICE_PAREN = re.compile(r"\(([A-J])\)")
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.)]\s+\S", re.MULTILINE)
_YES_NO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_YES_NO_QUESTION = re.compile(r"^\s*(is|are|was|were|do|does|did|can|could|will|would|should|has|have)\b", re.I)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CODE_FENCE = re.compile(r"```(?:\w+)?\n(.*?)```", re.DOTALL)

MAX_FREE_TEXT = 200


def infer_answer_type(prompt: str) -> int:
    """A cheap guess from the prompt's shape, used only when the caller gives no answer type."""
    if len(set(_OPTION_LINE.findall(prompt))) >= 2:
        return AnswerType.ANSWER_TYPE_CHOICE
    if "```" in prompt or re.search(r"\bdef \w+\(|write a (python )?function", prompt, re.I):
        return AnswerType.ANSWER_TYPE_CODE
    if _YES_NO_QUESTION.match(prompt.strip().splitlines()[-1] if prompt.strip() else ""):
        return AnswerType.ANSWER_TYPE_YES_NO
    if len(_NUMBER.findall(prompt)) >= 2 and re.search(r"\bhow (many|much)\b|\bwhat is\b|\bcalculate\b", prompt, re.I):
        return AnswerType.ANSWER_TYPE_NUMBER
    return AnswerType.ANSWER_TYPE_FREE_TEXT


def parse_answer(text: str, answer_type: int) -> str | None:
    if answer_type == AnswerType.ANSWER_TYPE_NUMBER:
        return parse_number(text)
    if answer_type == AnswerType.ANSWER_TYPE_CHOICE:
        return parse_choice(text)
    if answer_type == AnswerType.ANSWER_TYPE_YES_NO:
        return parse_yes_no(text)
    if answer_type == AnswerType.ANSWER_TYPE_CODE:
        return parse_code(text)
    return parse_free_text(text)


def parse_number(text: str) -> str | None:
    """The number after GSM8K's '####' marker if present, else the last number; canonical decimal form."""
    final = _GSM8K_FINAL.search(text)
    candidates = _NUMBER.findall(final.group(1) if final else text)
    if not candidates:
        return None
    try:
        value = Decimal(candidates[-1].replace(",", ""))
    except InvalidOperation:
        return None
    normal = value.normalize()
    return format(normal, "f") if normal == normal.to_integral() else str(normal)


def parse_choice(text: str) -> str | None:
    for pattern in (_CHOICE_STATED, _CHOICE_LEADING):
        match = pattern.search(text)
        if match:
            return next(g for g in match.groups() if g).upper()
    parens = _CHOICE_PAREN.findall(text)
    return parens[-1].upper() if parens else None


def parse_yes_no(text: str) -> str | None:
    match = _YES_NO.search(text)
    if not match:
        return None
    return "yes" if match.group(1).lower() in ("yes", "true") else "no"


def parse_free_text(text: str) -> str | None:
    """First non-empty line, lower-cased, without punctuation or articles (SQuAD-style normalisation)."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = line.lower().translate(str.maketrans("", "", string.punctuation))
    line = " ".join(_ARTICLES.sub(" ", line).split())
    return line[:MAX_FREE_TEXT] or None


def parse_code(text: str) -> str | None:
    """The fenced block if any, whitespace-normalised (execution-based comparison is a later judge)."""
    fenced = _CODE_FENCE.search(text)
    body = fenced.group(1) if fenced else text
    lines = [ln.rstrip() for ln in body.strip().splitlines() if ln.strip()]
    return "\n".join(lines) or None

"""A comparable final answer ("answer key") from any model's free text, whatever the benchmark's format.

Post-hoc quality estimates (docs/cascade-routing.md) compare the answers a cascade has bought: two answers
agree when their keys are equal. The key is read from the explicit markers models use, most specific first —
a JSON `"answer"` field, `\\boxed{…}`, GSM8K's `#### …`, "the answer is (X)" — then by the prompt's shape (a
choice letter when the prompt lists options, else the last number), else the last line. Keys are
normalised (case, spacing, `$`, trailing punctuation, numbers in canonical decimal form) so that "18",
"$18.00" and "18." agree. None means no usable answer (empty, or nothing parsable).

Base models often run on into an invented next question; the text is cut there first.

Code answers to a prompt that states tests are keyed by what they do instead (`answer_evidence`): each
program runs in the sandbox against the prompt's tests (escalon.execution), programs that pass and fail the
same tests share a key, and the share of tests passed is evidence of its own.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from escalon.execution import checked_answers

MAX_KEY = 120  # keys are compared, never shown: a long free-text answer is cut to its start

_RUN_ON = re.compile(r"\n\s*\n\s*(?:Question|Q)\s*:", re.IGNORECASE)
_JSON_ANSWER = re.compile(r'"answer"\s*:\s*"((?:[^"\\]|\\.)*)"|"answer"\s*:\s*([^,}\n"]+)', re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")
_GSM8K = re.compile(r"####\s*([^\n]+)")
_STATED = re.compile(r"answer\s*(?:is|:)\s*[:\s]*(?:\*\*)?\s*\(?([A-J])\)?(?![A-Za-z0-9])", re.IGNORECASE)
_STATED_TEXT = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*[:\s]*([^\n]+)", re.IGNORECASE)
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.):]\s+\S", re.MULTILINE)
_LETTER_ALONE = re.compile(r"^\s*\(?([A-J])\)?[.)]?\s*$")
_LETTER_PAREN = re.compile(r"\(([A-J])\)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_CODE_FENCE = re.compile(r"```(?:[A-Za-z]+)?\n(.*?)```", re.DOTALL)
_LATEX_WRAP = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")


def prompt_has_options(prompt: str) -> bool:
    return len(set(_OPTION_LINE.findall(prompt or ""))) >= 2


def answer_key(text: str | None, prompt: str = "") -> str | None:
    """The normalised final answer of `text` (None when there is none to compare)."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = _cut_run_on(text)
    choice = prompt_has_options(prompt)
    for raw in _explicit(text):
        key = _normalise(raw, choice)
        if key:
            return key
    if choice:
        letter = _choice_fallback(text)
        if letter:
            return letter
    code = _CODE_FENCE.findall(text)
    if code and ("def " in code[-1] or "return" in code[-1]):
        return "code:" + re.sub(r"\s+", " ", code[-1]).strip()[:MAX_KEY]
    numbers = _NUMBER.findall(text)
    if numbers:
        return _number(numbers[-1])
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return _normalise(lines[-1], choice) if lines else None


def answer_evidence(prompt: str, texts: list[str | None]) -> tuple[list[str | None], list[float]]:
    """Per answer to one prompt: its key, and the share of the prompt's tests it passes (NaN: not checked —
    the prompt states no test or the answer is not code). Runs programs only when the prompt states tests."""
    keys = [answer_key(t, prompt) for t in texts]
    checks = [float("nan")] * len(texts)
    for i, found in enumerate(checked_answers(prompt, texts) or ()):
        if found is not None:
            keys[i], checks[i] = found
    return keys, checks


def _cut_run_on(text: str) -> str:
    match = _RUN_ON.search(text)
    return text[: match.start()] if match and match.start() > 0 else text


def _explicit(text: str):
    """Candidate answers from explicit markers, most specific first."""
    found = _JSON_ANSWER.findall(text)
    if found:
        quoted, bare = found[-1]
        yield (quoted or bare).replace('\\"', '"')
    boxed = _last_boxed(text)
    if boxed is not None:
        yield boxed
    gsm = _GSM8K.findall(text)
    if gsm:
        yield gsm[-1]
    stated = _STATED.findall(text)
    if stated:
        yield stated[-1]
    stated_text = _STATED_TEXT.findall(text)
    if stated_text:
        yield stated_text[-1]


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def _choice_fallback(text: str) -> str | None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines:
        alone = _LETTER_ALONE.match(lines[0]) or _LETTER_ALONE.match(lines[-1])
        if alone:
            return alone.group(1)
    parens = _LETTER_PAREN.findall(text)
    return parens[-1] if parens else None


def _number(raw: str) -> str | None:
    try:
        value = Decimal(raw.replace(",", ""))
        if value == value.to_integral_value():
            return str(value.quantize(Decimal(1)))
        return format(value.normalize(), "f")
    except InvalidOperation:  # too long to quantise: compare the digits as written
        return raw.replace(",", "")[:MAX_KEY]


def _normalise(raw: str, choice: bool) -> str | None:
    s = _LATEX_WRAP.sub(r"\1", raw.strip())
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("$", "").replace("**", "").strip().rstrip(".").strip()
    if not s:
        return None
    if choice:
        letter = re.fullmatch(r"\(?([A-Ja-j])\)?(?:[.):]\s*.*)?", s)
        if letter:
            return letter.group(1).upper()
    plain = re.sub(r"\s+", "", s)
    if _NUMBER.fullmatch(plain.replace("\\%", "").replace("%", "")):
        return _number(plain.replace("\\%", "").replace("%", ""))
    unit = re.fullmatch(r"(-?[\d,]*\.?\d+)\s*[A-Za-z%\\ ]{0,16}", s)
    if unit:
        return _number(unit.group(1))
    return re.sub(r"\s+", " ", s.lower())[:MAX_KEY]

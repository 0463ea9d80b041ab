"""How a local rung is asked for an answer of a given type: the prompt format it follows, where it stops, and
how many tokens the answer may take (docs/answer-formats.md).

Small local models (SmolLM2-135M, Gemma 3 270M) asked a bare question ramble: "What is 12 times 7?" drew 384
tokens of unrelated text, or "7 is a large number.". Told what shape of answer is wanted — and stopped once it
is given — they answer in a few tokens, and their answers parse. The expected kind comes from the caller's
answer type where it gave one, else from the prompt's shape (escalon.answers.infer_answer_type, the guess the
judges make too, so the rung is asked for what the judges will parse):

  number    "Write only the arithmetic expression…"  stop at the line's end   32 tokens   first sample greedy
            — the model writes the calculation, Escalon works it out (calculated())
  choice    "Answer with the letter … only."         stop at the line's end    8 tokens   first sample greedy
  yes_no    "Answer yes or no."                      stop at the line's end    8 tokens   first sample greedy
  short     "Answer in a few words."                 stop at the line's end   32 tokens
  code      the prompt as sent                       stop at a new question  384 tokens
  long      the prompt as sent                       stop at a new question  256 tokens

A chat rung gets the instruction after the question inside its chat template; a completion (base) rung gets a
"Question: … / Answer:" frame ("Calculation:" for numbers) with worked examples of the same kind, which a base
model continues far more reliably than an instruction. The caller's own max_tokens still bounds the cap, and its stop strings are kept.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from fractions import Fraction

from escalon.answer_keys import prompt_has_options
from escalon.answers import infer_answer_type
from escalon.gen.common.v1.common_pb2 import AnswerType

KINDS = ("number", "choice", "yes_no", "short", "code", "long")

#: Free text that asks for more than a phrase: an explanation, a piece of writing, a list.
_LONG_FORM = re.compile(
    r"\b(explain|describe|discuss|compare|summari[sz]e|essay|story|poem|paragraph|outline|list|write|draft|"
    r"why|how (do|does|can|should|would)|steps?)\b",
    re.IGNORECASE,
)
_QUANTITY = re.compile(r"\bhow (many|much|long|far|old)\b", re.IGNORECASE)  # a number, even with its figures in words
_SHORT_LIMIT = 200  # characters: a longer free-text prompt is long form whatever it asks
_RUN_ON_STOPS = ("\nQuestion:", "\n\nQuestion", "\nQ:")


@dataclass(frozen=True)
class AnswerFormat:
    kind: str
    instruction: str  # said after the question to a chat rung; "" leaves the prompt as sent
    stop: tuple[str, ...]
    max_tokens: int
    greedy_first: bool  # the first sample is greedy (the model's best guess); the others keep the temperature
    examples: tuple[tuple[str, str], ...] = ()  # (question, answer) shown to completion rungs
    calculate: bool = False  # the model writes the calculation; Escalon works it out (calculated())
    label: str = "Answer"  # what a completion rung's frame calls the answer


FORMATS: dict[str, AnswerFormat] = {
    "number": AnswerFormat(
        "number", "Write only the arithmetic expression that computes the answer, using numbers and + - * /.",
        ("\n",), 32, True,
        (("What is 3 times 4?", "3 * 4"), ("What is 10% of 50?", "10% * 50"),
         ("Tom has 5 bags with 6 apples each and gives away 4 apples. How many apples does he have left?",
          "5 * 6 - 4")),
        calculate=True, label="Calculation",
    ),
    "choice": AnswerFormat(
        "choice", "Answer with the letter of the correct option only.", ("\n",), 8, True,
        (("Which is a fruit?\nA. carrot\nB. apple\nC. potato", "B"),
         ("Which number is even?\nA. 4\nB. 7\nC. 9", "A")),
    ),
    "yes_no": AnswerFormat(
        "yes_no", "Answer yes or no.", ("\n",), 8, True,
        (("Is water wet?", "yes"), ("Is 7 an even number?", "no")),
    ),
    "short": AnswerFormat(
        "short", "Answer in a few words.", ("\n",), 32, False,
        (("What is the capital of France?", "Paris"), ("Who wrote Hamlet?", "William Shakespeare")),
    ),
    "code": AnswerFormat("code", "", _RUN_ON_STOPS, 384, False),
    "long": AnswerFormat("long", "", _RUN_ON_STOPS, 256, False),
}


@dataclass(frozen=True)
class ShapedPrompt:
    """What a local rung is sent for one request: the text, its stop strings, its token cap, and greediness."""

    kind: str
    prompt: str
    stop: tuple[str, ...]
    max_tokens: int
    greedy_first: bool
    calculate: bool = False

    def finish(self, text: str, finish_reason: str = "stop") -> tuple[str, str]:
        """A sample's text and finish reason as the rung returns them. For a calculated kind: the calculation worked
        out, and "stop" — the answer is complete even when the model ran on to its token limit after writing it —
        unless the limit may have cut the calculation itself (it ends the text: the text is left as it is)."""
        found = _work_out(text) if self.calculate else None
        if found is None or (finish_reason == "length" and found[1]):
            return text, finish_reason
        return found[0], "stop"


def answer_kind(prompt: str, answer_type: int = AnswerType.ANSWER_TYPE_UNSPECIFIED) -> str:
    """The kind of answer a question expects: one of KINDS. The caller's answer type wins; without one, the
    prompt's shape decides (options listed → choice, code → code, a number question → number, …), and free
    text is short unless the prompt is long or asks for an explanation or a piece of writing."""
    if answer_type not in AnswerType.values():
        raise ValueError(f"unknown answer type {answer_type}; expected one of {sorted(AnswerType.values())}")
    if answer_type == AnswerType.ANSWER_TYPE_UNSPECIFIED:
        answer_type = infer_answer_type(prompt)
        if answer_type == AnswerType.ANSWER_TYPE_FREE_TEXT and prompt_has_options(prompt):
            answer_type = AnswerType.ANSWER_TYPE_CHOICE
        elif answer_type == AnswerType.ANSWER_TYPE_FREE_TEXT and _QUANTITY.search(prompt):
            answer_type = AnswerType.ANSWER_TYPE_NUMBER
    if answer_type == AnswerType.ANSWER_TYPE_NUMBER:
        return "number"
    if answer_type == AnswerType.ANSWER_TYPE_CHOICE:
        return "choice"
    if answer_type == AnswerType.ANSWER_TYPE_YES_NO:
        return "yes_no"
    if answer_type == AnswerType.ANSWER_TYPE_CODE:
        return "code"
    text = prompt.strip()
    if len(text) > _SHORT_LIMIT or "\n" in text or _LONG_FORM.search(text):
        return "long"
    return "short"


_KIND_TYPES = {"number": AnswerType.ANSWER_TYPE_NUMBER, "choice": AnswerType.ANSWER_TYPE_CHOICE,
               "yes_no": AnswerType.ANSWER_TYPE_YES_NO, "code": AnswerType.ANSWER_TYPE_CODE,
               "short": AnswerType.ANSWER_TYPE_FREE_TEXT, "long": AnswerType.ANSWER_TYPE_FREE_TEXT}


def expected_answer_type(prompt: str, answer_type: int = AnswerType.ANSWER_TYPE_UNSPECIFIED) -> int:
    """The caller's answer type, or the one the prompt's shape implies (never UNSPECIFIED): the router resolves a
    query's type once, so that its rungs are asked for, and its judges parse, the same kind of answer."""
    return answer_type or _KIND_TYPES[answer_kind(prompt, answer_type)]


def shape_prompt(prompt: str, answer_type: int, prompt_format: str, *, max_tokens: int,
                 stop: tuple[str, ...] = ()) -> ShapedPrompt:
    """The request a local rung runs for `prompt`: `prompt_format` is the rung's (chat | completion); the
    caller's `max_tokens` bounds the kind's cap and its `stop` strings come first."""
    fmt = FORMATS[answer_kind(prompt, answer_type)]
    question = prompt.strip()
    if prompt_format == "chat":
        text = f"{question}\n{fmt.instruction}" if fmt.instruction else prompt
    elif fmt.examples:
        shots = "".join(f"Question: {q}\n{fmt.label}: {a}\n\n" for q, a in fmt.examples)
        text = f"{shots}Question: {question}\n{fmt.label}:"
    else:
        text = prompt
    stops = tuple(dict.fromkeys((*stop, *fmt.stop)))
    return ShapedPrompt(fmt.kind, text, stops, max(1, min(max_tokens, fmt.max_tokens)), fmt.greedy_first,
                        fmt.calculate)


_EXPRESSION = r"[\d.\s()+\-*/]+"
_CHAIN = re.compile(rf"{_EXPRESSION}(?:=(?!=){_EXPRESSION})*")  # "0.15 * 80 = 1.15 * 80 = 92": one chain
_HAS_OPERATOR = re.compile(r"\d\s*\)*\s*[-+*/]\s*\(*\s*-?\.?\d")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_EXPRESSION = 200  # characters: a calculation is short; anything longer is not worked out


def calculated(text: str) -> str:
    """The text's calculation worked out exactly, as `expression = value`; the text unchanged when it holds none
    (its last number is then its answer). The calculation is the last chain of equalities in the text that holds
    arithmetic (numbers, + - * / and brackets), read at its first expression: in "15% of 80 is 0.15 * 80 =
    1.15 * 80 = 92" the model set the question up right and then slipped, so 0.15 * 80 is what it meant.

    Program-aided answering (Gao et al. 2023, PAL; Chen et al. 2023, Program of Thoughts): a 135M model turns
    "What is 12 times 7?" into "12 * 7" reliably but multiplies badly ("12 * 7 = 88"), so the model writes the
    calculation and Python's own parser evaluates it. Only numeric literals and the four operations are
    evaluated (an ast walk, never eval); "15% of 80" reads as (15 / 100) * 80, a percentage beside an operator as
    (15 / 100), `×` and `÷` as * and /."""
    found = _work_out(text)
    return found[0] if found else text


def _work_out(text: str) -> tuple[str, bool] | None:
    """`expression = value` for the text's calculation (calculated()), and whether it may be unfinished (it ends the
    text with no "=" after it: a token limit may have cut it); None when the text holds no calculation."""
    plain = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text).replace("×", "*").replace("÷", "/")
    plain = re.sub(r"(\d+(?:\.\d+)?)\s*%\s*of\s+(?=[\d(.])", r"(\1 / 100) * ", plain)  # "15% of 80"
    plain = re.sub(r"(\d+(?:\.\d+)?)\s*%(?=\s*[-+*/])", r"(\1 / 100)", plain)  # "15% * 80"
    plain = re.sub(r"([-+*/]\s*)(\d+(?:\.\d+)?)\s*%", r"\1(\2 / 100)", plain)  # "80 * 15%"
    found = None
    for chain in _CHAIN.finditer(plain):
        parts = [part.strip() for part in chain.group(0).split("=")]
        for i, expression in enumerate(parts):
            if len(expression) > _MAX_EXPRESSION or not _HAS_OPERATOR.search(expression):
                continue
            if (value := _evaluate(expression)) is not None:
                # an expression followed by "=" is closed; the chain's last one may be cut if the text ends there
                open_end = i == len(parts) - 1 and chain.end() >= len(plain.rstrip())
                found = (f"{expression} = {_decimal(value)}", open_end)
                break  # the chain's first calculation
    return found


def _evaluate(expression: str) -> Fraction | None:
    try:
        tree = ast.parse(expression, mode="eval")
        return _value(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))  # exact: 0.1 * 3 is 0.3, not 0.30000000000000004
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(node.operand))
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def _decimal(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")

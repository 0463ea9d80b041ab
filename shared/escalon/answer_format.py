"""How a local rung is asked for an answer of a given type: the prompt format it follows, where it stops, and
how many tokens the answer may take (docs/answer-formats.md).

Small local models (SmolLM2-135M, Gemma 3 270M) asked a bare question ramble: "What is 12 times 7?" drew 384
tokens of unrelated text, or "7 is a large number.". Told what shape of answer is wanted — and stopped once it
is given — they answer in a few tokens, and their answers parse. The expected kind comes from the caller's
answer type where it gave one, else from the prompt's shape (escalon.answers.infer_answer_type, the guess the
judges make too, so the rung is asked for what the judges will parse):

  number    "Answer with the number only."        stop at the line's end     16 tokens   first sample greedy
  choice    "Answer with the letter only."         stop at the line's end      8 tokens   first sample greedy
  yes_no    "Answer yes or no."                    stop at the line's end      8 tokens   first sample greedy
  short     "Answer in a few words."               stop at the line's end     32 tokens
  code      the prompt as sent                     stop at a new question    384 tokens
  long      the prompt as sent                     stop at a new question    256 tokens

A chat rung gets the instruction after the question inside its chat template; a completion (base) rung gets a
"Question: … / Answer:" frame with two worked examples of the same kind, which a base model continues far more
reliably than an instruction. The caller's own max_tokens still bounds the cap, and its stop strings are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


FORMATS: dict[str, AnswerFormat] = {
    "number": AnswerFormat(
        "number", "Answer with the number only.", ("\n",), 16, True,
        (("What is 3 times 4?", "12"), ("Anna has 5 apples and eats 2. How many apples are left?", "3")),
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


def shape_prompt(prompt: str, answer_type: int, prompt_format: str, *, max_tokens: int,
                 stop: tuple[str, ...] = ()) -> ShapedPrompt:
    """The request a local rung runs for `prompt`: `prompt_format` is the rung's (chat | completion); the
    caller's `max_tokens` bounds the kind's cap and its `stop` strings come first."""
    fmt = FORMATS[answer_kind(prompt, answer_type)]
    question = prompt.strip()
    if prompt_format == "chat":
        text = f"{question}\n{fmt.instruction}" if fmt.instruction else prompt
    elif fmt.examples:
        shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in fmt.examples)
        text = f"{shots}Question: {question}\nAnswer:"
    else:
        text = prompt
    stops = tuple(dict.fromkeys((*stop, *fmt.stop)))
    return ShapedPrompt(fmt.kind, text, stops, max(1, min(max_tokens, fmt.max_tokens)), fmt.greedy_first)

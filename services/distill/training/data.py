"""Distillation data sets: one JSON object per line, written by the `harvest` job and read by `undo`/`siked`.

    {"id": "...", "prompt": "...", "answer": "42", "answer_type": "number", "split": "train",
     "source": "...", "meta": {...}}

`answer` is the gold (or judge-confirmed) final answer in the judge's canonical form. Whether an answer
text is right is decided by the judge service's own parser (escalon.answers), so a student is scored
exactly as the router's judges would read it; a program-of-thought answer ("[pot]: ..." or a program) is
executed in the sandbox first.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from escalon.distill.training.sandbox import SandboxError, extract_program, run_program
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.answers import parse_answer

ANSWER_TYPES = {
    "number": AnswerType.ANSWER_TYPE_NUMBER,
    "choice": AnswerType.ANSWER_TYPE_CHOICE,
    "yes-no": AnswerType.ANSWER_TYPE_YES_NO,
    "free-text": AnswerType.ANSWER_TYPE_FREE_TEXT,
}
SPLITS = ("train", "val", "test")
STRATEGY = re.compile(r"^\s*\[(cot|l2m|pot)\]\s*:\s*", re.IGNORECASE)


@dataclass
class Item:
    id: str
    prompt: str
    answer: str
    answer_type: str = "number"
    split: str = "train"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Item:
        known = {k: raw[k] for k in ("id", "prompt", "answer", "answer_type", "split", "source", "meta") if k in raw}
        return cls(**known)


def normalise_prompt(prompt: str) -> str:
    return " ".join(prompt.split()).lower()


def item_id(prompt: str) -> str:
    return hashlib.sha1(normalise_prompt(prompt).encode()).hexdigest()[:16]


def read_items(path: Path | str) -> list[Item]:
    items = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    items.append(Item.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: not a data set line ({exc})") from None
    return items


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    from escalon.files import atomic_write

    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def items_as_rows(items: Iterable[Item]) -> list[dict[str, Any]]:
    return [asdict(i) for i in items]


def by_split(items: list[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for item in items:
        out.setdefault(item.split, []).append(item)
    return out


def strategy_of(text: str) -> tuple[str | None, str]:
    """('cot'|'l2m'|'pot'|None, the solution without its tag)."""
    match = STRATEGY.match(text)
    if not match:
        return None, text
    return match.group(1).lower(), text[match.end():]


def final_answer(text: str, answer_type: str = "number") -> str | None:
    """The final answer an output states, as the judges parse it; programs are run in the sandbox first."""
    strategy, body = strategy_of(text)
    if strategy == "pot" or (strategy is None and "print(" in body and "####" not in body):
        try:
            printed = run_program(extract_program(body))
        except SandboxError:
            return None
        if printed is None:
            return None
        return parse_answer(printed, ANSWER_TYPES.get(answer_type, AnswerType.ANSWER_TYPE_NUMBER))
    return parse_answer(body, ANSWER_TYPES.get(answer_type, AnswerType.ANSWER_TYPE_NUMBER))


def canonical(answer: str, answer_type: str = "number") -> str | None:
    return parse_answer(str(answer), ANSWER_TYPES.get(answer_type, AnswerType.ANSWER_TYPE_NUMBER))


def is_correct(text: str, item: Item) -> bool:
    parsed = final_answer(text, item.answer_type)
    return parsed is not None and parsed == canonical(item.answer, item.answer_type)

"""How the labeller's LLM scores the candidate labels of one query (escalon.offline.labelling.labeller).

Three ways to score, by what the rung exposes (all three measured in docs/routing.md):
- channel (local rungs, the default there): log p(query | the candidate's examples), the noisy-channel direction
  of few-shot classification — how well each label's examples predict the query's own tokens. Every candidate
  scores the same tokens, so neither the names' lengths nor the candidates' order can bias it. Its sums over
  up to 96 tokens are overconfident as they are; they are divided by TEMPERATURE = 4 before the softmax (the
  value with the lowest log-loss for both small models on a development set drawn from the train split).
- label (local rungs): log p(label name tokens + end-of-label | an instruction listing the candidates with
  their examples, then the query) — the direct direction. The small models mostly follow the order the labels
  are listed in rather than the query, and contextual calibration (subtracting the score the same prompt gives
  the query "N/A") made it worse, so it is not the default.
- letters (any rung, including OpenAI-compatible endpoints): the candidates listed as (A), (B), (C); the
  probability of each letter at the first answer positions, read from the top-20 log-probs the way the P(True)
  judge reads (A)/(B) (escalon.judge.ptrue: same positions, same floor for a letter not listed), through the
  same JudgeModel interface (`BackendJudgeModel` in-process). Remote rungs can only do this: an OpenAI-compatible
  chat API returns log-probs of the tokens it generates (at most 20 alternatives each), never of tokens it is
  given, and the legacy `echo` + `logprobs` completion that would score given text is gone from OpenAI's current
  models (vLLM keeps it, but the remote backend does not send it). SmolLM2-135M and Gemma 3 270M answer "A" to
  almost every lettered question, so on them letters keep the classifier's order.

Local rungs are loaded by the serving backend (`LocalBackend`: the same weights, chat template and threads as a
serving replica); its generation API reports only the tokens it chooses, so the given tokens are scored here,
with one forward pass of its model per batch.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from escalon.errors import ConfigError
from escalon.judge.ptrue import POSITIONS, TOP_LOGPROBS

MAX_QUERY_CHARS = 600
MAX_EXAMPLE_CHARS = 200
TEMPERATURE = 4.0  # the channel scorer's sums of log-probs, tempered (see the docstring)
LETTERS = "ABCDEFGHIJKLMNOPQRST"  # as many as the top-20 log-probs can show
MODES = ("auto", "channel", "label", "letters")


@dataclass(frozen=True)
class LabelCard:
    """What the LLM is told about one candidate label."""

    name: str
    description: str = ""
    examples: tuple[str, ...] = ()


def _clip(text: str, limit: int) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


# ---- letters: the P(True) judge's reading, for any rung ----------------------------------------------------------


def letters_prompt(query: str, cards: Sequence[LabelCard], prompt_format: str) -> str:
    """The candidates as lettered options, in the P(True) judge's shape."""
    if len(cards) > len(LETTERS):
        raise ConfigError(f"{len(cards)} candidates exceed the {len(LETTERS)} letters the top-{TOP_LOGPROBS} "
                          "log-probs can show; lower --top-k", field="top_k")
    lines = ["Which task does the query belong to?", ""]
    for letter, card in zip(LETTERS, cards):
        parts = [f"({letter}) {card.name}"]
        if card.description:
            parts.append(f": {_clip(card.description, MAX_EXAMPLE_CHARS)}")
        if card.examples:
            parts.append(" — for example: " + " | ".join(f'"{_clip(e, MAX_EXAMPLE_CHARS)}"' for e in card.examples))
        lines.append("".join(parts))
    letters = LETTERS[: len(cards)]
    lines += ["", f"Query: {_clip(query, MAX_QUERY_CHARS)}", ""]
    if prompt_format == "completion":
        return "\n".join(lines) + "\nThe query belongs to task ("
    return "\n".join(lines) + f"\nReply with the letter only: {', '.join(letters[:-1])} or {letters[-1]}."


def read_letters(positions: Sequence[Sequence[tuple[str, float]]], n: int) -> np.ndarray | None:
    """P(letter) over the first n letters at the first position where any appears among the top alternatives;
    a letter missing from that position's list gets the smallest probability listed (escalon.judge.ptrue's
    rule, generalised from (A)/(B) to n options). None when no letter shows at all."""
    letters = LETTERS[:n]
    for top in positions[:POSITIONS]:
        mass = np.zeros(n)
        for token, logprob in top:
            t = token.strip().lstrip("(").strip().rstrip(").:").strip().upper()
            if len(t) == 1 and t in letters:
                mass[letters.index(t)] += math.exp(logprob)
        if not mass.any():
            continue
        floor = math.exp(min(lp for _, lp in top))
        mass = np.where(mass > 0, mass, floor)
        return mass / mass.sum()
    return None


# ---- scorers -----------------------------------------------------------------------------------------------------


class LabelScorer(Protocol):
    rung: str

    def score(self, query: str, cards: Sequence[LabelCard]) -> np.ndarray:
        """One log-score per card; a softmax over them is P(card | query)."""


def sequence_logprobs(model: Any, rows: Sequence[tuple[list[int], list[int]]], device: str = "cpu",
                      threads: int | None = None) -> np.ndarray:
    """Σ log p(continuation tokens | prefix) for each (prefix, continuation) row, in one forward pass of the
    right-padded batch: a pad after a row's tokens cannot change the causal logits of the tokens before it, so
    no attention mask is needed."""
    import torch

    if threads:
        torch.set_num_threads(threads)  # per calling thread (see LocalBackend._decode)
    longest = max(len(p) + len(c) for p, c in rows)
    batch = [p + c + [c[-1]] * (longest - len(p) - len(c)) for p, c in rows]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor(batch, device=device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        for row, (prefix, cont) in enumerate(rows):
            at = torch.arange(len(prefix) - 1, len(prefix) - 1 + len(cont), device=device)
            out.append(float(logp[row, at, torch.tensor(cont, device=device)].sum()))
    return np.array(out)


def label_prompt(query: str, cards: Sequence[LabelCard], prompt_format: str) -> str:
    """Each candidate with its description and example queries, then the query with its label left open; the
    candidates' names are what the model continues with (chat: as the assistant's reply)."""
    lines = ["Tasks, each with example queries:"]
    for card in cards:
        lines += ["", f"Task: {card.name}" + (f" ({_clip(card.description, MAX_EXAMPLE_CHARS)})" if card.description
                                              else "")]
        lines += [f"- {_clip(e, MAX_EXAMPLE_CHARS)}" for e in card.examples]
    lines += ["", f"Query: {_clip(query, MAX_QUERY_CHARS)}"]
    if prompt_format == "completion":
        return "\n".join(lines + ["Task:"])
    names = ", ".join(c.name for c in cards)
    return "\n".join(lines + ["", f"Which task does this query belong to ({names})? Reply with the task name only."])


def channel_prompt(card: LabelCard) -> str:
    """The channel direction's context: the candidate's description and examples, then the query to come."""
    head = f"Queries of the task {card.name}"
    if card.description:
        head += f" ({_clip(card.description, MAX_EXAMPLE_CHARS)})"
    lines = [head + ":"] + [f"\nQuery: {_clip(e, MAX_EXAMPLE_CHARS)}" for e in card.examples]
    return "\n".join(lines) + "\n\nQuery:"


class _LocalScorer:
    def __init__(self, backend: Any) -> None:
        self.backend = backend  # a loaded escalon.backends.local.LocalBackend
        self.rung = backend.rung.name

    def _run(self, rows: list[tuple[list[int], list[int]]]) -> np.ndarray:
        limit = self.backend.context_limit
        longest = max(len(p) + len(c) for p, c in rows)
        if longest > limit:
            raise ConfigError(f"a labelling prompt takes {longest} tokens, over rung {self.rung}'s context limit "
                              f"of {limit}; show fewer examples (--examples) or candidates (--top-k)")
        return sequence_logprobs(self.backend.model, rows, self.backend.device, self.backend.torch_threads)


class ChannelScorer(_LocalScorer):
    """log p(query | the candidate's examples) / TEMPERATURE, on the model as a plain language model (no chat
    template: the query continues a list of queries)."""

    max_query_tokens = 96  # the query's opening carries its task; the rest only costs time

    def __init__(self, backend: Any, temperature: float = TEMPERATURE) -> None:
        super().__init__(backend)
        self.temperature = temperature

    def score(self, query: str, cards: Sequence[LabelCard]) -> np.ndarray:
        tok = self.backend.tokenizer
        target = tok(" " + _clip(query, MAX_QUERY_CHARS), add_special_tokens=False)["input_ids"]
        target = target[: self.max_query_tokens]
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        rows = [(bos + tok(channel_prompt(c), add_special_tokens=False)["input_ids"], target) for c in cards]
        return self._run(rows) / self.temperature


class LabelTokensScorer(_LocalScorer):
    """log p(name tokens + end-of-label | label_prompt): the direct direction (see the docstring)."""

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        tok = backend.tokenizer
        if backend.rung.prompt_format == "chat":
            self._end = [tok.convert_tokens_to_ids(_chat_end_token(tok))]
        else:
            self._end = tok("\n", add_special_tokens=False)["input_ids"][-1:]

    def continuations(self, cards: Sequence[LabelCard]) -> list[list[int]]:
        lead = " " if self.backend.rung.prompt_format == "completion" else ""
        tok = self.backend.tokenizer
        # the end-of-label token: a name that is the start of another ("math", "mathqa") gains nothing
        return [tok(lead + c.name, add_special_tokens=False)["input_ids"] + self._end for c in cards]

    def score(self, query: str, cards: Sequence[LabelCard]) -> np.ndarray:
        prefix = self.backend.encode(label_prompt(query, cards, self.backend.rung.prompt_format))
        return self._run([(prefix, cont) for cont in self.continuations(cards)])


def _chat_end_token(tokenizer) -> str:
    """The token that ends an assistant turn in the model's chat template (<|im_end|>, <end_of_turn>, ...)."""
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                          tokenize=False)
    tail = probe[probe.rfind("y") + 1:]
    special = [t for t in tokenizer.all_special_tokens if t and t in tail]
    return min(special, key=tail.find) if special else tokenizer.eos_token


class LettersScorer:
    """The candidates as letters, scored from the first answer tokens' top log-probs of any rung, through a
    judge model (escalon.judge.ptrue.JudgeModel: in-process `BackendJudgeModel` or the ModelServing API)."""

    def __init__(self, judge_model: Any, rung: Any, timeout_s: float | None = None) -> None:
        self.judge_model = judge_model
        self.prompt_format = rung.prompt_format
        self.rung = rung.name
        self.timeout_s = timeout_s or rung.timeout_s
        self._loop = asyncio.new_event_loop()  # one loop for the scorer's life: HTTP clients stay bound to it

    def score(self, query: str, cards: Sequence[LabelCard]) -> np.ndarray:
        prompt = letters_prompt(query, cards, self.prompt_format)
        reply = self._loop.run_until_complete(self.judge_model.first_tokens(self.rung, prompt,
                                                                            timeout_s=self.timeout_s))
        p = read_letters(reply.positions, len(cards))
        if p is None:  # no letter in sight: the LLM says nothing and the classifier's share decides
            return np.zeros(len(cards))
        return np.log(p)

    def close(self) -> None:
        self._loop.close()


# ---- building a scorer from the catalogue ------------------------------------------------------------------------


def make_scorer(rung_name: str, *, mode: str = "auto", catalogue: Path | None = None, models_dir: Path | None = None,
                torch_threads: int | None = None) -> LabelScorer:
    """A loaded scorer for a catalogue rung: channel on local rungs (mode auto), letters on any other."""
    from escalon.offline.judging.live import BackendJudgeModel, load_local_backend
    from escalon.registry import load_catalogue

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}", field="mode")
    cat = load_catalogue(catalogue)
    if rung_name not in cat.by_name:
        raise ConfigError(f"unknown labeller rung {rung_name!r}; the catalogue has {', '.join(cat.names)} "
                          "(or --labeller none for the classifier alone)", field="labeller")
    rung = cat.get(rung_name, field="labeller")
    if rung.backend == "replay":
        raise ConfigError(f"rung {rung.name} replays recorded answers and cannot label new prompts; pick a local "
                          "or OpenAI-compatible rung", field="labeller")
    if mode in ("channel", "label") and not rung.is_local:
        raise ConfigError(f"rung {rung.name} is remote: an OpenAI-compatible endpoint returns log-probs of the tokens "
                          f"it generates only, so it cannot score given tokens ({mode}); use --mode letters",
                          field="mode")
    if rung.is_local:
        backend = load_local_backend(rung, models_dir, torch_threads)
        if mode in ("auto", "channel"):
            return ChannelScorer(backend)
        if mode == "label":
            return LabelTokensScorer(backend)
    else:
        from escalon.backends import make_backend

        backend = make_backend(rung, models_dir=models_dir or Path("."))
        backend.load()
    return LettersScorer(BackendJudgeModel(backend, rung), rung)

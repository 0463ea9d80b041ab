"""The taxonomy's slow path: an LLM labeller for queries that carry no free label (e.g. the router's own logs).

The fast path is the taxonomy's task head, p_fast(task | x) on the query embedding (escalon.router.taxonomy).
Where it is confident (max p_fast ≥ threshold, 0.8 as in the taxonomy's docstring) its label stands. Elsewhere
a real LLM chooses among the classifier's top-k labels (k = 3): it is shown, for each candidate, the training
prompts of that label nearest to the query (and a description where one is given), and it *scores* every
candidate instead of generating, so each answer is a valid label and comes with a distribution over the
shortlist. The label is the argmax of λ·p_llm + (1 − λ)·p_fast (p_fast renormalised over the shortlist; λ = 0.5);
source says which path chose it.

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
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from escalon.errors import ConfigError
from escalon.judge.ptrue import POSITIONS, TOP_LOGPROBS
from escalon.router.taxonomy import Taxonomy

DEFAULT_THRESHOLD = 0.8
DEFAULT_TOP_K = 3
DEFAULT_EXAMPLES = 2  # training prompts shown per candidate
DEFAULT_WEIGHT = 0.5  # λ: the LLM's share of the fused distribution
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


@dataclass(frozen=True)
class Labelled:
    label: str
    probability: float
    source: str  # "classifier" | "llm:<rung>"
    distribution: dict[str, float]  # what the label was chosen from: all classes (classifier) or the shortlist (llm)
    seconds: float = 0.0  # time spent in the LLM for this prompt (0 for the classifier)


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


# ---- the fast classifier and its examples ------------------------------------------------------------------------


@dataclass
class ExampleBank:
    """Training prompts per label, to show the LLM the ones nearest to the query."""

    vectors: np.ndarray  # [n, d] unit rows
    labels: np.ndarray  # [n]
    texts: list[str]
    _rows: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for label in np.unique(self.labels):
            self._rows[str(label)] = np.flatnonzero(self.labels == label)

    def nearest(self, vector: np.ndarray, label: str, m: int, exclude: str = "") -> tuple[str, ...]:
        rows = self._rows.get(label)
        if rows is None or m <= 0:
            return ()
        order = rows[np.argsort(-(self.vectors[rows] @ vector))]
        picked: list[str] = []
        for r in order:
            text = self.texts[r]
            if text.strip() != exclude.strip() and text not in picked:  # never the query itself as its own example
                picked.append(text)
            if len(picked) == m:
                break
        return tuple(picked)


@dataclass
class TaskClassifier:
    """The fast path: the taxonomy's task head on the encoder's embedding, with the cards the LLM is shown."""

    taxonomy: Taxonomy
    encoder: Any  # escalon.router.embedding.Encoder
    bank: ExampleBank | None = None
    descriptions: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.taxonomy.task.classes)

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        from escalon.router.embedding import cached_encode

        return cached_encode(self.encoder, list(prompts), self.cache_dir)

    def cards(self, query: str, vector: np.ndarray, labels: Sequence[str], examples: int) -> list[LabelCard]:
        return [LabelCard(label, self.descriptions.get(label, ""),
                          self.bank.nearest(vector, label, examples, exclude=query) if self.bank else ())
                for label in labels]

    @classmethod
    def from_benchmark(cls, benchmark: Path | str, encoder: str = "all-MiniLM-L6-v2", cache_dir: Path | None = None,
                       descriptions: dict[str, str] | None = None, seed: int = 0) -> TaskClassifier:
        """Fit the taxonomy on the benchmark's train split (task names are the free labels)."""
        from escalon.benchmark import load_benchmark
        from escalon.router.embedding import cached_encode, make_encoder
        from escalon.router.taxonomy import complexity_labels

        bench = load_benchmark(benchmark)
        train = bench.train_idx
        if len(train) == 0:
            raise ConfigError(f"benchmark {bench.path} has no train split to fit the taxonomy on", field="benchmark")
        enc = make_encoder(encoder, threads=1)
        texts = [bench.texts[i] for i in train]
        x = cached_encode(enc, texts, cache_dir)
        tasks = bench.tasks[train]
        cx, _ = complexity_labels(bench.scores[train])
        taxonomy = Taxonomy.fit(x, tasks, cx, seed=seed)
        return cls(taxonomy, enc, ExampleBank(x, tasks, texts), dict(descriptions or {}), cache_dir)

    @classmethod
    def from_artefact(cls, folder: Path | str, cache_dir: Path | None = None,
                      descriptions: dict[str, str] | None = None) -> TaskClassifier:
        """The router artefact's taxonomy. It keeps no training prompts, so the LLM sees the labels' names
        and the descriptions given here."""
        from escalon.router.artefact import load_artefact
        from escalon.router.embedding import make_encoder

        artefact = load_artefact(folder, field="artefact")
        return cls(artefact.model.taxonomy, make_encoder(artefact.model.encoder, threads=1), None,
                   dict(descriptions or {}), cache_dir)


# ---- the labeller ------------------------------------------------------------------------------------------------


class LLMLabeller:
    """Label prompts with the taxonomy's task classes: the classifier where it is sure, the LLM elsewhere."""

    def __init__(self, classifier: TaskClassifier, scorer: LabelScorer | None, *, threshold: float = DEFAULT_THRESHOLD,
                 top_k: int = DEFAULT_TOP_K, weight: float = DEFAULT_WEIGHT, examples: int = DEFAULT_EXAMPLES) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must lie in [0, 1], got {threshold}", field="threshold")
        if top_k < 2:
            raise ConfigError(f"top_k must be at least 2 (the LLM needs a choice), got {top_k}", field="top_k")
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"weight (λ, the LLM's share) must lie in [0, 1], got {weight}", field="weight")
        if examples < 0:
            raise ConfigError(f"examples must be 0 or more, got {examples}", field="examples")
        self.classifier = classifier
        self.scorer = scorer
        self.threshold, self.top_k, self.weight, self.examples = threshold, top_k, weight, examples

    def label(self, prompts: Sequence[str], progress: Callable[[Labelled], None] | None = None) -> list[Labelled]:
        classes = self.classifier.classes
        x = self.classifier.embed(prompts)
        p_fast = self.classifier.taxonomy.task_proba(x)
        out = []
        for prompt, vector, p in zip(prompts, x, p_fast):
            best = int(p.argmax())
            if self.scorer is None or p[best] >= self.threshold or len(classes) < 2:
                result = Labelled(classes[best], float(p[best]), "classifier",
                                  {c: float(v) for c, v in zip(classes, p)})
            else:
                result = self._ask(prompt, vector, p, classes)
            out.append(result)
            if progress is not None:
                progress(result)
        return out

    def _ask(self, prompt: str, vector: np.ndarray, p: np.ndarray, classes: list[str]) -> Labelled:
        shortlist = np.argsort(-p, kind="stable")[: min(self.top_k, len(classes))]
        names = [classes[i] for i in shortlist]
        started = time.perf_counter()
        scores = self.scorer.score(prompt, self.classifier.cards(prompt, vector, names, self.examples))
        seconds = time.perf_counter() - started
        p_llm = np.exp(scores - scores.max())
        p_llm /= p_llm.sum()
        p_short = p[shortlist] / p[shortlist].sum()
        fused = self.weight * p_llm + (1.0 - self.weight) * p_short
        pick = int(fused.argmax())
        return Labelled(names[pick], float(fused[pick]), f"llm:{self.scorer.rung}",
                        {n: float(v) for n, v in zip(names, fused)}, seconds)


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


# ---- files -------------------------------------------------------------------------------------------------------


def read_prompts(path: Path | str, column: str = "prompt") -> list[dict[str, Any]]:
    """Rows of a JSONL or parquet file that has a non-empty text column `column`; ConfigError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no input file at {path}; give a .jsonl or .parquet file with a {column!r} column",
                          field="in")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        try:
            rows = pd.read_parquet(path).to_dict("records")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a usage error
            raise ConfigError(f"cannot read {path} as parquet: {exc}", field="in") from None
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} line {number} is not JSON ({exc.msg}); write one JSON object a line",
                                  field="in") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path} line {number} is a {type(row).__name__}, not an object with a "
                                  f"{column!r} field", field="in")
            rows.append(row)
    else:
        raise ConfigError(f"{path} is neither .jsonl nor .parquet; convert it to one of them", field="in")
    if not rows:
        raise ConfigError(f"{path} holds no rows; nothing to label", field="in")
    missing = [i for i, r in enumerate(rows, start=1) if column not in r]
    if len(missing) == len(rows):
        seen = sorted({k for r in rows[:50] for k in r})
        raise ConfigError(f"{path} has no {column!r} column (it has: {', '.join(seen) or 'none'}); name the text "
                          "column with --column", field="column")
    empty = [i for i, r in enumerate(rows, start=1)
             if not isinstance(r.get(column), str) or not r.get(column).strip()]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ConfigError(f"{path}: row(s) {shown} have an empty or non-text {column!r}; drop them or fill them in",
                          field="in")
    return rows


def read_descriptions(path: Path | str | None) -> dict[str, str]:
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no descriptions file at {path}", field="descriptions") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON ({exc.msg}); give an object label → description",
                          field="descriptions") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"{path} must be a JSON object mapping each label to a description string",
                          field="descriptions")
    return {str(k): v for k, v in raw.items()}


def output_row(row: dict[str, Any], result: Labelled) -> dict[str, Any]:
    """The input row (JSON-safe) with the label fields added."""
    safe = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
    return {**safe, "label": result.label, "probability": round(result.probability, 6), "source": result.source,
            "distribution": {k: round(v, 6) for k, v in sorted(result.distribution.items(), key=lambda kv: -kv[1])}}

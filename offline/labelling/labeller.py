"""The taxonomy's slow path: an LLM labeller for queries that carry no free label (e.g. the router's own logs).

The fast path is the taxonomy's task head, p_fast(task | x) on the query embedding (escalon.router.taxonomy).
Where it is confident (max p_fast ≥ threshold, 0.8 as in the taxonomy's docstring) its label stands. Elsewhere
a real LLM chooses among the classifier's top-k labels (k = 3): it is shown, for each candidate, the training
prompts of that label nearest to the query (and a description where one is given), and it *scores* every
candidate instead of generating, so each answer is a valid label and comes with a distribution over the
shortlist. The label is the argmax of λ·p_llm + (1 − λ)·p_fast (p_fast renormalised over the shortlist; λ = 0.5);
source says which path chose it.
How the LLM scores its shortlist: escalon.offline.labelling.scorers; the files it reads and writes:
escalon.offline.labelling.rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from escalon.errors import ConfigError
from escalon.offline.labelling.scorers import LabelCard, LabelScorer
from escalon.router.taxonomy import Taxonomy

DEFAULT_THRESHOLD = 0.8
DEFAULT_TOP_K = 3
DEFAULT_EXAMPLES = 2  # training prompts shown per candidate
DEFAULT_WEIGHT = 0.5  # λ: the LLM's share of the fused distribution


@dataclass(frozen=True)
class Labelled:
    label: str
    probability: float
    source: str  # "classifier" | "llm:<rung>"
    distribution: dict[str, float]  # what the label was chosen from: all classes (classifier) or the shortlist (llm)
    seconds: float = 0.0  # time spent in the LLM for this prompt (0 for the classifier)


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

"""The Router API's Cascade over a benchmark's recorded answers, in-process — and the judge weights fitted on it.

The rungs are the serving service's own ReplayBackend over the benchmark file (the answer, cost and score a
replay rung returns over gRPC), the scorer is the judge panel in-process (PanelScorer): the decisions are the
ones the real services take, without the network. `fit_judge_weights` fits the panel's logistic aggregation
(JudgeWeights) on attempts whose correctness is known — on training rows only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import numpy as np

from escalon.judging import JudgeWeights
from escalon.registry import Catalogue, Rung
from escalon.benchmark import Benchmark, model_family
from escalon.router.cascade import Cascade, CascadeResult, Generation, SamplingConfig
from escalon.offline.evaluation.inprocess import PanelScorer
from escalon.router.policy import RoutePlan, RouteQuery
from escalon.backends.base import GenerateParams
from escalon.backends.replay import ReplayBackend

CORRECT = 0.5  # a recorded score at or above this counts as a correct answer when fitting judge weights


def replay_catalogue(bench: Benchmark, cost_intercept: np.ndarray | None = None,
                     cost_slope: np.ndarray | None = None) -> Catalogue:
    """One replay rung per benchmark model; prices approximate the fitted cost model (they only bound budgets:
    the recorded cost is what a replay charges)."""
    rungs = []
    for j, (model, name) in enumerate(zip(bench.models, bench.rung_names())):
        per_char = float(cost_slope[j]) if cost_slope is not None else 0.0
        fixed = float(cost_intercept[j]) if cost_intercept is not None else float(np.nanmean(bench.costs[:, j]))
        rungs.append(Rung(name=name, family=model_family(model), backend="replay", model=model,
                          benchmark=bench.path, max_tokens=256,
                          price={"input_per_1m": max(per_char, 0.0) * 4e6,
                                 "output_per_1m": max(fixed, 0.0) / 256 * 1e6}))
    return Catalogue(rungs=rungs)


class ReplayGenerator:
    """The cascade's Generator over ReplayBackends, loaded once per rung."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.backends: dict[str, ReplayBackend] = {}
        self.catalogue = catalogue

    def backend(self, rung: Rung) -> ReplayBackend:
        if rung.name not in self.backends:
            backend = ReplayBackend(rung)
            backend.load()
            self.backends[rung.name] = backend
        return self.backends[rung.name]

    async def generate(self, rung: Rung, prompt: str, *, n: int, temperature: float, max_tokens: int,
                       on_text: Callable[[str], Awaitable[None]] | None = None, answer_type: int = 0) -> Generation:
        result = await self.backend(rung).generate(GenerateParams(prompt=prompt, max_tokens=max_tokens, n=1,
                                                                  temperature=temperature))
        return Generation([s.text for s in result.samples], float(result.cost_usd or 0.0), 0.0,
                          result.input_tokens, result.output_tokens)


class CachedScorer:
    """PanelScorer with a memory: a λ sweep asks the same question of the same answers many times; the panel
    is deterministic, so a repeated call returns the first call's Judgement unchanged."""

    def __init__(self, scorer: PanelScorer | None = None) -> None:
        self.scorer = scorer or PanelScorer()
        self._memo: dict = {}

    async def score(self, prompt, candidates, references, answer_type, **signals):
        key = (prompt, tuple(candidates), tuple(references), answer_type, signals.get("predicted_success"),
               id(signals.get("weights")))
        if key not in self._memo:
            self._memo[key] = await self.scorer.score(prompt, candidates, references, answer_type, **signals)
        return self._memo[key]


def in_process_cascade(catalogue: Catalogue) -> Cascade:
    return Cascade(catalogue, ReplayGenerator(catalogue), CachedScorer(), SamplingConfig(remote_samples=1))


def run_plans(cascade: Cascade, queries: list[RouteQuery], plans: list[RoutePlan]) -> list[CascadeResult]:
    async def go():
        return [await cascade.run(q, p) for q, p in zip(queries, plans)]

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(go())
    # called from async code (e.g. escalon bench): run the sweep on its own loop in a worker thread
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


FEATURE_JUDGES = ("agreement", "entropy", "fsd", "cross_model", "predicted_success")


def fit_judge_weights(attempts: list[tuple[tuple, float]], version: str = "") -> JudgeWeights | None:
    """Logistic regression of correctness on each judge's (score when it ran, skipped) over attempts.
    `attempts`: (JudgeVerdicts, recorded score). None when the labels are all one class."""
    from sklearn.linear_model import LogisticRegression

    if len(attempts) < 20:
        return None
    rows, labels = [], []
    for verdicts, score in attempts:
        by_judge = {v.judge: v for v in verdicts}
        row = []
        for judge in FEATURE_JUDGES:
            v = by_judge.get(judge)
            ran = v is not None and not v.skipped
            row += [v.score if ran else 0.0, 0.0 if ran else 1.0]
        rows.append(row)
        labels.append(score >= CORRECT)
    y = np.array(labels)
    if y.all() or not y.any():
        return None
    x = np.array(rows)
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    w = clf.coef_[0]
    weights = {}
    for k, judge in enumerate(FEATURE_JUDGES):
        if x[:, 2 * k].any() or x[:, 2 * k + 1].all():
            weights[judge] = (float(w[2 * k]), float(w[2 * k + 1]))
    bias = float(clf.intercept_[0])
    if not all(math.isfinite(v) for pair in weights.values() for v in pair):
        return None
    return JudgeWeights(bias, weights, version)

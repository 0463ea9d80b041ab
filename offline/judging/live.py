"""`escalon judge live`: the judges on live samples of a local model, n = 1, 3, 5, 10 samples per question.

A small question set with gold answers is built from the shared benchmarks' prompts (seeded, written to
questions.jsonl): GSM8K questions from the RouteLLM recordings whose gold is GPT-4's recorded answer where
its score is 1, and multiple-choice questions (MMLU, ARC-Challenge, CommonsenseQA, OpenBookQA) from
LLMRouter's query files, which carry the gold letter. The local rung (SmolLM2-135M by default, through the
serving backend in-process: same decoding, logprobs and per-position statistics as the service) samples
n_max answers per question at temperature T; the first n of them are the n-sample answer (nested, as in the
consistency papers). Generations are cached on disk (cache/), so a re-run only re-judges.

Per n: the majority answer is labelled right or wrong against the gold; every judge scores it through the
judge engine (agreement, entropy, fsd from n ≥ 2; token_confidence and self_certainty from the logprobs;
format, hedging; p_true from a judge rung of another family; deferral, a logistic regression on token
features). Calibration is cross-fitted by question (k folds: fit on the others, predict the held-out fold),
so no label is used to predict itself; the deferral model is nested inside the same folds.

Judge cost per query at n: the extra samples (n − 1) × the mean answer length in tokens, at the rung's
catalogue price, plus the measured seconds of generating n samples as one batch; plus the judge rung's
tokens and seconds for p_true.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.answers import parse_answer
from escalon.offline.judging.calibration_fit import fit_deferral
from escalon.judge.engine import JudgeEngine
from escalon.offline.judging.metrics import fmt
from escalon.judge.panel import Candidate
from escalon.judge.ptrue import POSITIONS, TOP_LOGPROBS, FirstTokens
from escalon.offline.judging.reporting import (
    Item,
    clean,
    concat,
    metrics_table,
    predict,
    reliability_figure,
    summarise,
    write_text,
)
from escalon.judge.tokens import FEATURES, TokenStat, borda_vote, features, mean_self_certainty
from escalon.registry import Catalogue, Rung, load_catalogue

log = logging.getLogger(__name__)

FORMAT = "escalon.judge-live-report/v1"
CHOICE_TASKS = ("mmlu", "arc_challenge", "commonsense_qa", "openbook_qa")
LIVE_JUDGES = ("agreement", "entropy", "fsd", "token_confidence", "self_certainty", "deferral", "format", "hedging",
               "p_true")
NUMBER, CHOICE = AnswerType.ANSWER_TYPE_NUMBER, AnswerType.ANSWER_TYPE_CHOICE


class BackendJudgeModel:
    """P(True) from a serving backend called in-process (the same backend class the serving replicas run)."""

    def __init__(self, backend: Any, rung: Rung) -> None:
        self.backend = backend
        self.rung = rung

    @classmethod
    def load(cls, rung: Rung, models_dir: Path | None = None, torch_threads: int | None = None) -> BackendJudgeModel:
        return cls(load_local_backend(rung, models_dir, torch_threads), rung)

    async def first_tokens(self, rung: str, prompt: str, *, timeout_s: float) -> FirstTokens:
        from escalon.backends import GenerateParams

        started = time.perf_counter()
        result = await asyncio.wait_for(self.backend.generate(GenerateParams(
            prompt=prompt, max_tokens=POSITIONS, temperature=0.0, logprobs=True, top_logprobs=TOP_LOGPROBS)),
            timeout=timeout_s)
        sample = result.samples[0]
        return FirstTokens(tuple(tuple(t.top) for t in sample.logprobs), result.input_tokens, result.output_tokens,
                           self.rung.cost(result.input_tokens, result.output_tokens),
                           (time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self.backend.model = None


def load_local_backend(rung: Rung, models_dir: Path | None = None, torch_threads: int | None = None):
    from escalon.config import load_settings
    from escalon.backends.local import LocalBackend
    from escalon.serving.settings import ServingSettings

    folder = models_dir or load_settings(ServingSettings).models_dir
    backend = LocalBackend(rung, models_dir=folder, torch_threads=torch_threads)
    backend.load()
    return backend


# ---- the question set ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    qid: str
    task: str
    prompt: str
    gold: str
    answer_type: int
    max_tokens: int


def build_questions(routing_data: Path, *, count: int = 48, gsm8k_share: float = 0.25, seed: int = 0,
                    max_tokens_choice: int = 24, max_tokens_number: int = 128) -> list[Question]:
    import pandas as pd

    rng = random.Random(seed)
    n_gsm = round(count * gsm8k_share)
    questions: list[Question] = []
    recorded = pd.read_parquet(routing_data / "routellm-evals" / "benchmark.parquet")
    gpt4 = recorded[(recorded["task"] == "gsm8k") & (recorded["model"] == "gpt-4-1106-preview")
                    & (recorded["score"] == 1) & (recorded["split"] == "test") & recorded["response"].notna()]
    rows = gpt4.sort_values("prompt_id").to_dict("records")
    rng.shuffle(rows)
    for row in rows:
        if len([q for q in questions if q.task == "gsm8k"]) >= n_gsm:
            break
        gold = parse_answer(row["response"], NUMBER)
        if gold is None or len(row["prompt"]) > 600:
            continue
        prompt = (f"{row['prompt'].strip()}\nSolve it step by step, then give the final answer as "
                  "'The answer is N'.")
        questions.append(Question(str(row["prompt_id"]), "gsm8k", prompt, gold, NUMBER, max_tokens_number))
    queries = [json.loads(line) for line in (routing_data / "llmrouter-dcrouter" / "default_query_test.jsonl")
               .read_text().splitlines() if line.strip()]
    by_task = {t: [q for q in queries if q["task_name"] == t] for t in CHOICE_TASKS}
    for items in by_task.values():
        rng.shuffle(items)
    n_choice = count - len(questions)
    k = 0
    while n_choice > 0 and any(by_task.values()):
        task = CHOICE_TASKS[k % len(CHOICE_TASKS)]
        k += 1
        if not by_task[task]:
            continue
        q = by_task[task].pop()
        options = _options(q.get("choices"))
        if not options or q.get("ground_truth") not in [label for label, _ in options] or len(q["query"]) > 500:
            continue
        lines = "\n".join(f"{label}. {text}" for label, text in options)
        prompt = f"{q['query'].strip()}\n\n{lines}\n\nAnswer with the letter of the correct option."
        questions.append(Question(f"{task}:{len(questions)}", task, prompt, q["ground_truth"], CHOICE, max_tokens_choice))
        n_choice -= 1
    return questions


def _options(raw: Any) -> list[tuple[str, str]] | None:
    if not raw:
        return None
    value = ast.literal_eval(raw) if isinstance(raw, str) else raw
    if isinstance(value, dict) and "text" in value:
        labels = value.get("label") or [chr(65 + i) for i in range(len(value["text"]))]
        return list(zip(labels, value["text"]))
    if isinstance(value, list):
        return [(chr(65 + i), str(text).rstrip(".")) for i, text in enumerate(value)]
    return None


# ---- generation with a disk cache ------------------------------------------------------------------------------


@dataclass
class Generations:
    texts: list[str]
    stats: list[list[TokenStat]]
    output_tokens: list[int]
    input_tokens: int
    seconds: float


def _cache_key(rung: Rung, q: Question, n: int, temperature: float, seed: int) -> str:
    raw = json.dumps([rung.name, rung.model, q.prompt, n, temperature, q.max_tokens, seed])
    return hashlib.sha1(raw.encode()).hexdigest()


async def generate_cached(backend: Any, rung: Rung, q: Question, *, n: int, temperature: float, seed: int,
                          cache: Path) -> Generations:
    from escalon.backends import GenerateParams

    path = cache / f"{_cache_key(rung, q, n, temperature, seed)}.json"
    if path.is_file():
        raw = json.loads(path.read_text())
        return Generations(raw["texts"], [[TokenStat(*t) for t in s] for s in raw["stats"]], raw["output_tokens"],
                           raw["input_tokens"], raw["seconds"])
    started = time.perf_counter()
    result = await backend.generate(GenerateParams(prompt=q.prompt, max_tokens=q.max_tokens, n=n,
                                                   temperature=temperature, logprobs=True, seed=seed))
    seconds = time.perf_counter() - started
    gen = Generations([s.text for s in result.samples],
                      [[TokenStat(t.logprob, t.entropy, t.self_certainty) for t in s.logprobs] for s in result.samples],
                      [s.output_tokens for s in result.samples], result.input_tokens, seconds)
    write_text(path, json.dumps({"question": q.qid, "texts": gen.texts,
                                 "stats": [[[t.logprob, t.entropy, t.self_certainty] for t in s] for s in gen.stats],
                                 "output_tokens": gen.output_tokens, "input_tokens": gen.input_tokens,
                                 "seconds": seconds}))
    return gen


# ---- the report ---------------------------------------------------------------------------------------------------


@dataclass
class LiveConfig:
    out: Path
    routing_data: Path
    rung: str = "smollm2-135m"
    judge_rung: str = "gemma3-270m"  # p_true; "" skips it
    questions: int = 48
    gsm8k_share: float = 0.25
    n_values: tuple[int, ...] = (1, 3, 5, 10)
    temperature: float = 0.7
    seed: int = 0
    folds: int = 5
    timing_questions: int = 4  # choice questions timed at every n, for seconds per query
    torch_threads: int | None = None
    catalogue: Path | None = None
    models_dir: Path | None = None
    artefact_n: int = 3  # the n whose fit becomes calibration-live.json (the router samples 3 by default)
    notes: list[str] = field(default_factory=list)


async def _judge_items(questions: Sequence[Question], gens: dict[str, Generations], n: int, rung: Rung,
                       engine: JudgeEngine, judges: Sequence[str]) -> list[Item]:
    items = []
    mean_tokens = {q.qid: sum(gens[q.qid].output_tokens) / len(gens[q.qid].output_tokens) for q in questions}
    for q in questions:
        gen = gens[q.qid]
        candidates = [Candidate(t, rung.name, rung.family, tuple(s)) for t, s in zip(gen.texts[:n], gen.stats[:n])]
        started = time.perf_counter()
        scored = await engine.score(q.prompt, candidates, answer_type=q.answer_type,
                                    judges=[j for j in judges if j not in ("deferral", "p_true")], task=q.task)
        local_s = time.perf_counter() - started
        verdict = scored.verdict
        scores = {r.judge: r.score for r in verdict.scores if not r.skipped}
        cost = {j: 0.0 for j in scores}
        seconds = {j: local_s / max(len(scores), 1) for j in scores}
        extra_samples = max(n - 1, 0) * mean_tokens[q.qid]
        for j in ("agreement", "entropy", "fsd"):
            if j in scores:
                cost[j] = rung.cost(0, round(extra_samples))
        if "p_true" in judges:
            judged = await engine.score(q.prompt, candidates, answer_type=q.answer_type, judges=("p_true",), task=q.task)
            result = judged.verdict.scores[0]
            if not result.skipped:
                scores["p_true"] = result.score
                cost["p_true"] = judged.usage.cost_usd
                seconds["p_true"] = judged.usage.latency_ms / 1000
        group = [c for c, p in zip(candidates, verdict.parsed) if p is not None and p == verdict.answer]
        feats = [features(c.logprobs) for c in group if c.logprobs]
        mean_feats = {f: sum(x[f] for x in feats) / len(feats) for f in FEATURES} if feats else None
        sc = [mean_self_certainty(c.logprobs) or 0.0 for c in candidates]
        borda = borda_vote(list(verdict.parsed), sc)
        items.append(Item(key=f"{q.qid}|n{n}", task=q.task, split="live", rung=rung.name,
                          correct=float(verdict.answer == q.gold), scores=scores, valid=verdict.answer is not None,
                          cost=cost, seconds=seconds,
                          extra={"qid": q.qid, "answer": verdict.answer, "gold": q.gold, "features": mean_feats,
                                 "borda_correct": float(borda == q.gold), "invalid": verdict.invalid}))
    return items


def _with_deferral(fit: list[Item], evaluate: list[Item], folds: int) -> tuple[list[Item], list[Item]]:
    """Deferral scores for `evaluate` from a model fitted on `fit`, and for `fit` from inner folds."""
    def scored(train: list[Item], targets: list[Item]) -> list[Item]:
        model = fit_deferral([i.extra["features"] or {} for i in train], [i.correct for i in train], FEATURES)
        out = []
        for item in targets:
            copy = Item(**{**item.__dict__, "scores": dict(item.scores)})
            if model is not None and item.extra["features"]:
                copy.scores["deferral"] = model.predict(item.extra["features"])
            out.append(copy)
        return out

    inner = []
    for k in range(folds):
        held = [i for j, i in enumerate(fit) if j % folds == k]
        rest = [i for j, i in enumerate(fit) if j % folds != k]
        inner += scored(rest, held)
    order = {i.key: n for n, i in enumerate(fit)}
    inner.sort(key=lambda i: order[i.key])
    return inner, scored(fit, evaluate)


def cross_fit(items: list[Item], judges: Sequence[str], folds: int, seed: int):
    qids = sorted({i.extra["qid"] for i in items})
    random.Random(seed).shuffle(qids)
    fold_of = {q: k % folds for k, q in enumerate(qids)}
    parts = []
    for k in range(folds):
        fit = [i for i in items if fold_of[i.extra["qid"]] != k]
        held = [i for i in items if fold_of[i.extra["qid"]] == k]
        if not held:
            continue
        if "deferral" in judges:
            fit, held = _with_deferral(fit, held, folds)
        parts.append(predict(fit, held, judges, min_rows=15, method="platt", weighting="logloss"))
    return concat(parts)


def run_live(config: LiveConfig, progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    return asyncio.run(_run_live(config, progress or (lambda p, m: log.info("%3.0f%% %s", p * 100, m))))


async def _run_live(config: LiveConfig, progress: Callable[[float, str], None]) -> dict[str, Any]:
    catalogue: Catalogue = load_catalogue(config.catalogue)
    rung = catalogue.get(config.rung, field="rung")
    if not rung.is_local:
        raise ValueError(f"rung {rung.name} is not a local model: live samples need logprobs and many samples")
    out = config.out
    cache = out / "cache"
    questions = build_questions(config.routing_data, count=config.questions, gsm8k_share=config.gsm8k_share,
                                seed=config.seed)
    write_text(out / "questions.jsonl", "".join(json.dumps(q.__dict__) + "\n" for q in questions))
    n_max = max(config.n_values)
    backend = load_local_backend(rung, config.models_dir, config.torch_threads)
    gens: dict[str, Generations] = {}
    for k, q in enumerate(questions):
        gens[q.qid] = await generate_cached(backend, rung, q, n=n_max, temperature=config.temperature,
                                            seed=config.seed + k, cache=cache)
        progress((k + 1) / len(questions) * 0.7, f"sampled {k + 1}/{len(questions)} questions ({q.task})")
    timing = await _timing(backend, rung, [q for q in questions if q.answer_type == CHOICE][:config.timing_questions],
                           config, cache)
    backend.model = None
    judge_model = None
    if config.judge_rung:
        judge_rung = catalogue.get(config.judge_rung, field="judge_rung")
        if judge_rung.family == rung.family:
            config.notes.append(f"judge rung {judge_rung.name} is of the same family as {rung.name}")
        judge_model = BackendJudgeModel.load(judge_rung, config.models_dir, config.torch_threads)
    engine = JudgeEngine(catalogue=catalogue, judge_model=judge_model, judge_rung=config.judge_rung,
                         judge_timeout_s=120)
    judges = [j for j in LIVE_JUDGES if config.judge_rung or j != "p_true"]
    per_n: dict[int, Any] = {}
    rows: list[dict[str, Any]] = []
    for step, n in enumerate(config.n_values):
        items = await _judge_items(questions, gens, n, rung, engine, judges)
        present = [j for j in judges if j == "deferral" or any(j in i.scores for i in items)]
        pred = cross_fit(items, present, config.folds, config.seed)
        for row in summarise(pred, lambda i: ("all", "gsm8k" if i.task == "gsm8k" else "multiple choice")):
            rows.append({**row, "samples": n})
        name = f"reliability-live-n{n}.png"
        reliability_figure(out / name, f"{rung.name} live samples, n = {n}, T = {config.temperature} "
                           f"({len(items)} questions; {config.folds}-fold cross-fitted by question)",
                           pred, list(range(len(pred.items))), present)
        per_n[n] = {"items": items, "pred": pred, "figure": name, "judges": present,
                    "majority_accuracy": sum(i.correct for i in items) / len(items),
                    "borda_accuracy": sum(i.extra["borda_correct"] for i in items) / len(items),
                    "invalid_share": sum(i.extra["invalid"] for i in items) / (len(items) * n),
                    "extra_tokens": sum(max(n - 1, 0) * sum(gens[q.qid].output_tokens) / n_max for q in questions)
                    / len(questions)}
        progress(0.7 + 0.3 * (step + 1) / len(config.n_values), f"judged n = {n}")
    if judge_model is not None:
        judge_model.close()
    artefact = _fit_artefact(per_n.get(config.artefact_n) or per_n[max(per_n)], config)
    artefact.save(out / "calibration-live.json")
    report = _report(config, rung, questions, per_n, rows, timing)
    write_text(out / "live.json", json.dumps(clean(report), indent=1))
    write_text(out / "live.md", _markdown(report))
    return report


def _fit_artefact(entry: dict[str, Any], config: LiveConfig):
    """The calibration the service can load for this rung: fitted on every live question (no held-out set is
    left to report on, which is why the figures above are cross-fitted)."""
    from escalon.offline.judging.calibration_fit import fit_calibration

    items = entry["items"]
    deferral = fit_deferral([i.extra["features"] or {} for i in items], [i.correct for i in items], FEATURES)
    rows = []
    for item in items:
        scores = dict(item.scores)
        if deferral is not None and item.extra["features"]:
            scores["deferral"] = deferral.predict(item.extra["features"])
        rows.append(Item(**{**item.__dict__, "scores": scores}).row())
    return fit_calibration(rows, entry["judges"], min_rows=15, method="platt", deferral=deferral,
                           levels=("rung", "all"),
                           source={"live": config.rung, "n": config.artefact_n, "questions": len(items)})


async def _timing(backend, rung: Rung, questions: Sequence[Question], config: LiveConfig, cache: Path) -> dict:
    """Seconds to generate n samples as one batch, on a few choice questions (cached like the generations)."""
    out: dict[int, float] = {}
    for n in config.n_values:
        secs = []
        for k, q in enumerate(questions):
            gen = await generate_cached(backend, rung, q, n=n, temperature=config.temperature,
                                        seed=10_000 + k, cache=cache / "timing")
            secs.append(gen.seconds)
        out[n] = sum(secs) / len(secs) if secs else None
    return out


def _report(config: LiveConfig, rung: Rung, questions, per_n, rows, timing) -> dict[str, Any]:
    tasks = Counter(q.task for q in questions)
    summary = []
    for n, entry in per_n.items():
        panel = next(r for r in rows if r["samples"] == n and r["group"] == "all" and r["judge"] == "panel" and r["calibrated"])
        raw = next(r for r in rows if r["samples"] == n and r["group"] == "all" and r["judge"] == "panel" and not r["calibrated"])
        cons = {j: next((r for r in rows if r["samples"] == n and r["group"] == "all" and r["judge"] == j and r["calibrated"]),
                        None) for j in ("agreement", "fsd", "entropy")}
        # raw scores rank as they are; on a small set the cross-fitted maps differ fold to fold, which can cost
        # the pooled predictions their ranking, so the raw AUROC is the one to read for "does it separate"
        cons_raw = {j: next((r for r in rows if r["samples"] == n and r["group"] == "all" and r["judge"] == j
                             and not r["calibrated"]), None) for j in ("agreement", "fsd", "entropy")}
        summary.append({
            "n": n, "majority_accuracy": entry["majority_accuracy"], "borda_accuracy": entry["borda_accuracy"],
            "invalid_share": entry["invalid_share"],
            "panel_raw": {m: raw[m] for m in ("brier", "ece", "auroc")},
            "panel_calibrated": {m: panel[m] for m in ("brier", "ece", "auroc")},
            "consistency_calibrated": {j: ({m: r[m] for m in ("brier", "ece", "auroc", "coverage")} if r else None)
                                       for j, r in cons.items()},
            "consistency_raw": {j: ({m: r[m] for m in ("brier", "ece", "auroc", "coverage")} if r else None)
                                for j, r in cons_raw.items()},
            "extra_output_tokens_per_query": entry["extra_tokens"],
            "judge_cost_usd_per_query": panel["judge_cost_usd_per_query"],
            "generation_seconds_per_query": timing.get(n),
            "figure": entry["figure"],
        })
    return {"format": FORMAT, "rung": rung.name, "model": rung.model, "judge_rung": config.judge_rung,
            "temperature": config.temperature, "questions": len(questions), "tasks": dict(tasks),
            "folds": config.folds, "label": "majority parsed answer == gold", "summary": summary, "rows": rows,
            "notes": config.notes, "price": rung.price.model_dump()}


def _markdown(report: dict[str, Any]) -> str:
    out = [f"# Judges on live samples — {report['rung']} ({report['model']})", "",
           f"{report['questions']} questions with gold answers ({', '.join(f'{t} {c}' for t, c in report['tasks'].items())}), "
           f"n samples at T = {report['temperature']} (the first n of 10, nested). Correct = the majority parsed "
           f"answer equals the gold. Calibration {report['folds']}-fold cross-fitted by question (Platt maps; no "
           f"answer's label is used to predict it). P(True) judge rung: {report['judge_rung'] or 'none'}.", "",
           "## Summary by n", "",
           "| n | majority acc. | SC-Borda acc. | invalid | panel Brier raw → cal | panel ECE raw → cal | panel AUROC "
           "raw → cal | agreement AUROC raw → cal | fsd AUROC raw → cal | extra tokens/query | judge $/query | "
           "seconds/query (n samples) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def auroc_pair(s: dict, judge: str) -> str:
        raw, cal = s["consistency_raw"][judge], s["consistency_calibrated"][judge]
        if not (raw and raw["coverage"]):
            return "–"
        return f"{fmt(raw['auroc'])} → {fmt(cal['auroc'] if cal else None)}"

    for s in report["summary"]:
        out.append(
            f"| {s['n']} | {fmt(s['majority_accuracy'])} | {fmt(s['borda_accuracy'])} | {s['invalid_share']:.0%} | "
            f"{fmt(s['panel_raw']['brier'])} → {fmt(s['panel_calibrated']['brier'])} | "
            f"{fmt(s['panel_raw']['ece'])} → {fmt(s['panel_calibrated']['ece'])} | "
            f"{fmt(s['panel_raw']['auroc'])} → {fmt(s['panel_calibrated']['auroc'])} | "
            f"{auroc_pair(s, 'agreement')} | {auroc_pair(s, 'fsd')} | "
            f"{s['extra_output_tokens_per_query']:.0f} | {s['judge_cost_usd_per_query']:.2e} | "
            f"{fmt(s['generation_seconds_per_query'], 2)} |")
    positives = min(round(s["majority_accuracy"] * report["questions"]) for s in report["summary"])
    out += ["", f"Read with care: with {report['questions']} questions and as few as {positives} right majority "
                "answers, one answer moves Brier and ECE by several points; the calibrated figures are cross-fitted "
                "(each fold's map fitted on the others), and on a set this small those maps differ fold to fold."]
    if report["notes"]:
        out += ["", "**Notes:** " + " ".join(report["notes"])]
    for s in report["summary"]:
        n = s["n"]
        out += ["", f"## n = {n}", "", f"![reliability diagram, n = {n}]({s['figure']})", ""]
        rows = [r for r in report["rows"] if r["samples"] == n]
        for group in dict.fromkeys(r["group"] for r in rows):
            out += [f"### {group}", "", metrics_table(rows, group), ""]
    return "\n".join(out) + "\n"

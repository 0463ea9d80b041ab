"""`escalon judge report`: how well the judges know when an answer is right, on a recorded benchmark
(benchmark.parquet in the shared routing format, rows with a recorded `response`).

Every recorded answer is judged through the judge engine, as the service would judge it: the answering model
is the rung, the other models' answers to the same prompt are the references (cross-model agreement), the
answer type comes from the task. Labels: score ≥ 0.5 is correct. Fitting: weights and calibration maps on the
fit split only (`train`); every figure is on the evaluation split (`test`). A task without both splits is
split by a hash of its prompt id (half and half), and the report says so. Test labels are never fitted on.

P(True) needs a model call per answer; on CPU that is too slow for thousands of answers, so it runs on a
seeded sample of prompts per split (`p_true_sample`) with a local judge rung, and the report gives its
coverage. Judge cost per query = the cost of the evidence a judge needs beyond the answer judged: the other
models' recorded calls for cross_model, the judge rung's tokens for p_true, nothing for the text judges.

Artefacts in `out`: report.json (format escalon.judge-report/v1), report.md, reliability-<task>.png, and
calibration.json (escalon.judge-calibration/v1, fitted on the fit split) — what ESCALON_JUDGE_CALIBRATION loads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from escalon.answers import infer_answer_type
from escalon.benchmark import hash_split, hash_unit, read_table
from escalon.errors import InvalidInput
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.judge.engine import JudgeEngine
from escalon.judge.panel import Candidate
from escalon.judge.ptrue import JudgeModel
from escalon.offline.judging.reporting import (
    Item,
    clean,
    metrics_table,
    predict,
    reliability_figure,
    summarise,
    write_text,
)

log = logging.getLogger(__name__)

FORMAT = "escalon.judge-report/v1"
RECORDED_JUDGES = ("agreement", "entropy", "fsd", "cross_model", "format", "hedging", "brevity", "arithmetic",
                   "p_true")

_NUMBER_TASKS = re.compile(r"gsm8k|math|mgsm|svamp|asdiv|aqua_num", re.I)
_CHOICE_TASKS = re.compile(r"mmlu|arc|commonsense|openbook|gpqa|logicgrid|ceval|cmmlu|hellaswag|winogrande|piqa|boolq_mc", re.I)
_CODE_TASKS = re.compile(r"mbpp|human_?eval|javascript|code", re.I)
_TEXT_TASKS = re.compile(r"natural_qa|trivia_qa|squad|commongen", re.I)


def answer_type_for(task: str, prompt: str) -> int:
    if _CODE_TASKS.search(task):
        return AnswerType.ANSWER_TYPE_CODE
    if _NUMBER_TASKS.search(task):
        return AnswerType.ANSWER_TYPE_NUMBER
    if _CHOICE_TASKS.search(task):
        return AnswerType.ANSWER_TYPE_CHOICE
    if _TEXT_TASKS.search(task):
        return AnswerType.ANSWER_TYPE_FREE_TEXT
    return infer_answer_type(prompt)


def family_of(model: str) -> str:
    """A model's family from its name: the organisation before '/', else the leading letters
    ("mistralai/Mixtral-8x7B" → mistralai, "llama-3.1-8b-instruct" → llama, "gpt-4-1106" → gpt)."""
    if "/" in model:
        return model.split("/", 1)[0].lower()
    match = re.match(r"[a-z]+", model.lower())
    return match.group(0) if match else model.lower()


@dataclass
class ReportConfig:
    benchmark: Path
    out: Path
    tasks: list[str] | None = None
    judges: tuple[str, ...] = RECORDED_JUDGES
    fit_split: str = "train"
    eval_split: str = "test"
    min_rows: int = 50
    method: str = "auto"  # isotonic | platt | auto
    weighting: str = "logloss"  # logloss | quality | uniform
    label_threshold: float = 0.5
    max_prompts_per_task: int | None = None  # per split; for quick runs
    p_true_rung: str = ""  # a local rung of the catalogue, e.g. smollm2-135m; empty: no p_true
    p_true_sample: int = 0  # prompts per split that get P(True)
    seed: int = 0
    catalogue: Path | None = None
    models_dir: Path | None = None
    torch_threads: int | None = None  # of the in-process judge rung
    # panels refitted without some judges: what the first rung of a cascade sees (no other rung has answered)
    ablations: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("without cross_model", ("cross_model",)), ("text judges only", ("cross_model", "p_true")))
    notes: list[str] = field(default_factory=list)


def recorded_answers(config: ReportConfig):
    """The benchmark's rows with a recorded response and score (the judges' material), of the chosen tasks."""
    config.benchmark, table = read_table(config.benchmark)
    table = table[table["response"].map(lambda r: isinstance(r, str) and bool(r.strip()))]
    table = table[table["score"].notna()]
    if config.tasks:
        table = table[table["task"].isin(config.tasks)]
    if table.empty:
        raise InvalidInput(f"{config.benchmark} has no rows with a recorded response"
                           f"{' for tasks ' + ', '.join(config.tasks) if config.tasks else ''}: the judges need answers",
                           field="benchmark")
    return table


def _sampled(prompt_id: str, seed: int) -> float:
    return hash_unit(prompt_id, seed=f"ptrue:{seed}")


async def judge_table(table, config: ReportConfig, engine: JudgeEngine,
                      progress: Callable[[float, str], None] | None = None) -> list[Item]:
    """Judge every recorded answer; p_true only on the sampled prompts."""
    splits_by_task = table.groupby("task")["split"].agg(lambda s: set(s))
    hashed = sorted(t for t, s in splits_by_task.items() if not {config.fit_split, config.eval_split} <= s)
    if hashed:
        config.notes.append(f"tasks without both a {config.fit_split} and a {config.eval_split} split, split 50/50 "
                            f"by a hash of the prompt id: {', '.join(hashed)}")
    prompts = []
    for (task, prompt_id), rows in table.groupby(["task", "prompt_id"], sort=True):
        split = rows["split"].iloc[0]
        if task in hashed:
            split = {"train": config.fit_split, "test": config.eval_split}[hash_split(str(prompt_id), 0.5, seed=config.seed)]
        if split not in (config.fit_split, config.eval_split):
            continue
        prompts.append((task, str(prompt_id), split, rows))
    if config.max_prompts_per_task:
        kept, seen = [], {}
        for entry in prompts:
            k = (entry[0], entry[2])
            if seen.get(k, 0) < config.max_prompts_per_task:
                seen[k] = seen.get(k, 0) + 1
                kept.append(entry)
        prompts = kept
    # p_true: the first p_true_sample prompts per (task, split) in a seeded order
    ptrue_prompts: set[str] = set()
    if config.p_true_rung and config.p_true_sample > 0 and "p_true" in config.judges:
        order = sorted(prompts, key=lambda e: _sampled(e[1], config.seed))
        counts: dict[tuple[str, str], int] = {}
        for task, prompt_id, split, _ in order:
            if counts.get((task, split), 0) < config.p_true_sample:
                counts[(task, split)] = counts.get((task, split), 0) + 1
                ptrue_prompts.add(prompt_id)
    judges_cheap = tuple(j for j in config.judges if j != "p_true")
    items: list[Item] = []
    total = len(prompts)
    for n, (task, prompt_id, split, rows) in enumerate(prompts):
        records = rows.to_dict("records")
        for record in records:
            prompt = record["prompt"]
            answer_type = answer_type_for(task, prompt)
            model = record["model"]
            candidate = Candidate(record["response"], model, family_of(model))
            refs = [r for r in records if r["model"] != model]
            references = [Candidate(r["response"], r["model"], family_of(r["model"])) for r in refs]
            started = time.perf_counter()
            scored = await engine.score(prompt, [candidate], references=references, answer_type=answer_type,
                                        judges=judges_cheap, task=task)
            elapsed = time.perf_counter() - started
            scores = {r.judge: r.score for r in scored.verdict.scores if not r.skipped}
            cost = {"cross_model": sum(float(r["cost_usd"] or 0) for r in refs if family_of(r["model"]) != candidate.family)}
            seconds = {j: elapsed / max(len(judges_cheap), 1) for j in judges_cheap}
            skipped = {r.judge: r.reason for r in scored.verdict.scores if r.skipped}
            if prompt_id in ptrue_prompts:
                started = time.perf_counter()
                judged = await engine.score(prompt, [candidate], answer_type=answer_type, judges=("p_true",), task=task)
                seconds["p_true"] = time.perf_counter() - started
                result = judged.verdict.scores[0]
                cost["p_true"] = judged.usage.cost_usd
                if result.skipped:
                    skipped["p_true"] = result.reason
                else:
                    scores["p_true"] = result.score
            items.append(Item(
                key=f"{prompt_id}|{model}", task=task, split=split, rung=model,
                correct=float(float(record["score"]) >= config.label_threshold), scores=scores,
                valid=scored.verdict.answer is not None, cost=cost, seconds=seconds,
                extra={"skipped": skipped, "answer_cost_usd": float(record["cost_usd"] or 0)}))
        if progress and (n % 50 == 0 or n == total - 1):
            progress((n + 1) / max(total, 1), f"judged {n + 1}/{total} prompts")
    return items


def build_report(items: list[Item], config: ReportConfig) -> dict[str, Any]:
    fit = [i for i in items if i.split == config.fit_split]
    test = [i for i in items if i.split == config.eval_split]
    if not fit or not test:
        raise InvalidInput(f"need answers in both the {config.fit_split} and {config.eval_split} splits "
                           f"(got {len(fit)} and {len(test)})", field="benchmark")
    judges = [j for j in config.judges if any(j in i.scores for i in items)]
    never = [j for j in config.judges if j not in judges]
    source = {"benchmark": str(config.benchmark), "fit_split": config.fit_split, "rows": len(fit),
              "tasks": sorted({i.task for i in fit})}
    pred = predict(fit, test, judges, min_rows=config.min_rows, method=config.method, weighting=config.weighting,
                   source=source)
    rows = summarise(pred, lambda i: ("all", f"{i.task}", f"{i.task} / {i.rung}"))
    tasks = sorted({i.task for i in test})
    figures = {}
    for task in tasks:
        idx = [k for k, i in enumerate(pred.items) if i.task == task]
        name = f"reliability-{_slug(task)}.png"
        reliability_figure(config.out / name, f"{config.benchmark.parent.name} · {task} · {config.eval_split} split "
                           f"({len(idx)} answers); fitted on {config.fit_split}", pred, idx, judges)
        figures[task] = name
    skipped_reasons: dict[str, dict[str, int]] = {}
    for item in items:
        for judge, reason in item.extra.get("skipped", {}).items():
            skipped_reasons.setdefault(judge, {}).setdefault(reason, 0)
            skipped_reasons[judge][reason] += 1
    comparison = [compare(pred, group, [k for k, i in enumerate(pred.items) if group == "all" or i.task == group],
                          judges) for group in ["all", *tasks]]
    seen = [judges]
    for label, dropped in config.ablations:
        kept = [j for j in judges if j not in dropped]
        if not kept or kept in seen:  # nothing left, or the same panel as one already shown
            continue
        seen.append(kept)
        ablated = predict(fit, test, kept, min_rows=config.min_rows, method=config.method, weighting=config.weighting)
        for row in summarise(ablated, lambda i: ("all", f"{i.task}", f"{i.task} / {i.rung}")):
            if row["judge"] == "panel":
                rows.append({**row, "judge": f"panel {label}"})
    return {
        "format": FORMAT,
        "benchmark": str(config.benchmark),
        "fit_split": config.fit_split,
        "eval_split": config.eval_split,
        "label": f"score ≥ {config.label_threshold}",
        "judges": judges,
        "judges_never_ran": never,
        "skipped_reasons": skipped_reasons,
        "items": {"fit": len(fit), "eval": len(test)},
        "calibrated_share": pred.calibrated_share,
        "weights": {g.key: dict(g.weights) for g in pred.calibration.groups},
        "rows": rows,
        "comparison": comparison,
        "figures": figures,
        "notes": config.notes,
        "p_true": {"rung": config.p_true_rung, "sample_prompts_per_split": config.p_true_sample,
                   "answers_scored": sum("p_true" in i.scores for i in items)},
        "_calibration": pred.calibration,
    }


def compare(pred, group: str, idx: list[int], judges: list[str]) -> dict[str, Any]:
    """The calibrated panel against each calibrated single judge on the same answers (those the judge could
    score), with paired-bootstrap 95% intervals of the differences; the best single judge is the lowest Brier."""
    from escalon.offline.judging.metrics import auroc, bootstrap_interval, brier, ece, ece_noise_floor

    labels = [pred.items[k].correct for k in idx]
    panel = [pred.panel_cal[k] for k in idx]
    out: dict[str, Any] = {"group": group, "n": len(idx),
                           "panel": {"brier": brier(panel, labels), "ece": ece(panel, labels),
                                     "auroc": auroc(panel, labels),
                                     "brier_ci": bootstrap_interval(brier, panel, labels),
                                     "ece_ci": bootstrap_interval(ece, panel, labels),
                                     "ece_noise_floor": ece_noise_floor(panel)},
                           "singles": []}
    for judge in judges:
        keep = [k for k in idx if pred.judge_cal[judge][k] is not None]
        if len(keep) < 0.9 * len(idx) or not keep:
            continue
        y = [pred.items[k].correct for k in keep]
        single = [pred.judge_cal[judge][k] for k in keep]
        same = [pred.panel_cal[k] for k in keep]
        out["singles"].append({
            "judge": judge, "n": len(keep), "brier": brier(single, y), "ece": ece(single, y), "auroc": auroc(single, y),
            "ece_noise_floor": ece_noise_floor(single),
            "panel_brier": brier(same, y), "panel_ece": ece(same, y), "panel_auroc": auroc(same, y),
            "delta_brier_ci": bootstrap_interval(brier, same, y, single),
            "delta_ece_ci": bootstrap_interval(ece, same, y, single)})
    out["best_single"] = min(out["singles"], key=lambda r: r["brier"])["judge"] if out["singles"] else None
    return out


def markdown(report: dict[str, Any]) -> str:
    out = [f"# Judge calibration report — {Path(report['benchmark']).parent.name}", "",
           f"Benchmark `{report['benchmark']}`. Fitted on the **{report['fit_split']}** split "
           f"({report['items']['fit']} answers), every figure on the **{report['eval_split']}** split "
           f"({report['items']['eval']} answers). Correct = {report['label']}. ECE: 10 equal-width bins.",
           "",
           "*uncalibrated* = a judge's own score, or the panel's plain mean of the judges that ran; *calibrated* = "
           "the judge through its own map, or the panel's fitted weights + map per (task, rung, judges that ran). "
           "Coverage = share of answers the judge could score (a skipped judge is not counted as 0). "
           "Judge $/query = the evidence the judge needs beyond the answer (the other models' recorded calls for "
           "cross_model, the judge rung's tokens for p_true); judge ms/query = judge compute.", ""]
    if report["notes"]:
        out += ["**Notes:** " + " ".join(report["notes"]), ""]
    from escalon.offline.judging.metrics import fmt

    ci = lambda pair: f"[{pair[0]:+.3f}, {pair[1]:+.3f}]" if pair else "–"  # noqa: E731
    out += ["## The calibrated panel against each calibrated single judge (same answers)", "",
            "Δ = panel − judge (negative Brier/ECE is better for the panel), with paired-bootstrap 95% intervals. "
            "Single judges that score under 90% of the answers are left out. ECE floor = the median ECE a perfectly "
            "calibrated predictor with the same confidences shows on this many answers (binning noise): an ECE near "
            "its floor is as calibrated as the sample can show, and a coarse judge (few distinct values) has a lower "
            "floor than a graded panel, so ECE alone cannot rank them — Brier (a proper score) and AUROC can.", ""]
    for c in report["comparison"]:
        p = c["panel"]
        out += [f"**{c['group']}** ({c['n']} answers): calibrated panel Brier {fmt(p['brier'])} {ci(p['brier_ci'])}, "
                f"ECE {fmt(p['ece'])} {ci(p['ece_ci'])} (floor {fmt(p.get('ece_noise_floor'))}), AUROC "
                f"{fmt(p['auroc'])}; best single judge: {c['best_single'] or '–'}.", "",
                "| judge | n | judge Brier | panel Brier | Δ Brier 95% CI | judge ECE (floor) | panel ECE | "
                "Δ ECE 95% CI | judge AUROC | panel AUROC |", "|---|---:|---:|---:|---|---:|---:|---|---:|---:|"]
        for r in c["singles"]:
            out.append(f"| {r['judge']} | {r['n']} | {fmt(r['brier'])} | {fmt(r['panel_brier'])} | "
                       f"{ci(r['delta_brier_ci'])} | {fmt(r['ece'])} ({fmt(r.get('ece_noise_floor'))}) | "
                       f"{fmt(r['panel_ece'])} | {ci(r['delta_ece_ci'])} | {fmt(r['auroc'])} | {fmt(r['panel_auroc'])} |")
        out.append("")
    groups = list(dict.fromkeys(r["group"] for r in report["rows"]))
    for group in groups:
        out += [f"## {group}", ""]
        task = group.split(" / ")[0]
        if group in report["figures"]:
            out += [f"![reliability diagram]({report['figures'][group]})", ""]
        out += [metrics_table(report["rows"], group), ""]
        del task
    out += ["## Fitted weights (per calibration group)", ""]
    for key, weights in report["weights"].items():
        out.append(f"- `{key}`: " + ", ".join(f"{j} {w:.2f}" for j, w in sorted(weights.items(), key=lambda kv: -kv[1])))
    out += ["", "## Why judges were skipped", ""]
    for judge, reasons in report["skipped_reasons"].items():
        for reason, count in reasons.items():
            out.append(f"- {judge}: {reason} ({count} answers)")
    if report["judges_never_ran"]:
        out += ["", f"Never ran on this benchmark: {', '.join(report['judges_never_ran'])}."]
    p = report["p_true"]
    if p["rung"]:
        out += ["", f"P(True) from judge rung `{p['rung']}` on a seeded sample of {p['sample_prompts_per_split']} "
                    f"prompts per task and split ({p['answers_scored']} answers): a model call per answer is too slow "
                    "on CPU for the whole benchmark."]
    return "\n".join(out) + "\n"


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    calibration = report.pop("_calibration")
    paths = {"calibration": calibration.save(out / "calibration.json")}
    paths["json"] = write_text(out / "report.json", json.dumps(clean(report), indent=1))
    paths["markdown"] = write_text(out / "report.md", markdown(report))
    for task, name in report["figures"].items():
        paths[f"figure:{task}"] = out / name
    report["_calibration"] = calibration
    return paths


def make_engine(config: ReportConfig) -> tuple[JudgeEngine, Callable[[], None]]:
    """An engine without calibration (the judges' raw scores are what gets fitted), with an in-process judge
    rung when p_true is asked for."""
    from escalon.registry import load_catalogue

    catalogue = load_catalogue(config.catalogue)
    judge_model: JudgeModel | None = None
    close = lambda: None  # noqa: E731
    if config.p_true_rung and config.p_true_sample > 0:
        from escalon.offline.judging.live import BackendJudgeModel

        judge_model = BackendJudgeModel.load(catalogue.get(config.p_true_rung, field="p_true_rung"), config.models_dir,
                                             config.torch_threads)
        close = judge_model.close
    return JudgeEngine(catalogue=catalogue, judge_model=judge_model, judge_rung=config.p_true_rung,
                       judge_timeout_s=120), close


def run_report(config: ReportConfig, progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Judge, fit on the fit split, evaluate on the other, write the artefacts; returns the report (and paths)."""
    table = recorded_answers(config)
    engine, close = make_engine(config)
    try:
        items = asyncio.run(judge_table(table, config, engine, progress))
    finally:
        close()
    report = build_report(items, config)
    paths = write_report(report, config.out)
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "task"

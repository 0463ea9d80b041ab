"""`profile`: the profiling table (docs/routing.md, Taxonomy and profiling) — for each model and task, how often it is right and
what it costs — measured on recorded benchmark answers.

A *cell* here is a benchmark task (the taxonomy's task type; benchmark tasks are its free labels). For the
chosen split, every (model, task) cell gets: rows, mean score (accuracy for 0/1 scores) with its standard
error, mean and total cost, cost per correct answer, and a `sparse` flag when it has fewer than `min_rows`
rows (the router then backs off to the model's task-type marginal). Per model: micro accuracy (over rows)
and macro accuracy (mean over tasks), mean cost, and whether it is on the cost–accuracy Pareto frontier
(the candidates for a cheapest-first cascade). Per task: the best model, and the cheapest model within
`tolerance` of it.

The file is read in chunks of `chunk_rows` rows (only the five columns needed); after each chunk the
running sums are checkpointed, so a killed worker resumes at the next chunk. Sums are kept in the same
order whether or not the job was interrupted, so a resumed profile is bit-for-bit the uninterrupted one.

Artefacts: profile.json (format `escalon.profile/v1`, what the router's profiling table loads) and
profile.md (the same tables for people).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import pandas as pd  # noqa: F401 - loaded before a prefork worker forks, not in each job
import pyarrow.parquet as pq
from pydantic import Field

from escalon.distill.jobs.base import JobContext, JobKind, JobParams, pause
from escalon.distill.jobs.benchmark import resolve_benchmark, source_fingerprint

COLUMNS = ("task", "split", "model", "score", "cost_usd")
FORMAT = "escalon.profile/v1"
# Running sums per (model, task), in this order. Kept as JSON lists in the checkpoint.
N, N_SCORED, SCORE_SUM, SCORE_SQ, COST_N, COST_SUM = range(6)


class ProfileParams(JobParams):
    benchmark: str = Field(description="parquet file in the routing format; relative to the data dir if not absolute")
    split: Literal["train", "test", "all"] = Field(default="test", description="rows to profile")
    tasks: list[str] | None = Field(default=None, description="only these tasks (default: all)")
    models: list[str] | None = Field(default=None, description="only these models (default: all)")
    min_rows: int = Field(default=30, ge=1, description="cells with fewer rows are flagged sparse")
    tolerance: float = Field(default=0.02, ge=0, le=1, description="'near best' = within this much accuracy")
    chunk_rows: int = Field(default=50_000, ge=1, le=10_000_000, description="rows per chunk (= per checkpoint)")
    step_delay_s: float = Field(
        default=0.0, ge=0, le=60, description="for tests and demos only: sleep this long per chunk"
    )


def prepare(params: ProfileParams, data_dir: Path) -> ProfileParams:
    path = resolve_benchmark(params.benchmark, data_dir, COLUMNS, field="params.benchmark")
    return params.model_copy(update={"benchmark": path})


def run(params: ProfileParams, ctx: JobContext) -> dict[str, Any]:
    source = source_fingerprint(params.benchmark)
    state = ctx.load_checkpoint()
    if not state or state.get("source") != source or state.get("params") != _fingerprint(params):
        state = {"source": source, "params": _fingerprint(params), "rows_done": 0, "chunks_done": 0, "sums": {}}
    total = max(source["rows"], 1)
    n_chunks = math.ceil(source["rows"] / params.chunk_rows)
    file = pq.ParquetFile(params.benchmark)
    seen = 0
    for batch in file.iter_batches(batch_size=params.chunk_rows, columns=list(COLUMNS)):
        start, seen = seen, seen + batch.num_rows
        if seen <= state["rows_done"]:
            continue  # done before the last checkpoint
        if start < state["rows_done"]:
            batch = batch.slice(state["rows_done"] - start)
        pause(params.step_delay_s)
        _accumulate(state["sums"], batch.to_pandas(), params)
        step = state["chunks_done"]
        state["rows_done"], state["chunks_done"] = seen, step + 1
        ctx.save_checkpoint(
            state,
            progress=seen / total,
            message=f"chunk {step + 1}/{n_chunks}: {seen}/{source['rows']} rows",
            step=step,
            metrics={"rows_done": seen, "cells": sum(len(t) for t in state["sums"].values())},
        )
    if not state["sums"]:
        raise ValueError(
            f"no rows in {params.benchmark} for split={params.split!r}"
            + (f", tasks={params.tasks}" if params.tasks else "")
            + (f", models={params.models}" if params.models else "")
        )
    table = build_table(state["sums"], params)
    table["source"] = source
    json_path = ctx.write_artefact("profile.json", json.dumps(table, indent=1, sort_keys=False))
    md_path = ctx.write_artefact("profile.md", render_markdown(table))
    return summary(table, artefacts={"profile_json": str(json_path), "profile_md": str(md_path)})


def _fingerprint(params: ProfileParams) -> dict[str, Any]:
    """The params that shape the sums: a checkpoint made under others is not resumed."""
    return params.model_dump(include={"split", "tasks", "models", "chunk_rows"})


def _accumulate(sums: dict[str, dict[str, list[float]]], frame, params: ProfileParams) -> None:
    if params.split != "all":
        frame = frame[frame["split"] == params.split]
    if params.tasks:
        frame = frame[frame["task"].isin(params.tasks)]
    if params.models:
        frame = frame[frame["model"].isin(params.models)]
    if frame.empty:
        return
    scores = frame["score"]
    bad = scores[(scores < 0) | (scores > 1)]
    if len(bad):
        raise ValueError(f"{len(bad)} score(s) outside [0, 1] (e.g. {bad.iloc[0]!r}); the routing format needs [0, 1]")
    frame = frame.assign(score_sq=scores * scores)
    grouped = frame.groupby(["model", "task"], sort=True).agg(
        n=("score", "size"),
        n_scored=("score", "count"),
        score_sum=("score", "sum"),
        score_sq=("score_sq", "sum"),
        cost_n=("cost_usd", "count"),
        cost_sum=("cost_usd", "sum"),
    )
    for (model, task), row in grouped.iterrows():
        cell = sums.setdefault(str(model), {}).setdefault(str(task), [0, 0, 0.0, 0.0, 0, 0.0])
        cell[N] += int(row["n"])
        cell[N_SCORED] += int(row["n_scored"])
        cell[SCORE_SUM] += float(row["score_sum"])
        cell[SCORE_SQ] += float(row["score_sq"])
        cell[COST_N] += int(row["cost_n"])
        cell[COST_SUM] += float(row["cost_sum"])


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _stderr(s: list[float]) -> float | None:
    n = s[N_SCORED]
    if n < 2:
        return None
    var = max(0.0, (s[SCORE_SQ] - s[SCORE_SUM] ** 2 / n) / (n - 1))
    return math.sqrt(var / n)


def build_table(sums: dict[str, dict[str, list[float]]], params: ProfileParams) -> dict[str, Any]:
    """Turn the running sums into the profiling table (cells, models, tasks)."""
    cells = []
    for model in sorted(sums):
        for task in sorted(sums[model]):
            s = sums[model][task]
            accuracy = _ratio(s[SCORE_SUM], s[N_SCORED])
            mean_cost = _ratio(s[COST_SUM], s[COST_N])
            cells.append(
                {
                    "model": model,
                    "task": task,
                    "n": int(s[N]),
                    "n_scored": int(s[N_SCORED]),
                    "accuracy": accuracy,
                    "stderr": _stderr(s),
                    "mean_cost_usd": mean_cost,
                    "total_cost_usd": s[COST_SUM],
                    "cost_per_correct_usd": _ratio(s[COST_SUM], s[SCORE_SUM]),
                    "sparse": s[N] < params.min_rows,
                }
            )

    models: dict[str, dict[str, Any]] = {}
    for model in sorted(sums):
        rows = list(sums[model].values())
        total = [sum(r[i] for r in rows) for i in range(6)]
        task_acc = [a for a in (_ratio(r[SCORE_SUM], r[N_SCORED]) for r in rows) if a is not None]
        models[model] = {
            "n": int(total[N]),
            "tasks": len(rows),
            "accuracy": _ratio(total[SCORE_SUM], total[N_SCORED]),
            "macro_accuracy": sum(task_acc) / len(task_acc) if task_acc else None,
            "mean_cost_usd": _ratio(total[COST_SUM], total[COST_N]),
            "total_cost_usd": total[COST_SUM],
            "cost_per_correct_usd": _ratio(total[COST_SUM], total[SCORE_SUM]),
        }
    frontier = pareto_frontier({m: (v["mean_cost_usd"], v["accuracy"]) for m, v in models.items()})
    for model, v in models.items():
        v["pareto"] = model in frontier

    tasks: dict[str, dict[str, Any]] = {}
    for task in sorted({c["task"] for c in cells}):
        here = [c for c in cells if c["task"] == task and c["accuracy"] is not None]
        if not here:
            continue
        best = max(here, key=lambda c: (c["accuracy"], -_cost_key(c["mean_cost_usd"])))
        near = [c for c in here if c["accuracy"] >= best["accuracy"] - params.tolerance]
        cheapest_near = min(near, key=lambda c: (_cost_key(c["mean_cost_usd"]), -c["accuracy"]))
        tasks[task] = {
            "n": sum(c["n"] for c in here),
            "models": len(here),
            "best_model": best["model"],
            "best_accuracy": best["accuracy"],
            "near_best_model": cheapest_near["model"],
            "near_best_accuracy": cheapest_near["accuracy"],
            "near_best_mean_cost_usd": cheapest_near["mean_cost_usd"],
        }
    return {
        "format": FORMAT,
        "split": params.split,
        "min_rows": params.min_rows,
        "tolerance": params.tolerance,
        "rows": int(sum(c["n"] for c in cells)),
        "cells": cells,
        "models": models,
        "pareto": frontier,
        "tasks": tasks,
    }


def _cost_key(cost: float | None) -> float:
    return math.inf if cost is None else cost


def pareto_frontier(points: dict[str, tuple[float | None, float | None]]) -> list[str]:
    """Models no other model beats on both cost and accuracy, cheapest first (the cascade's candidate order)."""
    ranked = sorted(
        ((m, _cost_key(c), a) for m, (c, a) in points.items() if a is not None),
        key=lambda t: (t[1], -t[2], t[0]),
    )
    frontier, best = [], -math.inf
    for model, _cost, accuracy in ranked:
        if accuracy > best:
            frontier.append(model)
            best = accuracy
    return frontier


def summary(table: dict[str, Any], *, artefacts: dict[str, str]) -> dict[str, Any]:
    """The job's result: small enough for GetJob; the full table is in profile.json."""
    models = table["models"]
    scored = {m: v for m, v in models.items() if v["accuracy"] is not None}
    best = max(scored, key=lambda m: (scored[m]["accuracy"], -_cost_key(scored[m]["mean_cost_usd"])))
    cheapest = min(models, key=lambda m: (_cost_key(models[m]["mean_cost_usd"]), -(models[m]["accuracy"] or 0)))

    def brief(m: str) -> dict[str, Any]:
        return {"model": m, "accuracy": models[m]["accuracy"], "mean_cost_usd": models[m]["mean_cost_usd"]}

    return {
        "split": table["split"],
        "rows": table["rows"],
        "models": len(models),
        "tasks": len(table["tasks"]),
        "cells": len(table["cells"]),
        "sparse_cells": sum(1 for c in table["cells"] if c["sparse"]),
        "best_model": brief(best),
        "cheapest_model": brief(cheapest),
        "pareto": table["pareto"],
        "per_model": {
            m: {k: v[k] for k in ("accuracy", "macro_accuracy", "mean_cost_usd", "n")} for m, v in models.items()
        },
        "artefacts": artefacts,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _usd(x: float | None) -> str:
    return "–" if x is None else f"${x:.6f}" if x < 0.01 else f"${x:.4f}"


def render_markdown(table: dict[str, Any]) -> str:
    models = sorted(table["models"], key=lambda m: (_cost_key(table["models"][m]["mean_cost_usd"]), m))
    cell = {(c["model"], c["task"]): c for c in table["cells"]}
    source = table.get("source", {})
    out = [
        f"# Profile: {Path(source.get('path', '?')).name}, split `{table['split']}`, {table['rows']} rows",
        "",
        "Accuracy = mean score (share correct for 0/1 scores). Models cheapest first; "
        f"`*` marks a cell with fewer than {table['min_rows']} rows (back off to the task-type marginal).",
        "",
        "## Models",
        "",
        "| model | rows | accuracy | macro accuracy | mean cost | cost per correct | Pareto |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for m in models:
        v = table["models"][m]
        out.append(
            f"| {m} | {v['n']} | {_pct(v['accuracy'])} | {_pct(v['macro_accuracy'])} | {_usd(v['mean_cost_usd'])} "
            f"| {_usd(v['cost_per_correct_usd'])} | {'yes' if v['pareto'] else ''} |"
        )
    out += [
        "",
        "## Accuracy per task",
        "",
        "| task | " + " | ".join(models) + " | best | cheapest near best |",
        "|---|" + "---:|" * len(models) + "---|---|",
    ]
    for task, t in table["tasks"].items():
        row = []
        for m in models:
            c = cell.get((m, task))
            row.append("" if c is None else _pct(c["accuracy"]) + ("*" if c["sparse"] else ""))
        out.append(f"| {task} | " + " | ".join(row) + f" | {t['best_model']} | {t['near_best_model']} |")
    out += ["", "## Mean cost per query", "", "| task | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for task in table["tasks"]:
        row = [_usd(cell[(m, task)]["mean_cost_usd"]) if (m, task) in cell else "" for m in models]
        out.append(f"| {task} | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


KIND = JobKind(
    name="profile",
    description="per (model, task) accuracy and cost on a routing-format benchmark: the router's profiling table",
    params=ProfileParams,
    run=run,
    prepare=prepare,
)

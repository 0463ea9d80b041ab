"""`evaluate`: what simple routing policies would have scored and cost on recorded benchmark answers
(docs/routing.md, Metrics and baselines), and the baselines any router must beat.

Rungs are ordered cheapest first by their mean cost on the *fit* split (`train` by default: choices are
learned there and reported on `split`, as the routing README asks; `same` fits on the evaluated split
itself, which is optimistic and flagged). Per policy: mean score (accuracy for 0/1 scores), mean cost per
query, model calls per query.

  single:<model>       every query to one model
  best_single          the model with the best fit accuracy
  oracle               per query the best recorded score, from the cheapest model that has it
  route@<τ>            per task, the cheapest rung whose fit accuracy on that task is ≥ τ (else the task's
                       most accurate rung): Route_taxonomy with Φ = profiled accuracy, one call per query
  verified_cascade     cheapest first along the fit Pareto ladder; stop at the first answer whose recorded
                       score ≥ accept_score, else keep the last. It pays for every rung tried. With the
                       recorded score as its judge this is a cascade with a perfect verifier: the ceiling of
                       what a judged cascade can reach, and what it would cost (real for tasks with unit tests).

Only prompts answered by every selected model count (others are reported as `dropped_prompts`). The work
is split by task: after each task the running sums are checkpointed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from escalon.distill.jobs.base import JobContext, JobKind, JobParams, pause
from escalon.distill.jobs.benchmark import resolve_benchmark, source_fingerprint
from escalon.distill.jobs.profile import pareto_frontier

COLUMNS = ("prompt_id", "task", "split", "model", "score", "cost_usd")
FORMAT = "escalon.evaluation/v1"


class EvaluateParams(JobParams):
    benchmark: str = Field(description="parquet file in the routing format; relative to the data dir if not absolute")
    split: Literal["train", "test"] = Field(default="test", description="the split the policies are scored on")
    fit_split: Literal["train", "same"] = Field(
        default="train", description="where rung order and per-task accuracy are measured ('same' is in-sample)"
    )
    thresholds: list[float] = Field(
        default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
        min_length=1,
        max_length=50,
        description="accuracy thresholds τ of the route@τ policies, each in [0, 1]",
    )
    accept_score: float = Field(default=0.5, ge=0, le=1, description="the verified cascade accepts scores ≥ this")
    models: list[str] | None = Field(default=None, description="only these models (default: all)")
    step_delay_s: float = Field(default=0.0, ge=0, le=60, description="for tests and demos only: sleep per task")

    @field_validator("thresholds")
    @classmethod
    def _in_unit_interval(cls, values: list[float]) -> list[float]:
        if any(not 0 <= v <= 1 for v in values):
            raise ValueError("every threshold must be in [0, 1]")
        return sorted(set(values))


def prepare(params: EvaluateParams, data_dir: Path) -> EvaluateParams:
    path = resolve_benchmark(params.benchmark, data_dir, COLUMNS, field="params.benchmark")
    return params.model_copy(update={"benchmark": path})


def _load(params: EvaluateParams) -> pd.DataFrame:
    frame = pq.read_table(params.benchmark, columns=list(COLUMNS)).to_pandas()
    if params.models:
        frame = frame[frame["model"].isin(params.models)]
    frame = frame.assign(cost_usd=frame["cost_usd"].fillna(0.0))
    return frame


def fit(frame: pd.DataFrame) -> dict[str, Any]:
    """Rung statistics from the fit rows: overall and per-task accuracy and mean cost, the cheapest-first
    order of all rungs, and the Pareto ladder the cascade climbs."""
    overall = frame.groupby("model").agg(accuracy=("score", "mean"), cost=("cost_usd", "mean"))
    per_task = frame.groupby(["task", "model"])["score"].mean()
    order = sorted(overall.index, key=lambda m: (overall.at[m, "cost"], -overall.at[m, "accuracy"], m))
    ladder = pareto_frontier({m: (overall.at[m, "cost"], overall.at[m, "accuracy"]) for m in overall.index})
    return {
        "order": [str(m) for m in order],
        "ladder": ladder,
        "accuracy": {str(m): float(overall.at[m, "accuracy"]) for m in overall.index},
        "mean_cost_usd": {str(m): float(overall.at[m, "cost"]) for m in overall.index},
        "task_accuracy": {f"{t}\x1f{m}": float(v) for (t, m), v in per_task.items()},
    }


def _route_choice(task: str, fitted: dict[str, Any], tau: float) -> str:
    acc = {m: fitted["task_accuracy"].get(f"{task}\x1f{m}", fitted["accuracy"][m]) for m in fitted["order"]}
    for model in fitted["order"]:
        if acc[model] >= tau:
            return model
    return max(fitted["order"], key=lambda m: (acc[m], -fitted["mean_cost_usd"][m]))


def _add(sums: dict[str, list[float]], policy: str, scores, costs, calls) -> None:
    s = sums.setdefault(policy, [0, 0.0, 0.0, 0.0])
    s[0] += len(scores)
    s[1] += float(sum(scores))
    s[2] += float(sum(costs))
    s[3] += float(sum(calls))


def _score_task(
    task: str, rows: pd.DataFrame, fitted: dict[str, Any], params: EvaluateParams, sums: dict[str, list[float]]
) -> int:
    """Add this task's queries to every policy's sums; return the prompts dropped for missing models."""
    models = fitted["order"]
    score = rows.pivot_table(index="prompt_id", columns="model", values="score", aggfunc="mean")
    cost = rows.pivot_table(index="prompt_id", columns="model", values="cost_usd", aggfunc="mean")
    score, cost = score.reindex(columns=models), cost.reindex(columns=models)
    complete = score.notna().all(axis=1) & cost.notna().all(axis=1)
    dropped = int((~complete).sum())
    score, cost = score[complete], cost[complete]
    if score.empty:
        return dropped
    n = len(score)
    ones = [1] * n
    for m in models:
        _add(sums, f"single:{m}", score[m], cost[m], ones)
    best = max(models, key=lambda m: (fitted["accuracy"][m], -fitted["mean_cost_usd"][m]))
    _add(sums, "best_single", score[best], cost[best], ones)

    top = score.max(axis=1)
    oracle_cost = [min(cost.at[p, m] for m in models if score.at[p, m] >= top[p]) for p in score.index]
    _add(sums, "oracle", top, oracle_cost, ones)

    for tau in params.thresholds:
        chosen = _route_choice(task, fitted, tau)
        _add(sums, f"route@{tau:g}", score[chosen], cost[chosen], ones)

    got, paid, calls = [], [], []
    for p in score.index:
        spent, tried = 0.0, 0
        for m in fitted["ladder"]:
            spent += cost.at[p, m]
            tried += 1
            if score.at[p, m] >= params.accept_score:
                break
        got.append(score.at[p, m])
        paid.append(spent)
        calls.append(tried)
    _add(sums, "verified_cascade", got, paid, calls)
    return dropped


def run(params: EvaluateParams, ctx: JobContext) -> dict[str, Any]:
    source = source_fingerprint(params.benchmark)
    frame = _load(params)
    evaluated = frame[frame["split"] == params.split]
    fit_rows = evaluated if params.fit_split == "same" else frame[frame["split"] == params.fit_split]
    if evaluated.empty:
        raise ValueError(f"no rows for split={params.split!r} in {params.benchmark}")
    if fit_rows.empty:
        raise ValueError(f"no rows for fit_split={params.fit_split!r} in {params.benchmark}; use fit_split='same'")
    tasks = sorted(evaluated["task"].unique())

    state = ctx.load_checkpoint()
    fingerprint = params.model_dump(exclude={"step_delay_s"})
    if not state or state.get("source") != source or state.get("params") != fingerprint:
        state = {
            "source": source,
            "params": fingerprint,
            "fit": fit(fit_rows),
            "tasks_done": 0,
            "sums": {},
            "dropped": 0,
        }
    fitted = state["fit"]
    missing = sorted(set(evaluated["model"].unique()) - set(fitted["order"]))
    if missing:
        raise ValueError(f"model(s) {', '.join(missing)} have no rows in the fit split {params.fit_split!r}")

    by_task = dict(tuple(evaluated.groupby("task")))
    for index in range(state["tasks_done"], len(tasks)):
        pause(params.step_delay_s)
        state["dropped"] += _score_task(tasks[index], by_task[tasks[index]], fitted, params, state["sums"])
        state["tasks_done"] = index + 1
        ctx.save_checkpoint(
            state,
            progress=(index + 1) / len(tasks),
            message=f"task {index + 1}/{len(tasks)}: {tasks[index]}",
            step=index,
            metrics={"task": tasks[index]},
        )

    report = build_report(state, params, tasks)
    report["source"] = source
    path = ctx.write_artefact("evaluation.json", json.dumps(report, indent=1))
    md = ctx.write_artefact("evaluation.md", render_markdown(report))
    summary = {
        k: report[k]
        for k in (
            "split",
            "fit_split",
            "in_sample",
            "queries",
            "dropped_prompts",
            "best_single",
            "oracle",
            "verified_cascade",
            "cheapest_matching_best_single",
        )
    }
    summary["policies"] = report["policies"]
    summary["artefacts"] = {"evaluation_json": str(path), "evaluation_md": str(md)}
    return summary


def build_report(state: dict[str, Any], params: EvaluateParams, tasks: list[str]) -> dict[str, Any]:
    policies = {}
    for name, (n, score_sum, cost_sum, calls) in sorted(state["sums"].items()):
        policies[name] = {"accuracy": score_sum / n, "mean_cost_usd": cost_sum / n, "calls_per_query": calls / n}
    if not policies:
        raise ValueError("no prompt was answered by every selected model; nothing to evaluate")
    best = policies["best_single"]
    # the cheapest routing policy that is at least as accurate as the best single model
    candidates = [
        (p, v)
        for p, v in policies.items()
        if (p.startswith("route@") or p == "verified_cascade") and v["accuracy"] >= best["accuracy"] - 1e-12
    ]
    cheapest = min(candidates, key=lambda pv: pv[1]["mean_cost_usd"], default=None)
    return {
        "format": FORMAT,
        "split": params.split,
        "fit_split": params.fit_split,
        "in_sample": params.fit_split == "same",
        "tasks": len(tasks),
        "queries": int(state["sums"]["best_single"][0]),
        "dropped_prompts": state["dropped"],
        "ladder": state["fit"]["ladder"],
        "order": state["fit"]["order"],
        "best_single": {
            "model": max(
                state["fit"]["order"], key=lambda m: (state["fit"]["accuracy"][m], -state["fit"]["mean_cost_usd"][m])
            ),
            **best,
        },
        "oracle": policies["oracle"],
        "verified_cascade": policies["verified_cascade"],
        "cheapest_matching_best_single": (
            {
                "policy": cheapest[0],
                **cheapest[1],
                "cost_vs_best_single": cheapest[1]["mean_cost_usd"] / best["mean_cost_usd"]
                if best["mean_cost_usd"]
                else None,
            }
            if cheapest
            else None
        ),
        "policies": policies,
    }


def render_markdown(report: dict[str, Any]) -> str:
    fit_note = " (fit on the evaluated split itself: optimistic)" if report["in_sample"] else ""
    out = [
        f"# Evaluation: split `{report['split']}`, fit on `{report['fit_split']}`{fit_note}",
        "",
        f"{report['queries']} queries over {report['tasks']} tasks ({report['dropped_prompts']} prompts dropped: "
        "not answered by every model). Rungs cheapest first: " + ", ".join(report["order"]) + ".",
        "",
        "| policy | accuracy | mean cost | calls per query |",
        "|---|---:|---:|---:|",
    ]
    for name, v in sorted(report["policies"].items(), key=lambda kv: kv[1]["mean_cost_usd"]):
        out.append(f"| {name} | {100 * v['accuracy']:.1f}% | ${v['mean_cost_usd']:.6f} | {v['calls_per_query']:.2f} |")
    match = report["cheapest_matching_best_single"]
    out += [
        "",
        "Cheapest policy at least as accurate as the best single model: "
        + (
            f"`{match['policy']}` at {match['cost_vs_best_single']:.2f}× its cost."
            if match and match["cost_vs_best_single"] is not None
            else "none."
        ),
    ]
    return "\n".join(out) + "\n"


KIND = JobKind(
    name="evaluate",
    description="accuracy and cost of baselines, per-task threshold routes and a verified cascade on recorded answers",
    params=EvaluateParams,
    run=run,
    prepare=prepare,
)

"""`refresh`: re-fit a router artefact's per-task success estimates from the judged outcomes in the route log,
and write them as a new artefact version, which a router started with that artefact picks up by itself.

The artefact's profile Φ holds, per (task, complexity, rung), the share of its training rows the rung got right
and how many rows that rests on. Routes planned with the artefact carry the taxonomy's task_type and complexity
labels (escalon.router.routing); every answered attempt of a rung in such a route is one judged outcome: the
judges' confidence in that answer (a pseudo-label — the route log holds no gold answers). A cell with at least
`min_rows` outcomes in the window gets the count-weighted mean of what it had and what was observed:

    acc' = (count · acc + Σ confidence) / (count + n),   count' = count + n

Cells with fewer outcomes are left as they were. Routes of tasks or rungs the artefact does not know are
counted and skipped. Schedulable with Celery beat: the task `escalon.distill.refresh` with the params as
keyword arguments (docs/tenancy.md).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from escalon.distill.jobs.base import JobContext, JobKind, JobParams
from escalon.distill.jobs.inputs import confined
from escalon.errors import InvalidInput


class RefreshParams(JobParams):
    artefact: str = Field(description="the router artefact folder (ESCALON_ROUTER_ARTEFACT); relative to the data dir")
    since: str = Field(default="30d", description="routes from this time (30m, 7d, or ISO; fixed at submit)")
    min_rows: int = Field(default=20, ge=1, le=1_000_000, description="judged outcomes a cell needs to change")


def prepare(params: RefreshParams, data_dir: Path) -> RefreshParams:
    from escalon.db.routes import parse_when

    folder = confined(params.artefact, data_dir, field="params.artefact")
    if not (folder / "manifest.json").is_file():
        raise InvalidInput(f"no router artefact at {folder} (manifest.json missing); `escalon eval --out` writes one",
                           field="params.artefact")
    since = parse_when(params.since, field="params.since").isoformat()
    return params.model_copy(update={"artefact": str(folder), "since": since})


def observe(routes, tasks: list[str], rungs: list[str]) -> tuple[np.ndarray, np.ndarray, Counter[str]]:  # noqa: ANN001
    """(n, Σ confidence) per [task, complexity, rung] from route-log rows, and what was skipped why."""
    from escalon.router.taxonomy import COMPLEXITY

    n = np.zeros((len(tasks), len(COMPLEXITY), len(rungs)))
    total = np.zeros_like(n)
    skipped: Counter[str] = Counter()
    for route in routes:
        labels = {l["dimension"]: l["label"] for l in route["plan"].get("labels", [])}
        task, cx = labels.get("task_type"), labels.get("complexity")
        if task not in tasks or cx not in COMPLEXITY:
            skipped["no taxonomy label the artefact knows"] += 1
            continue
        t, k = tasks.index(task), COMPLEXITY.index(cx)
        for attempt in route["attempts"]:
            if not attempt.get("samples"):
                continue
            if attempt["rung"] not in rungs:
                skipped["attempt of a rung the artefact does not route"] += 1
                continue
            r = rungs.index(attempt["rung"])
            n[t, k, r] += 1
            total[t, k, r] += float(attempt.get("confidence") or 0.0)
    return n, total, skipped


def refit(profile, n: np.ndarray, total: np.ndarray, min_rows: int):  # noqa: ANN001, ANN201
    """The profile with every cell of ≥ min_rows outcomes moved to the count-weighted mean."""
    enough = n >= min_rows
    count = profile.count.astype(float)
    acc = np.where(enough, (count * profile.acc + total) / np.maximum(count + n, 1), profile.acc)
    new_count = np.where(enough, profile.count + n.astype(profile.count.dtype), profile.count)
    task_count = profile.task_count + (n * enough).sum(axis=1).astype(profile.task_count.dtype)
    return replace(profile, acc=np.clip(acc, 0, 1), count=new_count, task_count=task_count), int(enough.sum())


def run(params: RefreshParams, ctx: JobContext) -> dict[str, Any]:
    from escalon.config import load_settings
    from escalon.db.engine import ready_database
    from escalon.db.routes import RouteFilter, iter_routes
    from escalon.db.settings import DatabaseSettings
    from escalon.router.artefact import load_artefact, write_artefact

    artefact = load_artefact(params.artefact, field="params.artefact")
    model = artefact.model
    engine = ready_database(load_settings(DatabaseSettings).database_url)
    try:
        routes = list(iter_routes(engine, RouteFilter(since=dt.datetime.fromisoformat(params.since), status="OK")))
    finally:
        engine.dispose()
    ctx.report(0.5, f"{len(routes)} routes since {params.since}")
    n, total, skipped = observe(routes, list(model.profile.tasks), list(model.profile.rungs))
    profile, cells = refit(model.profile, n, total, params.min_rows)
    summary: dict[str, Any] = {"artefact": params.artefact, "routes": len(routes), "outcomes": int(n.sum()),
                               "cells_refitted": cells, "skipped": dict(skipped), "previous_version": artefact.version}
    if cells:
        notes = [*artefact.manifest.get("notes", []),
                 f"refreshed from {int(n.sum())} judged outcomes in the route log since {params.since} ({cells} cells)"]
        write_artefact(params.artefact, replace(model, profile=profile), artefact.judge_weights, artefact.probe,
                       artefact.manifest.get("source", {}), notes)
        summary["version"] = load_artefact(params.artefact, field="params.artefact").version
    else:
        summary["version"] = artefact.version
    ctx.save_checkpoint({"done": True}, progress=1.0,
                        message=f"{cells} cells refitted from {int(n.sum())} outcomes", metrics={"cells": cells})
    return summary


KIND = JobKind(
    name="refresh",
    description="re-fit a router artefact's per-task success estimates from the route log (a new artefact version)",
    params=RefreshParams,
    run=run,
    prepare=prepare,
)

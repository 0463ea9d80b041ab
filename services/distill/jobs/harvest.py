"""`harvest`: build a distillation data set — deduplicated, split into train/val/test — from one of four sources.

  route log       `source: route_log`: the router's own route log in Escalon's database (ESCALON_DATABASE_URL,
                  escalon.db), within `since`/`until` (30m, 7d or ISO; resolved to fixed times when the job is
                  submitted), `task` and `tenant`. Only routes whose prompt was stored (the operator opted in,
                  ESCALON_ROUTE_LOG_PROMPTS) can be items; the others are counted as dropped. Items are chosen
                  and labelled as for a router log file, below.

  router log      `source: router_log`, `path`: JSON lines, one route each (the RouteResponse as
                  json_format.MessageToDict writes it, either key style, plus the request's `prompt` and
                  optionally `answer_type`). An item is a query that a cheap rung failed (its attempt was not
                  accepted, or `cheap_rung` named and not accepted) and a costlier rung later in the same route
                  answered with confidence ≥ `min_confidence` (and was accepted). Its label is that rung's
                  parsed answer: a judge-confirmed pseudo-label, recorded with the rung and its confidence.
  benchmark       `source: benchmark`, `path`: a routing-format parquet (shared/data/routing). There is no
                  gold column; a prompt's gold is the parsed final answer of a recorded response scored 1
                  (exact-match scoring: a correct response's final number is the gold). Prompts no model
                  answered correctly are dropped. The file's `split` column is kept: `test` stays test,
                  `train` is divided into train and val.
  synthetic       `source: synthetic:arith`: generated arithmetic word problems with checkable answers and
                  the structure the programmatic teacher needs (training/arith.py).

Deduplication is on the whitespace- and case-normalised prompt (first occurrence wins). Splits other than
the benchmark's own are a stable hash of the prompt, so the same prompt always lands in the same split.
Artefacts: dataset.jsonl (training/data.py format) and harvest.json (counts, sources, what was dropped why).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from escalon.benchmark import hash_split
from escalon.distill.jobs.base import JobContext, JobKind, JobParams, pause
from escalon.distill.jobs.benchmark import resolve_benchmark
from escalon.distill.jobs.inputs import input_file
from escalon.distill.training import arith
from escalon.distill.training.data import Item, canonical, item_id, normalise_prompt, write_jsonl
from escalon.errors import InvalidInput

FORMAT = "escalon.dataset/v1"


class HarvestParams(JobParams):
    source: Literal["route_log", "router_log", "benchmark", "synthetic:arith"] = Field(
        description="where the items come from")
    path: str = Field(default="", description="router log (JSONL) or benchmark parquet; relative to the data dir")
    # router log
    cheap_rung: str = Field(default="", description="router log: only queries this rung failed (default: any)")
    min_confidence: float = Field(default=0.8, ge=0, le=1, description="router log: the costlier rung's confidence")
    # route log (the database)
    since: str = Field(default="", description="route log: routes from this time (30m, 7d, or ISO; UTC)")
    until: str = Field(default="", description="route log: routes before this time")
    tenant: str = Field(default="", description="route log: only this tenant's routes")
    # benchmark
    task: str = Field(default="", description="benchmark, route log: only this task (e.g. gsm8k)")
    answer_type: Literal["number", "choice", "yes-no", "free-text"] = Field(
        default="number", description="how final answers are parsed and compared (as the judges do)")
    # synthetic
    n: int = Field(default=300, ge=3, le=1_000_000, description="synthetic: number of problems")
    seed: int = Field(default=0, description="synthetic problems and split hashing")
    # splits
    val_fraction: float = Field(default=0.15, ge=0, lt=1, description="share of items for validation")
    test_fraction: float = Field(default=0.25, ge=0, lt=1, description="ignored for benchmarks (their split wins)")
    limit: int | None = Field(default=None, ge=1, description="keep at most this many items (after deduplication)")
    step_delay_s: float = Field(default=0.0, ge=0, le=60, description="for tests and demos only")

    @model_validator(mode="after")
    def _path_needed(self) -> HarvestParams:
        if self.source not in ("synthetic:arith", "route_log") and not self.path:
            raise ValueError(f"source {self.source} needs path")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must stay below 1")
        return self


def prepare(params: HarvestParams, data_dir: Path) -> HarvestParams:
    if params.source == "benchmark":
        path = resolve_benchmark(params.path, data_dir, ("prompt_id", "task", "split", "prompt", "model", "response",
                                                         "score"), field="params.path")
        return params.model_copy(update={"path": path})
    if params.source == "route_log":
        from escalon.db.routes import parse_when

        # fixed times, so that a retried or resubmitted job reads the same window
        return params.model_copy(update={
            name: parse_when(getattr(params, name), field=f"params.{name}").isoformat()
            for name in ("since", "until") if getattr(params, name)})
    if params.source == "router_log":
        path = input_file(params.path, data_dir, field="params.path", what="router log")
        return params.model_copy(update={"path": str(path)})
    return params


def run(params: HarvestParams, ctx: JobContext) -> dict[str, Any]:
    pause(params.step_delay_s)
    dropped: Counter[str] = Counter()
    if params.source == "synthetic:arith":
        raw = arith.generate(params.n, seed=params.seed)
    elif params.source == "benchmark":
        raw = from_benchmark(params, dropped)
    elif params.source == "route_log":
        raw = from_route_log(params, dropped)
    else:
        raw = from_router_log(Path(params.path), params, dropped)
    ctx.report(0.5, f"{len(raw)} candidate items")
    items, seen = [], set()
    for r in raw:
        key = normalise_prompt(r["prompt"])
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        split = r.pop("split", None)
        if split == "test":
            pass
        elif split == "train":
            split = hash_split(key, 0.0, val_share=params.val_fraction, seed=params.seed)  # the train part: train or val
        else:
            split = hash_split(key, params.test_fraction, val_share=params.val_fraction, seed=params.seed)
        items.append(Item(id=r.get("id") or item_id(r["prompt"]), prompt=r["prompt"], answer=r["answer"],
                          answer_type=r.get("answer_type", params.answer_type), split=split,
                          source=r.get("source", params.source), meta=r.get("meta", {})))
    if params.limit:
        dropped["over limit"] += max(0, len(items) - params.limit)
        items = items[: params.limit]
    if not items:
        raise ValueError(f"no items harvested from {params.source} {params.path}: dropped {dict(dropped)}")
    counts = Counter(i.split for i in items)
    path = write_jsonl(ctx.artefact_dir / "dataset.jsonl", [vars(i) for i in items])
    summary = {"format": FORMAT, "source": params.source, "path": params.path, "items": len(items),
               "splits": {s: counts.get(s, 0) for s in ("train", "val", "test")}, "dropped": dict(dropped),
               "artefacts": {"dataset": str(path)}}
    ctx.write_artefact("harvest.json", json.dumps(summary, indent=1))
    ctx.save_checkpoint({"done": True}, progress=1.0, message=f"{len(items)} items: {summary['splits']}",
                        metrics={"items": len(items), **summary["splits"]})
    return summary


def from_benchmark(params: HarvestParams, dropped: Counter[str]) -> list[dict[str, Any]]:
    import pandas as pd

    frame = pd.read_parquet(params.path, columns=["prompt_id", "task", "split", "prompt", "model", "response", "score"])
    if params.task:
        frame = frame[frame["task"] == params.task]
    out = []
    for prompt_id, rows in frame.groupby("prompt_id", sort=False):
        gold, source = None, ""
        for row in rows.sort_values("model").itertuples():
            if row.score == 1 and isinstance(row.response, str):
                gold = canonical(row.response, params.answer_type)
                source = f"benchmark:{row.task} gold from {row.model} (scored 1)"
                if gold is not None:
                    break
        if gold is None:
            dropped["no correct recorded answer"] += 1
            continue
        first = rows.iloc[0]
        out.append({"id": str(prompt_id), "prompt": first["prompt"], "answer": gold, "split": first["split"],
                    "source": source, "meta": {"task": first["task"]}})
    return out


def _get(d: dict[str, Any], snake: str) -> Any:
    camel = snake.split("_")[0] + "".join(w.title() for w in snake.split("_")[1:])
    return d.get(snake, d.get(camel))


def from_router_log(path: Path, params: HarvestParams, dropped: Counter[str]) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                route = json.loads(line)
            except json.JSONDecodeError:
                dropped["unreadable line"] += 1
                continue
            item = _item_of(route, params, dropped, f"router_log:{path.name}:{n}")
            if item is not None:
                out.append(item)
    return out


def _item_of(route: dict[str, Any], params: HarvestParams, dropped: Counter[str],
             source: str) -> dict[str, Any] | None:
    """An item from one route (a cheap rung failed, a costlier one answered with confidence), or None (counted)."""
    prompt = route.get("prompt") or _get(route.get("request", {}) or {}, "prompt")
    attempts = route.get("attempts") or []
    if not prompt or not attempts:
        dropped["no prompt or attempts"] += 1
        return None
    failed_at = None
    for k, a in enumerate(attempts):
        answered = bool(a.get("answer")) or bool(_get(a, "samples"))
        if params.cheap_rung and a.get("rung") != params.cheap_rung:
            continue
        if answered and not a.get("accepted"):
            failed_at = k
            break
    if failed_at is None:
        dropped["no cheap rung failed"] += 1
        return None
    teacher = next((a for a in attempts[failed_at + 1 :]
                    if a.get("accepted") and float(a.get("confidence") or 0) >= params.min_confidence
                    and _get(a, "parsed_answer")), None)
    if teacher is None:
        dropped["no costlier rung answered with enough confidence"] += 1
        return None
    answer_type = route.get("answer_type") or _get(route, "answer_type") or params.answer_type
    if isinstance(answer_type, str) and answer_type.startswith("ANSWER_TYPE_"):
        answer_type = answer_type.removeprefix("ANSWER_TYPE_").lower().replace("_", "-")
    return {"prompt": prompt, "answer": str(_get(teacher, "parsed_answer")),
            "answer_type": answer_type if answer_type in ("number", "choice", "yes-no", "free-text")
            else params.answer_type,
            "source": source,
            "meta": {"failed_rung": attempts[failed_at].get("rung"), "label_rung": teacher.get("rung"),
                     "label_confidence": teacher.get("confidence"),
                     "label_answer": teacher.get("answer", "")[:4000]}}


def from_route_log(params: HarvestParams, dropped: Counter[str]) -> list[dict[str, Any]]:
    """Items from the route log in the database, oldest route first."""
    import datetime as dt

    from escalon.config import load_settings
    from escalon.db.engine import ready_database
    from escalon.db.routes import RouteFilter, iter_routes
    from escalon.db.settings import DatabaseSettings

    window = RouteFilter(since=dt.datetime.fromisoformat(params.since) if params.since else None,
                         until=dt.datetime.fromisoformat(params.until) if params.until else None,
                         task=params.task, tenant=params.tenant, status="OK")
    engine = ready_database(load_settings(DatabaseSettings).database_url)
    out = []
    try:
        for route in iter_routes(engine, window):
            if route["prompt"] is None:
                dropped["prompt not stored (ESCALON_ROUTE_LOG_PROMPTS off)"] += 1
                continue
            item = _item_of(route, params, dropped, f"route_log:{route['id']}")
            if item is not None:
                item["meta"]["request_id"] = route["request_id"]
                out.append(item)
    finally:
        engine.dispose()
    return out


KIND = JobKind(
    name="harvest",
    description="a deduplicated train/val/test data set from the router's logs, a benchmark file, or synthetic:arith",
    params=HarvestParams,
    run=run,
    prepare=prepare,
)

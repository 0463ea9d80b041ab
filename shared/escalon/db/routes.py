"""Reading the route log back: filters, one route, exports, pruning, and the figures of the operator's page.

Exports: JSON lines (one route per line, as stored) or the shared routing benchmark format (escalon.benchmark:
one row per prompt and rung: prompt_id, task, split, prompt, model, response, score, cost_usd), so that
`escalon eval --benchmark` can fit a router on real traffic. In that format `score` is the judges' confidence
in the rung's answer (a pseudo-label: the route log holds no gold answers), `prompt_id` the prompt's SHA-256
(its first 16 hex digits), `split` the shared hash split of it. Only routes whose prompt was stored (the
operator opted in, ESCALON_ROUTE_LOG_PROMPTS) can be written in the benchmark format; the others are counted.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, or_, select

from escalon.db.models import UTC, Route
from escalon.errors import InvalidInput

BENCHMARK_COLUMNS = ("prompt_id", "task", "split", "prompt", "model", "response", "score", "cost_usd")
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, *, field: str, now: dt.datetime | None = None) -> dt.datetime:
    """'90m', '6h', '7d', '2w' (that long ago), or an ISO date / date-time (UTC unless it names a zone)."""
    now = now or dt.datetime.now(UTC)
    value = text.strip()
    match = _AGO.match(value)
    if match:
        return now - dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a time: write a duration ago (30m, 6h, 7d, 2w) or an ISO date "
                           "(2026-12-01, 2026-12-01T08:00)", field=field) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass(frozen=True)
class RouteFilter:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    rung: str = ""
    task: str = ""
    tenant: str = ""
    status: str = ""  # OK, or a status name; empty = any
    with_prompt: bool = False  # only routes whose prompt was stored

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise InvalidInput(f"--since ({self.since:%Y-%m-%d %H:%M}) must come before --until "
                               f"({self.until:%Y-%m-%d %H:%M})", field="since")

    def where(self, query):  # noqa: ANN001, ANN201
        if self.since:
            query = query.where(Route.created_at >= self.since)
        if self.until:
            query = query.where(Route.created_at < self.until)
        if self.rung:
            query = query.where(Route.rung == self.rung)
        if self.task:
            query = query.where(Route.task == self.task)
        if self.tenant:
            query = query.where(Route.tenant == self.tenant)
        if self.status:
            query = query.where(Route.status == self.status.upper())
        if self.with_prompt:
            query = query.where(Route.prompt.is_not(None))
        return query


def as_dict(row: Route) -> dict[str, Any]:
    out = {c.name: getattr(row, c.name) for c in Route.__table__.columns}
    out["created_at"] = row.created_at.isoformat()
    return out


def list_routes(engine: Engine, f: RouteFilter, limit: int = 50) -> list[dict[str, Any]]:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        rows = session.scalars(f.where(select(Route)).order_by(Route.created_at.desc(), Route.id.desc()).limit(limit))
        return [as_dict(r) for r in rows]


def get_route(engine: Engine, ref: str) -> dict[str, Any]:
    """One route by its row id or its request id (the newest, when a request id was reused)."""
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        query = select(Route).where(Route.request_id == ref)
        if ref.isdigit():
            query = select(Route).where(or_(Route.id == int(ref), Route.request_id == ref))
        row = session.scalars(query.order_by(Route.id.desc()).limit(1)).first()
        if row is None:
            from escalon.errors import NotFound

            raise NotFound(f"no route with id or request id {ref!r}; `escalon routes list` shows recent ones",
                           field="route")
        return as_dict(row)


def iter_routes(engine: Engine, f: RouteFilter, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every matching route, oldest first, read in pages (keyset on id)."""
    from sqlalchemy.orm import Session

    last = 0
    while True:
        with Session(engine) as session:
            rows = list(session.scalars(f.where(select(Route)).where(Route.id > last).order_by(Route.id).limit(batch)))
            out = [as_dict(r) for r in rows]
        yield from out
        if len(rows) < batch:
            return
        last = rows[-1].id


def export_jsonl(engine: Engine, f: RouteFilter, path: Path) -> int:
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for route in iter_routes(engine, f):
            fh.write(json.dumps(route, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def benchmark_rows(routes: Iterator[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, int]:
    """(rows in the shared benchmark format, routes used, routes skipped because their prompt was not stored)."""
    from escalon.benchmark import hash_split

    rows, used, skipped = [], 0, 0
    for route in routes:
        if route["prompt"] is None:
            skipped += 1
            continue
        pid = route["prompt_sha256"][:16]
        split = hash_split(pid)
        answered = [a for a in route["attempts"] if a.get("samples")]
        if not answered:
            continue
        used += 1
        for a in answered:
            rows.append({"prompt_id": pid, "task": route["task"] or "unknown", "split": split,
                         "prompt": route["prompt"], "model": a["rung"], "response": a.get("answer") or None,
                         "score": float(a.get("confidence") or 0.0), "cost_usd": float(a.get("cost_usd") or 0.0)})
    return rows, used, skipped


def export_benchmark(engine: Engine, f: RouteFilter, path: Path) -> tuple[int, int, int]:
    """Write a benchmark parquet; (rows, routes used, routes without a stored prompt)."""
    import pandas as pd

    rows, used, skipped = benchmark_rows(iter_routes(engine, f))
    frame = pd.DataFrame(rows, columns=list(BENCHMARK_COLUMNS))
    frame = frame.astype({"prompt_id": "string", "task": "string", "split": "string", "prompt": "string",
                          "model": "string", "response": "string", "score": "float64", "cost_usd": "float64"})
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return len(rows), used, skipped


def prune(engine: Engine, retention_days: float, *, now: dt.datetime | None = None) -> int:
    """Delete routes older than the retention; returns how many."""
    if not retention_days > 0:
        raise InvalidInput(f"retention must be above 0 days (got {retention_days})", field="retention_days")
    cutoff = (now or dt.datetime.now(UTC)) - dt.timedelta(days=retention_days)
    with engine.begin() as conn:
        return conn.execute(delete(Route).where(Route.created_at < cutoff)).rowcount or 0


def summary(engine: Engine, since: dt.datetime) -> dict[str, Any]:
    """The figures of the operator's page over every replica's routes since `since`."""
    with engine.connect() as conn:
        total = conn.execute(select(func.count(), func.coalesce(func.sum(Route.total_cost_usd), 0.0),
                                    func.avg(Route.confidence), func.avg(Route.latency_ms))
                             .where(Route.created_at >= since, Route.status == "OK")).one()
        by_rung = conn.execute(select(Route.rung, func.count(), func.sum(Route.total_cost_usd))
                               .where(Route.created_at >= since, Route.status == "OK")
                               .group_by(Route.rung)).all()
        errors = conn.execute(select(Route.status, func.count()).where(Route.created_at >= since, Route.status != "OK")
                              .group_by(Route.status)).all()
        by_tenant = conn.execute(select(Route.tenant, func.count(), func.sum(Route.total_cost_usd))
                                 .where(Route.created_at >= since).group_by(Route.tenant)).all()
    routes = int(total[0])
    return {"since": since.isoformat(), "routes": routes, "spend_usd": float(total[1] or 0.0),
            "mean_confidence": float(total[2]) if total[2] is not None else None,
            "mean_latency_ms": float(total[3]) if total[3] is not None else None,
            "by_rung": {r or "": {"routes": int(n), "spend_usd": float(c or 0.0)} for r, n, c in by_rung},
            "errors": {s: int(n) for s, n in errors},
            "by_tenant": {t or "(open)": {"routes": int(n), "spend_usd": float(c or 0.0)} for t, n, c in by_tenant}}

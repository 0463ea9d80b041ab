"""The operator's page's traffic figures: the routes that passed through this gateway, in a bounded window.

With ESCALON_GATEWAY_TRAFFIC_SOURCE=route_log the same figures come from the router's route log in the
database instead (`window_from_route_log`): every replica's routes, kept across restarts. Otherwise:
each answered route is kept as a small record (no prompt, no answer) for `window_s` seconds, at most
`max_routes` of them (the oldest go first), in this process's memory: a restart empties it, and each
gateway replica sees only its own traffic. From them: per rung the share of answers, how often a try
escalated past it, its judges' confidence distribution and its spend; overall the spend per minute and
the cost/quality point of each `model` requested (the live frontier).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from escalon.errors import ConfigError
from escalon.gen.router.v1 import router_pb2

BINS = 10  # confidence histogram bins over [0, 1]
SPEND_BUCKETS = 60


@dataclass(frozen=True)
class AttemptRecord:
    rung: str
    answered: bool  # the rung produced samples (not skipped)
    accepted: bool
    confidence: float
    cost_usd: float


@dataclass(frozen=True)
class RouteRecord:
    at: float  # time.time()
    model: str  # what the client asked for: escalon/auto, escalon/economy, a rung
    rung: str  # the rung whose answer was returned
    confidence: float
    cost_usd: float
    attempts: tuple[AttemptRecord, ...]

    @property
    def escalated(self) -> bool:
        return sum(a.answered for a in self.attempts) > 1


def record_of(model: str, response: router_pb2.RouteResponse, at: float | None = None) -> RouteRecord:
    return RouteRecord(
        at=time.time() if at is None else at, model=model, rung=response.rung, confidence=response.confidence,
        cost_usd=response.total_cost_usd,
        attempts=tuple(AttemptRecord(a.rung, a.samples > 0, a.accepted, a.confidence, a.cost_usd)
                       for a in response.attempts),
    )


def _bin(confidence: float) -> int:
    if not math.isfinite(confidence):
        return 0
    return min(BINS - 1, max(0, int(confidence * BINS)))


class TrafficWindow:
    def __init__(self, window_s: float = 3600, max_routes: int = 10_000, *, clock=time.time) -> None:
        self.window_s = window_s
        self.max_routes = max_routes
        self.clock = clock
        self._routes: deque[RouteRecord] = deque(maxlen=max_routes)
        self._errors: deque[tuple[float, int]] = deque(maxlen=max_routes)

    def add(self, record: RouteRecord) -> None:
        self._routes.append(record)

    def add_error(self, status: int) -> None:
        self._errors.append((self.clock(), status))

    def _prune(self) -> float:
        """Drop what left the window (records arrive in completion order, oldest first)."""
        now = self.clock()
        horizon = now - self.window_s
        while self._routes and self._routes[0].at < horizon:
            self._routes.popleft()
        while self._errors and self._errors[0][0] < horizon:
            self._errors.popleft()
        return now

    def routes(self) -> list[RouteRecord]:
        now = self._prune()
        return [r for r in self._routes if r.at >= now - self.window_s]  # exact even if the clock stepped back

    def summary(self) -> dict[str, Any]:
        now = self.clock()
        routes = self.routes()
        total = len(routes)
        rungs: dict[str, dict[str, Any]] = {}

        def rung(name: str) -> dict[str, Any]:
            return rungs.setdefault(name, {"answered": 0, "share": 0.0, "tried": 0, "escalated": 0,
                                           "escalation_rate": None, "skipped": 0, "spend_usd": 0.0,
                                           "confidence_histogram": [0] * BINS})

        final_hist = [0] * BINS
        spend = [0.0] * SPEND_BUCKETS
        minute = self.window_s / SPEND_BUCKETS
        for route in routes:
            rung(route.rung)["answered"] += 1
            final_hist[_bin(route.confidence)] += 1
            index = SPEND_BUCKETS - 1 - int((now - route.at) // minute)
            spend[min(SPEND_BUCKETS - 1, max(0, index))] += route.cost_usd
            answered = [a for a in route.attempts if a.answered]
            for a in route.attempts:
                stats = rung(a.rung)
                stats["spend_usd"] += a.cost_usd
                if not a.answered:
                    stats["skipped"] += 1
                    continue
                stats["tried"] += 1
                stats["confidence_histogram"][_bin(a.confidence)] += 1
                # Escalated past this rung: a later rung was tried after it.
                if a is not answered[-1]:
                    stats["escalated"] += 1
        for stats in rungs.values():
            stats["share"] = stats["answered"] / total if total else 0.0
            stats["escalation_rate"] = stats["escalated"] / stats["tried"] if stats["tried"] else None
        cost = sum(r.cost_usd for r in routes)
        return {
            "scope": "routes answered through this gateway process (in memory; a restart empties it, each "
                     "replica counts its own)",
            "window_s": self.window_s,
            "max_routes": self.max_routes,
            "routes": total,
            "oldest_age_s": now - routes[0].at if routes else None,
            "total_cost_usd": cost,
            "mean_cost_usd": cost / total if total else None,
            "escalation_rate": sum(r.escalated for r in routes) / total if total else None,
            "errors": {str(k): v for k, v in sorted(Counter(s for at, s in self._errors
                                                             if at >= now - self.window_s).items())},
            "confidence_bins": [i / BINS for i in range(BINS + 1)],
            "confidence_histogram": final_hist,
            "spend_per_bucket_usd": spend,
            "spend_bucket_s": minute,
            "rungs": rungs,
        }

    def frontier(self) -> dict[str, Any]:
        """Mean cost per query and mean judge confidence of the returned answer, per `model` requested."""
        groups: dict[str, list[RouteRecord]] = {}
        for route in self.routes():
            groups.setdefault(route.model, []).append(route)
        points = [{"name": name, "n": len(rs), "cost_usd": sum(r.cost_usd for r in rs) / len(rs),
                   "quality": sum(r.confidence for r in rs) / len(rs)} for name, rs in sorted(groups.items())]
        mark_pareto(points)
        return {"source": "live", "description": f"operating points measured over the last "
                f"{self.window_s / 60:g} minutes of this gateway's traffic",
                "cost_label": "mean $ per query", "quality_label": "mean judge confidence of the answer "
                "(no ground truth online)", "points": points}


def mark_pareto(points: list[dict[str, Any]]) -> None:
    """Flag the points no other point beats on both cost (lower) and quality (higher)."""
    ranked = sorted(points, key=lambda p: (p["cost_usd"], -p["quality"]))
    best = -math.inf
    for point in ranked:
        point["pareto"] = point["quality"] > best
        best = max(best, point["quality"])


def frontier_from_report(path: Path) -> dict[str, Any]:
    """Frontier points from an eval report: `{"points": [{"name", "cost_usd", "quality"}]}` (aliases
    mean_cost_usd / accuracy / score accepted), or an `escalon.profile/v1` table (one point per model)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"frontier report {path} does not exist (ESCALON_GATEWAY_FRONTIER_REPORT)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"frontier report {path} is not readable JSON: {exc}") from None
    raw: list[dict[str, Any]]
    if isinstance(data, dict) and data.get("format") == "escalon.profile/v1":
        raw = [{"name": name, **values} for name, values in (data.get("models") or {}).items()]
        quality_label = "accuracy on the profiled benchmark"
    elif isinstance(data, dict) and isinstance(data.get("points"), list):
        raw = data["points"]
        quality_label = str(data.get("quality_label") or "quality (eval report)")
    else:
        raise ConfigError(f"frontier report {path}: expected {{\"points\": [...]}} or an escalon.profile/v1 table")
    points = []
    for item in raw:
        cost = _first(item, "cost_usd", "mean_cost_usd")
        quality = _first(item, "quality", "accuracy", "score")
        if cost is None or quality is None:
            continue
        points.append({"name": str(item.get("name") or item.get("operating_point") or "?"), "n": item.get("n"),
                       "cost_usd": float(cost), "quality": float(quality)})
    mark_pareto(points)
    return {"source": "report", "description": f"eval report {path}", "cost_label": "mean $ per query",
            "quality_label": quality_label, "points": points}


def _first(item: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = item.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return value
    return None


_HTTP_OF_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                   "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def window_from_route_log(engine: Any, window_s: float, max_routes: int, *, clock=time.time) -> TrafficWindow:
    """The same window, filled from the route log (escalon.db): every replica's routes, surviving restarts."""
    import datetime as dt

    from sqlalchemy import select

    from escalon.db.models import Route

    window = TrafficWindow(window_s, max_routes, clock=clock)
    since = dt.datetime.fromtimestamp(clock() - window_s, dt.UTC)
    columns = (Route.created_at, Route.status, Route.rung, Route.confidence, Route.total_cost_usd, Route.attempts,
               Route.operating_point, Route.knob)
    with engine.connect() as conn:
        rows = list(conn.execute(select(*columns).where(Route.created_at >= since)
                                 .order_by(Route.created_at.desc()).limit(max_routes)))
    for r in reversed(rows):
        at = r.created_at.timestamp()
        if r.status != "OK":
            window._errors.append((at, _HTTP_OF_STATUS.get(r.status, 500)))
            continue
        pin = (r.knob or {}).get("pin_rung") or ""
        model = pin or (f"escalon/{r.operating_point}" if r.operating_point else "escalon/auto")
        window.add(RouteRecord(at, model, r.rung or "", r.confidence or 0.0, r.total_cost_usd, tuple(
            AttemptRecord(a["rung"], bool(a.get("samples")), bool(a.get("accepted")), float(a.get("confidence") or 0),
                          float(a.get("cost_usd") or 0)) for a in r.attempts)))
    return window

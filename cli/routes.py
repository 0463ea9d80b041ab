"""`escalon routes list|show|export`: the route log, read straight from Escalon's database
(ESCALON_DATABASE_URL; sqlite under ESCALON_DATA_DIR by default)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  escalon routes list --since 1h
  escalon routes list --since 2026-12-01 --until 2026-12-02 --rung gpt-4 --tenant acme
  escalon routes show 42                       one route by row id or request id, as JSON
  escalon routes export --since 7d --task gsm8k --out traffic.parquet     the shared benchmark format
  escalon routes export --since 1d --format jsonl --out routes.jsonl      every field, one route per line
  escalon eval --benchmark traffic.parquet --out reports/traffic           a router fitted on real traffic
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    routes = sub.add_parser("routes", help="read the route log: recent routes, one route, exports",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = routes.add_subparsers(dest="routes_command", required=True, metavar="ACTION")
    lst = actions.add_parser("list", help="recent routes, newest first")
    show = actions.add_parser("show", help="one route with its plan and attempts, as JSON")
    show.add_argument("route", help="row id or request id")
    export = actions.add_parser(
        "export", help="write routes to a file: the shared benchmark format (parquet) or JSON lines",
        description="parquet: one row per prompt and rung tried (prompt_id, task, split, prompt, model, response, "
                    "score = the judges' confidence, cost_usd), what `escalon eval --benchmark` reads; only routes "
                    "whose prompt was stored (ESCALON_ROUTE_LOG_PROMPTS=true) can be written so. jsonl: every "
                    "field of every route.")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    export.add_argument("--format", choices=["parquet", "jsonl"], help="[default: from --out's suffix, else parquet]")
    for p in (lst, export):
        p.add_argument("--since", help="from this time: 30m, 6h, 7d, 2w ago, or an ISO date (UTC)")
        p.add_argument("--until", help="up to (not including) this time, same forms")
        p.add_argument("--rung", default="", help="only routes answered by this rung")
        p.add_argument("--task", default="", help="only routes of this task (the taxonomy's task_type label)")
        p.add_argument("--tenant", default="", help="only routes of this tenant's keys")
        p.add_argument("--status", default="", help="OK, or an error status such as RESOURCE_EXHAUSTED")
    lst.add_argument("--limit", type=int, default=50, help="at most this many [default: 50]")
    lst.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def _filter(args: argparse.Namespace, *, with_prompt: bool = False):  # noqa: ANN202
    from escalon.db.routes import RouteFilter, parse_when

    return RouteFilter(since=parse_when(args.since, field="since") if args.since else None,
                       until=parse_when(args.until, field="until") if args.until else None,
                       rung=args.rung, task=args.task, tenant=args.tenant, status=args.status, with_prompt=with_prompt)


def run(args: argparse.Namespace) -> int:
    from escalon.config import load_settings
    from escalon.db import routes
    from escalon.db.engine import ready_database
    from escalon.db.settings import DatabaseSettings

    action = args.routes_command
    flt = _filter(args) if action in ("list", "export") else None  # a malformed filter fails before any I/O
    engine = ready_database(load_settings(DatabaseSettings).database_url)
    if action == "show":
        print(json.dumps(routes.get_route(engine, args.route), indent=1, ensure_ascii=False))
        return 0
    if action == "list":
        if args.limit < 1:
            raise SystemExit("escalon routes list: --limit must be at least 1")
        found = routes.list_routes(engine, flt, args.limit)
        if args.json:
            for r in found:
                print(json.dumps(r, ensure_ascii=False))
            return 0
        if not found:
            print("no routes match")
            return 0
        print(f"{'id':>7} {'time (UTC)':<19} {'tenant':<12} {'status':<10} {'task':<10} {'rung':<16} "
              f"{'conf':>5} {'cost $':>10} {'ms':>8}  tried")
        for r in found:
            tried = ">".join(a["rung"] for a in r["attempts"] if a.get("samples"))
            conf = f"{r['confidence']:.2f}" if r["confidence"] is not None else "-"
            print(f"{r['id']:>7} {r['created_at'][:19]:<19} {(r['tenant'] or '-')[:12]:<12} {r['status'][:10]:<10} "
                  f"{(r['task'] or '-')[:10]:<10} {(r['rung'] or '-')[:16]:<16} {conf:>5} {r['total_cost_usd']:>10.6f} "
                  f"{r['latency_ms']:>8.1f}  {tried}")
        return 0
    fmt = args.format or ("jsonl" if args.out.suffix in (".jsonl", ".json") else "parquet")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        n = routes.export_jsonl(engine, flt, args.out)
        print(f"{n} routes written to {args.out}" if n else f"no routes in that window: {args.out} is empty")
        return 0
    rows, used, skipped = routes.export_benchmark(engine, flt, args.out)
    note = f"; {skipped} routes left out: their prompts were not stored (ESCALON_ROUTE_LOG_PROMPTS)" if skipped else ""
    if rows:
        print(f"{rows} rows from {used} routes written to {args.out} (benchmark format){note}")
    else:
        print(f"no routes with stored prompts in that window: {args.out} has the columns and no rows{note}")
    return 0

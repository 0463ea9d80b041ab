"""`escalon keys create|list|revoke`: API keys in Escalon's database (ESCALON_DATABASE_URL). A key is shown
once, when created; the database keeps only a salted hash of it."""

from __future__ import annotations

import argparse
import json

EXAMPLES = """examples:
  escalon keys create --tenant acme --budget-day 5 --budget-month 100 --rate-limit 10/second
  escalon keys create --tenant ops --scope route --scope jobs --rungs gpt-4o-mini,gpt-4 --operating-points economy
  escalon keys list --tenant acme
  escalon keys revoke 3f9a1c02b7de
clients send the key as `authorization: Bearer <key>` (gRPC metadata) or the HTTP Authorization header.
"""


def _names(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def add_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (tenants, budgets, rate limits)",
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="issue a key; it is printed once and stored only hashed")
    create.add_argument("--tenant", required=True, help="who the key belongs to (routes and spend are grouped by it)")
    create.add_argument("--name", default="", help="a note for people: what the key is for")
    create.add_argument("--budget-day", type=float, help="USD per UTC day the key's routes may cost")
    create.add_argument("--budget-month", type=float, help="USD per UTC month the key's routes may cost")
    create.add_argument("--rate-limit", help="calls allowed, e.g. 10/second, 600/minute (limits notation)")
    create.add_argument("--rungs", help="comma-separated rungs the key may use [default: all]")
    create.add_argument("--operating-points", help="comma-separated operating points the key may name [default: all]")
    create.add_argument("--scope", action="append", choices=["route", "jobs"],
                        help="APIs the key may call: route (Router API), jobs (Distill API); repeatable "
                             "[default: route]")
    create.add_argument("--store-prompts", action="store_true",
                        help="keep this key's prompts and answers in the route log (the tenant opted in), even "
                             "when ESCALON_ROUTE_LOG_PROMPTS is off")
    create.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    lst = actions.add_parser("list", help="keys with their tenant, budgets and spend so far")
    lst.add_argument("--tenant", default="")
    lst.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = actions.add_parser("revoke", help="revoke a key (by key id, or the key itself)")
    revoke.add_argument("key")


def run(args: argparse.Namespace) -> int:
    from escalon.config import load_settings
    from escalon.db import keys
    from escalon.db.engine import ready_database
    from escalon.db.settings import DatabaseSettings

    engine = ready_database(load_settings(DatabaseSettings).database_url)
    if args.keys_command == "create":
        from escalon.registry import load_catalogue
        from escalon.router.settings import RouterSettings

        catalogue, router = load_catalogue(load_settings(RouterSettings).catalogue), load_settings(RouterSettings)
        record, key = keys.create_key(
            engine, tenant=args.tenant, name=args.name, budget_day_usd=args.budget_day,
            budget_month_usd=args.budget_month, rate_limit=args.rate_limit, allowed_rungs=_names(args.rungs),
            allowed_operating_points=_names(args.operating_points), scopes=args.scope or ["route"],
            known_rungs=catalogue.names, known_points=router.operating_points, store_prompts=args.store_prompts)
        if args.json:
            print(json.dumps({"key": key, **_row(record)}, indent=1))
        else:
            print(f"key {record.key_id} for tenant {record.tenant} (shown once; store it now):\n\n  {key}\n")
        return 0
    if args.keys_command == "revoke":
        record = keys.revoke_key(engine, args.key)
        print(f"revoked key {record.key_id} (tenant {record.tenant})")
        return 0
    found = keys.list_keys(engine, args.tenant, include_revoked=args.all)
    if not found:
        print("no keys" + (f" for tenant {args.tenant}" if args.tenant else "") + "; `escalon keys create` adds one")
        return 0
    spend = _spend(engine, [k.key_id for k in found])
    print(f"{'key id':<13} {'tenant':<14} {'scopes':<11} {'$/day':>14} {'$/month':>16} {'rate':<12} allowed")
    for k in found:
        day, month = spend.get((k.key_id, "day"), 0.0), spend.get((k.key_id, "month"), 0.0)
        allowed = "; ".join(filter(None, [",".join(k.allowed_rungs), ",".join(k.allowed_operating_points)])) or "all"
        print(f"{k.key_id:<13} {k.tenant[:14]:<14} {','.join(k.scopes):<11} {_budget(day, k.budget_day_usd):>14} "
              f"{_budget(month, k.budget_month_usd):>16} {(k.rate_limit or '-'):<12} {allowed}"
              f"{'  REVOKED' if k.revoked else ''}")
    return 0


def _budget(spent: float, limit: float | None) -> str:
    return f"{spent:.4f}/{limit:g}" if limit is not None else f"{spent:.4f}/-"


def _spend(engine, key_ids: list[str]) -> dict[tuple[str, str], float]:  # noqa: ANN001
    from sqlalchemy import select

    from escalon.db.models import KeySpend
    from escalon.db.spend import periods
    from escalon.db.models import UTC
    import datetime as dt

    day, month = periods(dt.datetime.now(UTC))
    with engine.connect() as conn:
        rows = conn.execute(select(KeySpend).where(KeySpend.key_id.in_(key_ids),
                                                   KeySpend.period.in_([day.key, month.key])))
        return {(r.key_id, r.period.split(":")[0]): r.spent_usd for r in rows}


def _row(record) -> dict:  # noqa: ANN001
    return {"key_id": record.key_id, "tenant": record.tenant, "name": record.name, "scopes": list(record.scopes),
            "budget_day_usd": record.budget_day_usd, "budget_month_usd": record.budget_month_usd,
            "rate_limit": record.rate_limit, "allowed_rungs": list(record.allowed_rungs),
            "allowed_operating_points": list(record.allowed_operating_points), "store_prompts": record.store_prompts}

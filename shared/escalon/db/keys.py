"""API keys: created with a tenant, budgets, a rate limit and allow-lists; shown once, stored hashed.

A key reads `esk_<key id>_<secret>`: the key id (12 hex digits) is public and names the row, the secret
(32 random bytes, URL-safe base64) is kept only as SHA-256 over a per-key random salt and the secret, and
compared in constant time. Budgets are USD per UTC day and per UTC month; a rate limit is written in the
`limits` library's notation ("10/second", "600/minute", "5 per second"). Allow-lists name catalogue rungs
and router operating points; an empty list means no restriction. `store_prompts` opts the key's routes into
keeping prompts and answers in the route log when the operator's setting (ESCALON_ROUTE_LOG_PROMPTS) is off.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, select, update

from escalon.db.models import UTC, ApiKey
from escalon.errors import InvalidInput, NotFound

PREFIX = "esk_"
SCOPES = ("route", "jobs")
_KEY = re.compile(r"^esk_([0-9a-f]{12})_([A-Za-z0-9_\-]{20,100})$")


@dataclass(frozen=True)
class KeyRecord:
    """What a replica keeps of a key: never the secret, only its salted hash."""

    key_id: str
    tenant: str
    name: str
    salt: str
    secret_sha256: str
    scopes: tuple[str, ...]
    budget_day_usd: float | None
    budget_month_usd: float | None
    rate_limit: str | None
    allowed_rungs: tuple[str, ...]
    allowed_operating_points: tuple[str, ...]
    revoked: bool
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    store_prompts: bool = False

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(_hash(self.salt, secret), self.secret_sha256)


def _hash(salt_hex: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt_hex) + secret.encode("utf-8", "surrogatepass")).hexdigest()


def parse_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY.match(key.strip())
    return (match.group(1), match.group(2)) if match else None


def check_rate_limit(text: str) -> str:
    from limits import parse_many

    try:
        parse_many(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a rate limit; write it like '10/second' or '600/minute'",
                           field="rate_limit") from None
    return text


def validate(*, tenant: str, budget_day_usd: float | None, budget_month_usd: float | None, rate_limit: str | None,
             allowed_rungs: Sequence[str], allowed_operating_points: Sequence[str], scopes: Sequence[str],
             known_rungs: Iterable[str], known_points: Iterable[str]) -> None:
    """Refuse, with the reason, what cannot make a working key."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$", tenant or ""):
        raise InvalidInput(f"tenant {tenant!r}: letters, digits, '.', '_' or '-', up to 128", field="tenant")
    for name, value in (("budget_day_usd", budget_day_usd), ("budget_month_usd", budget_month_usd)):
        if value is not None and not value > 0:
            raise InvalidInput(f"a budget must be above 0 USD (got {value}); leave it out for no budget", field=name)
    if rate_limit:
        check_rate_limit(rate_limit)
    rungs, points = set(known_rungs), set(known_points)
    unknown = [r for r in allowed_rungs if r not in rungs]
    if unknown:
        raise InvalidInput(f"unknown rung(s) {', '.join(unknown)}; the catalogue has {', '.join(sorted(rungs))}",
                           field="allowed_rungs")
    unknown = [p for p in allowed_operating_points if p not in points]
    if unknown:
        raise InvalidInput(f"unknown operating point(s) {', '.join(unknown)}; the router has "
                           f"{', '.join(sorted(points))}", field="allowed_operating_points")
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise InvalidInput(f"scopes are {', '.join(SCOPES)} (got {', '.join(scopes) or 'none'})", field="scopes")


def create_key(engine: Engine, *, tenant: str, name: str = "", budget_day_usd: float | None = None,
               budget_month_usd: float | None = None, rate_limit: str | None = None,
               allowed_rungs: Sequence[str] = (), allowed_operating_points: Sequence[str] = (),
               scopes: Sequence[str] = ("route",), known_rungs: Iterable[str] = (),
               known_points: Iterable[str] = (), store_prompts: bool = False) -> tuple[KeyRecord, str]:
    """Store a new key; returns its record and the key itself (the only time it exists in the clear)."""
    validate(tenant=tenant, budget_day_usd=budget_day_usd, budget_month_usd=budget_month_usd, rate_limit=rate_limit,
             allowed_rungs=allowed_rungs, allowed_operating_points=allowed_operating_points, scopes=scopes,
             known_rungs=known_rungs, known_points=known_points)
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    row = ApiKey(key_id=key_id, tenant=tenant, name=name, salt=salt, secret_sha256=_hash(salt, secret),
                 scopes=list(scopes), budget_day_usd=budget_day_usd, budget_month_usd=budget_month_usd,
                 rate_limit=rate_limit or None, allowed_rungs=list(allowed_rungs) or None,
                 allowed_operating_points=list(allowed_operating_points) or None, revoked=False,
                 store_prompts=store_prompts, created_at=dt.datetime.now(UTC))
    from sqlalchemy.orm import Session

    with Session(engine) as session, session.begin():
        session.add(row)
        session.flush()
        record = _record(row)
    return record, f"{PREFIX}{key_id}_{secret}"


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(row.key_id, row.tenant, row.name, row.salt, row.secret_sha256, tuple(row.scopes or ()),
                     row.budget_day_usd, row.budget_month_usd, row.rate_limit, tuple(row.allowed_rungs or ()),
                     tuple(row.allowed_operating_points or ()), row.revoked, row.created_at, row.revoked_at,
                     bool(row.store_prompts))


def get_key(engine: Engine, key_id: str) -> KeyRecord | None:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        row = session.get(ApiKey, key_id)
        return _record(row) if row else None


def list_keys(engine: Engine, tenant: str = "", include_revoked: bool = False) -> list[KeyRecord]:
    from sqlalchemy.orm import Session

    query = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
    if tenant:
        query = query.where(ApiKey.tenant == tenant)
    if not include_revoked:
        query = query.where(ApiKey.revoked.is_(False))
    with Session(engine) as session:
        return [_record(r) for r in session.scalars(query)]


def count_active_keys(engine: Engine) -> int:
    from sqlalchemy import func

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ApiKey).where(ApiKey.revoked.is_(False))).scalar())


def revoke_key(engine: Engine, key_id: str) -> KeyRecord:
    key_id = key_id.removeprefix(PREFIX).split("_", 1)[0]
    with engine.begin() as conn:
        done = conn.execute(update(ApiKey).where(ApiKey.key_id == key_id)
                            .values(revoked=True, revoked_at=dt.datetime.now(UTC)))
    if done.rowcount == 0:
        raise NotFound(f"no key {key_id!r}; `escalon keys list` shows them", field="key_id")
    record = get_key(engine, key_id)
    assert record is not None
    return record

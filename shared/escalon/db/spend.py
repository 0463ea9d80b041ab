"""Spend per key against its budgets: reserved before a route, charged from its actual cost after.

Before a route the caller reserves what the route may cost at most (the cascade's upper bound over the rungs
it may try), capped by what is left of the key's budgets; the route runs with that cap as its max_cost_usd,
which the cascade never exceeds. After the route the reservation is released and the actual cost charged.
So within one replica a budget is never overspent, however many requests of a key are in flight.

Across replicas the database holds the totals (`key_spend`, one row per key and period): every `sync_s` a
replica adds its new charges (an atomic `spent = spent + delta` upsert) and reads back every replica's
totals. A key served by several replicas can therefore overspend by what the others charged within one sync
interval; this is the documented bound (docs/operations.md), ESCALON_SPEND_SYNC_S narrows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from escalon.db.keys import KeyRecord
from escalon.db.models import UTC, KeySpend
from escalon.errors import BudgetExceeded

log = logging.getLogger(__name__)
Clock = Callable[[], dt.datetime]


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


@dataclass(frozen=True)
class Period:
    kind: str  # "daily" | "monthly"
    key: str  # "day:2026-12-03" | "month:2026-12"
    resets_at: dt.datetime


def periods(now: dt.datetime) -> tuple[Period, Period]:
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + dt.timedelta(days=32)).replace(day=1)
    return (Period("daily", f"day:{day:%Y-%m-%d}", day + dt.timedelta(days=1)),
            Period("monthly", f"month:{month:%Y-%m}", next_month))


@dataclass
class Reservation:
    key_id: str
    amount: float
    periods: tuple[Period, ...]
    settled: bool = False


class SpendLedger:
    def __init__(self, engine: Callable[[], Engine | None], *, sync_s: float = 2.0, clock: Clock = _now) -> None:
        self._engine = engine
        self.sync_s = sync_s
        self.clock = clock
        self._known: dict[tuple[str, str], float] = {}  # database totals at the last sync (all replicas)
        self._syncing: dict[tuple[str, str], float] = defaultdict(float)  # being written now
        self._unsynced: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])  # usd, routes
        self._reserved: dict[str, float] = defaultdict(float)
        self._task: asyncio.Task | None = None
        self._sync_lock = asyncio.Lock()
        self._released: dict[str, asyncio.Event] = {}  # per key: set when a route in flight settles
        self.degraded = ""

    # ---- the request side

    def spent(self, key_id: str, period: Period) -> float:
        k = (key_id, period.key)
        return self._known.get(k, 0.0) + self._syncing.get(k, 0.0) + self._unsynced[k][0]

    async def ensure_loaded(self, key_id: str) -> None:
        """Read the key's totals for the current periods once (its first route in a period on this replica)."""
        wanted = [(key_id, p.key) for p in periods(self.clock()) if (key_id, p.key) not in self._known]
        if not wanted:
            return
        try:
            totals = await asyncio.to_thread(self._read, wanted)
        except Exception as exc:  # noqa: BLE001 - no database: count from zero here and say so
            self._degrade(exc)
            totals = {}
        for k in wanted:
            self._known.setdefault(k, totals.get(k, 0.0))

    def reserve(self, key: KeyRecord, *, least: float, most: float) -> Reservation:
        """Reserve up to `most` USD (a route's upper bound); BudgetExceeded when less than `least` (the cheapest
        attempt's bound) is left of any budget."""
        left, binding = most, None
        chosen = []
        for period in periods(self.clock()):
            limit = key.budget_day_usd if period.kind == "daily" else key.budget_month_usd
            if limit is None:
                continue
            chosen.append(period)
            remaining = limit - self.spent(key.key_id, period) - self._reserved[key.key_id]
            if remaining < left:
                left, binding = remaining, (period, limit, remaining)
        if binding is not None and (left <= 0 or left < least):
            period, limit, remaining = binding
            spent = self.spent(key.key_id, period)
            in_flight = self._reserved[key.key_id]
            raise BudgetExceeded(
                f"the {period.kind} budget of ${limit:.4f} of key {key.key_id} (tenant {key.tenant}) is used up: "
                f"${spent:.6f} spent, ${in_flight:.6f} held by routes in flight, ${max(remaining, 0):.6f} left, "
                f"below this route's cheapest attempt (${least:.6f}); it resets at "
                f"{period.resets_at:%Y-%m-%dT%H:%M:%SZ}", field="budget")
        amount = max(0.0, min(most, left))
        self._reserved[key.key_id] += amount
        return Reservation(key.key_id, amount, tuple(chosen) or periods(self.clock()))

    async def reserve_or_wait(self, key: KeyRecord, *, least: float, most: float,
                              timeout_s: float = 30.0) -> Reservation:
        """reserve(), but when what blocks it is only held by routes in flight (they may cost less than they
        hold), wait for them to settle — up to timeout_s — instead of refusing a budget that is not spent."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                return self.reserve(key, least=least, most=most)
            except BudgetExceeded:
                left = asyncio.get_running_loop().time() - deadline
                if self._reserved[key.key_id] <= 0 or left >= 0 or not self._fits_when_settled(key, least):
                    raise
                event = self._released.setdefault(key.key_id, asyncio.Event())
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=-left)

    def _fits_when_settled(self, key: KeyRecord, least: float) -> bool:
        for period in periods(self.clock()):
            limit = key.budget_day_usd if period.kind == "daily" else key.budget_month_usd
            if limit is not None and limit - self.spent(key.key_id, period) < least:
                return False
        return True

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Release the reservation and charge the route's actual cost to every period it was reserved in."""
        if reservation.settled:
            return
        reservation.settled = True
        self._reserved[reservation.key_id] = max(0.0, self._reserved[reservation.key_id] - reservation.amount)
        for period in periods(self.clock()):
            entry = self._unsynced[(reservation.key_id, period.key)]
            entry[0] += actual_usd
            entry[1] += 1
        released = self._released.get(reservation.key_id)
        if released is not None:
            released.set()

    # ---- the database side

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="spend-sync")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            await self.sync()

    async def sync(self) -> None:
        """Write this replica's new charges, read every replica's totals. One at a time: totals read by an
        earlier sync must never overwrite a later one's (that would forget charges)."""
        async with self._sync_lock:
            await self._sync()

    async def _sync(self) -> None:
        deltas = {k: (v[0], v[1]) for k, v in self._unsynced.items() if v[1]}
        for k in deltas:
            del self._unsynced[k]
            self._syncing[k] += deltas[k][0]
        tracked = list({*self._known, *deltas})
        try:
            totals = await asyncio.to_thread(self._write_and_read, deltas, tracked)
        except Exception as exc:  # noqa: BLE001 - keep the charges; the next sync writes them
            self._degrade(exc)
            for k, (usd, routes) in deltas.items():
                entry = self._unsynced[k]
                entry[0] += usd
                entry[1] += routes
            totals = None
        for k, (usd, _) in deltas.items():
            self._syncing[k] -= usd
            if self._syncing[k] <= 1e-15:
                del self._syncing[k]
        if totals is not None:
            if self.degraded:
                log.warning("spend ledger: database answers again; charges written")
                self.degraded = ""
            current = {p.key for p in periods(self.clock())}
            self._known = {k: v for k, v in {**self._known, **totals}.items() if k[1] in current}

    def _write_and_read(self, deltas: dict[tuple[str, str], tuple[float, int]],
                        tracked: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("no database")
        now = self.clock()
        with engine.begin() as conn:
            for (key_id, period), (usd, routes) in sorted(deltas.items()):
                dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
                stmt = dialect.insert(KeySpend).values(key_id=key_id, period=period, spent_usd=usd, routes=routes,
                                                       updated_at=now)
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["key_id", "period"],
                    set_={"spent_usd": KeySpend.spent_usd + stmt.excluded.spent_usd,
                          "routes": KeySpend.routes + stmt.excluded.routes, "updated_at": now}))
        return self._read(tracked)

    def _read(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
        engine = self._engine()
        if engine is None or not wanted:
            return {}
        keys = sorted({k for k, _ in wanted})
        with engine.connect() as conn:
            rows = conn.execute(select(KeySpend.key_id, KeySpend.period, KeySpend.spent_usd)
                                .where(KeySpend.key_id.in_(keys)))
            found = {(r.key_id, r.period): r.spent_usd for r in rows}
        return {k: found.get(k, 0.0) for k in wanted}

    def _degrade(self, exc: BaseException) -> None:
        if not self.degraded:
            log.warning("spend ledger: cannot reach the database (%s: %s); charges are kept on this replica and "
                        "written when it answers", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        self.degraded = f"{type(exc).__name__}: {exc}"[:300]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.sync()

"""What a key may do at the Router API, and what it pays: its allow-lists, its budgets, its route log.

`Accounting` wraps one route (RouterService.route): the key (escalon.auth.current_key) may name only the
operating points and rungs its allow-lists hold (PERMISSION_DENIED otherwise); with a budget, the route
reserves its upper bound — the cascade's cost bound summed over the rungs it may try, capped by what is left
(escalon.db.spend) — and runs with that cap as max_cost_usd, which the cascade never exceeds; the actual
cost is charged afterwards. Every route, answered or refused, is handed to the route log's writer.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from escalon.db.keys import KeyRecord
from escalon.db.routelog import RouteLogWriter
from escalon.db.spend import Reservation, SpendLedger
from escalon.errors import BudgetExceeded, EscalonError, PermissionDenied
from escalon.gen.router.v1 import router_pb2
from escalon.router.policy import RoutePlan, RouteQuery
from escalon.router.route_record import route_row


class Admission:
    """The per-route hooks Router.route calls: which rungs, and the query as the key's budget caps it."""

    def __init__(self, key: KeyRecord | None, ledger: SpendLedger | None, request: router_pb2.RouteRequest,
                 default_point: str) -> None:
        self.key = key
        self.ledger = ledger
        self.request = request
        self.default_point = default_point
        self.reservation: Reservation | None = None
        self.plan: RoutePlan | None = None
        self.threshold: float | None = None

    def rungs(self, routed: list[str]) -> list[str]:
        key = self.key
        if key is None or not key.allowed_rungs:
            return routed
        allowed = [r for r in routed if r in key.allowed_rungs]
        if not allowed:
            raise PermissionDenied(f"API key {key.key_id} may use rungs {', '.join(key.allowed_rungs)}, none of "
                                   "which this router routes", field="pin_rung")
        return allowed

    async def admit(self, query: RouteQuery, rungs: list[str], bound) -> RouteQuery:  # noqa: ANN001
        """Check the allow-lists, reserve the budget; `bound(rung)` is one attempt's upper cost."""
        self.threshold = query.threshold
        key = self.key
        if key is None:
            return query
        point = self.request.operating_point or self.default_point
        if key.allowed_operating_points and not self.request.HasField("min_quality") \
                and point not in key.allowed_operating_points:
            raise PermissionDenied(f"API key {key.key_id} may use operating points "
                                   f"{', '.join(key.allowed_operating_points)}, not {point!r}", field="operating_point")
        if query.pin_rung and key.allowed_rungs and query.pin_rung not in key.allowed_rungs:
            raise PermissionDenied(f"API key {key.key_id} may not use rung {query.pin_rung!r} (allowed: "
                                   f"{', '.join(key.allowed_rungs)})", field="pin_rung")
        if self.ledger is None or (key.budget_day_usd is None and key.budget_month_usd is None):
            return query
        bounds = [bound(query.pin_rung)] if query.pin_rung else [bound(r) for r in rungs]
        most = sum(bounds) if query.max_cost_usd is None else min(sum(bounds), query.max_cost_usd)
        # held by other routes in flight (not spent) → wait for them to settle rather than refuse
        self.reservation = await self.ledger.reserve_or_wait(key, least=min(bounds), most=most)
        cap = self.reservation.amount if query.max_cost_usd is None else min(query.max_cost_usd,
                                                                            self.reservation.amount)
        return dataclasses.replace(query, max_cost_usd=cap)

    def planned(self, plan: RoutePlan) -> None:
        self.plan = plan


class Accounting:
    def __init__(self, ledger: SpendLedger | None, writer: RouteLogWriter | None, *, keep_text: bool,
                 default_point: str) -> None:
        self.ledger = ledger
        self.writer = writer
        self.keep_text = keep_text
        self.default_point = default_point

    async def route(self, router: Any, request: router_pb2.RouteRequest, key: KeyRecord | None, on_event=None,
                    on_text=None) -> router_pb2.RouteResponse:  # noqa: ANN001
        if key is not None and self.ledger is not None:
            await self.ledger.ensure_loaded(key.key_id)
        admission = Admission(key, self.ledger, request, self.default_point)
        started = time.perf_counter()
        response, status, error = None, "OK", ""
        try:
            response = await router.route(request, on_event, on_text, admission=admission)
            return response
        except EscalonError as exc:
            status, error = exc.code.name, str(exc)
            if key is not None and isinstance(exc, (PermissionDenied, BudgetExceeded)) and admission.plan is None:
                from escalon.metrics import metrics

                reason = "permission_denied" if isinstance(exc, PermissionDenied) else "budget"
                metrics().key_refusals.labels(reason).inc()
            raise
        except BaseException as exc:
            status, error = ("INTERNAL", repr(exc)[:500]) if isinstance(exc, Exception) else ("CANCELLED", "")
            raise
        finally:
            cost = response.total_cost_usd if response is not None else 0.0
            if admission.reservation is not None:
                self.ledger.settle(admission.reservation, cost)
            elif key is not None and self.ledger is not None and cost:
                self.ledger.settle(Reservation(key.key_id, 0.0, ()), cost)
            if self.writer is not None:
                keep_text = self.keep_text or bool(key is not None and key.store_prompts)
                self.writer.submit(route_row(request, response=response, plan=admission.plan, key=key,
                                             keep_text=keep_text, status=status, error=error,
                                             latency_ms=(time.perf_counter() - started) * 1000,
                                             threshold=admission.threshold))


class Tenancy:
    """The router's database side: the key gate (an interceptor), the spend ledger, the route log writer."""

    def __init__(self, database: Any, settings: Any, *, service: str) -> None:  # noqa: ANN401
        from escalon.auth import Gate, KeyInterceptor
        from escalon.db.engine import LazyDatabase

        self.database = database
        self.engine = LazyDatabase(database.database_url)
        self.gate = Gate(database, self.engine, service=service)
        self.interceptors = (KeyInterceptor(self.gate, "route"),)
        self.ledger = SpendLedger(self.engine, sync_s=database.spend_sync_s)
        self.writer = RouteLogWriter(database.database_url, queue_size=database.route_log_queue,
                                     batch=database.route_log_batch, flush_s=database.route_log_flush_s,
                                     engine_factory=lambda _url: self.engine()) if database.route_log else None
        self.accounting = Accounting(self.ledger, self.writer, keep_text=database.route_log_prompts,
                                     default_point=settings.default_operating_point)

    async def start(self) -> None:
        await self.gate.start()
        await self.ledger.start()
        if self.writer is not None:
            await self.writer.start()

    async def close(self) -> None:
        if self.writer is not None:
            stats = await self.writer.close()
            if stats.dropped:
                import logging

                logging.getLogger(__name__).error("route log: %d records dropped in all (%d written)", stats.dropped,
                                                  stats.written)
        await self.ledger.close()
        self.engine.dispose()

"""Periodic upkeep the distill worker runs for the rest of the system (Celery beat schedules it).

`prune_route_log`: delete routes older than ESCALON_ROUTE_LOG_RETENTION_DAYS from the route log (escalon.db),
once a day on beat (`python -m escalon.distill worker --beat`, or `celery -A escalon.distill.celery_app beat`
beside the workers). Idempotent: running it twice deletes nothing the second time.
"""

from __future__ import annotations

import logging
from typing import Any

from escalon.db.settings import DatabaseSettings

log = logging.getLogger(__name__)
PRUNE_TASK = "escalon.distill.prune_route_log"
PRUNE_EVERY_S = 24 * 3600


def prune_route_log(database: DatabaseSettings, retention_days: float | None = None) -> dict[str, Any]:
    from escalon.db.engine import ready_database
    from escalon.db.routes import prune

    days = retention_days if retention_days is not None else database.route_log_retention_days
    engine = ready_database(database.database_url)
    try:
        deleted = prune(engine, days)
    finally:
        engine.dispose()
    log.info("route log: %d routes older than %g days pruned", deleted, days)
    return {"deleted": deleted, "retention_days": days}

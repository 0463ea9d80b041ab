"""python -m escalon.router — the public Router API (gRPC, default port 50051)."""

import sys

from escalon.config import load_settings, settings_help
from escalon.db.settings import DatabaseSettings
from escalon.main import run_service
from escalon.registry import load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings


def main(argv: list[str] | None = None) -> int:
    def build(s: RouterSettings) -> RouterService:
        # the route log, API keys and budgets live in Escalon's database (ESCALON_DATABASE_URL, escalon.db)
        return RouterService(s, load_catalogue(s.catalogue), database=load_settings(DatabaseSettings))

    return run_service("escalon-router", RouterSettings, build, argv,
                       epilog="the route log, API keys and budgets (escalon.db, docs/tenancy.md):\n"
                              + settings_help(DatabaseSettings).split("\n", 1)[1],
                       description="Start Escalon's Router API: plans a route per query and climbs the judged "
                                   "cascade (health, reflection, tracing; stops gracefully on SIGTERM).")


if __name__ == "__main__":
    sys.exit(main())

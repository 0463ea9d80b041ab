"""python -m escalon.router — the public Router API (gRPC, default port 50051)."""

import sys

from escalon.main import run_service
from escalon.registry import load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings


def main(argv: list[str] | None = None) -> int:
    return run_service("escalon-router", RouterSettings, lambda s: RouterService(s, load_catalogue(s.catalogue)), argv,
                       description="Start Escalon's Router API: plans a route per query and climbs the judged "
                                   "cascade (health, reflection, tracing; stops gracefully on SIGTERM).")


if __name__ == "__main__":
    sys.exit(main())

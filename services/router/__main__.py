"""python -m escalon.router — the public Router API (gRPC, default port 50051)."""

from escalon.main import run_service
from escalon.registry import load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings

if __name__ == "__main__":
    run_service("escalon-router", RouterSettings, lambda s: RouterService(s, load_catalogue(s.catalogue)))

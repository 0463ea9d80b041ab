"""`python -m escalon.serving`: read settings and the catalogue, then serve until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from escalon.main import run_service
from escalon.registry import load_catalogue

from .servicer import ServingService
from .settings import ServingSettings


def main(argv: list[str] | None = None) -> int:
    return run_service("escalon-serving", ServingSettings, lambda s: ServingService(s, load_catalogue(s.catalogue)),
                       argv, description="Escalon's ModelServingService: each catalogue rung a Ray Serve deployment "
                                         "behind one gRPC front.")


if __name__ == "__main__":
    sys.exit(main())

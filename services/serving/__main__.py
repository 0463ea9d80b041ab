"""`python -m escalon.serving`: read settings and the catalogue, then serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import AliasChoices

from escalon.config import load_settings
from escalon.errors import ConfigError, EscalonError
from escalon.grpc import serve
from escalon.registry import load_catalogue

from .servicer import ServingService
from .settings import ServingSettings


def _environment_help() -> str:
    lines = ["environment variables:"]
    prefix = ServingSettings.model_config["env_prefix"]
    for name, info in ServingSettings.model_fields.items():
        alias = info.validation_alias
        env = alias.choices[0] if isinstance(alias, AliasChoices) else f"{prefix}{name}".upper()
        default = info.get_default(call_default_factory=True)
        lines.append(f"  {env:<34} {info.description or ''} (default: {default!r})")
    lines.append("  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER, ... tracing, as OpenTelemetry defines them")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m escalon.serving",
        description="Escalon's ModelServingService: each catalogue rung a Ray Serve deployment behind one gRPC front.",
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(ServingSettings)
        service = ServingService(settings, load_catalogue(settings.catalogue))
    except ConfigError as exc:
        print(f"escalon-serving: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(service, settings, "escalon-serving"))
    except EscalonError as exc:  # e.g. a rung's replica could not start: one line, not a traceback
        print(f"escalon-serving: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

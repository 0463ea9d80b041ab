"""The entry point every `python -m escalon.<service>` shares: --help from the settings, one-line config
errors, logging, then the shared gRPC bootstrap until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable

from pydantic_settings import BaseSettings

from escalon.config import ServiceSettings, load_settings
from escalon.errors import ConfigError
from escalon.grpc import Service, serve


def settings_help(cls: type[BaseSettings]) -> str:
    """One line per environment variable: name, default, what it does."""
    prefix = cls.model_config.get("env_prefix", "")
    lines = []
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        env = str(alias.choices[0]) if alias is not None and hasattr(alias, "choices") else f"{prefix}{name}".upper()
        default = info.default if info.default is not None else "-"
        lines.append(f"  {env:<34} {info.description or ''} [default: {default}]")
    return "environment:\n" + "\n".join(lines)


def run_service(name: str, settings_cls: type[ServiceSettings], factory: Callable[[ServiceSettings], Service],
                argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {name.replace('-', '.')}",
        description=f"Start the {name} gRPC service (health, reflection, tracing; stops gracefully on SIGTERM).",
        epilog=settings_help(settings_cls) + "\n\nStandard OTEL_* variables configure tracing.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, help="override the port from the environment")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = {"port": args.port} if args.port is not None else {}
        settings = load_settings(settings_cls, **overrides)
        service = factory(settings)
    except ConfigError as exc:
        sys.exit(f"{name}: {exc}")
    asyncio.run(serve(service, settings, name))

"""The one entry point every `python -m escalon.<service>` shares, gRPC services and the HTTP gateway alike.

    parse arguments (--help lists the environment, from the settings class) → logging → settings validated
    → start(settings, args) until SIGTERM → exit status

Exit status, the same for every service: 0 after a graceful stop, CONFIG_ERROR (2) for a bad setting or
argument (argparse uses 2 too) with one line naming it, START_FAILED (1) when the service could not start for
another reason (a dependency unreachable, a replica that would not load), also in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from escalon.config import ServiceSettings, load_settings, settings_help
from escalon.errors import ConfigError, EscalonError
from escalon.grpc import Service, serve

CONFIG_ERROR = 2
START_FAILED = 1

S = TypeVar("S", bound=ServiceSettings)


def main(name: str, settings_cls: type[S], start: Callable[[S, argparse.Namespace], None], *, description: str,
         argv: list[str] | None = None, arguments: Callable[[argparse.ArgumentParser], None] | None = None,
         epilog: str = "") -> int:
    """Run one service's process: `name` is its telemetry name (escalon-router), `start` serves until stopped
    and raises ConfigError for what the settings cannot catch alone; `arguments` adds the service's own."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {name.replace('-', '.')}",
        description=description,
        epilog="\n\n".join(filter(None, [settings_help(settings_cls), epilog,
                                         "Standard OTEL_* variables configure tracing."])),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, help="override the port from the environment")
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(settings_cls, **({"port": args.port} if args.port is not None else {}))
        start(settings, args)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    except EscalonError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return START_FAILED
    return 0


def run_service(name: str, settings_cls: type[S], factory: Callable[[S], Service], argv: list[str] | None = None,
                *, description: str = "") -> int:
    """A gRPC service: build it from its settings, then the shared bootstrap (escalon.grpc) until SIGTERM."""

    def start(settings: S, args: argparse.Namespace) -> None:
        service = factory(settings)
        asyncio.run(serve(service, settings, name))

    return main(name, settings_cls, start, argv=argv, description=description or
                f"Start the {name} gRPC service (health, reflection, tracing; stops gracefully on SIGTERM).")

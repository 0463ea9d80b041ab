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
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from escalon.config import ServiceSettings, load_settings, settings_help
from escalon.errors import ConfigError, EscalonError
from escalon.grpc import Service, serve

CONFIG_ERROR = 2
START_FAILED = 1
#: set by a supervisor (`escalon up`) to its pid: the service then gets SIGTERM when that process dies
PARENT_PID_ENV = "ESCALON_PARENT_PID"
PR_SET_PDEATHSIG = 1

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
    follow_parent()
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


def follow_parent() -> None:
    """Under a supervisor that set ESCALON_PARENT_PID: ask Linux for SIGTERM when it dies (PR_SET_PDEATHSIG),
    so a killed `escalon up` leaves no service behind on its ports; exit at once if it is already gone. Done
    here, in the child, rather than in a preexec_fn: forking a process that runs gRPC threads must not run
    Python between fork and exec."""
    parent = os.environ.pop(PARENT_PID_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # the supervisor died before the request took effect
        sys.exit(START_FAILED)


def run_service(name: str, settings_cls: type[S], factory: Callable[[S], Service], argv: list[str] | None = None,
                *, description: str = "", epilog: str = "") -> int:
    """A gRPC service: build it from its settings, then the shared bootstrap (escalon.grpc) until SIGTERM."""

    def start(settings: S, args: argparse.Namespace) -> None:
        service = factory(settings)
        asyncio.run(serve(service, settings, name))

    return main(name, settings_cls, start, argv=argv, epilog=epilog, description=description or
                f"Start the {name} gRPC service (health, reflection, tracing; stops gracefully on SIGTERM).")

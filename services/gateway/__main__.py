"""python -m escalon.gateway — the OpenAI-compatible HTTP gateway and the operator's page (default port 8080).

Order of life, as for the gRPC services: settings validated (one message naming the variable) → telemetry →
uvicorn binds and starts; /healthz answers 200 once the router is SERVING. On SIGTERM or SIGINT uvicorn
stops accepting, lets in-flight requests finish for ESCALON_GRACE_SECONDS, the app's lifespan closes the
gRPC channels, then buffered spans are flushed; uvicorn then re-raises the signal (the exit status says how the
process was stopped, as with any signalled process).
"""

from __future__ import annotations

import argparse
import sys

from escalon.main import main as run_main

DESCRIPTION = ("Start Escalon's HTTP gateway: the OpenAI-compatible API (/v1/chat/completions, /v1/models) over the "
               "Router API, and the operator's page (/ops). Stops gracefully on SIGTERM.")


def main(argv: list[str] | None = None) -> int:
    from escalon.gateway.settings import GatewaySettings

    return run_main("escalon-gateway", GatewaySettings, _serve, description=DESCRIPTION, argv=argv)


def _serve(settings, args: argparse.Namespace) -> None:
    settings.check_api_keys()
    if settings.frontier_report is not None:
        from escalon.gateway.traffic import frontier_from_report

        frontier_from_report(settings.frontier_report)  # a bad report path stops the start, with its reason

    import uvicorn

    from escalon.gateway.app import create_app
    from escalon.telemetry import configure_telemetry

    config = uvicorn.Config(
        create_app(settings, telemetry=configure_telemetry("escalon-gateway")), host=settings.host,
        port=settings.port, lifespan="on", timeout_graceful_shutdown=settings.grace_seconds, log_config=None,
        access_log=False, proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    # SIGTERM/SIGINT: stop accepting, let in-flight requests finish (grace), lifespan shutdown (close the
    # channels, flush spans); uvicorn then re-raises the signal, so a signalled stop ends as one.
    uvicorn.Server(config).run()


if __name__ == "__main__":
    sys.exit(main())

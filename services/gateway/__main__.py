"""python -m escalon.gateway — the OpenAI-compatible HTTP gateway and the operator's page (default port 8080).

Order of life, as for the gRPC services: settings validated (one message naming the variable) → telemetry →
uvicorn binds and starts; /healthz answers 200 once the router is SERVING. On SIGTERM or SIGINT uvicorn
stops accepting, lets in-flight requests finish for ESCALON_GRACE_SECONDS, the app's lifespan closes the
gRPC channels, then buffered spans are flushed; uvicorn then re-raises the signal (the exit status says how the
process was stopped, as with any signalled process).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import AliasChoices, SecretStr

from escalon.config import load_settings
from escalon.errors import ConfigError


def _environment_help(cls) -> str:
    prefix = cls.model_config.get("env_prefix", "")
    lines = ["environment:"]
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        env = alias.choices[0] if isinstance(alias, AliasChoices) else f"{prefix}{name}".upper()
        default = info.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(str(d) for d in default if not isinstance(d, SecretStr)) or "(none)"
        lines.append(f"  {env:<36} {info.description or ''} [default: {'-' if default is None else default}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from escalon.gateway.settings import GatewaySettings

    parser = argparse.ArgumentParser(
        prog="python -m escalon.gateway",
        description="Start Escalon's HTTP gateway: the OpenAI-compatible API (/v1/chat/completions, /v1/models) "
                    "over the Router API, and the operator's page (/ops). Stops gracefully on SIGTERM.",
        epilog=_environment_help(GatewaySettings) + "\n\nStandard OTEL_* variables configure tracing.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, help="override the port from the environment")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(GatewaySettings, **({"port": args.port} if args.port is not None else {}))
        settings.check_api_keys()
        if settings.frontier_report is not None:
            from escalon.gateway.traffic import frontier_from_report

            frontier_from_report(settings.frontier_report)  # a bad report path stops the start, with its reason
    except ConfigError as exc:
        print(f"escalon-gateway: {exc}", file=sys.stderr)
        return 2

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
    return 0


if __name__ == "__main__":
    sys.exit(main())

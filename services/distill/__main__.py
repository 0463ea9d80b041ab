"""`python -m escalon.distill` — the distill service's two processes.

    python -m escalon.distill [serve]                       the gRPC front (DistillService)
    python -m escalon.distill worker [--queues cpu,gpu]     a Celery worker that runs the jobs

Both read the same settings from the environment (listed by --help).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

from escalon.distill.settings import QUEUES, DistillSettings
from escalon.errors import ConfigError, EscalonError
from escalon.main import main as run_main

DESCRIPTION = ("Escalon's distill service: offline jobs (profiling, evaluation, distillation) on a Celery queue. "
               "`serve` (the default) runs the gRPC front; `worker` runs the jobs. Start both with the same "
               "environment (the front and the workers must agree).")
EXAMPLES = ("With nothing set, everything lives under ESCALON_DATA_DIR and needs no server: an SQLite broker, "
            "result store and job store.\nExamples:\n"
            "  ESCALON_DATA_DIR=/tmp/escalon python -m escalon.distill &\n"
            "  ESCALON_DATA_DIR=/tmp/escalon python -m escalon.distill worker --queues cpu\n"
            "  ESCALON_DISTILL_BROKER_URL=redis://127.0.0.1:6379/0 python -m escalon.distill worker")


class StoreUnreachable(EscalonError):
    """The job store's database did not answer at start."""


def _arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC front (the default)")
    worker = sub.add_parser(
        "worker",
        help="run a Celery worker",
        description="Run a Celery worker for the distill jobs (acks late, one job reserved per process).",
    )
    worker.add_argument(
        "--queues", default="cpu", help=f"comma-separated queues to consume, of {', '.join(QUEUES)} (default: cpu)"
    )
    worker.add_argument("--concurrency", type=int, default=1, help="pool processes (default: 1)")
    worker.add_argument(
        "--pool",
        default="prefork",
        choices=("prefork", "solo", "threads"),
        help="prefork (default, as in production: a killed job process is noticed and its message "
        "requeued), solo (one process, for debugging)",
    )
    worker.add_argument("--loglevel", default="INFO", help="worker log level (default: INFO)")
    worker.add_argument("--hostname", default=None, help="worker node name (default: distill@<host>)")
    worker.add_argument("--beat", action="store_true",
                        help="also run Celery beat in this worker (the route log's daily pruning); one per cluster")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="port of the worker's /metrics (default: ESCALON_DISTILL_METRICS_PORT; 0 = a free one)")


def main(argv: list[str] | None = None) -> int:
    return run_main("escalon-distill", DistillSettings, _start, description=DESCRIPTION, argv=argv,
                    arguments=_arguments, epilog=EXAMPLES + "\n\n" + _database_help())


def _database_help() -> str:
    from escalon.config import settings_help
    from escalon.db.settings import DatabaseSettings

    return ("API keys (scope jobs) and the route log's retention (escalon.db, docs/tenancy.md):\n"
            + settings_help(DatabaseSettings).split("\n", 1)[1])


def _start(settings: DistillSettings, args: argparse.Namespace) -> None:
    import sqlalchemy.exc

    try:
        if args.command == "worker":
            _worker(settings, args)
        else:
            _serve(settings)
    except sqlalchemy.exc.OperationalError as exc:
        first = str(exc.orig or exc).strip().splitlines()[0]
        raise StoreUnreachable(f"the job store ESCALON_DISTILL_DATABASE_URL is unreachable: {first}") from None


def _serve(settings: DistillSettings) -> None:
    from escalon.distill.servicer import DistillService
    from escalon.grpc import serve

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from escalon.config import load_settings
    from escalon.db.settings import DatabaseSettings

    # who may submit jobs: API keys of scope `jobs` in Escalon's database (escalon.auth)
    service = DistillService(settings, database=load_settings(DatabaseSettings))
    asyncio.run(serve(service, settings, "escalon-distill"))


def _worker(settings: DistillSettings, args: argparse.Namespace) -> None:
    from escalon.distill.celery_app import create_celery

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if not queues or unknown:
        raise ConfigError(f"--queues must name some of {', '.join(QUEUES)}; got {args.queues!r}")
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency must be 1 or more; got {args.concurrency}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_celery(settings)
    app.job_store()  # fail now, with the database's own message, if the job store is unreachable
    _worker_metrics(settings, args)
    app.worker_main(
        [
            "worker",
            f"--queues={','.join(queues)}",
            f"--concurrency={args.concurrency}",
            f"--pool={args.pool}",
            f"--loglevel={args.loglevel}",
            f"--hostname={args.hostname or 'distill@' + socket.gethostname()}",
            # Gossip, mingle and heartbeats are cluster chatter the distill jobs do not use; skipping them makes
            # a worker ready in a second and works on brokers without fanout (the SQLite transport).
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *(["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"] if args.beat else []),
        ]
    )


def _worker_metrics(settings: DistillSettings, args: argparse.Namespace) -> None:
    """The worker's /metrics, served by its main process (the consumer): the job messages it took, by queue.
    Job counts by kind and state and the queues' lengths come from the distill front, which is always up."""
    from celery import signals

    from escalon.metrics import metrics, serve_metrics

    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    if port is None:
        return
    serve_metrics(port, settings.host, setting="ESCALON_DISTILL_METRICS_PORT (or --metrics-port)")

    def received(request=None, **_: object) -> None:
        queue = ((getattr(request, "delivery_info", None) or {}).get("routing_key")) or "unknown"
        metrics().tasks_received.labels(queue).inc()

    signals.task_received.connect(received, weak=False, dispatch_uid="escalon-worker-metrics")


if __name__ == "__main__":
    sys.exit(main())

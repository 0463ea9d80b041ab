"""`python -m escalon.distill` — the distill service's two processes.

    python -m escalon.distill [serve]                       the gRPC front (DistillService)
    python -m escalon.distill worker [--queues cpu,gpu]     a Celery worker that runs the jobs

Both read the same settings from the environment (listed by --help).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

from escalon.config import load_settings
from escalon.distill.settings import QUEUES, DistillSettings, env_help
from escalon.errors import ConfigError

PROG = "python -m escalon.distill"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Escalon's distill service: offline jobs (profiling, evaluation, distillation) on a Celery "
        "queue. `serve` (the default) runs the gRPC front; `worker` runs the jobs. Start both with the same "
        "environment.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="environment (the front and the workers must agree):\n"
        + env_help()
        + "\n\nWith nothing set, everything lives under ESCALON_DATA_DIR and needs no server: an SQLite broker, "
        "result store and job store.\nExamples:\n"
        "  ESCALON_DATA_DIR=/tmp/escalon python -m escalon.distill &\n"
        "  ESCALON_DATA_DIR=/tmp/escalon python -m escalon.distill worker --queues cpu\n"
        "  ESCALON_DISTILL_BROKER_URL=redis://127.0.0.1:6379/0 python -m escalon.distill worker",
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    import sqlalchemy.exc

    args = _parser().parse_args(argv)
    try:
        settings = load_settings(DistillSettings)
        if args.command == "worker":
            return _worker(settings, args)
        return _serve(settings)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except sqlalchemy.exc.OperationalError as exc:
        first = str(exc.orig or exc).strip().splitlines()[0]
        print(f"{PROG}: the job store ESCALON_DISTILL_DATABASE_URL is unreachable: {first}", file=sys.stderr)
        return 1


def _serve(settings: DistillSettings) -> int:
    from escalon.distill.servicer import DistillService
    from escalon.grpc import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(DistillService(settings), settings, "escalon-distill"))
    return 0


def _worker(settings: DistillSettings, args: argparse.Namespace) -> int:
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
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

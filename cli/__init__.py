"""The `escalon` command: start the stack, ask questions, list rungs, run jobs.

Every command talks to the real services over gRPC, at the addresses the services themselves use
(ESCALON_*_PORT), or at --address; with ESCALON_API_KEY set, `ask` and `jobs` send that key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import grpc

from escalon.errors import ConfigError, EscalonError

EPILOG = """examples:
  escalon up --demo                         start everything, ask the demo question, serve until Ctrl-C
  escalon ask "What is 12 * 7?" --answer-type number
  escalon ask "..." --operating-point economy --max-cost 0.001
  escalon models                            rungs with prices, limits and health
  escalon jobs submit profile --param benchmark=shared/escalon/demo/gsm8k-sample.parquet --watch
  escalon jobs list
  escalon jobs submit harvest --param source=synthetic:arith --param n=300 --id h1 --watch
  escalon jobs submit undo --teacher program:arith --student smollm2-135m --data jobs/h1/dataset.jsonl --watch
  escalon jobs submit promote --student job:<undo id> --target mixtral-8x7b --data jobs/h1/dataset.jsonl
  escalon bench distill                     UNDO vs one-shot distillation of SmolLM2-135M on this machine
  escalon judge report --benchmark data/routellm-evals/benchmark.parquet --out reports/judges
  escalon judge live --out reports/judges-live
  escalon eval --benchmark data/llmrouter-dcrouter --out reports/dcrouter   routing policies vs baselines
  escalon taxonomy label --in logs.jsonl --out labelled.jsonl --benchmark data/llmrouter-dcrouter
  escalon routes list --since 1h                  the route log (ESCALON_DATABASE_URL)
  escalon routes export --since 7d --out traffic.parquet     real traffic in the benchmark format
  escalon loop                                    traffic → harvest → distil → promote → fresh traffic, measured
  escalon cluster promote --promotion jobs/<id> --dry-run      a promotion applied in Kubernetes (the diff)
  escalon keys create --tenant acme --budget-day 5 --rate-limit 10/second
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="escalon",
        description="Escalon answers each query with the cheapest model that gets it right.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the whole embedded stack (serving, judge, router, distill, worker)",
                        description="Start every service as a child process, wait until all are SERVING, "
                                    "and keep serving until Ctrl-C. Ports come from ESCALON_*_PORT.")
    up.add_argument("--demo", action="store_true", help="ask the demo question once the stack is up and show its trace")
    up.add_argument("--no-worker", action="store_true", help="do not start a Celery worker")
    up.add_argument("--no-gateway", action="store_true",
                    help="do not start the HTTP gateway (OpenAI-compatible API and operator's page, ESCALON_GATEWAY_PORT)")
    up.add_argument("--exit-after-demo", action="store_true", help="stop the stack after the demo (for scripts)")

    ask = sub.add_parser("ask", help="ask a question through the Router API and show the route",
                         description="Send one query to the Router API; print the answer and every rung tried.")
    ask.add_argument("prompt", help="the question")
    ask.add_argument("--address", help="router host:port [default: 127.0.0.1:$ESCALON_ROUTER_PORT or 50051]")
    ask.add_argument("--operating-point", default="", help="economy | balanced | max-quality (router config)")
    ask.add_argument("--max-cost", type=float, help="budget in USD that the route never exceeds")
    ask.add_argument("--min-quality", type=float, help="confidence an answer needs, in [0, 1]")
    ask.add_argument("--rung", default="", help="pin one rung")
    ask.add_argument("--answer-type", choices=["number", "choice", "yes-no", "free-text", "code"],
                     help="how answers are compared [default: inferred from the prompt]")
    ask.add_argument("--stream", action="store_true", help="show decision events and tokens as they happen")
    ask.add_argument("--json", action="store_true", help="print the whole response as JSON")

    models = sub.add_parser("models", help="list the rungs served, with prices, limits and health")
    models.add_argument("--address", help="serving host:port [default: 127.0.0.1:$ESCALON_SERVING_PORT or 50053]")

    bench = sub.add_parser("bench", help="measure Escalon's own overhead against a bare gRPC hop",
                           description="Benchmark in one run: the gRPC floor, the routing decision, and a whole "
                                       "two-rung judged cascade through real services with replay rungs at 1, 10 "
                                       "and 100 concurrent clients (p50, p99, throughput, ratio to the floor).")
    bench.add_argument("suite", nargs="?", default="overhead",
                       choices=["overhead", "distill", "tenancy", "operability", "load"],
                       help="overhead (default): the serving/routing benchmark above; distill: UNDO vs one-shot "
                            "distillation of SmolLM2-135M on a checkable task (escalon.offline.bench.distill); "
                            "tenancy: route log overhead at 100 req/s, routes lost across a database restart, "
                            "a budget under 20 concurrent clients (escalon.offline.bench.tenancy); operability: "
                            "metrics on vs off at 100 req/s, a remote rung killed mid-load "
                            "(escalon.offline.bench.operability; python -m it for its own options); load: "
                            "100 req/s for 5 minutes through gRPC and the gateway, then an overload ramp "
                            "(escalon.offline.bench.load)")
    bench.add_argument("--requests", type=int, default=1000, help="requests per measurement [default: 1000]")
    bench.add_argument("--out", type=Path, help="also write the figures as JSON here")
    from escalon.offline.bench.distill import add_arguments as add_distill_arguments

    add_distill_arguments(bench.add_argument_group("distill suite"), with_out=False)
    from escalon.offline.bench.load import add_arguments as add_load_arguments

    add_load_arguments(bench.add_argument_group("load suite"))

    jobs = sub.add_parser("jobs", help="submit and follow offline jobs on the queue")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    submit = jobs_sub.add_parser("submit", help="submit a job (the same id twice runs once)", add_help=False)
    from escalon.cli.jobs_help import KindsHelp

    submit.add_argument("-h", "--help", action=KindsHelp)
    submit.add_argument("kind", help="job kind: one of those listed below")
    submit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="job parameter; VALUE is parsed as JSON when it can be (repeatable)")
    for flag, text in (("teacher", "teacher rung, or program:arith (undo, siked)"),
                       ("student", "student: a local rung (undo, siked), or a merged folder / job:<id> (promote)"),
                       ("data", "data set JSONL from a harvest job (undo, siked, promote)"),
                       ("target", "the rung the student should replace (promote)")):
        submit.add_argument(f"--{flag}", help=f"{text}; the same as --param {flag}=...")
    submit.add_argument("--id", default="", help="idempotency key [default: generated]")
    submit.add_argument("--queue", default="cpu", choices=["cpu", "gpu"])
    submit.add_argument("--watch", action="store_true", help="follow progress with a progress bar until the job ends")
    for name, text in (("status", "show one job"), ("watch", "follow a job with a progress bar"),
                       ("cancel", "cancel a job")):
        p = jobs_sub.add_parser(name, help=text)
        p.add_argument("job_id")
    lst = jobs_sub.add_parser("list", help="list jobs, newest first")
    lst.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    lst.add_argument("--kind", default="")
    lst.add_argument("--limit", type=int, default=20)
    for p in (jobs, submit, lst, *[jobs_sub.choices[n] for n in ("status", "watch", "cancel")]):
        p.add_argument("--address", help="distill host:port [default: 127.0.0.1:$ESCALON_DISTILL_PORT or 50054]")
    import importlib

    # The in-process commands, each a module with add_parser(sub) and run(args) (OFFLINE_COMMANDS below).
    for module in ("judge", "evaluate", "taxonomy", "router_artefact", "routes", "keys", "cluster", "loop"):
        importlib.import_module(f"escalon.cli.{module}").add_parser(sub)
    return parser


OFFLINE_COMMANDS = {"eval": "evaluate", "router": "router_artefact", "taxonomy": "taxonomy", "judge": "judge",
                    "routes": "routes", "keys": "keys", "cluster": "cluster",
                    "loop": "loop"}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from escalon.cli import commands

    if args.command == "bench" and args.suite == "distill":
        from escalon.offline.bench.distill import main as distill_bench_main

        sys.exit(distill_bench_main(args))
    if args.command == "bench" and args.suite == "tenancy":
        from escalon.offline.bench.tenancy import main as tenancy_bench_main

        sys.exit(tenancy_bench_main(args.requests, args.out))
    if args.command == "bench" and args.suite == "load":
        from escalon.offline.bench.load import main as load_bench_main

        sys.exit(load_bench_main(args, args.out))
    if args.command == "bench" and args.suite == "operability":
        from escalon.offline.bench.operability import main as operability_main

        sys.exit(operability_main(["all", "--requests", str(args.requests), *(["--out", str(args.out)] if args.out else [])]))
    if args.command == "bench":
        from escalon.offline.bench.latency import main as bench_main

        sys.exit(bench_main(args.requests, args.out))
    if args.command in OFFLINE_COMMANDS:  # in-process commands: a module with run(args), errors exit 2
        import importlib

        module = importlib.import_module(f"escalon.cli.{OFFLINE_COMMANDS[args.command]}")
        action = getattr(args, f"{args.command}_command", None)
        try:
            sys.exit(module.run(args))
        except EscalonError as exc:
            print(f"escalon {args.command}{' ' + action if action else ''}: {exc}", file=sys.stderr)
            sys.exit(2)
    handler = {"up": commands.up, "ask": commands.ask, "models": commands.models, "jobs": commands.jobs}[args.command]
    try:
        code = asyncio.run(handler(args))
    except grpc.aio.AioRpcError as exc:
        print(f"escalon {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        code = 1
    except ConfigError as exc:
        print(f"escalon {args.command}: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code or 0)


def parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = _local_path(value)
    return params


def _local_path(value: str) -> str:
    """A relative path that names a file or folder here (`shared/escalon/demo/gsm8k-sample.parquet` in a
    checkout) is sent absolute: the service reads relative paths against its data dir, not this shell's
    folder. Anything else goes as typed."""
    from pathlib import Path

    path = Path(value).expanduser()
    if value and not path.is_absolute() and path.exists():
        return str(path.resolve())
    return value

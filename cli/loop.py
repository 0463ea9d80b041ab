"""`escalon loop`: run traffic of one task through a stack of real services, turn it into a student, promote it,
and measure what changed (escalon.offline.loop)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

EXAMPLES = """examples:
  escalon loop                                          # the demo's GSM8K sample, replay rungs, SmolLM2 student
  escalon loop --data-dir /tmp/loop --database-url postgresql+psycopg://postgres@127.0.0.1:5432/loop --json out.json
  escalon loop --train-steps 40 --rounds 1 --margin 0.1
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from escalon.offline.loop import DEMO

    p = sub.add_parser(
        "loop", help="traffic → harvest → distil → promote → refresh → fresh traffic, measured end to end",
        description="Starts serving (replay rungs, then the promoted student), the judge and a router whose route "
                    "log is on Escalon's database; sends the task's traffic, harvests it from the route log, "
                    "distils the student, evaluates it on held-out items against the target rung, promotes it if "
                    "it wins, refreshes the router's artefact (with --artefact), sends fresh traffic, and prints "
                    "the student's share of that traffic, its judged and true accuracy against the rung it "
                    "replaced, and the cost saved per 1,000 queries. Real training on CPU: minutes.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, help="jobs, models, the SQLite database [a fresh folder under "
                                                 "ESCALON_DATA_DIR/loop-<time>]")
    p.add_argument("--database-url", default="", help="Escalon's database [SQLite in the data dir]")
    p.add_argument("--benchmark", type=Path, default=DEMO, help="routing-format parquet: prompts, the replay "
                                                                "rungs' recorded answers, gold [the demo sample]")
    p.add_argument("--rungs", default="mixtral-8x7b,gpt-4", help="the ladder served before the student [%(default)s]")
    p.add_argument("--catalogue", type=Path, help="catalogue YAML with those rungs [the packaged one]")
    p.add_argument("--student", default="smollm2-135m", help="the base rung to fine-tune [%(default)s]")
    p.add_argument("--teacher", default="gpt-4", help="[%(default)s]")
    p.add_argument("--target", default="mixtral-8x7b", help="the rung the student should replace [%(default)s]")
    p.add_argument("--method", choices=["undo", "siked"], default="undo")
    p.add_argument("--name", default="", help="the student's rung name [<benchmark>-student]")
    p.add_argument("--fresh-share", type=float, default=0.4, help="prompts held out as fresh traffic [%(default)s]")
    p.add_argument("--train-steps", type=int, default=12, help="LoRA steps [%(default)s]")
    p.add_argument("--rounds", type=int, default=0, help="UNDO rounds after the one-shot round [%(default)s]")
    p.add_argument("--margin", type=float, default=0.02, help="accuracy the student may lose [%(default)s]")
    p.add_argument("--max-tokens", type=int, default=200, help="answer length [%(default)s]")
    p.add_argument("--local-samples", type=int, default=3, help="samples per local rung [%(default)s]")
    p.add_argument("--limit", type=int, help="at most this many benchmark prompts")
    p.add_argument("--torch-threads", type=int, help="CPU threads for local models [all]")
    p.add_argument("--artefact", type=Path, help="a router artefact to plan with, fold the student into, refresh")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the whole report here")


def run(args: argparse.Namespace) -> int:
    import datetime as dt
    import os

    from escalon.config import DEFAULT_DATA_DIR
    from escalon.offline.loop import LoopConfig, render, run_loop

    data_dir = args.data_dir or Path(os.environ.get("ESCALON_DATA_DIR") or DEFAULT_DATA_DIR).expanduser() / (
        "loop-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S"))
    cache = os.environ.get("ESCALON_MODEL_CACHE")
    cfg = LoopConfig(data_dir=data_dir, database_url=args.database_url, benchmark=args.benchmark,
                     rungs=tuple(r for r in args.rungs.split(",") if r), catalogue=args.catalogue,
                     student=args.student, teacher=args.teacher, target=args.target, method=args.method,
                     name=args.name, fresh_share=args.fresh_share, seed=args.seed, train_steps=args.train_steps,
                     rounds=args.rounds, margin=args.margin, max_tokens=args.max_tokens,
                     local_samples=args.local_samples, torch_threads=args.torch_threads, limit=args.limit,
                     model_cache=Path(cache) if cache else None, artefact=args.artefact)
    print(f"escalon loop: data dir {data_dir}")
    report = asyncio.run(run_loop(cfg, say=lambda line: print("  " + line, flush=True)))
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0

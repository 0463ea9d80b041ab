"""`escalon judge report` and `escalon judge live`: calibration reports of the judges, run by hand (offline,
no services needed: the judge engine and the local backends are called in-process)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_ROUTING_DATA = "/work/shared/data/routing"


def add_parser(sub: argparse._SubParsersAction) -> None:
    judge = sub.add_parser("judge", help="calibration reports of the judges (Brier, ECE, AUROC, reliability diagrams)")
    actions = judge.add_subparsers(dest="judge_command", required=True, metavar="ACTION")
    report = actions.add_parser(
        "report", help="judge a recorded benchmark, fit on train, report on test, write the calibration artefact",
        description="Judge every recorded answer of a benchmark (the shared routing format), fit judge weights and "
                    "calibration maps on the train split, and report Brier / ECE / AUROC per judge and for the "
                    "panel, uncalibrated vs calibrated, per task and rung, on the test split. Writes report.json, "
                    "report.md, reliability-<task>.png and calibration.json (load it with ESCALON_JUDGE_CALIBRATION).",
        epilog="example: escalon judge report --benchmark /work/shared/data/routing/routellm-evals "
               "--out /tmp/judge-reports/routellm-evals  (only rows with a recorded response are judged; "
               "about 10 s on 2 cores without P(True))")
    report.add_argument("--benchmark", type=Path, required=True,
                        help="benchmark.parquet with a response column, or the benchmark folder holding it")
    report.add_argument("--out", type=Path, required=True,
                        help="folder for report.md/json, the reliability PNGs and calibration.json (created)")
    report.add_argument("--task", action="append", dest="tasks", help="only this task (repeatable)")
    report.add_argument("--min-rows", type=int, default=50, help="fewest fit rows for a calibration group [50]")
    report.add_argument("--method", choices=["auto", "isotonic", "platt"], default="auto",
                        help="calibration map: auto = lower cross-validated Brier on train [auto]")
    report.add_argument("--weighting", choices=["logloss", "quality", "uniform"], default="logloss",
                        help="how judge weights are fitted [logloss]")
    report.add_argument("--p-true-rung", default="", help="local rung for P(True), e.g. smollm2-135m [none]")
    report.add_argument("--p-true-sample", type=int, default=0,
                        help="prompts per task and split that get P(True) (a model call each) [0]")
    report.add_argument("--max-prompts", type=int, help="at most this many prompts per task and split (quick runs)")
    report.add_argument("--threads", type=int, help="torch threads of the P(True) rung [the rung's CPUs]")
    report.add_argument("--seed", type=int, default=0,
                        help="seed of the P(True) sample and of the hash split of tasks with one split [0]")

    live = actions.add_parser(
        "live", help="the judges on live samples of a local model at n = 1, 3, 5, 10",
        description="Sample a local rung n times per question on a small gold question set built from the shared "
                    "benchmarks' prompts; report what each judge and the panel achieve at each n (cross-fitted "
                    "calibration), with the judge cost per query. Generations are cached under <out>/cache.",
        epilog="example: nice escalon judge live --out /tmp/judge-live --questions 32 --threads 1  (the models come "
               "from PyPI packages, converted once under ~/.cache/escalon/models; minutes to tens of minutes on CPU, "
               "a re-run reuses the cache; on a machine shared with other jobs one torch thread is much faster "
               "than two fighting for the cores)")
    live.add_argument("--out", type=Path, required=True,
                      help="folder for live.md/json, questions.jsonl, the PNGs, calibration-live.json and cache/")
    live.add_argument("--routing-data", type=Path,
                      default=Path(os.environ.get("ESCALON_ROUTING_DATA", DEFAULT_ROUTING_DATA)),
                      help="folder with routellm-evals/ and llmrouter-dcrouter/ [$ESCALON_ROUTING_DATA or "
                           f"{DEFAULT_ROUTING_DATA}]")
    live.add_argument("--rung", default="smollm2-135m", help="local rung to sample [smollm2-135m]")
    live.add_argument("--judge-rung", default="gemma3-270m", help="P(True) judge rung; '' for none [gemma3-270m]")
    live.add_argument("--questions", type=int, default=48, help="questions in the gold set [48]")
    live.add_argument("--gsm8k-share", type=float, default=0.25, help="share of GSM8K questions [0.25]")
    live.add_argument("--n", type=int, nargs="+", default=[1, 3, 5, 10], help="sample counts [1 3 5 10]")
    live.add_argument("--temperature", type=float, default=0.7, help="sampling temperature [0.7]")
    live.add_argument("--threads", type=int, help="torch threads [the rung's CPUs]")
    live.add_argument("--seed", type=int, default=0, help="seed of the question set, the samples and the folds [0]")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.judge_command == "report":
        from escalon.offline.judging.report import ReportConfig, run_report

        config = ReportConfig(benchmark=args.benchmark, out=args.out, tasks=args.tasks, min_rows=args.min_rows,
                              method=args.method, weighting=args.weighting, p_true_rung=args.p_true_rung,
                              p_true_sample=args.p_true_sample, max_prompts_per_task=args.max_prompts,
                              seed=args.seed, torch_threads=args.threads)
        report = run_report(config, progress=lambda p, m: print(f"[{p:4.0%}] {m}", file=sys.stderr))
        for c in report["comparison"]:
            panel = c["panel"]
            print(f"{c['group']:<24} calibrated panel: Brier {_f(panel['brier'])}  ECE {_f(panel['ece'])}  "
                  f"AUROC {_f(panel['auroc'])}")
        print(f"\nreport: {args.out / 'report.md'}\nartefact: {args.out / 'calibration.json'} "
              "(ESCALON_JUDGE_CALIBRATION)")
        return 0
    from escalon.offline.judging.live import LiveConfig, run_live

    config = LiveConfig(out=args.out, routing_data=args.routing_data, rung=args.rung, judge_rung=args.judge_rung,
                        questions=args.questions, gsm8k_share=args.gsm8k_share, n_values=tuple(args.n),
                        temperature=args.temperature, torch_threads=args.threads, seed=args.seed)
    report = run_live(config, progress=lambda p, m: print(f"[{p:4.0%}] {m}", file=sys.stderr))
    for s in report["summary"]:
        print(f"n = {s['n']:>2}: majority accuracy {_f(s['majority_accuracy'])}, calibrated panel Brier "
              f"{_f(s['panel_calibrated']['brier'])} ECE {_f(s['panel_calibrated']['ece'])} AUROC "
              f"{_f(s['panel_calibrated']['auroc'])}")
    print(f"\nreport: {args.out / 'live.md'}")
    return 0


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"

"""`escalon bench distill`: the untrained student, one-shot distillation, UNDO and SIKeD, over several seeds.

The task: synthetic two- and three-step arithmetic word problems with exact answers (training/arith.py; the
kind of question GSM8K-style traffic carries), harvested once with a fixed seed into train/val/test, so
every method and seed is scored on the same held-out items. The teacher: `program:arith`, which computes
every rationale (always correct) and, for UNDO, rewrites it for the mistake it diagnoses in the student's
answer. The student: SmolLM2-135M-Instruct (the `smollm2-135m` rung) with LoRA.

It runs the real `harvest`, `undo` and `siked` job functions, each job in a child process of its own, so the
wall time and peak memory (the child's maximum resident set) are the job's; per seed:

    undo          round 0 is one-shot distillation (teacher rationales, fresh LoRA); later rounds continue from
                  the kept student on the teacher's refinements of its train errors plus a replay
    matched       one-shot distillation trained for as many steps as all of UNDO's rounds together: does
                  UNDO win by what the refinements say, or by training longer?
    siked         SIKeD: cot/l2m/pot teacher rows, then the student's own correct samples

Each job's figures are written as soon as it ends (<work-dir>/results/<job>.json) and a job already there is
not run again, so an interrupted benchmark continues where it stopped. Accuracy is reported with a 95%
bootstrap interval over the test items (each item's correctness averaged over the seeds; scipy's BCa
bootstrap), and UNDO − one-shot with a paired interval on the same items. --report-dir writes report.md,
figures.json and accuracy-by-round.png there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SPEC_ENV = "ESCALON_BENCH_DISTILL_JOB"


def add_arguments(parser: Any, *, with_out: bool = True) -> None:
    """The suite's options (`escalon bench` already has --out, so it passes with_out=False)."""
    parser.add_argument("--train", type=int, default=160, help="train items [160]")
    parser.add_argument("--val", type=int, default=64, help="validation items (decisions only) [64]")
    parser.add_argument("--test", type=int, default=320, help="held-out test items [320]")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per method [3]")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start at this seed [0; another process can take later seeds on the same work dir]")
    parser.add_argument("--rounds", type=int, default=2, help="UNDO rounds after the one-shot round [2]")
    parser.add_argument("--epochs", type=float, default=2, help="epochs of round 0 (one-shot) [2]")
    parser.add_argument("--round-epochs", type=float, default=2, help="epochs of each continued UNDO round [2]")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate of round 0 [1e-3]")
    parser.add_argument("--round-lr", type=float, default=None, help="learning rate of continued rounds [lr/2]")
    parser.add_argument("--replay", type=float, default=1.0, help="UNDO: replayed solved rows per refined row [1]")
    parser.add_argument("--retrain", action="store_true",
                        help="UNDO as before: every round retrains from the base weights on the whole set")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank [8]")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch [8]")
    parser.add_argument("--siked-iterations", type=int, default=1, help="SIKeD iterations after iteration 0 [1]")
    parser.add_argument("--siked-samples", type=int, default=2, help="SIKeD samples per question and strategy [2]")
    parser.add_argument("--siked-epochs", type=float, default=1,
                        help="SIKeD epochs per iteration [1: its rows are one per strategy, 3 per question]")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: the report from the jobs already finished under --work-dir")
    parser.add_argument("--methods", default="undo,matched,siked", help="which jobs per seed [undo,matched,siked]")
    parser.add_argument("--max-new-tokens", type=int, default=100,
                        help="longest student answer when scoring [100; teacher rationales are 57 tokens on "
                             "average, refined ones up to 97]")
    parser.add_argument("--eval-batch-size", type=int, default=48, help="prompts decoded together [48]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [all cores]")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0, help="the data set's seed [0]")
    parser.add_argument("--min-gain", type=float, default=0.0,
                        help="UNDO stops when validation gains less than this [0: run every round unless it drops]")
    parser.add_argument("--work-dir", type=Path, default=None, help="artefacts and per-job results [a temp folder]")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="write report.md, figures.json and accuracy-by-round.png here")
    if with_out:
        parser.add_argument("--out", type=Path, help="also write the figures as JSON here")


# ---- one job, in a child process -------------------------------------------------------------------------------


def _child(spec: dict[str, Any]) -> None:
    """Runs in the child: one job, then its figures and per-item test correctness, as JSON."""
    from escalon.distill.jobs import LocalContext, validate
    from escalon.distill.jobs.distilling import load_splits
    from escalon.distill.training.data import is_correct

    work = Path(spec["work"])
    kind, params = validate(spec["kind"], spec["params"], work)
    ctx = _PrintingContext(artefact_dir=work / spec["name"], job_id=f"bench-{spec['name']}", tag=spec["name"])
    report = kind.run(params, ctx)
    test = load_splits(params).test
    out: dict[str, Any] = {"name": spec["name"], "kind": spec["kind"], "report": report}
    if spec["kind"] == "undo":
        per_round = {}
        for r in report["rounds"]:
            answers = json.loads((work / spec["name"] / "rounds" / str(r["round"]) / "eval.json").read_text())["test"]
            per_round[str(r["round"])] = [bool(a["correct"]) for a in answers]
        out["test_correct_by_round"] = per_round
        base = work / spec["name"] / "baseline.json"
        if base.is_file():
            out["baseline_test_correct"] = [bool(a["correct"]) for a in json.loads(base.read_text())["test"]]
    else:
        per_it = {}
        for r in report["iterations"]:
            outputs = json.loads((work / spec["name"] / "iterations" / str(r["iteration"]) / "eval.json").read_text())
            per_it[str(r["iteration"])] = [is_correct(o, i) for o, i in zip(outputs["test"], test, strict=True)]
        out["test_correct_by_round"] = per_it
    Path(spec["result"]).write_text(json.dumps(out, indent=1, default=str))


def run_job(spec: dict[str, Any], report_only: bool = False) -> dict[str, Any] | None:
    """One job in a child process; its result file, with the child's wall time and peak memory added.
    A result already written is read, not run again; with report_only a missing one is None."""
    result = Path(spec["result"])
    if result.is_file():
        return json.loads(result.read_text())
    if report_only:
        return None
    print(f"{time.strftime('%H:%M:%S')} {spec['name']}: starting (load {os.getloadavg()[0]:.1f})", flush=True)
    env = {**os.environ, SPEC_ENV: json.dumps(spec)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "escalon.offline.bench.distill"], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"bench job {spec['name']} failed (exit status {proc.returncode}); its artefacts are "
                           f"under {spec['work']}/{spec['name']}")
    out = json.loads(result.read_text())
    out.update(wall_s=round(seconds, 1), peak_rss_mb=round(usage.ru_maxrss / 1024, 1), load_after=os.getloadavg())
    result.write_text(json.dumps(out, indent=1, default=str))
    print(f"{time.strftime('%H:%M:%S')} {spec['name']}: {out['wall_s']} s, peak {out['peak_rss_mb']} MB", flush=True)
    return out


# ---- the whole benchmark -----------------------------------------------------------------------------------------


def _train(args: argparse.Namespace, seed: int, **extra: Any) -> dict[str, Any]:
    return {"r": args.rank, "alpha": 2 * args.rank, "lr": args.lr, "epochs": args.epochs,
            "batch_size": args.batch_size, "seed": seed, "checkpoint_every": 1000, **extra}


def _common(args: argparse.Namespace, data: str) -> dict[str, Any]:
    return {"teacher": "program:arith", "student": "smollm2-135m", "data": data, "limit_train": args.train,
            "limit_val": args.val, "limit_test": args.test, "max_new_tokens": args.max_new_tokens,
            "eval_batch_size": args.eval_batch_size, "device": args.device, "torch_threads": args.threads}


def harvest(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from escalon.distill.jobs import LocalContext, validate

    done = work / "results" / "harvest.json"
    if done.is_file():  # a resumed or second run uses the same items
        return json.loads(done.read_text())
    total = args.train + args.val + args.test
    n = int(total * 1.3) + 16  # the hashed split is not exact: harvest more, then cap each split
    kind, params = validate("harvest", {"source": "synthetic:arith", "n": n, "seed": args.seed,
                                        "val_fraction": args.val / total, "test_fraction": args.test / total}, work)
    report = kind.run(params, LocalContext(artefact_dir=work / "harvest", job_id="bench-harvest"))
    short = [s for s, want in (("train", args.train), ("val", args.val), ("test", args.test))
             if report["splits"].get(s, 0) < want]
    if short:
        raise ValueError(f"the harvest has too few {short} items ({report['splits']}); ask for fewer")
    done.write_text(json.dumps(report, default=str))
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="escalon-bench-distill-"))).resolve()
    (work / "results").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = harvest(args, work)["artefacts"]["dataset"]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"undo", "matched", "siked"}
    if unknown or not methods:
        raise ValueError(f"--methods: any of undo, matched, siked (got {args.methods!r})")
    jobs: dict[str, list[dict[str, Any]]] = {m: [] for m in ("undo", *methods)}

    def spec(name: str, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "kind": kind, "params": params, "work": str(work),
                "result": str(work / "results" / f"{name}.json")}

    # Method by method, seed by seed: an interrupted run has whole methods first (UNDO and one-shot).
    for seed in range(args.first_seed, args.seeds) if "undo" in methods or "matched" in methods else ():
        undo = run_job(spec(f"undo-s{seed}", "undo", {
            **_common(args, data), "rounds": args.rounds, "min_gain": args.min_gain, "replay": args.replay,
            "continue_training": not args.retrain, "round_lr": args.round_lr, "round_epochs": args.round_epochs,
            "score_baseline": seed == 0, "train": _train(args, seed)}), args.report_only or "undo" not in methods)
        if undo:
            jobs["undo"].append(undo)
    for seed in range(args.first_seed, args.seeds):
        if "siked" in methods:
            siked = run_job(spec(f"siked-s{seed}", "siked", {
                **_common(args, data), "iterations": args.siked_iterations, "samples": args.siked_samples, "score_baseline": False,
                "train": _train(args, seed, epochs=args.siked_epochs)}), args.report_only)
            if siked:
                jobs["siked"].append(siked)
    for undo in jobs["undo"]:
        seed = int(undo["name"].rsplit("-s", 1)[1])
        if "matched" in methods:
            steps = sum(r["train_steps"] for r in undo["report"]["rounds"])  # every round UNDO trained
            matched = run_job(spec(f"matched-s{seed}", "undo", {
                **_common(args, data), "rounds": 0, "score_baseline": False,
                "train": _train(args, seed, epochs=50, max_steps=steps)}), args.report_only)
            if matched:
                jobs["matched"].append(matched)
    if not jobs.get("undo"):
        raise ValueError(f"no UNDO results under {work}/results yet: the report needs them (run --methods undo)")
    from escalon.offline.bench.distill_report import summarise

    figures = summarise(jobs, args, seconds=time.perf_counter() - started)
    figures["work_dir"] = str(work)
    return figures


class _PrintingContext:
    """LocalContext that also prints progress lines as the job reports them."""

    def __init__(self, artefact_dir: Path, job_id: str, tag: str = "") -> None:
        from escalon.distill.jobs import LocalContext

        self._inner = LocalContext(artefact_dir=artefact_dir, job_id=job_id)
        self.artefact_dir, self.job_id, self.attempt = artefact_dir, job_id, 1
        self.tag = tag
        self._last = 0.0

    def load_checkpoint(self):
        return self._inner.load_checkpoint()

    def save_checkpoint(self, state, *, progress, message, step=None, metrics=None):
        print(f"  {self.tag} [{progress:4.0%}] {message}", flush=True)
        self._inner.save_checkpoint(state, progress=progress, message=message, step=step, metrics=metrics)

    def report(self, progress, message):
        if time.monotonic() - self._last > 60:
            print(f"  {self.tag} [{progress:4.0%}] {message}", flush=True)
            self._last = time.monotonic()

    def write_artefact(self, name, data):
        return self._inner.write_artefact(name, data)


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("ESCALON_MODEL_CACHE", str(Path.home() / ".cache" / "escalon" / "models"))
    from escalon.offline.bench.distill_report import render, write_report

    figures = run(args)
    print()
    print(render(figures))
    if args.report_dir:
        write_report(figures, args.report_dir)
        print(f"report: {args.report_dir / 'report.md'}")
    if getattr(args, "out", None):
        args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    if os.environ.get(SPEC_ENV):
        _child(json.loads(os.environ[SPEC_ENV]))
        sys.exit(0)
    parser = argparse.ArgumentParser(prog="python -m escalon.offline.bench.distill", description=__doc__.split("\n")[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))

"""`escalon bench distill`: UNDO against one-shot distillation, measured end to end on this machine.

The task: synthetic arithmetic word problems with checkable answers (training/arith.py), harvested with a
fixed seed into train/val/test. The teacher: the programmatic teacher `program:arith` — the strongest
teacher available offline that can *rewrite* its explanations (recorded GPT-4 answers cannot: a replay has
no answer to the REFINE prompt). The student: SmolLM2-135M-Instruct (the `smollm2-135m` rung), LoRA.

It runs the real `harvest` and `undo` job functions (the same code a worker runs; no queue, so the figure is
the job's own time) and prints student accuracy on the held-out test items before distillation, after
one-shot distillation (round 0) and after each UNDO round, with time, teacher calls and cost. On a machine
with CUDA, `--device cuda` runs the same on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: Any, *, with_out: bool = True) -> None:
    """The suite's options (`escalon bench` already has --out, so it passes with_out=False)."""
    parser.add_argument("--train", type=int, default=96, help="train items [96]")
    parser.add_argument("--val", type=int, default=32, help="validation items [32]")
    parser.add_argument("--test", type=int, default=64, help="held-out test items [64]")
    parser.add_argument("--rounds", type=int, default=3, help="UNDO rounds after the one-shot round [3]")
    parser.add_argument("--epochs", type=float, default=2, help="epochs per round [2]")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate [1e-3]")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank [8]")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch [8]")
    parser.add_argument("--max-new-tokens", type=int, default=96,
                        help="longest student answer when scoring [96; teacher rationales are 30-60 tokens]")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads [all cores; 1 is faster on a machine other work keeps busy]")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-gain", type=float, default=0.0,
                        help="UNDO stops when validation gains less than this [0: run every round unless it drops]")
    parser.add_argument("--work-dir", type=Path, default=None, help="where artefacts go [a new temp folder]")
    if with_out:
        parser.add_argument("--out", type=Path, help="also write the figures as JSON here")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from escalon.distill.jobs import LocalContext, validate

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="escalon-bench-distill-"))
    work.mkdir(parents=True, exist_ok=True)
    total_items = args.train + args.val + args.test
    started = time.perf_counter()
    # Harvest more than needed (the hashed split is not exact), then cap each split.
    n = int(total_items * 1.25) + 8
    kind, params = validate("harvest", {"source": "synthetic:arith", "n": n, "seed": args.seed,
                                        "val_fraction": args.val / total_items,
                                        "test_fraction": args.test / total_items}, work)
    harvest = kind.run(params, LocalContext(artefact_dir=work / "harvest", job_id="bench-harvest"))
    print(f"task: {harvest['items']} synthetic arithmetic problems {harvest['splits']} → using "
          f"{args.train}/{args.val}/{args.test}", flush=True)
    undo_params = {
        "teacher": "program:arith", "student": "smollm2-135m", "data": harvest["artefacts"]["dataset"],
        "rounds": args.rounds, "min_gain": args.min_gain, "limit_train": args.train, "limit_val": args.val,
        "limit_test": args.test, "max_new_tokens": args.max_new_tokens, "eval_batch_size": 16, "device": args.device,
        "torch_threads": args.threads,
        "train": {"r": args.rank, "alpha": 2 * args.rank, "lr": args.lr, "epochs": args.epochs,
                  "batch_size": args.batch_size, "seed": args.seed, "checkpoint_every": 50},
    }
    kind, params = validate("undo", undo_params, work)
    ctx = _PrintingContext(artefact_dir=work / "undo", job_id="bench-undo")
    report = kind.run(params, ctx)
    seconds = time.perf_counter() - started
    import torch

    figures = {
        "device": "cuda: " + torch.cuda.get_device_name(0) if params.device != "cpu" and torch.cuda.is_available()
        else f"cpu ({os.cpu_count()} cores, {args.threads or os.cpu_count()} torch threads)",
        "task": "synthetic arithmetic word problems (2-3 steps), programmatic teacher program:arith",
        "student": "SmolLM2-135M-Instruct + LoRA",
        "items": report["items"],
        "before_val": report["before"]["val_accuracy"],
        "before_test": report["before"]["test_accuracy"],
        "one_shot_test": report["one_shot"]["test_accuracy"],
        "rounds": [{"round": r["round"], "val": r["val_accuracy"], "test": r["test_accuracy"],
                    "train_steps": r.get("train_steps"), "train_seconds": r.get("train_seconds"),
                    "refined": r.get("refined"), "refine_kept": r.get("refine_kept"),
                    "decision": r.get("decision")} for r in report["rounds"]],
        "best_round": report["best_round"],
        "best_test": report["best"]["test_accuracy"],
        "teacher_calls": report["teacher_calls"],
        "teacher_cost_usd": report["teacher_cost_usd"],
        "seconds": round(seconds, 1),
        "artefacts": report["artefacts"],
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir", "command", "suite", "requests")},
    }
    return figures


class _PrintingContext:
    """LocalContext that also prints progress lines as the job reports them."""

    def __init__(self, artefact_dir: Path, job_id: str) -> None:
        from escalon.distill.jobs import LocalContext

        self._inner = LocalContext(artefact_dir=artefact_dir, job_id=job_id)
        self.artefact_dir, self.job_id, self.attempt = artefact_dir, job_id, 1
        self._last = 0.0

    def load_checkpoint(self):
        return self._inner.load_checkpoint()

    def save_checkpoint(self, state, *, progress, message, step=None, metrics=None):
        print(f"  [{progress:4.0%}] {message}", flush=True)
        self._inner.save_checkpoint(state, progress=progress, message=message, step=step, metrics=metrics)

    def report(self, progress, message):
        if time.monotonic() - self._last > 30:
            print(f"  [{progress:4.0%}] {message}", flush=True)
            self._last = time.monotonic()

    def write_artefact(self, name, data):
        return self._inner.write_artefact(name, data)


def render(f: dict[str, Any]) -> str:
    lines = [
        f"UNDO vs one-shot distillation — {f['task']}; student {f['student']}; {f['device']}",
        f"items: {f['items']['train']} train, {f['items']['val']} val, {f['items']['test']} held-out test",
        "",
        f"{'stage':<28} {'val':>7} {'test':>7} {'steps':>6} {'train s':>8}  refined(kept)",
        f"{'before distillation':<28} {100 * f['before_val']:>6.1f}% {100 * f['before_test']:>6.1f}%",
    ]
    for r in f["rounds"]:
        label = "one-shot (round 0)" if r["round"] == 0 else f"UNDO round {r['round']}"
        refined = "" if r["refined"] is None else f"{r['refined']}({r['refine_kept']})"
        lines.append(f"{label:<28} {100 * r['val']:>6.1f}% {100 * r['test']:>6.1f}% {r['train_steps'] or '':>6} "
                     f"{r['train_seconds'] or '':>8}  {refined}")
    lines += [
        "",
        f"kept: round {f['best_round']} (test {100 * f['best_test']:.1f}%); teacher: {f['teacher_calls']} calls, "
        f"${f['teacher_cost_usd']:.4f}; total time {f['seconds']:.0f} s",
        f"plot: {f['artefacts']['plot_png']}",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("ESCALON_MODEL_CACHE", str(Path.home() / ".cache" / "escalon" / "models"))
    figures = run(args)
    print()
    print(render(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m escalon.offline.bench.distill", description=__doc__.split("\n")[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))

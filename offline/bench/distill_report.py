"""The figures of `escalon bench distill` (offline/bench/distill.py): accuracy with bootstrap intervals, the paired
difference UNDO − one-shot, time and memory per job, a Markdown report and a plot of accuracy per UNDO round.

Intervals: each test item's correctness is averaged over the seeds (a seed-mean per item), and the mean over
items is bootstrapped (scipy.stats.bootstrap, BCa, 95%, 5,000 resamples). The difference of two methods is
bootstrapped on the per-item differences of their seed-means (paired: the same items). The spread over
seeds (each seed's accuracy) is listed beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def interval(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% BCa bootstrap interval of per-item values."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2 or np.all(values == values[0]):
        return mean, mean, mean
    res = bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=5000, method="BCa",
                    random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return mean, float(lo), float(hi)


def _matrix(jobs: list[dict[str, Any]], pick: str) -> np.ndarray:
    """seeds × items correctness of one method: `pick` is 'first' (round 0), 'best' (the kept round/iteration)."""
    rows = []
    for job in jobs:
        report, by_round = job["report"], job["test_correct_by_round"]
        if pick == "first":
            key = "0"
        else:
            key = str(report["best_round"] if "best_round" in report else report["best_iteration"])
        rows.append(by_round[key])
    return np.array(rows, dtype=float)


def _method(name: str, m: np.ndarray, jobs: list[dict[str, Any]], note: str) -> dict[str, Any]:
    mean, lo, hi = interval(m.mean(axis=0))
    return {"method": name, "accuracy": mean, "ci95": [lo, hi], "per_seed": [float(x) for x in m.mean(axis=1)],
            "n_items": int(m.shape[1]), "seeds": int(m.shape[0]), "note": note,
            "wall_s": [j.get("wall_s") for j in jobs], "peak_rss_mb": [j.get("peak_rss_mb") for j in jobs]}


def summarise(jobs: dict[str, list[dict[str, Any]]], args: Any, *, seconds: float) -> dict[str, Any]:
    undo = jobs["undo"]
    one = _matrix(undo, "first")
    best = _matrix(undo, "best")
    methods = []
    base = undo[0].get("baseline_test_correct")
    if base:
        b = np.array([base], dtype=float)
        methods.append(_method("untrained", b, [], "greedy decoding is deterministic: one run"))
    methods.append(_method("one-shot", one, undo, "UNDO's round 0: teacher rationales, fresh LoRA"))
    methods.append(_method("UNDO", best, undo, "the round kept on validation accuracy"))
    if jobs.get("matched"):
        methods.append(_method("one-shot, steps matched", _matrix(jobs["matched"], "first"), jobs["matched"],
                               "one-shot trained as many steps as all of UNDO's rounds together"))
    if jobs.get("siked"):
        methods.append(_method("SIKeD iteration 0", _matrix(jobs["siked"], "first"), jobs["siked"],
                               "teacher rows in cot, l2m and pot"))
        methods.append(_method("SIKeD", _matrix(jobs["siked"], "best"), jobs["siked"],
                               "the iteration kept on validation accuracy"))
    diffs = {}
    pairs = [("UNDO − one-shot", best, one)]
    if jobs.get("matched"):
        pairs.append(("UNDO − one-shot, steps matched", best, _matrix(jobs["matched"], "first")))
    if jobs.get("siked"):
        pairs.append(("SIKeD − one-shot", _matrix(jobs["siked"], "best"), one))
    for label, a, b in pairs:
        mean, lo, hi = interval(a.mean(axis=0) - b.mean(axis=0))
        diffs[label] = {"difference": mean, "ci95": [lo, hi]}
    rounds = []
    for t in range(max(len(j["test_correct_by_round"]) for j in undo)):
        per_seed = [float(np.mean(j["test_correct_by_round"][str(t)])) for j in undo
                    if str(t) in j["test_correct_by_round"]]
        rounds.append({"round": t, "per_seed": per_seed, "mean": float(np.mean(per_seed)),
                       "val_per_seed": [next(r["val_accuracy"] for r in j["report"]["rounds"] if r["round"] == t)
                                        for j in undo if str(t) in j["test_correct_by_round"]],
                       "steps_per_seed": [next(r["train_steps"] for r in j["report"]["rounds"] if r["round"] == t)
                                          for j in undo if str(t) in j["test_correct_by_round"]],
                       "refined_kept_per_seed": [next(r.get("refine_kept") for r in j["report"]["rounds"]
                                                      if r["round"] == t)
                                                 for j in undo if str(t) in j["test_correct_by_round"]]})
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("out", "command", "suite", "requests", "func")}
    return {"methods": methods, "differences": diffs, "undo_rounds": rounds,
            "kept_rounds": [j["report"]["best_round"] for j in undo],
            "siked_alpha": [j["report"].get("alpha_by_iteration") for j in jobs.get("siked", [])],
            "items": undo[0]["report"]["items"], "seconds": round(seconds, 1), "config": config}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(f: dict[str, Any]) -> str:
    items = f["items"]
    lines = [f"held-out test items: {items['test']} (train {items['train']}, val {items['val']})", "",
             f"{'method':<26} {'seeds':>5} {'test acc':>8}  {'95% CI':<16} {'per seed (%)':<18} {'wall s':<22} peak MB"]
    for m in f["methods"]:
        per_seed = " ".join(f"{100 * x:.1f}" for x in m["per_seed"])
        wall = " ".join(str(x) for x in m["wall_s"] if x is not None)
        rss = " ".join(str(x) for x in m["peak_rss_mb"] if x is not None)
        ci = f"[{_pct(m['ci95'][0])}, {_pct(m['ci95'][1])}]"
        lines.append(f"{m['method']:<26} {m['seeds']:>5} {_pct(m['accuracy']):>8}  {ci:<16} {per_seed:<18} {wall:<22} "
                     f"{rss}")
    lines.append("")
    for label, d in f["differences"].items():
        lines.append(f"{label:<32} {100 * d['difference']:+.1f} pt  95% CI [{100 * d['ci95'][0]:+.1f}, "
                     f"{100 * d['ci95'][1]:+.1f}]")
    lines.append("")
    lines.append("UNDO by round (test accuracy per seed; val; steps; refined rationales used):")
    for r in f["undo_rounds"]:
        lines.append(f"  round {r['round']}: mean {_pct(r['mean'])}  per seed "
                     + " ".join(f"{100 * x:.1f}" for x in r["per_seed"])
                     + "  val " + " ".join(f"{100 * x:.1f}" for x in r["val_per_seed"])
                     + f"  steps {r['steps_per_seed']}  refined {r['refined_kept_per_seed']}")
    lines.append(f"kept rounds per seed: {f['kept_rounds']}; total time {f['seconds']:.0f} s")
    return "\n".join(lines)


def plot(f: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.2), dpi=110)
    rounds = f["undo_rounds"]
    for s in range(max(len(r["per_seed"]) for r in rounds)):
        pts = [(r["round"], r["per_seed"][s]) for r in rounds if s < len(r["per_seed"])]
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, [100 * y for y in ys], marker="o", alpha=0.35, color="C0", label="UNDO, a seed" if s == 0 else None)
    ax.plot([r["round"] for r in rounds], [100 * r["mean"] for r in rounds], marker="o", color="C0", lw=2.5,
            label="UNDO, mean over seeds")
    xmax = max(1, len(rounds) - 1)
    styles = {"untrained": ("C7", ":"), "one-shot, steps matched": ("C1", "--"), "SIKeD": ("C2", "-."),
              "one-shot": ("C3", "--")}
    for m in f["methods"]:
        if m["method"] in styles:
            color, ls = styles[m["method"]]
            ax.hlines(100 * m["accuracy"], 0, xmax, colors=color, linestyles=ls, label=m["method"])
            ax.fill_between([0, xmax], 100 * m["ci95"][0], 100 * m["ci95"][1], color=color, alpha=0.08)
    ax.set_xticks(range(0, xmax + 1))
    ax.set_xlabel("UNDO round (0 = one-shot)")
    ax.set_ylabel(f"test accuracy, {f['items']['test']} held-out items (%)")
    ax.set_ylim(0, 100)
    ax.set_title("SmolLM2-135M + LoRA on arithmetic word problems")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(f: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "figures.json").write_text(json.dumps(f, indent=1))
    plot(f, folder / "accuracy-by-round.png")
    (folder / "report.md").write_text("# escalon bench distill\n\n```\n" + render(f) + "\n```\n\n"
                                      "![accuracy by UNDO round](accuracy-by-round.png)\n\n"
                                      f"Configuration: `{json.dumps(f['config'])}`\n")

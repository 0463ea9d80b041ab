"""`escalon bench distill`'s figures (offline/bench/distill_report.py) from job results of known content: the
bootstrap interval covers the mean and narrows with more items, the paired difference is exact when every
item moves the same way, the report and plot are written. No model runs here: the inputs are the result
files' shape, made up."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from escalon.offline.bench.distill_report import interval, render, summarise, write_report

pytestmark = pytest.mark.unit


def _undo(round0: list[bool], round1: list[bool], best: int) -> dict:
    return {"report": {"best_round": best, "items": {"train": 8, "val": 4, "test": len(round0)},
                       "rounds": [{"round": 0, "val_accuracy": 0.25, "train_steps": 4},
                                  {"round": 1, "val_accuracy": 0.5, "train_steps": 3, "refine_kept": 5}]},
            "test_correct_by_round": {"0": round0, "1": round1}, "baseline_test_correct": [False] * len(round0),
            "wall_s": 12.0, "peak_rss_mb": 900.0}


def test_interval_covers_the_mean_and_narrows_with_more_items() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.random(50) < 0.3, rng.random(800) < 0.3
    m, lo, hi = interval(small)
    assert lo < m < hi and 0 <= lo and hi <= 1
    m2, lo2, hi2 = interval(large)
    assert lo2 < m2 < hi2 and (hi2 - lo2) < (hi - lo) / 2
    assert interval(np.ones(10)) == (1.0, 1.0, 1.0)


def test_summary_pairs_undo_with_one_shot_on_the_same_items_and_writes_the_report(tmp_path: Path) -> None:
    n = 40
    zero = [i % 4 == 0 for i in range(n)]  # 25 %
    one = [i % 2 == 0 for i in range(n)]  # 50 %: every item right in round 0 is right in round 1
    jobs = {"undo": [_undo(zero, one, best=1), _undo(zero, one, best=1)], "siked": [], "matched": []}
    f = summarise(jobs, argparse.Namespace(seeds=2), seconds=3.0)
    acc = {m["method"]: m["accuracy"] for m in f["methods"]}
    assert acc == {"untrained": 0.0, "one-shot": 0.25, "UNDO": 0.5}
    d = f["differences"]["UNDO − one-shot"]
    assert d["difference"] == pytest.approx(0.25) and 0.1 < d["ci95"][0] < 0.25 < d["ci95"][1] < 0.45
    assert [r["mean"] for r in f["undo_rounds"]] == [0.25, 0.5]
    text = render(f)
    assert "UNDO − one-shot" in text and "+25.0 pt" in text
    write_report(f, tmp_path / "r")
    assert (tmp_path / "r" / "accuracy-by-round.png").read_bytes().startswith(b"\x89PNG")
    assert "escalon bench distill" in (tmp_path / "r" / "report.md").read_text()

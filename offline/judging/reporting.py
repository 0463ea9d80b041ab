"""What both calibration reports share: judged items, fitting on one set and predicting another, metrics per
group, reliability diagrams, and the Markdown tables.

An *item* is one judged answer: the scores of the judges that ran on it, whether it was right, and what its
evidence cost. `predict` fits the calibration on fit items only (never the evaluated ones) and returns, per
evaluated item, the uncalibrated panel (plain mean), the calibrated panel (fitted weights + map), and each
judge alone, raw and calibrated (its own map). `summarise` turns predictions into Brier / ECE / AUROC rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from escalon.files import atomic_write
from escalon.judge.calibration import Calibration, Row, TokenDeferral
from escalon.offline.judging.calibration_fit import fit_calibration
from escalon.judge.engine import aggregate
from escalon.offline.judging.metrics import fmt, reliability_bins, summarise as metric_summary

PANEL_RAW = "panel (uncalibrated)"
PANEL_CAL = "panel (calibrated)"


@dataclass
class Item:
    key: str  # prompt id (+ model); unique
    task: str
    split: str
    rung: str  # the model that answered (the calibration group's rung)
    correct: float  # 0/1
    scores: dict[str, float]  # judges that ran
    valid: bool  # some candidate gave a valid answer
    cost: dict[str, float] = field(default_factory=dict)  # judge → $ of the evidence it needed
    seconds: dict[str, float] = field(default_factory=dict)  # judge → seconds of judge compute
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, judges: Iterable[str] | None = None) -> Row:
        keep = self.scores if judges is None else {j: s for j, s in self.scores.items() if j in judges}
        return Row(keep, self.correct, self.task, self.rung)


@dataclass
class Predictions:
    items: list[Item]
    panel_raw: list[float]
    panel_cal: list[float]
    calibrated_share: float  # share of items a fitted map (not a fallback) calibrated
    judge_raw: dict[str, list[float | None]]
    judge_cal: dict[str, list[float | None]]
    calibration: Calibration


def predict(fit: Sequence[Item], evaluate: Sequence[Item], judges: Sequence[str], *, min_rows: int = 50,
            method: str = "auto", weighting: str = "logloss", deferral: TokenDeferral | None = None,
            source: dict | None = None) -> Predictions:
    # only `judges` count, in the panel and in its cost: an ablated panel must not see the dropped judges
    fit, evaluate = _only(fit, judges), _only(evaluate, judges)
    fit_rows = [i.row() for i in fit]
    calibration = fit_calibration(fit_rows, judges, min_rows=min_rows, method=method, weighting=weighting,
                                  deferral=deferral, source=source)
    panel_raw, panel_cal, calibrated = [], [], 0
    for item in evaluate:
        raw = aggregate(item.scores, item.valid, None)
        cal = aggregate(item.scores, item.valid, calibration, item.task, [item.rung])
        panel_raw.append(raw.confidence)
        panel_cal.append(cal.confidence)
        calibrated += cal.calibrated
    judge_raw: dict[str, list[float | None]] = {}
    judge_cal: dict[str, list[float | None]] = {}
    for judge in judges:
        alone = fit_calibration([i.row([judge]) for i in fit], [judge], min_rows=min_rows, method=method)
        judge_raw[judge] = [i.scores.get(judge) for i in evaluate]
        judge_cal[judge] = [
            alone.apply({judge: i.scores[judge]}, i.task, [i.rung]).confidence if judge in i.scores and alone.groups
            else None for i in evaluate]
    return Predictions(list(evaluate), panel_raw, panel_cal, calibrated / max(len(evaluate), 1), judge_raw,
                       judge_cal, calibration)


def _only(items: Sequence[Item], judges: Sequence[str]) -> list[Item]:
    keep = set(judges)
    return [dataclasses.replace(i, scores={j: v for j, v in i.scores.items() if j in keep}) for i in items]


def concat(parts: Sequence[Predictions]) -> Predictions:
    """Out-of-fold predictions of a cross-fitted evaluation, as one set (the last fold's calibration kept)."""
    judges = list(parts[0].judge_raw)
    n = sum(len(p.items) for p in parts)
    return Predictions(
        [i for p in parts for i in p.items], [v for p in parts for v in p.panel_raw],
        [v for p in parts for v in p.panel_cal],
        sum(p.calibrated_share * len(p.items) for p in parts) / max(n, 1),
        {j: [v for p in parts for v in p.judge_raw[j]] for j in judges},
        {j: [v for p in parts for v in p.judge_cal[j]] for j in judges}, parts[-1].calibration)


def _metrics(conf: Sequence[float | None], items: Sequence[Item], judge: str | None) -> dict[str, Any]:
    pairs = [(c, i) for c, i in zip(conf, items) if c is not None]
    summary = metric_summary([c for c, _ in pairs], [i.correct for _, i in pairs]).as_dict()
    summary["coverage"] = len(pairs) / len(items) if items else 0.0
    # the panel pays for the evidence of the judges that ran on the item
    costs = [sum(v for j, v in i.cost.items() if j in i.scores) if judge is None else i.cost.get(judge, 0.0)
             for _, i in pairs]
    secs = [sum(v for j, v in i.seconds.items() if j in i.scores) if judge is None else i.seconds.get(judge, 0.0)
            for _, i in pairs]
    summary["judge_cost_usd_per_query"] = float(np.mean(costs)) if costs else None
    summary["judge_ms_per_query"] = float(np.mean(secs)) * 1000 if secs else None
    return summary


def summarise(pred: Predictions, group_of: Callable[[Item], Iterable[str]]) -> list[dict[str, Any]]:
    """One row per (group, variant): the panel raw and calibrated, then each judge raw and calibrated."""
    groups: dict[str, list[int]] = {}
    for idx, item in enumerate(pred.items):
        for g in group_of(item):
            groups.setdefault(g, []).append(idx)
    rows = []
    for g, idx in groups.items():
        items = [pred.items[i] for i in idx]
        pick = lambda values: [values[i] for i in idx]  # noqa: E731
        rows.append({"group": g, "judge": "panel", "calibrated": False, **_metrics(pick(pred.panel_raw), items, None)})
        rows.append({"group": g, "judge": "panel", "calibrated": True, **_metrics(pick(pred.panel_cal), items, None)})
        for judge in pred.judge_raw:
            rows.append({"group": g, "judge": judge, "calibrated": False,
                         **_metrics(pick(pred.judge_raw[judge]), items, judge)})
            rows.append({"group": g, "judge": judge, "calibrated": True,
                         **_metrics(pick(pred.judge_cal[judge]), items, judge)})
    return rows


# ---- figures -------------------------------------------------------------------------------------------------


def reliability_figure(path: Path, title: str, pred: Predictions, idx: Sequence[int], judges: Sequence[str]) -> Path:
    """Two reliability diagrams side by side — uncalibrated and calibrated — with the panel in bold and each
    judge as a thin line; under each, the histogram of the panel's confidences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [pred.items[i] for i in idx]
    labels = [i.correct for i in items]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.8), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for col, (calibrated, panel, per_judge) in enumerate(
            ((False, pred.panel_raw, pred.judge_raw), (True, pred.panel_cal, pred.judge_cal))):
        ax, hist = axes[0][col], axes[1][col]
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
        for judge in judges:
            conf = [per_judge[judge][i] for i in idx]
            pairs = [(c, y) for c, y in zip(conf, labels) if c is not None]
            if len(pairs) < 10:
                continue
            xs, ys = _curve([c for c, _ in pairs], [y for _, y in pairs])
            ax.plot(xs, ys, marker=".", linewidth=0.9, alpha=0.75, label=judge)
        conf = [panel[i] for i in idx]
        xs, ys = _curve(conf, labels)
        summary = metric_summary(conf, labels)
        ax.plot(xs, ys, marker="o", linewidth=2.6, color="black",
                label=f"panel (ECE {fmt(summary.ece)}, Brier {fmt(summary.brier)})")
        ax.set_title(f"{'calibrated' if calibrated else 'uncalibrated'}")
        ax.set_ylabel("accuracy in bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
        hist.hist(conf, bins=10, range=(0, 1), color="0.35")
        hist.set_xlabel(f"panel confidence (10 equal-width bins; curves skip bins under {MIN_BIN} answers)")
        hist.set_ylabel("answers")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


MIN_BIN = 5  # bins with fewer answers are left off the curves (their accuracy is noise); ECE counts them


def _curve(conf: Sequence[float], labels: Sequence[float]) -> tuple[list[float], list[float]]:
    bins = [b for b in reliability_bins(conf, labels) if b.count >= MIN_BIN]
    return [b.confidence for b in bins], [b.accuracy for b in bins]


# ---- markdown ------------------------------------------------------------------------------------------------


def metrics_table(rows: list[dict[str, Any]], group: str) -> str:
    lines = ["| judge | calibrated | n | coverage | accuracy | Brier | ECE | AUROC | judge $/query | judge ms/query |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["group"] != group:
            continue
        name = f"**{r['judge']}**" if r["judge"] == "panel" else r["judge"]
        lines.append(f"| {name} | {'yes' if r['calibrated'] else 'no'} | {r['n']} | {r['coverage']:.0%} | "
                     f"{fmt(r['accuracy'])} | {fmt(r['brier'])} | {fmt(r['ece'])} | {fmt(r['auroc'])} | "
                     f"{_money(r['judge_cost_usd_per_query'])} | {fmt(r['judge_ms_per_query'], 1)} |")
    return "\n".join(lines)


def _money(value: float | None) -> str:
    if value is None:
        return "–"
    return "0" if value == 0 else f"{value:.2e}"


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, text)


def clean(value: Any) -> Any:
    """JSON-safe: NaN → None, numpy scalars → Python."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

"""The Markdown report of an `undo` job (services/distill/jobs/undo.py): one row per round, then what was kept."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def render_markdown(r: dict[str, Any]) -> str:
    out = [
        f"# UNDO distillation: {r['student']} taught by {r['teacher']}",
        "",
        f"Items: {r['items']['train']} train ({r['teacher_correct']} with a correct teacher rationale), "
        f"{r['items']['val']} validation, {r['items']['test']} test (held out; never used for a decision).",
        "",
        "| | val | test | train rows | steps | loss | refined (kept) | teacher calls (total) | decision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| before distillation | {_pct(r['before']['val_accuracy'])} | {_pct(r['before']['test_accuracy'])} "
        "| | | | | | |",
    ]
    for x in r["rounds"]:
        label = "round 0 (one-shot)" if x["round"] == 0 else f"UNDO round {x['round']}"
        refined = "" if x.get("refined") is None else f"{x['refined']} ({x['refine_kept']})"
        out.append(
            f"| {label} | {_pct(x['val_accuracy'])} | {_pct(x['test_accuracy'])} | {x.get('train_rows') or ''} "
            f"| {x.get('train_steps') or ''} | {x.get('loss_last') or ''} | {refined} | {x['teacher_calls_total']} "
            f"| {x.get('decision', '')} |"
        )
    out += [
        "",
        f"Kept: round {r['best_round']} (test {_pct(r['best']['test_accuracy'])}; "
        f"{100 * r['gain_over_one_shot_test']:+.1f} pt over one-shot). Stopped: {r['stop_reason']}.",
        f"Teacher: {r['teacher_calls']} calls, ${r['teacher_cost_usd']:.6f}; rationale sources {r['teacher_sources']}.",
        f"Student: `{r['student_model']}` (backend hf). Time: {r['seconds']:.0f} s.",
        "",
        "![accuracy by round](accuracy.png)",
    ]
    return "\n".join(out) + "\n"

"""`escalon judge report` on a tiny synthetic benchmark: artefacts, metrics, fit on train only; and the queued
`judge_report` job over the same code."""

import json
import random

import pandas as pd
import pytest

from escalon.cli import main
from escalon.judge.calibration import Calibration
from escalon.offline.judging.report import ReportConfig, answer_type_for, family_of, run_report

pytestmark = pytest.mark.unit


def _benchmark(path, prompts=160, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(prompts):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        gold = a + b
        prompt = f"Sam has {a} marbles and finds {b} more. How many marbles does Sam have?"
        split = "train" if i < prompts * 0.6 else "test"
        for model, p_right, cost in (("acme/strong-1", 0.85, 1e-3), ("tiny-2b", 0.55, 1e-5)):
            right = rng.random() < p_right
            answer = gold if right else gold + rng.choice([-10, -1, 1, 7])
            text = f"{a} + {b} = {answer}\n#### {answer}" if right or rng.random() < 0.5 else \
                f"I think it is approximately {answer}, but wait, maybe not."
            rows.append({"prompt_id": f"p{i}", "task": "sums", "split": split, "prompt": prompt, "model": model,
                         "response": text, "score": float(right), "cost_usd": cost})
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_the_report_command_writes_metrics_figures_and_the_artefact(tmp_path):
    bench = _benchmark(tmp_path / "benchmark.parquet")
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as done:
        main(["judge", "report", "--benchmark", str(bench), "--out", str(out), "--min-rows", "20"])
    assert done.value.code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "escalon.judge-report/v1" and report["items"] == {"fit": 192, "eval": 128}
    assert (out / "reliability-sums.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "## sums / acme/strong-1" in md and "| **panel** | yes |" in md
    rows = {(r["group"], r["judge"], r["calibrated"]): r for r in report["rows"]}
    panel_raw, panel = rows[("all", "panel", False)], rows[("all", "panel", True)]
    for r in (panel_raw, panel):
        assert r["n"] == 128 and 0 <= r["brier"] <= 1 and 0 <= r["ece"] <= 1 and 0 <= r["auroc"] <= 1
    assert panel["brier"] < panel_raw["brier"]
    assert rows[("all", "cross_model", False)]["judge_cost_usd_per_query"] > 0  # the other model's recorded call
    assert rows[("all", "format", False)]["judge_cost_usd_per_query"] == 0
    # the ablated panel (what a first rung sees) neither pays for nor averages in the dropped cross_model judge
    first_rung = rows[("all", "panel without cross_model", False)]
    assert first_rung["judge_cost_usd_per_query"] == 0 and first_rung["brier"] != panel_raw["brier"]
    assert "agreement" in report["judges_never_ran"] and "one sample" in json.dumps(report["skipped_reasons"])
    calibration = Calibration.load(out / "calibration.json")
    assert calibration.source["fit_split"] == "train" and calibration.source["rows"] == 192


def test_tasks_without_a_train_split_are_split_by_prompt_hash_and_said_so(tmp_path):
    bench = _benchmark(tmp_path / "b.parquet")
    table = pd.read_parquet(bench)
    table["split"] = "test"
    table.to_parquet(bench)
    report = run_report(ReportConfig(benchmark=bench, out=tmp_path / "r", min_rows=20))
    assert report["items"]["fit"] > 0 and report["items"]["eval"] > 0
    assert any("hash of the prompt id" in n for n in report["notes"])


def test_answer_types_and_families_come_from_task_and_model_names():
    from escalon.gen.common.v1.common_pb2 import AnswerType

    assert answer_type_for("gsm8k", "") == AnswerType.ANSWER_TYPE_NUMBER
    assert answer_type_for("mmlu_anatomy", "") == AnswerType.ANSWER_TYPE_CHOICE
    assert answer_type_for("mbpp", "") == AnswerType.ANSWER_TYPE_CODE
    assert family_of("mistralai/Mixtral-8x7B") == "mistralai" and family_of("llama-3.1-8b") == "llama"


def test_the_judge_report_job_runs_the_same_report(tmp_path):
    from escalon.distill.jobs import LocalContext, validate

    bench = _benchmark(tmp_path / "benchmark.parquet")
    kind, params = validate("judge_report", {"benchmark": bench.name, "min_rows": 20}, tmp_path)
    ctx = LocalContext(artefact_dir=tmp_path / "artefacts")
    result = kind.run(params, ctx)
    assert {"report.json", "report.md", "calibration.json", "reliability-sums.png"} <= set(result["artefacts"])
    assert (tmp_path / "artefacts" / "calibration.json").is_file() and ctx.progress[-1][0] == 1.0


def test_a_benchmark_folder_is_read_through_its_benchmark_parquet(tmp_path):
    from escalon.errors import InvalidInput

    (tmp_path / "bench").mkdir()
    _benchmark(tmp_path / "bench" / "benchmark.parquet")
    report = run_report(ReportConfig(benchmark=tmp_path / "bench", out=tmp_path / "r", min_rows=20))
    assert report["benchmark"].endswith("bench/benchmark.parquet") and report["items"]["eval"] == 128
    with pytest.raises(InvalidInput) as caught:
        run_report(ReportConfig(benchmark=tmp_path / "r", out=tmp_path / "r2"))
    assert caught.value.field == "benchmark" and "benchmark.parquet" in str(caught.value)

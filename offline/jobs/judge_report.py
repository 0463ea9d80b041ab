"""`judge_report`: the judges' calibration report on a recorded benchmark, as a queued job — what
`escalon judge report` does by hand (escalon.offline.judging.report), with the job's artefacts as its output folder.

The report is deterministic given its params and the file, so a redelivered job simply recomputes it (a few
minutes at most without P(True); P(True) adds ~1.4 s per sampled answer on CPU). Artefacts: report.json,
report.md, reliability-<task>.png, calibration.json (escalon.judge-calibration/v1: what the judge service
loads from ESCALON_JUDGE_CALIBRATION).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from escalon.benchmark import COLUMNS
from escalon.distill.jobs.base import JobContext, JobKind, JobParams
from escalon.distill.jobs.benchmark import resolve_benchmark
from escalon.errors import InvalidInput


class JudgeReportParams(JobParams):
    benchmark: str = Field(description="parquet file in the routing format with recorded responses")
    tasks: list[str] | None = Field(default=None, description="only these tasks (default: all with responses)")
    min_rows: int = Field(default=50, ge=5, le=100_000, description="fewest fit rows for a calibration group")
    method: Literal["auto", "isotonic", "platt"] = Field(default="auto", description="calibration map")
    weighting: Literal["logloss", "quality", "uniform"] = Field(default="logloss", description="judge weights")
    p_true_rung: str = Field(default="", description="local rung for P(True) (empty: none)")
    p_true_sample: int = Field(default=0, ge=0, le=5000, description="prompts per task and split that get P(True)")
    max_prompts_per_task: int | None = Field(default=None, ge=1, description="cap per task and split (quick runs)")
    seed: int = Field(default=0, description="seed of the per-task prompt sample and the calibration folds")


def prepare(params: JudgeReportParams, data_dir: Path) -> JudgeReportParams:
    """At submit time: the file exists, has the routing columns and some recorded answers to judge (only the
    response column is read), so a benchmark without responses is refused, not queued to fail."""
    import pyarrow.parquet as pq

    path = resolve_benchmark(params.benchmark, data_dir, COLUMNS, field="params.benchmark")
    responses = pq.read_table(path, columns=["response"]).column("response")
    if responses.null_count == len(responses):
        raise InvalidInput(f"{path!r} has no recorded responses: the judges need answers to judge (of the shared "
                           "benchmarks, routellm-evals has them)", field="params.benchmark")
    return params.model_copy(update={"benchmark": path})


def run(params: JudgeReportParams, ctx: JobContext) -> dict[str, Any]:
    from escalon.offline.judging.report import ReportConfig, run_report

    with tempfile.TemporaryDirectory(prefix="escalon-judge-report-") as tmp:
        config = ReportConfig(benchmark=Path(params.benchmark), out=Path(tmp), tasks=params.tasks,
                              min_rows=params.min_rows, method=params.method, weighting=params.weighting,
                              p_true_rung=params.p_true_rung, p_true_sample=params.p_true_sample,
                              max_prompts_per_task=params.max_prompts_per_task, seed=params.seed)
        report = run_report(config, progress=lambda p, m: ctx.report(0.9 * p, m))
        written = []
        for path in sorted(Path(tmp).iterdir()):
            if path.is_file():
                ctx.write_artefact(path.name, path.read_bytes())
                written.append(path.name)
    ctx.report(1.0, f"wrote {len(written)} artefacts")
    return {"format": report["format"], "comparison": report["comparison"], "items": report["items"],
            "artefacts": written}


KIND = JobKind(
    name="judge_report",
    description="calibration report of the judges on recorded answers (Brier, ECE, AUROC, reliability diagrams) "
                "and the fitted calibration artefact",
    params=JudgeReportParams,
    run=run,
    prepare=prepare,
)

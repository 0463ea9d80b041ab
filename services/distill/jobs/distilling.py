"""What the distillation jobs (undo, siked) share: params, finding rungs and data, scoring a student, reports.

Rungs are looked up in the configured catalogue (params.catalogue, else ESCALON_CATALOGUE, else the packaged
one) plus the rungs promoted so far (<data_dir>/catalogue.promoted.yaml), so a promoted student can teach or
be distilled further. Local models load from the serving model cache (ESCALON_MODEL_CACHE, else
<data_dir>/models), the folder the serving service converts into.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from escalon.distill.jobs.base import JobContext, JobParams
from escalon.distill.training.data import Item, by_split, is_correct, read_items
from escalon.distill.training.lora import StudentModel, TrainConfig
from escalon.distill.jobs.inputs import configured_catalogue, confined, input_file, model_cache
from escalon.errors import ConfigError, InvalidInput, clip
from escalon.registry import Catalogue, load_catalogue, load_promoted, promoted_path, with_rungs


class DistillParams(JobParams):
    teacher: str = Field(description="a catalogue rung (local, OpenAI-compatible or replay) or 'program:arith'")
    student: str = Field(description="a local catalogue rung (backend local-gguf or hf) to fine-tune")
    data: str = Field(description="data set JSONL (a harvest job's dataset.jsonl); relative to the data dir")
    train: TrainConfig = Field(default_factory=TrainConfig, description="LoRA and optimiser settings")
    max_new_tokens: int = Field(default=96, ge=1, le=4096, description="answer length when scoring the student")
    eval_batch_size: int = Field(default=16, ge=1, le=512, description="prompts decoded together when scoring")
    limit_train: int | None = Field(default=None, ge=1, description="use at most this many train items")
    limit_val: int | None = Field(default=None, ge=1, description="use at most this many validation items")
    limit_test: int | None = Field(default=None, ge=1, description="use at most this many test items")
    teacher_chunk: int = Field(default=16, ge=1, le=10_000, description="teacher calls between checkpoints")
    teacher_max_tokens: int = Field(default=512, ge=16, le=8192, description="longest teacher answer, in tokens")
    torch_threads: int | None = Field(default=None, ge=1, le=256, description="CPU threads (default: all)")
    device: str = Field(default="auto", description="auto | cpu | cuda")
    catalogue: str | None = Field(default=None, description="catalogue YAML (default: ESCALON_CATALOGUE or packaged)")
    data_dir: str | None = Field(default=None, description="set at submit: the service's data dir")
    models_dir: str | None = Field(default=None, description="set at submit: the local model cache")
    score_baseline: bool = Field(default=True, description="score the untrained student first (false: the report "
                                                           "has no 'before' figures; a benchmark's repeat seeds)")
    step_delay_s: float = Field(default=0.0, ge=0, le=60, description="for tests and demos only: sleep per step")

    PACING = frozenset({"step_delay_s", "torch_threads", "device", "teacher_chunk"})

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda"):
            raise ValueError("device must be auto, cpu or cuda")
        return value


def job_catalogue(params: DistillParams | Any) -> Catalogue:
    base = load_catalogue(params.catalogue or os.environ.get("ESCALON_CATALOGUE") or None)
    if params.data_dir:
        return with_rungs(base, load_promoted(promoted_path(params.data_dir)))
    return base


def prepare_distill(params: DistillParams, data_dir: Path) -> DistillParams:
    """Submit-time checks: the data file reads, the rungs exist, the student can be fine-tuned."""
    data = input_file(params.data, data_dir, field="params.data", what="data set")
    try:
        items = read_items(data)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{data}: {clip(str(exc))}", field="params.data") from None
    splits = by_split(items)
    for split in ("train", "val"):
        if not splits.get(split):
            raise InvalidInput(f"{data} has no {split!r} items; harvest splits train/val/test", field="params.data")
    updates: dict[str, Any] = {"data": str(data.resolve()), "data_dir": str(Path(data_dir).resolve())}
    if params.catalogue:
        # a catalogue names endpoints and the variables that hold their keys: only the configured one or files
        # in the allowed folders, never any YAML on the server
        updates["catalogue"] = str(input_file(params.catalogue, data_dir, field="params.catalogue",
                                              what="catalogue", extra=configured_catalogue()))
    if not params.models_dir:
        updates["models_dir"] = str(Path(os.environ.get("ESCALON_MODEL_CACHE") or Path(data_dir) / "models").resolve())
    else:  # jobs write converted models there: the model cache or the allowed folders only
        updates["models_dir"] = str(confined(params.models_dir, data_dir, field="params.models_dir",
                                             extra=model_cache()))
    params = params.model_copy(update=updates)
    try:
        catalogue = job_catalogue(params)
    except ConfigError as exc:
        raise InvalidInput(str(exc), field="params.catalogue") from None
    student = catalogue.get(params.student, field="params.student")
    if not student.is_local:
        raise InvalidInput(f"rung {student.name} is a {student.backend} rung; a student is fine-tuned here, so it "
                           "must be a local model (backend local-gguf or hf)", field="params.student")
    if params.teacher.startswith("program:"):
        if params.teacher != "program:arith":
            raise InvalidInput("the only programmatic teacher is program:arith", field="params.teacher")
        if not all("arith" in i.meta for i in items[:50]):
            raise InvalidInput("program:arith teaches only the synthetic arithmetic task (harvest source "
                               "synthetic:arith)", field="params.teacher")
    else:
        catalogue.get(params.teacher, field="params.teacher")
    return params


@dataclass
class Splits:
    train: list[Item]
    val: list[Item]
    test: list[Item]


def load_splits(params: DistillParams) -> Splits:
    s = by_split(read_items(params.data))
    return Splits(s["train"][: params.limit_train], s["val"][: params.limit_val], s["test"][: params.limit_test])


def make_student(params: DistillParams, catalogue: Catalogue) -> StudentModel:
    models_dir = Path(params.models_dir or Path(params.data_dir or ".") / "models")
    return StudentModel(catalogue.get(params.student), models_dir=models_dir, threads=params.torch_threads,
                        device=params.device)


@dataclass
class Scores:
    accuracy: float
    n: int
    correct: list[bool]
    outputs: list[str]

    def brief(self) -> dict[str, Any]:
        return {"accuracy": round(self.accuracy, 4), "n": self.n, "correct": int(sum(self.correct))}


def score(student: StudentModel, items: list[Item], params: DistillParams, *, ctx: JobContext | None = None,
          progress: tuple[float, float] = (0.0, 0.0), label: str = "") -> Scores:
    """Greedy answers of the student on `items`, checked against their gold answers."""
    if not items:
        return Scores(0.0, 0, [], [])

    def on_batch(done: int, total: int) -> None:
        if ctx is not None:
            lo, hi = progress
            ctx.report(lo + (hi - lo) * done / total, f"{label}: {done}/{total} batches")

    outputs = [o[0] for o in student.generate([i.prompt for i in items], max_new_tokens=params.max_new_tokens,
                                              batch_size=params.eval_batch_size, on_batch=on_batch)]
    correct = [is_correct(o, i) for o, i in zip(outputs, items, strict=True)]
    return Scores(sum(correct) / len(items), len(items), correct, outputs)


def plot_rounds(path_png: Path, title: str, series: dict[str, list[tuple[int, float]]],
                lines: dict[str, float], xlabel: str = "round") -> bytes:
    """Accuracy by round (lines with markers) against flat references (one-shot, before)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, [100 * y for y in ys], marker="o", label=label)
    styles = ["--", ":", "-."]
    xmax = max([x for pts in series.values() for x, _ in pts] or [1])
    for k, (label, value) in enumerate(lines.items()):
        ax.hlines(100 * value, 0, max(1, xmax), linestyles=styles[k % 3], colors=f"C{k + 3}", label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylim(-2, 102)  # a fixed scale: small and large gains look like what they are
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy on held-out items (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def student_rung_spec(params: DistillParams, catalogue: Catalogue, merged: Path, name: str) -> dict[str, Any]:
    """The catalogue entry a promoted student gets: the base rung's limits and price, backend hf on the merged
    folder."""
    base = catalogue.get(params.student)
    spec = base.model_dump(mode="json", exclude_none=True)
    spec.update(name=name, backend="hf", model=str(merged))
    return spec


def write_json(ctx: JobContext, name: str, value: Any) -> Path:
    return ctx.write_artefact(name, json.dumps(value, indent=1, ensure_ascii=False))

"""`siked`: SIKeD (docs/distillation.md) — multi-strategy teacher data, student self-samples, an adaptive mix.

    teacher data  for every train question and strategy s in (cot, l2m, pot): T.solve(q, s), kept when
                  correct (a program's answer is what the sandbox prints). Target "[s]: solution", so the
                  student learns to pick a strategy itself.
    iteration 0   S_0 = finetune(S0, teacher data)                                  α_0 = 1
    iteration t   the student samples `samples` answers per question and strategy (the strategy forced by
                  starting its answer with "[s]:") at `temperature`; correct ones, deduplicated, are D_self.
                  Training data = D_self ∪ teacher rows of the questions the student did not solve.
                  α_t = |teacher rows| / |all rows| (logged; it falls as the student solves more).
                  S_t = finetune(S0, data_t); validation and test accuracy (greedy: the student chooses
                  its strategy) and the strategy mix of its test answers are logged.

The student kept is the iteration with the best validation accuracy. Phases checkpoint as in `undo`
(teacher chunks, training states, each sampling batch of questions); artefacts under iterations/<t>/, then
student/merged, report.json, report.md, accuracy.png (accuracy and α by iteration).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from escalon.distill.jobs.base import JobContext, JobKind, TransientJobError, pause
from escalon.distill.jobs.distilling import (
    DistillParams,
    job_catalogue,
    load_splits,
    make_student,
    plot_rounds,
    prepare_distill,
    score,
    student_rung_spec,
)
from escalon.distill.training.data import is_correct, read_jsonl, strategy_of, write_jsonl
from escalon.distill.training.lora import DivergedError, TrainConfig
from escalon.distill.training.teachers import STRATEGIES, Teacher, make_teacher
from escalon.errors import RungUnavailable
from escalon.files import atomic_write

FORMAT = "escalon.siked/v1"


class SikedParams(DistillParams):
    iterations: int = Field(default=3, ge=1, le=8, description="self-guided iterations after iteration 0")
    samples: int = Field(default=10, ge=1, le=64, description="student samples per question and strategy")
    temperature: float = Field(default=0.7, gt=0, le=2, description="student sampling temperature")
    strategies: list[str] = Field(default=list(STRATEGIES), min_length=1, description="of cot, l2m, pot")
    sample_chunk: int = Field(default=16, ge=1, description="questions sampled between checkpoints")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(r=16, alpha=32, lr=2e-4, epochs=3),
                               description="LoRA and optimiser settings (SIKeD defaults: r 16, alpha 32, lr 2e-4, 3 epochs)")

    PACING = DistillParams.PACING | {"sample_chunk"}


def prepare(params: SikedParams, data_dir: Path) -> SikedParams:
    bad = [s for s in params.strategies if s not in STRATEGIES]
    if bad:
        from escalon.errors import InvalidInput

        raise InvalidInput(f"unknown strategies {bad}; use {', '.join(STRATEGIES)}", field="params.strategies")
    return prepare_distill(params, data_dir)


class _Siked:
    """One run of the job: the phase in the checkpoint says which method continues it."""

    def __init__(self, params: SikedParams, ctx: JobContext) -> None:
        self.p, self.ctx, self.root = params, ctx, ctx.artefact_dir
        self.catalogue = job_catalogue(params)
        self.splits = load_splits(params)
        self.by_id = {i.id: i for i in self.splits.train}
        self.student = make_student(params, self.catalogue)
        self.teacher: Teacher | None = None
        state = ctx.load_checkpoint()
        if not state or state.get("fingerprint") != params.fingerprint():
            state = {"format": FORMAT, "fingerprint": params.fingerprint(), "phase": "teacher", "it": 0,
                     "teacher_done": 0, "sampled": 0, "teacher_calls": 0, "teacher_cost_usd": 0.0, "iterations": [],
                     "baseline": None, "started_at": time.time()}
        self.state = state
        self.total_its = params.iterations + 1

    def save(self, message: str, frac: float, **kw: Any) -> None:
        pause(self.p.step_delay_s)
        self.ctx.save_checkpoint(self.state, progress=min(0.99, (self.state["it"] + frac) / (self.total_its + 0.5)),
                                 message=message, **kw)

    def it_dir(self, t: int) -> Path:
        return self.root / "iterations" / str(t)

    def run(self) -> dict[str, Any]:
        try:
            while self.state["phase"] != "done":
                report = getattr(self, f"_{self.state['phase']}")(self.state["it"])
                if report is not None:
                    return report
        finally:
            if self.teacher is not None:
                self.teacher.close()
        raise RuntimeError("unreachable")

    def _teacher(self, t: int) -> dict[str, Any] | None:
        p, state, root, splits = self.p, self.state, self.root, self.splits
        if self.teacher is None:
            self.teacher = make_teacher(p.teacher, catalogue=self.catalogue, models_dir=Path(p.models_dir or "."),
                                        threads=p.torch_threads, max_tokens=p.teacher_max_tokens)
        path = root / "teacher.jsonl"
        rows = read_jsonl(path)[: state["teacher_done"]] if path.is_file() else []
        done_q = len({r["id"] for r in rows})
        for start in range(done_q, len(splits.train), p.teacher_chunk):
            chunk = splits.train[start : start + p.teacher_chunk]
            for item in chunk:
                for s in p.strategies:
                    try:
                        answer = self.teacher.solve(item, s)
                    except RungUnavailable:  # e.g. a replay teacher has only its recorded strategy
                        continue
                    except (TransientJobError, TimeoutError) as exc:
                        raise TransientJobError(
                            f"teacher phase: teacher failed on question {start + 1 + chunk.index(item)} of "
                            f"{len(splits.train)} ({done_q} questions saved at the last checkpoint): {exc}") from exc
                    state["teacher_calls"] += answer.calls
                    state["teacher_cost_usd"] = round(state["teacher_cost_usd"] + answer.cost_usd, 8)
                    target = f"[{s}]: {answer.text}"
                    rows.append({"id": item.id, "strategy": s, "target": target,
                                 "correct": is_correct(target, item)})
            write_jsonl(path, rows)
            state["teacher_done"] = len(rows)
            self.save(f"teacher solutions for {min(start + p.teacher_chunk, len(splits.train))}/{len(splits.train)} "
                      "questions", 0.1)
        kept = [r for r in rows if r["correct"]]
        if not kept:
            raise ValueError(f"teacher phase: the teacher {p.teacher} solved none of the {len(splits.train)} train "
                             f"questions correctly in any strategy ({len(rows)} solutions, all wrong or without a "
                             "parsable answer); no student was written")
        write_jsonl(self.it_dir(0) / "data.jsonl", [{"id": r["id"], "prompt": self.by_id[r["id"]].prompt,
                                                     "target": r["target"], "from": "teacher"} for r in kept])
        state["teacher_kept_by_strategy"] = dict(Counter(r["strategy"] for r in kept))
        state["alpha"] = {"0": 1.0}
        state["phase"] = "baseline"
        self.save(f"teacher data: {len(kept)} correct solutions {state['teacher_kept_by_strategy']}", 0.2)
        return None

    def _baseline(self, t: int) -> dict[str, Any] | None:
        p, state, splits = self.p, self.state, self.splits
        if not p.score_baseline:
            state["baseline"], state["phase"] = {"val": None, "test": None}, "train"
            return None
        self.student.use_base()
        val, test = score(self.student, splits.val, p), score(self.student, splits.test, p)
        state["baseline"] = {"val": val.accuracy, "test": test.accuracy}
        state["phase"] = "train"
        self.save(f"before distillation: val {val.accuracy:.1%}, test {test.accuracy:.1%}", 0.25,
                  metrics={"iteration": -1, "val_accuracy": val.accuracy, "test_accuracy": test.accuracy})
        return None

    def _train(self, t: int) -> dict[str, Any] | None:
        p, state = self.p, self.state
        rows = [(r["prompt"], r["target"]) for r in read_jsonl(self.it_dir(t) / "data.jsonl")]

        def on_step(step: int, total: int, loss: float, t: int = t) -> None:
            pause(p.step_delay_s)
            self.ctx.report(min(0.99, (t + 0.3 + 0.4 * step / total) / (self.total_its + 0.5)),
                            f"iteration {t}: training step {step}/{total}, loss {loss:.3f}")

        try:
            run_ = self.student.finetune(rows, self.it_dir(t), p.train, on_step=on_step,
                                         on_checkpoint=lambda s, n, t=t: self.save(
                                             f"iteration {t}: state at step {s}/{n}", 0.3 + 0.4 * s / n, step=s))
        except DivergedError as exc:  # earlier iterations' adapters and the last training state stay on disk
            raise DivergedError(f"iteration {t} training on {len(rows)} rows: {exc}; no student was written") from None
        state["train"] = {"steps": run_.steps, "rows": len(rows), "loss": run_.losses[-1]}
        state["phase"] = "eval"
        self.save(f"iteration {t}: trained {run_.steps} steps on {len(rows)} rows", 0.7)
        return None

    def _eval(self, t: int) -> dict[str, Any] | None:
        p, state, splits = self.p, self.state, self.splits
        self.student.use_adapter(self.it_dir(t) / "adapter")
        val, test = score(self.student, splits.val, p), score(self.student, splits.test, p)
        mix = Counter(strategy_of(o)[0] or "none" for o in test.outputs)
        record = {"iteration": t, "alpha": state["alpha"][str(t)], "val_accuracy": val.accuracy,
                  "test_accuracy": test.accuracy, "test_strategy_mix": dict(mix), **state.pop("train", {}),
                  "self_rows": state.pop("self_rows", 0), "teacher_rows": state.pop("teacher_rows", None),
                  "solved_train_questions": state.pop("solved", None)}
        atomic_write(self.it_dir(t) / "eval.json", json.dumps({"val": val.outputs, "test": test.outputs}))
        state["iterations"] = [r for r in state["iterations"] if r["iteration"] != t] + [record]
        state["phase"] = "sample" if t < p.iterations else "finalize"
        state["sampled"] = 0
        self.save(f"iteration {t}: α {record['alpha']:.2f}, val {val.accuracy:.1%}, test {test.accuracy:.1%}, "
                  f"strategies {dict(mix)}", 0.8, step=t,
                  metrics={"iteration": t, "alpha": record["alpha"], "val_accuracy": val.accuracy,
                           "test_accuracy": test.accuracy})
        return None

    def _sample(self, t: int) -> dict[str, Any] | None:
        p, state, splits = self.p, self.state, self.splits
        self.student.use_adapter(self.it_dir(t) / "adapter")
        path = self.it_dir(t) / "self.jsonl"
        got = read_jsonl(path)[: state.get("sampled_rows", 0)] if path.is_file() else []
        train = splits.train
        for start in range(state["sampled"], len(train), p.sample_chunk):
            chunk = train[start : start + p.sample_chunk]
            prompts = [i.prompt for i in chunk for _ in p.strategies]
            prefixes = [f"[{s}]:" for _ in chunk for s in p.strategies]
            outs = self.student.generate(prompts, n=p.samples, temperature=p.temperature, prefixes=prefixes,
                                         max_new_tokens=p.max_new_tokens, batch_size=p.eval_batch_size,
                                         seed=start)
            for k, texts in enumerate(outs):
                item = chunk[k // len(p.strategies)]
                for text in dict.fromkeys(texts):  # unique samples only
                    if is_correct(text, item):
                        got.append({"id": item.id, "target": text})
            write_jsonl(path, got)
            state["sampled"], state["sampled_rows"] = start + len(chunk), len(got)
            self.save(f"iteration {t + 1}: student sampled {state['sampled']}/{len(train)} questions", 0.9)
        solved = {g["id"] for g in got}
        teacher_rows = [r for r in read_jsonl(self.it_dir(0) / "data.jsonl") if r["id"] not in solved]
        data = [{"id": g["id"], "prompt": self.by_id[g["id"]].prompt, "target": g["target"], "from": "self"}
                for g in got] + teacher_rows
        if not data:
            raise ValueError("no training rows: the student solved nothing and the teacher data is empty")
        alpha = len(teacher_rows) / len(data)
        write_jsonl(self.it_dir(t + 1) / "data.jsonl", data)
        state["alpha"][str(t + 1)] = round(alpha, 4)
        state.update(it=t + 1, phase="train", self_rows=len(got), teacher_rows=len(teacher_rows),
                     solved=len(solved))
        self.save(f"iteration {t + 1}: {len(got)} self rows for {len(solved)} questions + {len(teacher_rows)} "
                  f"teacher rows: α = {alpha:.2f}", 0.0, step=t + 1,
                  metrics={"iteration": t + 1, "alpha": alpha, "self_rows": len(got)})
        return None

    def _finalize(self, t: int) -> dict[str, Any] | None:
        p, state, root, splits = self.p, self.state, self.root, self.splits
        its = sorted(state["iterations"], key=lambda r: r["iteration"])
        best = max(its, key=lambda r: (r["val_accuracy"], -r["iteration"]))
        self.student.use_adapter(self.it_dir(best["iteration"]) / "adapter")
        merged = root / "student" / "merged"
        self.student.save_merged(merged, metadata={"job": self.ctx.job_id, "kind": "siked", "base_rung": p.student,
                                                   "teacher": p.teacher, "iteration": best["iteration"]})
        shutil.rmtree(root / "student" / "adapter", ignore_errors=True)
        shutil.copytree(self.it_dir(best["iteration"]) / "adapter", root / "student" / "adapter")
        png = plot_rounds(root / "accuracy.png", f"SIKeD: {p.student} taught by {p.teacher}",
                          {"SIKeD, test": [(r["iteration"], r["test_accuracy"]) for r in its],
                           "SIKeD, val": [(r["iteration"], r["val_accuracy"]) for r in its],
                           "α (teacher share)": [(r["iteration"], r["alpha"]) for r in its]},
                          {"before distillation, test": state["baseline"]["test"]}
                          if state["baseline"]["test"] is not None else {}, xlabel="iteration")
        name = f"{p.student}-siked-{self.ctx.job_id[:8].lower()}".replace("_", "-")
        report = {"format": FORMAT, "teacher": p.teacher, "student": p.student,
                  "items": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
                  "teacher_kept_by_strategy": state.get("teacher_kept_by_strategy"),
                  "before": state["baseline"], "iterations": its, "best_iteration": best["iteration"],
                  "best": {"val_accuracy": best["val_accuracy"], "test_accuracy": best["test_accuracy"]},
                  "alpha_by_iteration": state["alpha"], "teacher_calls": state["teacher_calls"],
                  "teacher_cost_usd": state["teacher_cost_usd"],
                  "seconds": round(time.time() - state["started_at"], 1), "student_model": str(merged),
                  "student_rung": student_rung_spec(p, self.catalogue, merged, name)}
        write = self.ctx.write_artefact
        report["artefacts"] = {"report_json": str(write("report.json", json.dumps(report, indent=1))),
                               "plot_png": str(write("accuracy.png", png)),
                               "report_md": str(write("report.md", _markdown(report))),
                               "student_merged": str(merged)}
        state["phase"] = "done"
        self.save(f"done: iteration {best['iteration']} kept, test {best['test_accuracy']:.1%}", 1.0)
        return report


def run(params: SikedParams, ctx: JobContext) -> dict[str, Any]:
    return _Siked(params, ctx).run()


def _markdown(r: dict[str, Any]) -> str:
    out = [f"# SIKeD distillation: {r['student']} taught by {r['teacher']}", "",
           f"Teacher solutions kept per strategy: {r['teacher_kept_by_strategy']}. Before distillation: "
           + (f"val {100 * r['before']['val']:.1f}%, test {100 * r['before']['test']:.1f}%." if r["before"]["test"]
              is not None else "not scored."), "",
           "| iteration | α | train rows (self) | val | test | test strategy mix |", "|---:|---:|---:|---:|---:|---|"]
    for x in r["iterations"]:
        out.append(f"| {x['iteration']} | {x['alpha']:.2f} | {x.get('rows', '')} ({x.get('self_rows', 0)}) | "
                   f"{100 * x['val_accuracy']:.1f}% | {100 * x['test_accuracy']:.1f}% | {x['test_strategy_mix']} |")
    out += ["", f"Kept: iteration {r['best_iteration']}. Teacher: {r['teacher_calls']} calls, "
                f"${r['teacher_cost_usd']:.6f}.", "", "![accuracy by iteration](accuracy.png)"]
    return "\n".join(out) + "\n"


KIND = JobKind(
    name="siked",
    description="SIKeD distillation: cot/l2m/pot teacher data, student self-samples, adaptive mix (α logged)",
    params=SikedParams,
    run=run,
    prepare=prepare,
)

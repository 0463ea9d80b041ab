"""`undo`: UNDO distillation (docs/distillation.md) — the teacher refines its rationales where the student fails.

    R0 = {(q, T.solve(q)) : correct}                      round 0 = one-shot distillation
    S  = finetune(S0, R0); best = acc(S, val)
    for t in 1..rounds:
        E  = the current student's errors on the train items (none left: stop)
        for q in E: r = T.refine(q, its earlier rationales, the student's answer, score, similar val errors)
                    keep r only if its answer is correct; it replaces q's rationale in R_t
        S_t = finetune(S, refined rows + replay × as many rows of items S already answers)  (continued)
        acc = acc(S_t, val)
        if acc < best + min_gain: stop (converged; S_t is not kept)
        S, best = S_t, acc

Later rounds continue from the kept student (`continue_training`, the default) at `round_lr` (half of
train.lr) for `round_epochs`, on the refinements of its errors and a seeded replay of rows it already gets
right, so a round adds to what the student learnt instead of replacing it. With continue_training false,
every round retrains from the base weights on the whole set with refined rationales in place (the earlier
behaviour: a data set of the same size, as many steps). A round whose student is not better on validation
is not kept. The test items are scored after every round for the report; only validation decides.

Phases, each ending in a checkpoint (a redelivered job resumes at the phase and step it reached):
teacher (every `teacher_chunk` questions) → baseline → per round: train (a resumable LoRA state every
`train.checkpoint_every` steps) → eval → errors → refine (every `teacher_chunk` questions). Everything a
round used and produced stays under the job's artefact folder:

    rounds/<t>/data.jsonl     every train item's current rationale after round t's refinements (and history)
    rounds/<t>/train.jsonl    continued rounds: the rows round t trained on (refined + replayed)
    rounds/<t>/adapter/       the LoRA adapter of round t
    rounds/<t>/eval.json      val and test accuracy, and every answer the student gave
    rounds/<t>/errors.jsonl   the train items the round-t student got wrong (input of round t+1's refine)
    student/merged/           the chosen student, adapter merged: a transformers folder (backend hf)
    student/adapter/          its adapter
    report.json, report.md, accuracy.png   rounds, accuracy per round, teacher calls and cost
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from escalon.distill.jobs.base import JobContext, JobKind, TransientJobError, pause
from escalon.distill.jobs.distilling import (
    DistillParams,
    Scores,
    job_catalogue,
    load_splits,
    make_student,
    plot_rounds,
    prepare_distill,
    score,
    student_rung_spec,
)
from escalon.distill.training.data import Item, final_answer, is_correct, read_jsonl, write_jsonl
from escalon.distill.training.lora import DivergedError, TrainConfig
from escalon.distill.training.teachers import Teacher, make_teacher
from escalon.distill.jobs.undo_report import render_markdown
from escalon.files import atomic_write

FORMAT = "escalon.undo/v1"


class UndoParams(DistillParams):
    rounds: int = Field(default=3, ge=0, le=4, description="UNDO rounds after the one-shot round 0 (K ≤ 4)")
    min_gain: float = Field(default=0.005, ge=0, le=1, description="stop when validation gains less (0.005 = 0.5 pt)")
    similar_errors: int = Field(default=2, ge=0, le=10, description="similar validation errors shown per refine")
    refine_alternates: list[str] = Field(
        default_factory=list,
        description="replay teachers only: rungs whose recorded correct answers may stand in for a refinement",
    )
    continue_training: bool = Field(
        default=True,
        description="later rounds continue from the kept student on its refined errors plus a replay of rows it "
                    "answers (false: retrain from the base weights on the whole set, every round the same size)",
    )
    replay: float = Field(default=1.0, ge=0, le=10,
                          description="continued rounds: rows the student already answers, per refined row")
    round_lr: float | None = Field(default=None, gt=0, le=1,
                                   description="continued rounds: learning rate (default half of train.lr)")
    round_epochs: float = Field(default=2, gt=0, le=50, description="continued rounds: passes over the round's rows")


def prepare(params: UndoParams, data_dir: Path) -> UndoParams:
    params = prepare_distill(params, data_dir)
    if params.refine_alternates:
        catalogue = job_catalogue(params)
        for name in params.refine_alternates:
            catalogue.get(name, field="params.refine_alternates")
    return params


class _Undo:
    def __init__(self, params: UndoParams, ctx: JobContext) -> None:
        self.p = params
        self.ctx = ctx
        self.dir = ctx.artefact_dir
        self.catalogue = job_catalogue(params)
        self.splits = load_splits(params)
        self.by_id = {i.id: i for i in self.splits.train}
        self.student = make_student(params, self.catalogue)
        self._teacher: Teacher | None = None
        self.loaded: str | None = None  # which weights self.student holds: "base" or an adapter path
        state = ctx.load_checkpoint()
        if not state or state.get("fingerprint") != params.fingerprint():
            state = {"format": FORMAT, "fingerprint": params.fingerprint(), "phase": "teacher", "round": 0,
                     "teacher_done": 0, "refine_done": 0, "teacher_calls": 0, "teacher_cost_usd": 0.0,
                     "sources": {}, "rounds": [], "baseline": None, "best_round": None, "stop_reason": "",
                     "started_at": time.time()}
        self.state = state

    # ---- helpers -------------------------------------------------------------------------------------------

    @property
    def teacher(self) -> Teacher:
        if self._teacher is None:
            self._teacher = make_teacher(self.p.teacher, catalogue=self.catalogue,
                                         models_dir=Path(self.p.models_dir or "."),
                                         alternates=self.p.refine_alternates, threads=self.p.torch_threads,
                                         max_tokens=self.p.teacher_max_tokens)
        return self._teacher

    def rdir(self, t: int) -> Path:
        return self.dir / "rounds" / str(t)

    def progress(self, frac_in_round: float = 0.0) -> float:
        t = self.state["round"]
        return min(0.99, (t + frac_in_round) / (self.p.rounds + 1.5))

    def checkpoint(self, message: str, *, step: int | None = None, metrics: dict[str, Any] | None = None,
                   frac: float = 0.0) -> None:
        pause(self.p.step_delay_s)
        self.ctx.save_checkpoint(self.state, progress=self.progress(frac), message=message, step=step,
                                 metrics=metrics)

    def use(self, weights: str) -> None:
        if self.loaded == weights:
            return
        if weights == "base":
            self.student.use_base()
        else:
            self.student.use_adapter(Path(weights))
        self.loaded = weights

    def count(self, source: str, calls: int, cost: float) -> None:
        self.state["teacher_calls"] += calls
        self.state["teacher_cost_usd"] = round(self.state["teacher_cost_usd"] + cost, 8)
        key = source.split(":")[0] if source.startswith("program") else source
        self.state["sources"][key] = self.state["sources"].get(key, 0) + 1

    # ---- phases --------------------------------------------------------------------------------------------

    def teacher_phase(self) -> None:
        """R0: the teacher's rationale for every train item, kept when its final answer is right."""
        path = self.dir / "teacher.jsonl"
        done = read_jsonl(path) if path.is_file() else []
        done = done[: self.state["teacher_done"]]  # a row written after the last checkpoint is redone
        train = self.splits.train
        for start in range(len(done), len(train), self.p.teacher_chunk):
            for k, item in enumerate(train[start : start + self.p.teacher_chunk], start):
                answer = _asked(lambda item=item: self.teacher.solve(item, "cot"), "teacher", k, len(train),
                                 self.state["teacher_done"])
                self.count(answer.source, answer.calls, answer.cost_usd)
                done.append({"id": item.id, "text": answer.text, "correct": is_correct(answer.text, item),
                             "parsed": final_answer(answer.text, item.answer_type) is not None,
                             "source": answer.source, "cost_usd": answer.cost_usd})
            write_jsonl(path, done)
            self.state["teacher_done"] = len(done)
            self.checkpoint(f"teacher rationales {len(done)}/{len(train)}", frac=0.2 * len(done) / len(train))
        rows = [{"id": d["id"], "prompt": self.by_id[d["id"]].prompt, "target": d["text"], "source": d["source"],
                 "history": [d["text"]]} for d in done if d["correct"]]
        if not rows:
            unparsed = sum(not d.get("parsed", True) for d in done)
            raise ValueError(f"teacher phase: the teacher {self.p.teacher} answered none of the {len(train)} train "
                             f"items correctly ({unparsed} rationales had no parsable final answer, "
                             f"{len(done) - unparsed} a wrong one); nothing to distil, no student was written")
        write_jsonl(self.rdir(0) / "data.jsonl", rows)
        self.state["teacher_correct"] = len(rows)
        self.state["phase"] = "baseline"
        self.checkpoint(f"R0: {len(rows)} of {len(train)} teacher rationales correct", frac=0.2,
                        metrics={"teacher_correct": len(rows), "train_items": len(train),
                                 "teacher_calls": self.state["teacher_calls"]})

    def baseline_phase(self) -> None:
        if not self.p.score_baseline:
            self.state["baseline"] = {"val": {"accuracy": None}, "test": {"accuracy": None}}
            self.state["phase"] = "train"
            return
        self.use("base")
        here = (self.progress(0.2),) * 2
        val = score(self.student, self.splits.val, self.p, ctx=self.ctx, progress=here,
                    label="student before distillation (val)")
        test = score(self.student, self.splits.test, self.p, ctx=self.ctx, progress=here,
                     label="student before distillation (test)")
        self.state["baseline"] = {"val": val.brief(), "test": test.brief()}
        atomic_write(self.dir / "baseline.json", json.dumps({"val": _answers(self.splits.val, val),
                                                            "test": _answers(self.splits.test, test)}, indent=1))
        self.state["phase"] = "train"
        self.checkpoint(f"before distillation: val {val.accuracy:.1%}, test {test.accuracy:.1%}", frac=0.25,
                        metrics={"round": -1, "val_accuracy": val.accuracy, "test_accuracy": test.accuracy})

    def _round_training(self, t: int) -> tuple[list[tuple[str, str]], TrainConfig, Path | None]:
        """What round t trains on, with which settings, from which weights."""
        if t == 0 or not self.p.continue_training:
            return [(r["prompt"], r["target"]) for r in read_jsonl(self.rdir(t) / "data.jsonl")], self.p.train, None
        rows = [(r["prompt"], r["target"]) for r in read_jsonl(self.rdir(t) / "train.jsonl")]
        config = self.p.train.model_copy(update={"lr": self.p.round_lr or self.p.train.lr / 2,
                                                 "epochs": self.p.round_epochs, "seed": self.p.train.seed + t})
        return rows, config, self.rdir(self.state["best_round"]) / "adapter"

    def train_phase(self) -> None:
        t = self.state["round"]
        rows, config, init = self._round_training(t)
        if not rows:
            raise ValueError(f"round {t}: no training rows (0 refined rationales correct and nothing to replay)")

        def on_step(step: int, total: int, loss: float) -> None:
            pause(self.p.step_delay_s)
            self.ctx.report(self.progress(0.3 + 0.4 * step / total), f"round {t}: training step {step}/{total}, "
                                                                      f"loss {loss:.3f}")

        def on_checkpoint(step: int, total: int) -> None:
            self.state["train_step"] = step
            self.checkpoint(f"round {t}: training state saved at step {step}/{total}", step=step,
                            frac=0.3 + 0.4 * step / total, metrics={"round": t, "train_step": step})

        try:
            run = self.student.finetune(rows, self.rdir(t), config, on_step=on_step, on_checkpoint=on_checkpoint,
                                        init_adapter=init)
        except DivergedError as exc:  # the rounds before, their adapters and the last training state stay on disk
            kept = self.state["best_round"]
            raise DivergedError(f"round {t} training on {len(rows)} rows: {exc}; kept so far: "
                                f"{'none' if kept is None else f'round {kept}'}, no student was written") from None
        self.loaded = str(run.adapter_dir)
        self.state["train"] = {"round": t, "steps": run.steps, "rows": len(rows), "loss_first": run.losses[0],
                               "loss_last": run.losses[-1], "seconds": round(run.seconds, 1),
                               "resumed_from_step": run.resumed_from, "tokens": run.tokens}
        self.state.pop("train_step", None)
        self.state["phase"] = "eval"
        self.checkpoint(f"round {t}: trained {run.steps} steps on {len(rows)} rows (loss {run.losses[0]:.3f} → "
                        f"{run.losses[-1]:.3f})", frac=0.7,
                        metrics={"round": t, "steps": run.steps, "loss": run.losses[-1], "rows": len(rows)})

    def eval_phase(self) -> None:
        t = self.state["round"]
        self.use(str(self.rdir(t) / "adapter"))
        val = score(self.student, self.splits.val, self.p, ctx=self.ctx, progress=(self.progress(0.7),) * 2,
                    label=f"round {t}: scoring val")
        test = score(self.student, self.splits.test, self.p, ctx=self.ctx, progress=(self.progress(0.75),) * 2,
                     label=f"round {t}: scoring test")
        atomic_write(self.rdir(t) / "eval.json", json.dumps({"val": _answers(self.splits.val, val),
                                                            "test": _answers(self.splits.test, test)}, indent=1))
        train_info = self.state.pop("train", {})
        record = {"round": t, "val_accuracy": val.accuracy, "test_accuracy": test.accuracy, "val_n": val.n,
                  "test_n": test.n, "train_rows": train_info.get("rows"), "train_steps": train_info.get("steps"),
                  "loss_first": train_info.get("loss_first"), "loss_last": train_info.get("loss_last"),
                  "train_seconds": train_info.get("seconds"), "resumed_from_step": train_info.get("resumed_from_step"),
                  "teacher_calls_total": self.state["teacher_calls"],
                  "teacher_cost_usd_total": self.state["teacher_cost_usd"],
                  "refined": self.state.pop("refined", None), "refine_kept": self.state.pop("refine_kept", None),
                  "errors_refined_from": self.state.pop("errors_n", None)}
        self.state["rounds"] = [r for r in self.state["rounds"] if r["round"] != t] + [record]
        best = self.state["best_round"]
        best_val = None if best is None else self._round(best)["val_accuracy"]
        if best is None:
            self.state["best_round"] = t
            record["decision"] = "one-shot student"
        elif val.accuracy < best_val + self.p.min_gain:
            record["decision"] = (f"stop: val {val.accuracy:.1%} < best {best_val:.1%} + {self.p.min_gain:.1%} "
                                  "(converged; this round's student is not kept)")
            self.state["stop_reason"] = f"converged after round {t}"
        else:
            self.state["best_round"] = t
            record["decision"] = f"kept: val {val.accuracy:.1%} ≥ {best_val:.1%} + {self.p.min_gain:.1%}"
        if self.state["stop_reason"] or t >= self.p.rounds:
            self.state["stop_reason"] = self.state["stop_reason"] or f"ran all {self.p.rounds} rounds"
            self.state["phase"] = "finalize"
        else:
            self.state["phase"] = "errors"
        self.checkpoint(f"round {t}: val {val.accuracy:.1%}, test {test.accuracy:.1%}; {record['decision']}",
                        step=t, frac=0.8,
                        metrics={"round": t, "val_accuracy": val.accuracy, "test_accuracy": test.accuracy,
                                 "teacher_calls": self.state["teacher_calls"],
                                 "teacher_cost_usd": self.state["teacher_cost_usd"]})

    def errors_phase(self) -> None:
        t = self.state["round"]  # the best student is this round's (a round that did not improve stops)
        self.use(str(self.rdir(t) / "adapter"))
        train = self.splits.train
        scores = score(self.student, train, self.p, ctx=self.ctx, progress=(self.progress(0.85),) * 2,
                       label=f"round {t}: finding the student's errors on train")
        errors = [{"id": i.id, "student": out, "score": 0.0}
                  for i, out, ok in zip(train, scores.outputs, scores.correct, strict=True) if not ok]
        write_jsonl(self.rdir(t) / "errors.jsonl", errors)
        self._round(t)["train_accuracy"] = scores.accuracy
        self._round(t)["train_errors"] = len(errors)
        self.state["phase"] = "refine"
        if not errors:  # nothing left for the teacher to refine: the loop has converged
            self.state["phase"], self.state["stop_reason"] = "finalize", f"no train errors left after round {t}"
        self.state["refine_done"] = 0
        self.checkpoint(f"round {t}: {len(errors)} errors on {len(train)} train items", frac=0.9,
                        metrics={"round": t, "train_accuracy": scores.accuracy, "errors": len(errors)})

    def refine_phase(self) -> None:
        t = self.state["round"]
        errors = read_jsonl(self.rdir(t) / "errors.jsonl")
        rows = {r["id"]: r for r in read_jsonl(self.rdir(t) / "data.jsonl")}
        partial = self.rdir(t) / "refined.jsonl"
        refined = read_jsonl(partial)[: self.state["refine_done"]] if partial.is_file() else []
        val_errors = self._val_errors(t)
        for start in range(len(refined), len(errors), self.p.teacher_chunk):
            for k, err in enumerate(errors[start : start + self.p.teacher_chunk], start):
                item = self.by_id[err["id"]]
                previous = rows[item.id]["history"] if item.id in rows else self._teacher_history(item.id)
                similar = _similar(item, val_errors, self.p.similar_errors)
                answer = _asked(lambda item=item, previous=previous, err=err, similar=similar: self.teacher.refine(
                    item, previous, err["student"], err["score"], similar), f"round {t + 1} refine", k, len(errors),
                    self.state["refine_done"])
                self.count(answer.source, answer.calls, answer.cost_usd)
                refined.append({"id": item.id, "text": answer.text, "source": answer.source,
                                "correct": is_correct(answer.text, item), "cost_usd": answer.cost_usd})
            write_jsonl(partial, refined)
            self.state["refine_done"] = len(refined)
            self.checkpoint(f"round {t + 1}: refined {len(refined)}/{len(errors)} rationales", frac=0.95)
        kept = 0
        for r in refined:
            if not r["correct"]:
                continue
            kept += 1
            old = rows.get(r["id"])
            history = (old["history"] if old else self._teacher_history(r["id"])) + [r["text"]]
            rows[r["id"]] = {"id": r["id"], "prompt": self.by_id[r["id"]].prompt, "target": r["text"],
                             "source": r["source"], "history": history}
        write_jsonl(self.rdir(t + 1) / "data.jsonl", list(rows.values()))
        if self.p.continue_training:
            write_jsonl(self.rdir(t + 1) / "train.jsonl", self._continued_rows(rows, refined, errors))
        self.state.update(round=t + 1, phase="train", refined=len(refined), refine_kept=kept, errors_n=len(errors))
        self.checkpoint(f"round {t + 1}: {kept} of {len(refined)} refined rationales correct and used",
                        step=t + 1, frac=0.0, metrics={"round": t + 1, "refined": len(refined), "refine_kept": kept})

    def finalize_phase(self) -> dict[str, Any]:
        best = self.state["best_round"]
        adapter = self.rdir(best) / "adapter"
        self.use(str(adapter))
        merged = self.dir / "student" / "merged"
        meta = {"job": self.ctx.job_id, "kind": "undo", "base_rung": self.p.student, "teacher": self.p.teacher,
                "round": best, "data": self.p.data}
        self.student.save_merged(merged, metadata=meta)
        self.loaded = None
        shutil.rmtree(self.dir / "student" / "adapter", ignore_errors=True)
        shutil.copytree(adapter, self.dir / "student" / "adapter")
        report = self.report(merged)
        self.state["phase"] = "done"
        self.checkpoint(f"done: round {best} kept, test {self._round(best)['test_accuracy']:.1%}", frac=1.0)
        return report

    # ---- results -------------------------------------------------------------------------------------------

    def _continued_rows(self, rows: dict[str, dict[str, Any]], refined: list[dict[str, Any]],
                        errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A continued round's rows: every correct refinement, plus `replay` rows per refinement drawn (seeded)
        from the items the student already answers, with their current rationale, so it does not forget them."""
        fixed = [rows[r["id"]] for r in refined if r["correct"] and r["id"] in rows]
        wrong = {e["id"] for e in errors}
        solved = sorted((r for i, r in rows.items() if i not in wrong), key=lambda r: r["id"])
        random.Random(self.p.train.seed * 7919 + self.state["round"]).shuffle(solved)
        return fixed + solved[: round(self.p.replay * len(fixed))]

    def _round(self, t: int) -> dict[str, Any]:
        return next(r for r in self.state["rounds"] if r["round"] == t)

    def _val_errors(self, t: int) -> list[tuple[Item, str]]:
        path = self.rdir(t) / "eval.json"
        if not path.is_file():
            return []
        by_id = {i.id: i for i in self.splits.val}
        return [(by_id[a["id"]], a["output"]) for a in json.loads(path.read_text())["val"]
                if not a["correct"] and a["id"] in by_id]

    def _teacher_history(self, item_id: str) -> list[str]:
        path = self.dir / "teacher.jsonl"
        return [d["text"] for d in read_jsonl(path) if d["id"] == item_id] if path.is_file() else []

    def report(self, merged: Path) -> dict[str, Any]:
        s = self.state
        rounds = sorted(s["rounds"], key=lambda r: r["round"])
        one_shot = rounds[0]
        best = self._round(s["best_round"])
        base = s["baseline"]
        png = plot_rounds(
            self.dir / "accuracy.png",
            f"UNDO vs one-shot: {self.p.student} taught by {self.p.teacher}",
            {"UNDO, test": [(r["round"], r["test_accuracy"]) for r in rounds],
             "UNDO, val": [(r["round"], r["val_accuracy"]) for r in rounds]},
            {k: v for k, v in {"one-shot (round 0), test": one_shot["test_accuracy"],
                               "before distillation, test": base["test"]["accuracy"]}.items() if v is not None},
        )
        png_path = self.ctx.write_artefact("accuracy.png", png)
        name = f"{self.p.student}-undo-{self.ctx.job_id[:8].lower()}".replace("_", "-")
        report = {
            "format": FORMAT,
            "teacher": self.p.teacher,
            "student": self.p.student,
            "items": {"train": len(self.splits.train), "val": len(self.splits.val), "test": len(self.splits.test)},
            "teacher_correct": s.get("teacher_correct"),
            "before": {"val_accuracy": base["val"]["accuracy"], "test_accuracy": base["test"]["accuracy"]},
            "one_shot": {"val_accuracy": one_shot["val_accuracy"], "test_accuracy": one_shot["test_accuracy"]},
            "rounds": rounds,
            "best_round": s["best_round"],
            "best": {"val_accuracy": best["val_accuracy"], "test_accuracy": best["test_accuracy"]},
            "gain_over_one_shot_test": round(best["test_accuracy"] - one_shot["test_accuracy"], 4),
            "stop_reason": s["stop_reason"],
            "teacher_calls": s["teacher_calls"],
            "teacher_cost_usd": s["teacher_cost_usd"],
            "teacher_sources": s["sources"],
            "seconds": round(time.time() - s["started_at"], 1),
            "student_model": str(merged),
            "student_rung": student_rung_spec(self.p, self.catalogue, merged, name),
        }
        json_path = self.ctx.write_artefact("report.json", json.dumps(report, indent=1))
        md_path = self.ctx.write_artefact("report.md", render_markdown(report))
        report["artefacts"] = {"report_json": str(json_path), "report_md": str(md_path), "plot_png": str(png_path),
                               "student_merged": str(merged), "student_adapter": str(self.dir / "student" / "adapter"),
                               "rounds": str(self.dir / "rounds")}
        return report

    def run(self) -> dict[str, Any]:
        phases = {"teacher": self.teacher_phase, "baseline": self.baseline_phase, "train": self.train_phase,
                  "eval": self.eval_phase, "errors": self.errors_phase, "refine": self.refine_phase}
        try:
            while self.state["phase"] != "finalize":
                phases[self.state["phase"]]()
            return self.finalize_phase()
        finally:
            if self._teacher is not None:
                self._teacher.close()


def _asked(call: Any, step: str, k: int, n: int, saved: int) -> Any:
    """A teacher call; an outage or a timeout names the step, the item and what the last checkpoint kept."""
    try:
        return call()
    except (TransientJobError, TimeoutError) as exc:
        raise TransientJobError(f"{step}: teacher failed at item {k + 1} of {n} ({saved} answers saved at the "
                                f"last checkpoint; a retry resumes there): {exc}") from exc


def _answers(items: list[Item], scores: Scores) -> list[dict[str, Any]]:
    return [{"id": i.id, "output": o, "parsed": final_answer(o, i.answer_type), "gold": i.answer, "correct": c}
            for i, o, c in zip(items, scores.outputs, scores.correct, strict=True)]


def _similar(item: Item, val_errors: list[tuple[Item, str]], k: int) -> list[tuple[str, str]]:
    """Validation errors most like this question: same arithmetic template, else most shared words."""
    if not k or not val_errors:
        return []
    template = item.meta.get("arith", {}).get("template")
    words = set(item.prompt.lower().split())

    def key(pair: tuple[Item, str]) -> tuple[int, float]:
        other = pair[0]
        same = int(template is not None and other.meta.get("arith", {}).get("template") == template)
        ow = set(other.prompt.lower().split())
        return same, len(words & ow) / max(1, len(words | ow))

    return [(o.prompt, ans) for o, ans in sorted(val_errors, key=key, reverse=True)[:k]]


def run(params: UndoParams, ctx: JobContext) -> dict[str, Any]:
    return _Undo(params, ctx).run()


KIND = JobKind(
    name="undo",
    description="UNDO distillation: teacher rationales, LoRA student, teacher refines where the student fails",
    params=UndoParams,
    run=run,
    prepare=prepare,
)

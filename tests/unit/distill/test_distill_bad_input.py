"""Bad input to the distillation jobs: a teacher that times out or writes rationales without an answer, a
student whose loss turns NaN. Each fails with a message naming the step and the item counts, keeps what
was checkpointed, and leaves no merged student for the promote job to pick up. Also: UNDO's continued
rounds train on the refinements plus a replay, starting from the kept round's adapter weights.

The teachers here are stand-ins (a timeout or a nonsense answer cannot be had from program:arith on
demand); the NaN is injected into the real loss computation of a real LoRA run (a real divergence is not
reproducible in two steps). Everything else is the real job code on SmolLM2-135M.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from escalon.distill.jobs import LocalContext, TransientJobError, validate
from escalon.distill.jobs import undo as undo_module
from escalon.distill.training.data import read_jsonl
from escalon.distill.training.lora import DivergedError
from escalon.distill.training.teachers import ArithTeacher, TeacherAnswer
from escalon.errors import InvalidInput
from tests.unit.distill.conftest import TINY_TRAIN

pytestmark = pytest.mark.unit

TINY = {"limit_train": 4, "limit_val": 2, "limit_test": 2, "max_new_tokens": 8, "torch_threads": 1,
        "teacher_chunk": 2, "train": TINY_TRAIN}


def _undo(tmp_path: Path, data: Path, model_cache: Path, **extra):
    return validate("undo", {"teacher": "program:arith", "student": "smollm2-135m", "data": str(data),
                             "models_dir": str(model_cache), "rounds": 1, "min_gain": 0.0, **TINY, **extra}, tmp_path)


class _TimesOut(ArithTeacher):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def solve(self, item, strategy="cot"):
        self.calls += 1
        if self.calls > self.after:
            raise TimeoutError("no answer in 30 s")
        return super().solve(item, strategy)


class _Babbles(ArithTeacher):
    def solve(self, item, strategy="cot"):
        return TeacherAnswer("I think it is quite a lot, more or less.", source="teacher")


def test_a_teacher_timeout_names_the_step_and_item_and_resumes_from_the_saved_answers(
        tmp_path: Path, arith_data: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, params = _undo(tmp_path, arith_data, model_cache)
    monkeypatch.setattr(undo_module, "make_teacher", lambda *a, **k: _TimesOut(after=3))
    ctx = LocalContext(artefact_dir=tmp_path / "job")
    with pytest.raises(TransientJobError, match=r"teacher: teacher failed at item 4 of 4 \(2 answers saved"):
        kind.run(params, ctx)
    assert ctx.checkpoint["teacher_done"] == 2 and len(read_jsonl(tmp_path / "job" / "teacher.jsonl")) == 2
    assert not (tmp_path / "job" / "student").exists()


def test_unparsable_rationales_fail_the_job_with_the_counts(
        tmp_path: Path, arith_data: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, params = _undo(tmp_path, arith_data, model_cache)
    monkeypatch.setattr(undo_module, "make_teacher", lambda *a, **k: _Babbles())
    with pytest.raises(ValueError, match=r"teacher phase: .* none of the 4 train items correctly \(4 rationales "
                                         r"had no parsable final answer, 0 a wrong one\)"):
        kind.run(params, LocalContext(artefact_dir=tmp_path / "job"))
    assert not (tmp_path / "job" / "student").exists()


def test_a_nan_loss_fails_the_round_keeps_round_0_and_nothing_can_be_promoted(
        tmp_path: Path, arith_data: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, params = _undo(tmp_path, arith_data, model_cache)
    real = torch.nn.functional.cross_entropy
    poisoned = {"on": False}

    def cross_entropy(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss * float("nan") if poisoned["on"] else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)

    class PoisonsRound1(LocalContext):
        def save_checkpoint(self, state, **kw):
            super().save_checkpoint(state, **kw)
            poisoned["on"] = state.get("round") == 1 and state.get("phase") == "train"

    ctx = PoisonsRound1(artefact_dir=tmp_path / "job")
    with pytest.raises(DivergedError, match=r"round 1 training on \d+ rows: fine-tuning diverged: loss nan at step "
                                            r"1/\d+ .*kept so far: round 0, no student was written"):
        kind.run(params, ctx)
    job = tmp_path / "job"
    assert ctx.checkpoint["phase"] == "train" and ctx.checkpoint["round"] == 1  # a retry starts round 1 again
    assert (job / "rounds" / "0" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((job / "rounds" / "0" / "eval.json").read_text())["test"]
    assert not (job / "student").exists()
    promote = {"student": str(job / "student" / "merged"), "target": "smollm2-135m", "data": str(arith_data)}
    with pytest.raises(InvalidInput, match="no merged student model"):
        validate("promote", promote, tmp_path)


def test_continued_rounds_train_on_refinements_plus_replay_from_the_kept_adapter(
        tmp_path: Path, arith_data: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from escalon.distill.training import lora

    starts: list[Path | None] = []
    real = lora._load_adapter_weights

    def spy(model, adapter_dir):
        starts.append(adapter_dir)
        before = {k: v.clone() for k, v in model.named_parameters() if "lora_B" in k}
        real(model, adapter_dir)
        after = {k: v for k, v in model.named_parameters() if "lora_B" in k}
        assert any(not torch.equal(before[k], after[k]) for k in before)  # fresh lora_B is zero: weights arrived

    monkeypatch.setattr(lora, "_load_adapter_weights", spy)
    kind, params = _undo(tmp_path, arith_data, model_cache, replay=1.0)
    result = kind.run(params, LocalContext(artefact_dir=tmp_path / "job"))
    job = tmp_path / "job"
    assert starts == [job / "rounds" / "0" / "adapter"]
    r1 = {r["round"]: r for r in result["rounds"]}[1]
    rows = read_jsonl(job / "rounds" / "1" / "train.jsonl")
    solved = 4 - r1["errors_refined_from"]
    assert len(rows) == r1["refine_kept"] + min(r1["refine_kept"], solved) == r1["train_rows"]
    errors = {e["id"] for e in read_jsonl(job / "rounds" / "0" / "errors.jsonl")}
    assert sum(r["id"] in errors for r in rows) == r1["refine_kept"]
    assert all(len(r["history"]) == 2 for r in rows if r["id"] in errors)  # the refined rationale is the target

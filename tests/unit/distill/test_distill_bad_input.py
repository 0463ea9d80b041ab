"""Bad input to the distillation jobs: a teacher that times out or writes rationales without an answer, a
student whose loss turns NaN. Each fails with a message naming the step and the item counts, keeps what
was checkpointed, and leaves no merged student for the promote job to pick up.

The teachers here are stand-ins (a timeout or a nonsense answer cannot be had from program:arith on
demand); the NaN is injected into the real loss computation of a real LoRA run (a real divergence is not
reproducible in two steps). Everything else is the real job code on SmolLM2-135M. That a continued round
starts from the kept adapter is checked here on the weights themselves (lora.py's loader).
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


def test_continued_training_starts_from_the_saved_adapter_weights(tmp_path: Path, model_cache: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from escalon.distill.training.lora import StudentModel, TrainConfig, _load_adapter_weights
    from escalon.registry import load_catalogue

    student = StudentModel(load_catalogue().get("smollm2-135m"), models_dir=model_cache, threads=1)
    config = TrainConfig(**TINY_TRAIN)
    run = student.finetune([("What is 2 + 3?", "2 + 3 = 5. #### 5")] * 2, tmp_path / "r0", config)
    trained = {k: v.detach().clone() for k, v in student.model.named_parameters() if "lora_B" in k}
    fresh = get_peft_model(student._load_base(), LoraConfig(r=config.r, lora_alpha=config.alpha,
                                                            target_modules=config.target_modules))
    assert all(not v.any() for k, v in fresh.named_parameters() if "lora_B" in k)  # a new adapter starts at zero
    _load_adapter_weights(fresh, run.adapter_dir)
    loaded = dict(fresh.named_parameters())
    assert trained and all(torch.equal(loaded[k], v) for k, v in trained.items())
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        _load_adapter_weights(fresh, tmp_path)

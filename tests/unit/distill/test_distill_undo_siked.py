"""The distillation jobs on tiny data with real LoRA steps on SmolLM2-135M (a handful of steps, short answers):
the job logic, what every round keeps, resuming from a checkpoint, and the promotion decision."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from escalon.distill.jobs import JobCancelled, LocalContext, validate
from escalon.distill.training.data import by_split, read_items, read_jsonl
from escalon.registry import load_promoted, promoted_path
from tests.unit.distill.conftest import TINY_TRAIN

pytestmark = pytest.mark.unit

TINY = {"limit_train": 4, "limit_val": 2, "limit_test": 2, "max_new_tokens": 8, "torch_threads": 1,
        "teacher_chunk": 2, "train": TINY_TRAIN}


def _undo(tmp_path: Path, data: Path, model_cache: Path, **extra):
    return validate("undo", {"teacher": "program:arith", "student": "smollm2-135m", "data": str(data),
                             "models_dir": str(model_cache), "rounds": 1, "min_gain": 0.0, **TINY, **extra}, tmp_path)


def test_undo_runs_rounds_keeps_every_rounds_data_and_resumes_from_a_checkpoint(
        tmp_path: Path, arith_data: Path, model_cache: Path) -> None:
    kind, params = _undo(tmp_path, arith_data, model_cache)

    # A first attempt stops (as a killed worker would) right after round 1's first saved training state.
    class StopsMidTraining(LocalContext):
        def save_checkpoint(self, state, **kw):
            super().save_checkpoint(state, **kw)
            if state.get("round") == 1 and state.get("phase") == "train" and state.get("train_step") == 1:
                raise JobCancelled("worker lost")

    first = StopsMidTraining(artefact_dir=tmp_path / "job")
    with pytest.raises(JobCancelled):
        kind.run(params, first)
    assert (tmp_path / "job" / "rounds" / "1" / "state.json").is_file()
    assert first.checkpoint["teacher_calls"] == 4 + first.checkpoint["refine_done"]  # solve + refine calls

    second = LocalContext(artefact_dir=tmp_path / "job", checkpoint=first.checkpoint, attempt=2)
    result = kind.run(params, second)

    phases = [c["phase"] for c in second.checkpoints]
    assert "teacher" not in phases and "baseline" not in phases  # nothing before the checkpoint is redone
    rounds = {r["round"]: r for r in result["rounds"]}
    assert set(rounds) == {0, 1} and rounds[1]["resumed_from_step"] == 1 and rounds[0]["resumed_from_step"] == 0
    assert rounds[1]["refined"] == rounds[0]["train_errors"] and rounds[1]["refine_kept"] <= rounds[1]["refined"]
    assert result["teacher_calls"] == 4 + rounds[1]["refined"] and result["teacher_cost_usd"] == 0.0
    assert result["teacher_sources"]["program"] == result["teacher_calls"]
    assert 0 <= result["before"]["test_accuracy"] <= 1 and result["one_shot"] == {
        "val_accuracy": rounds[0]["val_accuracy"], "test_accuracy": rounds[0]["test_accuracy"]}

    job = tmp_path / "job"
    r0, r1 = read_jsonl(job / "rounds" / "0" / "data.jsonl"), read_jsonl(job / "rounds" / "1" / "data.jsonl")
    assert len(r0) == len(r1) == 4  # every item's current rationale, refined ones in place
    # Round 1 continued from round 0's adapter on the refinements plus one replayed solved row per refinement.
    trained = read_jsonl(job / "rounds" / "1" / "train.jsonl")
    errors = {e["id"] for e in read_jsonl(job / "rounds" / "0" / "errors.jsonl")}
    solved = 4 - len(errors)
    assert len(trained) == rounds[1]["refine_kept"] + min(rounds[1]["refine_kept"], solved) == rounds[1]["train_rows"]
    assert sum(r["id"] in errors for r in trained) == rounds[1]["refine_kept"]
    changed = [b for a, b in zip(r0, r1, strict=True) if a["target"] != b["target"]]
    assert len(changed) == rounds[1]["refine_kept"] and all(len(b["history"]) == 2 for b in changed)
    for t in (0, 1):
        assert (job / "rounds" / str(t) / "adapter" / "adapter_config.json").is_file()
        assert json.loads((job / "rounds" / str(t) / "eval.json").read_text())["test"]
    assert not list((job / "rounds" / "1").glob("state-*"))  # training states are dropped once a round is done
    merged = Path(result["student_model"])
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert json.loads((merged / "escalon-student.json").read_text())["base_rung"] == "smollm2-135m"
    assert result["student_rung"]["backend"] == "hf" and result["student_rung"]["model"] == str(merged)
    png = Path(result["artefacts"]["plot_png"]).read_bytes()
    assert png.startswith(b"\x89PNG")
    assert "UNDO round 1" in Path(result["artefacts"]["report_md"]).read_text()


def test_siked_mixes_teacher_and_self_generated_data_and_logs_alpha(
        tmp_path: Path, arith_data: Path, model_cache: Path) -> None:
    kind, params = validate("siked", {"teacher": "program:arith", "student": "smollm2-135m", "data": str(arith_data),
                                      "models_dir": str(model_cache), "iterations": 1, "samples": 2,
                                      "sample_chunk": 2, **{**TINY, "limit_train": 3}}, tmp_path)
    ctx = LocalContext(artefact_dir=tmp_path / "job")
    result = kind.run(params, ctx)
    assert result["teacher_kept_by_strategy"] == {"cot": 3, "l2m": 3, "pot": 3}
    teacher_rows = read_jsonl(tmp_path / "job" / "iterations" / "0" / "data.jsonl")
    assert {r["target"].split("]:")[0] for r in teacher_rows} == {"[cot", "[l2m", "[pot"}
    its = {r["iteration"]: r for r in result["iterations"]}
    assert its[0]["alpha"] == 1.0
    data1 = read_jsonl(tmp_path / "job" / "iterations" / "1" / "data.jsonl")
    teacher_share = sum(r["from"] == "teacher" for r in data1) / len(data1)
    assert its[1]["alpha"] == pytest.approx(teacher_share, abs=1e-3)
    assert result["alpha_by_iteration"] == {"0": 1.0, "1": its[1]["alpha"]}
    assert sum(its[1]["test_strategy_mix"].values()) == 2
    assert Path(result["artefacts"]["plot_png"]).read_bytes().startswith(b"\x89PNG")


def test_promotion_registers_a_student_only_when_it_wins(tmp_path: Path, arith_data: Path, model_cache: Path) -> None:
    from escalon.distill.training.lora import StudentModel
    from escalon.registry import load_catalogue

    # The decision, not the training, is under test here: the student is the base model's own folder (the
    # serving cache's safetensors copy); tests/integration/distill promotes a LoRA-trained one.
    StudentModel(load_catalogue().get("smollm2-135m"), models_dir=model_cache, threads=1).use_base()
    merged = model_cache / "smollm2-135m-instruct" / "hf"

    # A dear target rung that replays recorded answers to the test items: all wrong, or all right.
    test_items = by_split(read_items(arith_data))["test"][:3]
    catalogue = tmp_path / "catalogue.yaml"

    def target(correct: bool) -> None:
        pd.DataFrame([{"prompt_id": i.id, "task": "arith", "split": "test", "prompt": i.prompt, "model": "dear",
                       "response": f"#### {int(i.answer) + (0 if correct else 1)}", "score": float(correct),
                       "cost_usd": 0.01} for i in test_items]).to_parquet(tmp_path / "recorded.parquet")
        catalogue.write_text(load_catalogue().get("smollm2-135m").model_dump_json().join(["rungs: [", ","]) +
                             json.dumps({"name": "dear", "family": "x", "backend": "replay", "model": "dear",
                                         "benchmark": str(tmp_path / "recorded.parquet"),
                                         "price": {"input_per_1m": 10, "output_per_1m": 30}}) + "]")

    def promote(job_id: str) -> dict:
        kind, params = validate("promote", {"student": str(merged), "target": "dear", "data": str(arith_data),
                                            "base_rung": "smollm2-135m",
                                            "limit": 3, "margin": 0.0, "max_new_tokens": 8, "torch_threads": 1,
                                            "catalogue": str(catalogue), "models_dir": str(model_cache)}, tmp_path)
        return kind.run(params, LocalContext(artefact_dir=tmp_path / job_id, job_id=job_id))

    target(correct=True)
    lost = promote("lose")
    assert lost["decision"] == "rejected" and lost["target_scores"]["accuracy"] == 1.0
    assert not promoted_path(tmp_path).exists()

    target(correct=False)
    won = promote("win")
    assert won["decision"] == "promoted" and won["student"]["mean_cost_usd"] < won["target_scores"]["mean_cost_usd"]
    [rung] = load_promoted(promoted_path(tmp_path))
    assert rung.name == "smollm2-135m-distilled-win" and rung.backend == "hf" and rung.model == str(merged)
    profile = json.loads(Path(won["artefacts"]["profile"]).read_text())
    assert profile["format"] == "escalon.profile/v1" and set(profile["models"]) == {rung.name, "dear"}
    answers = pd.read_parquet(won["artefacts"]["answers"])
    assert len(answers) == 6 and set(answers.columns) >= {"prompt_id", "model", "response", "score", "cost_usd"}



def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_undo_fine_tunes_on_the_gpu(tmp_path: Path, arith_data: Path, model_cache: Path) -> None:
    kind, params = _undo(tmp_path, arith_data, model_cache, rounds=0, device="cuda")
    result = kind.run(params, LocalContext(artefact_dir=tmp_path / "job"))
    assert result["rounds"][0]["train_steps"] == 2 and (Path(result["student_model"]) / "config.json").is_file()


def test_an_interrupted_fine_tuning_resumes_exactly_where_it_stopped(tmp_path: Path, model_cache: Path) -> None:
    from escalon.distill.training import arith
    from escalon.distill.training.lora import StudentModel, TrainConfig
    from escalon.registry import load_catalogue

    rows = [(i["prompt"], arith.solve(i["meta"]["arith"])) for i in arith.generate(4, seed=3)]
    config = TrainConfig(max_steps=2, batch_size=2, checkpoint_every=1, r=4, alpha=8)
    student = StudentModel(load_catalogue().get("smollm2-135m"), models_dir=model_cache, threads=1)
    whole = student.finetune(rows, tmp_path / "whole", config)

    def killed(step: int, total: int) -> None:
        raise JobCancelled("worker lost")

    with pytest.raises(JobCancelled):
        student.finetune(rows, tmp_path / "cut", config, on_checkpoint=killed)
    resumed = student.finetune(rows, tmp_path / "cut", config)
    assert resumed.resumed_from == 1 and resumed.losses == whole.losses  # same batches, same dropout, same loss

    with pytest.raises(ValueError, match="train.max_len=16 is shorter than every prompt"):
        student.finetune(rows, tmp_path / "cut-short", config.model_copy(update={"max_len": 16}))

"""The `profile` job called directly (no Celery, no store): numbers against a hand computation, chunking,
checkpoint/resume, cancellation, and its failure messages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from escalon.distill.jobs import JobCancelled, LocalContext, validate
from escalon.distill.jobs.profile import pareto_frontier

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[3] / "shared" / "escalon" / "demo" / "gsm8k-sample.parquet"


def _run(benchmark: Path, tmp_path: Path, ctx: LocalContext | None = None, **params):
    kind, typed = validate("profile", {"benchmark": str(benchmark), **params}, tmp_path)
    ctx = ctx or LocalContext(artefact_dir=tmp_path / "out")
    return kind.run(typed, ctx), ctx


def _table(result: dict) -> dict:
    return json.loads(Path(result["artefacts"]["profile_json"]).read_text())


def test_numbers_match_a_hand_computation(tiny_benchmark: Path, tmp_path: Path) -> None:
    result, _ = _run(tiny_benchmark, tmp_path, min_rows=3)
    table = _table(result)
    cells = {(c["model"], c["task"]): c for c in table["cells"]}
    # test split only: a/t1 scores 1,0,1 at $0.1; a/t2 0,0 at $0.1,$0.2; b/t1 1,1,1 at $1; b/t2 1,0 at $1,$3
    assert cells["a", "t1"]["n"] == 3
    assert cells["a", "t1"]["accuracy"] == pytest.approx(2 / 3)
    assert cells["a", "t1"]["stderr"] == pytest.approx(1 / 3)  # sample sd sqrt(1/3), over sqrt(3)
    assert cells["a", "t1"]["mean_cost_usd"] == pytest.approx(0.1)
    assert cells["a", "t2"]["accuracy"] == 0.0
    assert cells["a", "t2"]["mean_cost_usd"] == pytest.approx(0.15)
    assert cells["a", "t2"]["cost_per_correct_usd"] is None  # nothing correct
    assert cells["b", "t1"]["accuracy"] == 1.0 and cells["b", "t1"]["stderr"] == 0.0
    assert cells["b", "t2"]["accuracy"] == 0.5 and cells["b", "t2"]["stderr"] == pytest.approx(0.5)
    assert cells["b", "t2"]["mean_cost_usd"] == pytest.approx(2.0)
    assert cells["b", "t2"]["total_cost_usd"] == pytest.approx(4.0)
    # fewer than min_rows=3 rows → sparse
    assert [k for k, c in cells.items() if c["sparse"]] == [("a", "t2"), ("b", "t2")]

    a, b = table["models"]["a"], table["models"]["b"]
    assert (a["n"], a["accuracy"], a["macro_accuracy"]) == (5, pytest.approx(0.4), pytest.approx(1 / 3))
    assert a["mean_cost_usd"] == pytest.approx(0.12) and a["cost_per_correct_usd"] == pytest.approx(0.3)
    assert (b["n"], b["accuracy"], b["macro_accuracy"]) == (5, pytest.approx(0.8), pytest.approx(0.75))
    assert b["mean_cost_usd"] == pytest.approx(1.4) and b["cost_per_correct_usd"] == pytest.approx(1.75)
    assert table["pareto"] == ["a", "b"] and a["pareto"] and b["pareto"]
    assert table["tasks"]["t1"]["best_model"] == "b" and table["tasks"]["t2"]["best_model"] == "b"
    assert table["rows"] == 10 and table["format"] == "escalon.profile/v1"

    assert result["best_model"] == {"model": "b", "accuracy": pytest.approx(0.8), "mean_cost_usd": pytest.approx(1.4)}
    assert result["cheapest_model"]["model"] == "a"
    assert result["per_model"]["a"]["accuracy"] == pytest.approx(0.4)
    counts = (result["rows"], result["models"], result["tasks"], result["cells"], result["sparse_cells"])
    assert counts == (10, 2, 2, 4, 2)


def test_tolerance_picks_the_cheapest_model_near_the_best(tiny_benchmark: Path, tmp_path: Path) -> None:
    table = _table(_run(tiny_benchmark, tmp_path, tolerance=0.4)[0])
    assert table["tasks"]["t1"]["best_model"] == "b"
    assert table["tasks"]["t1"]["near_best_model"] == "a"  # 0.667 is within 0.4 of 1.0, at a tenth of the cost
    assert table["tasks"]["t2"]["near_best_model"] == "b"  # 0.0 is not within 0.4 of 0.5


def test_split_and_filters(tiny_benchmark: Path, tmp_path: Path) -> None:
    train = _run(tiny_benchmark, tmp_path, split="train")[0]
    assert train["per_model"]["a"]["accuracy"] == 1.0 and train["per_model"]["b"]["accuracy"] == 0.0
    assert train["pareto"] == ["a"]  # b costs more and does worse: dominated
    everything = _run(tiny_benchmark, tmp_path, split="all")[0]
    assert everything["rows"] == 14 and everything["per_model"]["a"]["accuracy"] == pytest.approx(4 / 7)
    only_t2 = _run(tiny_benchmark, tmp_path, tasks=["t2"], models=["b"])[0]
    assert only_t2["rows"] == 2 and list(only_t2["per_model"]) == ["b"]


@pytest.mark.parametrize("chunk_rows", [1, 3, 5, 1000])
def test_chunk_size_does_not_change_the_table(tiny_benchmark: Path, tmp_path: Path, chunk_rows: int) -> None:
    reference = _table(_run(tiny_benchmark, tmp_path / "ref", chunk_rows=100)[0])
    result, ctx = _run(tiny_benchmark, tmp_path / "chunked", chunk_rows=chunk_rows)
    table = _table(result)
    for got, want in zip(table["cells"], reference["cells"], strict=True):
        assert got["model"] == want["model"] and got["task"] == want["task"] and got["n"] == want["n"]
        assert got["accuracy"] == pytest.approx(want["accuracy"])
        assert got["mean_cost_usd"] == pytest.approx(want["mean_cost_usd"])
    assert ctx.steps == list(range(math.ceil(14 / chunk_rows)))
    assert ctx.progress[-1][0] == 1.0


class _Killed(Exception):
    pass


class _DiesAfter(LocalContext):
    """A context whose worker 'dies' right after its k-th checkpoint is stored."""

    def __init__(self, k: int, **kw) -> None:
        super().__init__(**kw)
        self.k = k

    def save_checkpoint(self, state, **kw) -> None:
        super().save_checkpoint(state, **kw)
        if len(self.checkpoints) == self.k:
            raise _Killed


def test_resume_from_a_checkpoint_gives_the_same_result_without_redoing_chunks(tmp_path: Path) -> None:
    bench = DEMO
    whole, whole_ctx = _run(bench, tmp_path / "whole", chunk_rows=7)
    first = _DiesAfter(4, artefact_dir=tmp_path / "resumed")
    with pytest.raises(_Killed):
        _run(bench, tmp_path, ctx=first, chunk_rows=7)
    assert first.checkpoint["rows_done"] == 28 and not (tmp_path / "resumed" / "profile.json").exists()

    second = LocalContext(artefact_dir=tmp_path / "resumed", attempt=2, checkpoint=first.checkpoint)
    resumed, _ = _run(bench, tmp_path, ctx=second, chunk_rows=7)
    assert second.steps == list(range(4, 12))  # chunks 0-3 were not read again
    assert first.steps + second.steps == whole_ctx.steps
    assert _table(resumed)["cells"] == _table(whole)["cells"]  # bit for bit: same sums in the same order
    resumed.pop("artefacts"), whole.pop("artefacts")
    assert resumed == whole


def test_a_checkpoint_of_another_file_or_other_params_is_not_resumed(tmp_path: Path, make_benchmark) -> None:
    bench = make_benchmark(tmp_path / "b.parquet")
    first = _DiesAfter(2, artefact_dir=tmp_path / "o")
    with pytest.raises(_Killed):
        _run(bench, tmp_path, ctx=first, chunk_rows=3)
    stale = first.checkpoint
    # other chunk size: the checkpoint's row count means something else → start over
    ctx = LocalContext(artefact_dir=tmp_path / "o", checkpoint=stale)
    _run(bench, tmp_path, ctx=ctx, chunk_rows=4)
    assert ctx.steps[0] == 0
    # the file changed since the checkpoint → start over
    make_benchmark(bench, rows=[("p1", "t1", "test", "a", 1.0, 0.1)] * 9)
    ctx = LocalContext(artefact_dir=tmp_path / "o", checkpoint=stale)
    result, _ = _run(bench, tmp_path, ctx=ctx, chunk_rows=3)
    assert ctx.steps == [0, 1, 2] and result["rows"] == 9


def test_cancellation_is_noticed_at_the_next_checkpoint(tiny_benchmark: Path, tmp_path: Path) -> None:
    ctx = LocalContext(artefact_dir=tmp_path / "o", cancel_requested=True)
    with pytest.raises(JobCancelled):
        _run(tiny_benchmark, tmp_path, ctx=ctx, chunk_rows=2)
    assert ctx.steps == [0]
    assert not (tmp_path / "o" / "profile.json").exists()


def test_demo_sample_profile(tmp_path: Path) -> None:
    result, _ = _run(DEMO, tmp_path)
    per = result["per_model"]
    # ATTRIBUTION.md: 20 questions only GPT-4 solved, 15 both, 5 neither
    assert per["gpt-4-1106-preview"]["accuracy"] == pytest.approx(35 / 40)
    assert per["mistralai/Mixtral-8x7B-Instruct-v0.1"]["accuracy"] == pytest.approx(15 / 40)
    assert result["best_model"]["model"] == "gpt-4-1106-preview"
    assert result["cheapest_model"]["model"] == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    markdown = Path(result["artefacts"]["profile_md"]).read_text()
    assert "| gsm8k | 37.5% | 87.5% | gpt-4-1106-preview |" in markdown


def test_rows_outside_the_split_or_bad_scores_fail_clearly(tmp_path: Path, make_benchmark) -> None:
    bench = make_benchmark(tmp_path / "only_train.parquet", rows=[("p1", "t1", "train", "a", 1.0, 0.1)])
    with pytest.raises(ValueError, match=r"no rows .* split='test'"):
        _run(bench, tmp_path)
    bad = make_benchmark(tmp_path / "bad.parquet", rows=[("p1", "t1", "test", "a", 3.0, 0.1)])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        _run(bad, tmp_path)


def test_artefacts_are_written_whole(tiny_benchmark: Path, tmp_path: Path) -> None:
    result, _ = _run(tiny_benchmark, tmp_path)
    out = Path(result["artefacts"]["profile_json"]).parent
    assert sorted(p.name for p in out.iterdir()) == ["profile.json", "profile.md"]  # no temp files left


def test_pareto_frontier_orders_cheapest_first_and_drops_dominated_models() -> None:
    points = {"dear-good": (5.0, 0.9), "cheap-bad": (0.1, 0.3), "mid-worse": (1.0, 0.2), "free-unknown": (None, 0.95)}
    assert pareto_frontier(points) == ["cheap-bad", "dear-good", "free-unknown"]

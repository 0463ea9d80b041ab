"""The `evaluate` job called directly: policies against a hand computation, fit vs evaluated split, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from escalon.distill.jobs import LocalContext, validate

pytestmark = pytest.mark.unit


def _run(benchmark: Path, tmp_path: Path, ctx: LocalContext | None = None, **params):
    kind, typed = validate("evaluate", {"benchmark": str(benchmark), **params}, tmp_path)
    ctx = ctx or LocalContext(artefact_dir=tmp_path / "out")
    return kind.run(typed, ctx), ctx


def test_policies_match_a_hand_computation(tiny_benchmark: Path, tmp_path: Path) -> None:
    # Fit on the test rows themselves: a = 0.4 accuracy at $0.12, b = 0.8 at $1.4; per task a 2/3 and 0,
    # b 1 and 1/2. Queries p1..p5 (a, b): (1, 1) (0, 1) (1, 1) on t1; (0, 1) (0, 0) on t2.
    result, ctx = _run(tiny_benchmark, tmp_path, fit_split="same", thresholds=[0.5, 0.9])
    p = result["policies"]
    assert p["single:a"] == {"accuracy": pytest.approx(0.4), "mean_cost_usd": pytest.approx(0.12), "calls_per_query": 1}
    assert p["single:b"]["accuracy"] == pytest.approx(0.8) and p["single:b"]["mean_cost_usd"] == pytest.approx(1.4)
    assert result["best_single"]["model"] == "b" and p["best_single"] == p["single:b"]
    # oracle: a on p1, p3 and p5 (nobody right, a cheapest), b on p2, p4: 4/5 right, $2.4 / 5
    assert p["oracle"]["accuracy"] == pytest.approx(0.8) and p["oracle"]["mean_cost_usd"] == pytest.approx(0.48)
    # τ = 0.5: t1 → a (2/3 ≥ .5), t2 → b; τ = 0.9: t1 → b, t2 → nobody reaches it → the most accurate, b
    assert p["route@0.5"]["accuracy"] == pytest.approx(0.6) and p["route@0.5"]["mean_cost_usd"] == pytest.approx(0.86)
    assert p["route@0.9"]["accuracy"] == pytest.approx(0.8) and p["route@0.9"]["mean_cost_usd"] == pytest.approx(1.4)
    # a then b: p1, p3 stop at a ($0.1); p2, p4 climb ($1.1); p5 climbs and keeps b's wrong answer ($3.2)
    cascade = p["verified_cascade"]
    assert cascade["accuracy"] == pytest.approx(0.8)
    assert cascade["mean_cost_usd"] == pytest.approx(1.12) and cascade["calls_per_query"] == pytest.approx(1.6)
    match = result["cheapest_matching_best_single"]
    assert match["policy"] == "verified_cascade" and match["cost_vs_best_single"] == pytest.approx(0.8)
    assert result["in_sample"] is True and result["queries"] == 5 and ctx.steps == [0, 1]
    report = json.loads(Path(result["artefacts"]["evaluation_json"]).read_text())
    assert report["format"] == "escalon.evaluation/v1" and report["ladder"] == ["a", "b"]
    assert "optimistic" in Path(result["artefacts"]["evaluation_md"]).read_text()


def test_choices_are_fit_on_train_and_scored_on_test(tiny_benchmark: Path, tmp_path: Path) -> None:
    # On train a is always right and b always wrong: the fit picks a everywhere, and test shows what that costs.
    result, _ = _run(tiny_benchmark, tmp_path)
    p = result["policies"]
    assert result["best_single"]["model"] == "a" and p["best_single"]["accuracy"] == pytest.approx(0.4)
    assert all(p[f"route@{t:g}"] == p["single:a"] for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95))
    assert p["verified_cascade"]["calls_per_query"] == 1  # b is dominated on train: not on the ladder
    assert result["in_sample"] is False


def test_resume_after_a_task(tiny_benchmark: Path, tmp_path: Path) -> None:
    whole, _ = _run(tiny_benchmark, tmp_path / "a", fit_split="same")

    class Dies(LocalContext):
        def save_checkpoint(self, state, **kw):
            super().save_checkpoint(state, **kw)
            raise KeyboardInterrupt

    first = Dies(artefact_dir=tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_benchmark, tmp_path, ctx=first, fit_split="same")
    second = LocalContext(artefact_dir=tmp_path / "b", checkpoint=first.checkpoint, attempt=2)
    resumed, _ = _run(tiny_benchmark, tmp_path, ctx=second, fit_split="same")
    assert first.steps == [0] and second.steps == [1]
    assert resumed["policies"] == whole["policies"]


def test_bad_thresholds_and_missing_fit_rows(tiny_benchmark: Path, tmp_path: Path, make_benchmark) -> None:
    from escalon.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:
        validate("evaluate", {"benchmark": str(tiny_benchmark), "thresholds": [0.5, 1.5]}, tmp_path)
    assert err.value.field == "params.thresholds"
    test_only = make_benchmark(tmp_path / "t.parquet", rows=[("p", "t", "test", "a", 1.0, 0.1)])
    with pytest.raises(ValueError, match="fit_split='same'"):
        _run(test_only, tmp_path)

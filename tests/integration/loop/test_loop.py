"""`escalon loop` end to end, small: real servers on free ports (serving with two replay rungs and, once promoted,
the student; the judge; the router with its route log on SQLite or a throwaway PostgreSQL database), the real
harvest, undo, promote job kinds, and the figures read back from the route log.

Kept small to fit about a minute on two cores, and honest about what that costs: the task is generated arithmetic
(escalon.distill.training.arith) and the two replay rungs answer from recordings made for this test, both right
(`cheap` tersely, `dear` with its working), so that — as on the demo's recordings — the cheap rung's lone sample is
not trusted, the dear rung agrees with it across families and is accepted, and the harvest has labels. The student
is SmolLM2-135M really fine-tuned, for 1 LoRA step: far too few to learn the task, so it answers wrong; it is
promoted only because the test allows the whole margin (margin 1.0: cheaper is enough). What is checked is the
loop's machinery and its arithmetic, not that distillation helps: that the traffic is in the database, the
student is promoted and takes part in fresh routes without a restart, and every printed figure is what the route log's rows say."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from escalon.distill.jobs import LocalContext, validate
from escalon.distill.training.data import read_items
from escalon.offline.loop import LoopConfig, read_routes, render, run_loop
from escalon.registry import load_catalogue
from tests.integration.tenancy.stack import database_url  # noqa: F401 - the fixture: SQLite and PostgreSQL

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("ESCALON_MODEL_CACHE")
    return Path(cache) if cache else tmp_path_factory.getbasetemp() / "serving-models"


@pytest.fixture
def arith_bench(tmp_path: Path) -> tuple[Path, Path]:
    """A routing-format benchmark of arithmetic items (both rungs right) and a catalogue of the two
    replay rungs and the student's base."""
    kind, params = validate("harvest", {"source": "synthetic:arith", "n": 24, "seed": 5}, tmp_path)
    items = read_items(kind.run(params, LocalContext(artefact_dir=tmp_path / "synth"))["artefacts"]["dataset"])
    rows = []
    for i in items[:14]:
        rows.append({"prompt_id": i.id, "task": "arith", "split": "test", "prompt": i.prompt, "model": "cheap-model",
                     "response": f"#### {i.answer}", "score": 1.0, "cost_usd": 0.0002})
        rows.append({"prompt_id": i.id, "task": "arith", "split": "test", "prompt": i.prompt, "model": "dear-model",
                     "response": f"The answer is {i.answer}.\n#### {i.answer}", "score": 1.0, "cost_usd": 0.004})
    bench = tmp_path / "arith-bench.parquet"
    pd.DataFrame(rows).to_parquet(bench)
    smollm = load_catalogue().get("smollm2-135m").model_dump(mode="json", exclude_none=True)
    rungs = [smollm,
             {"name": "cheap", "family": "cheap", "backend": "replay", "model": "cheap-model", "benchmark": str(bench),
              "price": {"input_per_1m": 1.0, "output_per_1m": 1.0}},
             {"name": "dear", "family": "dear", "backend": "replay", "model": "dear-model", "benchmark": str(bench),
              "price": {"input_per_1m": 10.0, "output_per_1m": 30.0}}]
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump({"rungs": rungs}))
    return bench, catalogue


async def test_the_loop_promotes_a_student_that_then_takes_part_in_fresh_traffic(
        tmp_path: Path, database_url: str, model_cache: Path, arith_bench: tuple[Path, Path],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    bench, catalogue = arith_bench
    monkeypatch.setenv("ESCALON_DISTILL_INPUT_DIRS", os.pathsep.join([str(tmp_path), str(model_cache)]))
    cfg = LoopConfig(data_dir=tmp_path / "data", database_url=database_url, benchmark=bench, catalogue=catalogue,
                     rungs=("cheap", "dear"), student="smollm2-135m", teacher="dear", target="cheap",
                     name="arith-student", fresh_share=0.3, train_steps=1, margin=1.0, max_tokens=8,
                     local_samples=2, torch_threads=1, model_cache=model_cache, eval_limit=2)
    lines: list[str] = []
    report = await run_loop(cfg, say=lines.append)

    assert report["prompts"] == {"traffic": 10, "fresh": 4}
    assert report["steps"]["harvest"]["items"] > 0
    assert report["steps"]["promote"]["decision"] == "promoted", report["steps"]["promote"]["reason"]
    f = report["figures"]
    assert f["logged_pairs"] == 4 and f["fresh_routes"] == 4
    assert "arith-student" not in f["answered_by"]["baseline"]
    assert f["student_tried"] == 4  # the cheapest rung now: tried first on every fresh route, no restart
    assert f["student_share"] == f["student_answered"] / 4

    # The figures are the route log's: recompute the costs from the database's rows.
    routes = read_routes(cfg, since=pd.Timestamp("2000-01-01", tz="UTC").to_pydatetime())
    before = [routes[r]["total_cost_usd"] for r in routes if r.startswith("loop-b0-")]
    after = [routes[r]["total_cost_usd"] for r in routes if r.startswith("loop-b-")]
    assert len(before) == len(after) == 4 and len([r for r in routes if r.startswith("loop-a-")]) == 10
    assert f["cost_per_1000_usd"]["baseline"] == pytest.approx(sum(before) / 4 * 1000)
    assert f["cost_per_1000_usd"]["saved"] == pytest.approx((sum(before) - sum(after)) / 4 * 1000)
    assert all(routes[r]["prompt"] for r in routes)  # prompts stored: the loop opts in
    printed = render(report)
    assert "share answered by the student arith-student:" in printed and "saved $" in printed

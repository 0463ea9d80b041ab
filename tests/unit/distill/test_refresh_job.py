"""The `refresh` job: a router artefact's success estimates re-fitted from judged outcomes in the route log,
written as a new version that a running router's LiveArtefact picks up."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sqlalchemy import insert

from escalon.db.engine import ready_database
from escalon.db.models import Route
from escalon.distill.jobs import LocalContext, validate
from escalon.errors import InvalidInput
from escalon.offline.evaluation.evaluation import evaluate
from escalon.offline.evaluation.synthetic import write_synthetic
from escalon.router.artefact import LiveArtefact, load_artefact
from escalon.router.embedding import HashingEncoder
from escalon.router.taxonomy import COMPLEXITY
from tests.unit.shared.test_route_log_db import row

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refresh")
    path = write_synthetic(folder / "benchmark.parquet", n=120)
    evaluate(path, encoder=HashingEncoder.name, cache_dir=None, artefact_dir=folder / "artefact",
             policies=["single", "hybrid"])
    return folder / "artefact"


def _route(i: int, task: str, cx: str, rung: str, confidence: float) -> dict:
    labels = [{"dimension": "task_type", "label": task, "probability": 0.9},
              {"dimension": "complexity", "label": cx, "probability": 0.8}]
    return row(i, plan={"rungs": [rung], "labels": labels}, task=task,
               attempts=[{"rung": rung, "samples": 1, "confidence": confidence, "accepted": confidence > 0.7}])


def test_judged_outcomes_move_the_cells_they_cover_and_no_other(artefact, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(artefact, data / "artefact")
    url = f"sqlite:///{data / 'escalon.sqlite'}"
    monkeypatch.setenv("ESCALON_DATABASE_URL", url)
    before = load_artefact(data / "artefact")
    profile = before.model.profile
    task, rung = profile.tasks[0], profile.rungs[0]
    t, k, r = 0, 1, 0
    old_acc, old_count = float(profile.acc[t, k, r]), int(profile.count[t, k, r])
    rows = [_route(i, task, COMPLEXITY[k], rung, 0.25) for i in range(30)]
    rows += [_route(100 + i, task, COMPLEXITY[2], rung, 0.9) for i in range(5)]  # under min_rows: unchanged
    rows += [_route(200, "no-such-task", "low", rung, 0.9)]
    engine = ready_database(url)
    with engine.begin() as conn:
        conn.execute(insert(Route), rows)
    live = LiveArtefact(data / "artefact", check_interval_s=0.0)
    kind, params = validate("refresh", {"artefact": "artefact", "since": "1d", "min_rows": 20}, data)
    result = kind.run(params, LocalContext(artefact_dir=tmp_path / "job"))
    assert result["cells_refitted"] == 1 and result["outcomes"] == 35 and result["version"] != before.version
    assert result["skipped"] == {"no taxonomy label the artefact knows": 1}
    after = load_artefact(data / "artefact").model.profile
    expected = (old_count * old_acc + 30 * 0.25) / (old_count + 30)
    assert after.acc[t, k, r] == pytest.approx(expected) and after.count[t, k, r] == old_count + 30
    untouched = np.ones_like(after.acc, dtype=bool)
    untouched[t, k, r] = False
    assert np.array_equal(after.acc[untouched], profile.acc[untouched])
    assert live.current().version == result["version"]  # the running router's view swaps to it
    with pytest.raises(InvalidInput, match="no router artefact"):
        validate("refresh", {"artefact": "nowhere"}, data)

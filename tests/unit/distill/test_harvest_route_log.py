"""The harvest job's `source: route_log`: items from the router's route log in the database, within a window
and a task, only from routes whose prompt was stored; and the route log's pruning task."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import insert

from escalon.db.engine import ready_database
from escalon.db.models import Route
from escalon.distill.jobs import LocalContext, validate
from escalon.distill.training.data import read_items
from escalon.errors import InvalidInput
from tests.unit.shared.test_route_log_db import row

pytestmark = pytest.mark.unit
UTC = dt.UTC


def _attempts(cheap_ok: bool, dear_conf: float) -> list[dict]:
    return [{"rung": "smollm2-135m", "samples": 3, "answer": "7", "parsed_answer": "7", "confidence": 0.3,
             "accepted": cheap_ok},
            {"rung": "gpt-4", "samples": 1, "answer": "so 8", "parsed_answer": "8", "confidence": dear_conf,
             "accepted": dear_conf >= 0.7}]


def test_harvest_reads_the_route_log_in_the_database(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'escalon.sqlite'}"
    monkeypatch.setenv("ESCALON_DATABASE_URL", url)
    now = dt.datetime.now(UTC)
    rows = [
        row(1, prompt="How many boxes? 64 bars", task="math", attempts=_attempts(False, 0.95)),
        row(2, prompt=None, task="math", attempts=_attempts(False, 0.95)),  # not opted in: no text to learn from
        row(3, prompt="Cheap was right", task="math", attempts=_attempts(True, 0.95)),
        row(4, prompt="Other task", task="code", attempts=_attempts(False, 0.95)),
        row(5, prompt="Too old", task="math", attempts=_attempts(False, 0.95), when=now - dt.timedelta(days=9)),
        row(6, prompt="Refused", task="math", attempts=[], status="RESOURCE_EXHAUSTED"),
    ]
    engine = ready_database(url)
    with engine.begin() as conn:
        conn.execute(insert(Route), rows)
    kind, params = validate("harvest", {"source": "route_log", "since": "7d", "task": "math",
                                        "min_confidence": 0.9}, tmp_path)
    assert dt.datetime.fromisoformat(params.since) < now  # fixed at submit: a retried job reads the same window
    result = kind.run(params, LocalContext(artefact_dir=tmp_path / "h"))
    [item] = read_items(result["artefacts"]["dataset"])
    assert item.prompt == "How many boxes? 64 bars" and item.answer == "8" and item.meta["request_id"] == "r1"
    assert item.source.startswith("route_log:") and item.meta["label_rung"] == "gpt-4"
    assert result["dropped"] == {"prompt not stored (ESCALON_ROUTE_LOG_PROMPTS off)": 1, "no cheap rung failed": 1}
    with pytest.raises(InvalidInput, match="is not a time"):
        validate("harvest", {"source": "route_log", "since": "last tuesday"}, tmp_path)


def test_the_prune_task_deletes_what_is_past_retention(tmp_path, monkeypatch):
    from escalon.config import load_settings
    from escalon.db.settings import DatabaseSettings
    from escalon.distill.maintenance import prune_route_log

    url = f"sqlite:///{tmp_path / 'escalon.sqlite'}"
    monkeypatch.setenv("ESCALON_DATABASE_URL", url)
    monkeypatch.setenv("ESCALON_ROUTE_LOG_RETENTION_DAYS", "5")
    engine = ready_database(url)
    now = dt.datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(Route), [row(1, when=now - dt.timedelta(days=6)), row(2, when=now)])
    assert prune_route_log(load_settings(DatabaseSettings)) == {"deleted": 1, "retention_days": 5.0}

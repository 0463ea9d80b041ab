"""`escalon routes` and `escalon keys` from the command line, against a SQLite database in a temporary data dir:
the key is shown once and stored hashed, bad keys and bad filters exit 2 with the reason, exports are files
`escalon eval` can read, an empty window writes an empty file and says so."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from sqlalchemy import insert, text

from escalon.cli import main
from escalon.db.engine import ready_database
from escalon.db.models import Route
from tests.unit.shared.test_route_log_db import row

pytestmark = pytest.mark.unit


def escalon(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out, err = capsys.readouterr()
    return done.value.code or 0, out, err


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("ESCALON_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ESCALON_DATABASE_URL", raising=False)
    return tmp_path


def test_keys_are_shown_once_stored_hashed_listed_and_revoked(data, capsys):
    code, out, _ = escalon(capsys, "keys", "create", "--tenant", "acme", "--budget-day", "2", "--rate-limit",
                           "5/second", "--rungs", "gpt-4", "--json")
    assert code == 0
    created = json.loads(out)
    key = created["key"]
    assert key.startswith(f"esk_{created['key_id']}_") and created["allowed_rungs"] == ["gpt-4"]
    engine = ready_database(f"sqlite:///{data / 'escalon.sqlite'}")
    with engine.connect() as conn:
        stored = " ".join(str(v) for v in conn.execute(text("SELECT * FROM api_keys")).one())
    assert key.split("_", 2)[2] not in stored  # only the salted hash
    code, out, _ = escalon(capsys, "keys", "list")
    assert code == 0 and created["key_id"] in out and "0.0000/2" in out and "5/second" in out
    assert escalon(capsys, "keys", "revoke", key)[0] == 0
    assert created["key_id"] not in escalon(capsys, "keys", "list")[1]
    assert "REVOKED" in escalon(capsys, "keys", "list", "--all")[1]


@pytest.mark.parametrize("argv, reason", [
    (["--budget-day", "0"], "budget_day_usd: a budget must be above 0"),
    (["--budget-month", "-3"], "budget_month_usd: a budget must be above 0"),
    (["--rungs", "gpt-9"], "allowed_rungs: unknown rung(s) gpt-9"),
    (["--operating-points", "cheapest"], "allowed_operating_points: unknown operating point(s) cheapest"),
    (["--rate-limit", "lots"], "rate_limit: 'lots' is not a rate limit"),
])
def test_keys_that_cannot_work_are_refused_with_the_reason(data, capsys, argv, reason):
    code, _, err = escalon(capsys, "keys", "create", "--tenant", "acme", *argv)
    assert code == 2 and reason in err


def test_routes_list_show_and_export(data, capsys):
    engine = ready_database(f"sqlite:///{data / 'escalon.sqlite'}")
    attempts = [{"rung": "mixtral-8x7b", "samples": 1, "answer": "7", "confidence": 0.3, "cost_usd": 1e-5},
                {"rung": "gpt-4", "samples": 1, "answer": "8", "confidence": 0.9, "cost_usd": 3e-3}]
    with engine.begin() as conn:
        conn.execute(insert(Route), [row(1, prompt="How many?", task="gsm8k", rung="gpt-4", attempts=attempts,
                                         tenant="acme"),
                                     row(2, prompt=None, task="gsm8k", rung="gpt-4", attempts=attempts)])
    code, out, _ = escalon(capsys, "routes", "list", "--since", "1h", "--tenant", "acme")
    assert code == 0 and "acme" in out and "mixtral-8x7b>gpt-4" in out and out.count("\n") == 2
    code, out, _ = escalon(capsys, "routes", "show", "r1")
    assert code == 0 and json.loads(out)["prompt"] == "How many?"
    parquet = data / "out" / "traffic.parquet"
    code, out, _ = escalon(capsys, "routes", "export", "--since", "1d", "--out", str(parquet))
    assert code == 0 and "2 rows from 1 routes" in out and "1 routes left out" in out
    frame = pd.read_parquet(parquet)
    assert list(frame.columns) == ["prompt_id", "task", "split", "prompt", "model", "response", "score", "cost_usd"]
    assert sorted(frame["model"]) == ["gpt-4", "mixtral-8x7b"] and set(frame["score"]) == {0.3, 0.9}
    code, out, _ = escalon(capsys, "routes", "export", "--out", str(data / "all.jsonl"))
    assert code == 0 and "2 routes written" in out and len((data / "all.jsonl").read_text().splitlines()) == 2


def test_bad_filters_and_empty_windows(data, capsys):
    code, _, err = escalon(capsys, "routes", "list", "--since", "last week")
    assert code == 2 and "since: 'last week' is not a time" in err
    code, _, err = escalon(capsys, "routes", "export", "--since", "1h", "--until", "2h", "--out", str(data / "x.jsonl"))
    assert code == 2 and "must come before" in err and not (data / "x.jsonl").exists()
    code, out, _ = escalon(capsys, "routes", "export", "--since", "1h", "--out", str(data / "empty.parquet"))
    assert code == 0 and "no routes with stored prompts in that window" in out
    assert len(pd.read_parquet(data / "empty.parquet")) == 0
    code, out, _ = escalon(capsys, "routes", "export", "--since", "1h", "--out", str(data / "empty.jsonl"))
    assert code == 0 and "is empty" in out and (data / "empty.jsonl").read_text() == ""
    code, _, err = escalon(capsys, "routes", "show", "nope")
    assert code == 2 and "no route with id or request id 'nope'" in err

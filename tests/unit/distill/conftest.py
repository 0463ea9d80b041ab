"""Fixtures for the distill unit tests: tiny benchmark files and job stores on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd
import pytest

from escalon.distill.store import JobStore

PG_URL = os.environ.get("ESCALON_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# A benchmark small enough to profile by hand (see test_distill_profile.py for the expected numbers).
# Model "a" is cheap, "b" dear; two tasks; the train rows must not count when profiling the test split.
# fmt: off
TINY_ROWS = [
    # prompt_id, task, split, model, score, cost_usd
    ("p1", "t1", "test", "a", 1.0, 0.1), ("p1", "t1", "test", "b", 1.0, 1.0),
    ("p2", "t1", "test", "a", 0.0, 0.1), ("p2", "t1", "test", "b", 1.0, 1.0),
    ("p3", "t1", "test", "a", 1.0, 0.1), ("p3", "t1", "test", "b", 1.0, 1.0),
    ("p4", "t2", "test", "a", 0.0, 0.1), ("p4", "t2", "test", "b", 1.0, 1.0),
    ("p5", "t2", "test", "a", 0.0, 0.2), ("p5", "t2", "test", "b", 0.0, 3.0),
    ("p6", "t1", "train", "a", 1.0, 0.5), ("p6", "t1", "train", "b", 0.0, 9.0),
    ("p7", "t2", "train", "a", 1.0, 0.5), ("p7", "t2", "train", "b", 0.0, 9.0),
]
# fmt: on


def write_benchmark(path: Path, rows: list[tuple] = TINY_ROWS) -> Path:
    frame = pd.DataFrame(rows, columns=["prompt_id", "task", "split", "model", "score", "cost_usd"])
    frame["prompt"] = "q " + frame["prompt_id"]
    frame["response"] = None
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture(autouse=True)
def _inputs_from_test_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs read inputs only from the data dir, the demo folder and ESCALON_DISTILL_INPUT_DIRS
    (escalon.distill.jobs.inputs); these tests keep their files in pytest's folders and a model cache."""
    folders = [str(tmp_path_factory.getbasetemp())]
    if os.environ.get("ESCALON_MODEL_CACHE"):
        folders.append(os.environ["ESCALON_MODEL_CACHE"])
    monkeypatch.setenv("ESCALON_DISTILL_INPUT_DIRS", os.pathsep.join(folders))


@pytest.fixture
def make_benchmark():
    """write_benchmark(path, rows=TINY_ROWS) -> path"""
    return write_benchmark


@pytest.fixture
def tiny_benchmark(tmp_path: Path) -> Path:
    return write_benchmark(tmp_path / "tiny.parquet")


def _postgres_store() -> tuple[JobStore, str]:
    import psycopg

    try:
        with psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=2) as conn:
            schema = f"distill_test_{uuid.uuid4().hex[:12]}"
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL not reachable at {PG_URL} ({str(exc).strip().splitlines()[0]}); "
            "set ESCALON_TEST_POSTGRES_URL to test the job store on PostgreSQL"
        )
    store = JobStore(PG_URL, connect_args={"options": f"-c search_path={schema}"}).init()
    return store, schema


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh job store: SQLite in a temp folder, or a throwaway schema in PostgreSQL."""
    if request.param == "sqlite":
        s = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}").init()
        yield s
        s.close()
        return
    s, schema = _postgres_store()
    yield s
    s.close()
    import psycopg

    with psycopg.connect(PG_URL.replace("+psycopg", "")) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The serving model cache the distillation tests load SmolLM2 from (converted once per session, shared
    with the serving tests). Set ESCALON_MODEL_CACHE to reuse a developer's cache."""
    cache = os.environ.get("ESCALON_MODEL_CACHE")
    return Path(cache) if cache else tmp_path_factory.getbasetemp() / "serving-models"


TINY_TRAIN = {"max_steps": 2, "batch_size": 2, "checkpoint_every": 1, "r": 4, "alpha": 8, "lr": 1e-3}


@pytest.fixture
def arith_data(tmp_path: Path) -> Path:
    """A harvested synthetic arithmetic data set (train/val/test), written the way the harvest job writes it."""
    from escalon.distill.jobs import LocalContext, validate

    kind, params = validate("harvest", {"source": "synthetic:arith", "n": 40, "seed": 3}, tmp_path)
    result = kind.run(params, LocalContext(artefact_dir=tmp_path / "harvest"))
    return Path(result["artefacts"]["dataset"])

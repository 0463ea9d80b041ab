"""What SubmitJob rejects before anything is stored: each error names the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalon.distill.jobs import KINDS, validate
from escalon.errors import InvalidInput

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("kind", "params", "field", "words"),
    [
        ("", {}, "kind", "give a job kind"),
        ("distil", {}, "kind", "unknown job kind 'distil'"),
        ("profile", {}, "params.benchmark", "Field required"),
        ("profile", {"benchmark": 5}, "params.benchmark", "valid string"),
        ("profile", {"benchmark": "TINY", "chunk_rows": 2.5}, "params.chunk_rows", "fractional part"),
        ("profile", {"benchmark": "TINY", "chunk_rows": "many"}, "params.chunk_rows", "valid integer"),
        ("profile", {"benchmark": "TINY", "chunk_rows": 0}, "params.chunk_rows", "greater than or equal to 1"),
        ("profile", {"benchmark": "TINY", "split": "dev"}, "params.split", "'train', 'test' or 'all'"),
        ("profile", {"benchmark": "TINY", "chunk_rowz": 5}, "params.chunk_rowz", "Extra inputs are not permitted"),
        ("profile", {"benchmark": "TINY", "tasks": "t1"}, "params.tasks", "valid list"),
        ("profile", {"benchmark": "missing.parquet"}, "params.benchmark", "no benchmark file"),
        ("profile", {"benchmark": "NOT_PARQUET"}, "params.benchmark", "not a readable parquet file"),
        ("profile", {"benchmark": "NO_SCORE"}, "params.benchmark", "lacks column(s) score"),
    ],
)
def test_bad_submissions_name_the_field(tmp_path: Path, make_benchmark, kind, params, field, words) -> None:
    tiny = make_benchmark(tmp_path / "tiny.parquet")
    (tmp_path / "notes.txt").write_text("not parquet")
    import pandas as pd

    pd.DataFrame({"task": ["t"], "split": ["test"], "model": ["m"], "cost_usd": [0.1]}).to_parquet(
        tmp_path / "noscore.parquet"
    )
    names = {
        "TINY": str(tiny),
        "NOT_PARQUET": str(tmp_path / "notes.txt"),
        "NO_SCORE": str(tmp_path / "noscore.parquet"),
    }
    if "benchmark" in params and isinstance(params["benchmark"], str):
        params = {**params, "benchmark": names.get(params["benchmark"], params["benchmark"])}
    with pytest.raises(InvalidInput) as err:
        validate(kind, params, tmp_path)
    assert err.value.field == field
    assert words in str(err.value)
    assert str(err.value).startswith(f"{field}: ")


def test_relative_paths_are_read_against_the_data_dir_and_stored_absolute(tmp_path: Path, make_benchmark) -> None:
    make_benchmark(tmp_path / "bench.parquet")
    kind, params = validate("profile", {"benchmark": "bench.parquet", "chunk_rows": 10.0}, tmp_path)
    assert kind is KINDS["profile"]
    assert params.benchmark == str((tmp_path / "bench.parquet").resolve())
    assert params.chunk_rows == 10 and isinstance(params.chunk_rows, int)  # Struct numbers arrive as floats
    dumped = params.model_dump(mode="json")
    assert dumped["split"] == "test" and dumped["step_delay_s"] == 0.0  # defaults are stored with the job


def test_every_kind_documents_itself() -> None:
    for name, kind in KINDS.items():
        assert kind.name == name and kind.description and kind.default_queue in {"cpu", "gpu"}
        for field_name, info in kind.params.model_fields.items():
            assert info.description, f"{name}.{field_name} needs a description (CLI help shows it)"

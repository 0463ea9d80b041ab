"""Benchmark files in the shared routing format (escalon.benchmark): one row per (prompt, model).

Columns: prompt_id, task, split (`train`/`test`), prompt, model, response, score in [0, 1], cost_usd.
Jobs read only the columns they need, in chunks, so the prompt and response text never load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from escalon.benchmark import COLUMNS
from escalon.distill.jobs.inputs import input_file
from escalon.errors import InvalidInput, clip


def resolve_benchmark(path_text: str, data_dir: Path, needed: tuple[str, ...], *, field: str) -> str:
    """Absolute path of a readable parquet file with the `needed` columns, or InvalidInput naming `field`.

    Relative paths are read against the data dir, the folder the front and the workers share; only files
    under it or the packaged demo folder are read (escalon.distill.jobs.inputs).
    """
    if not path_text.strip():
        raise InvalidInput("give the path of a benchmark parquet file", field=field)
    path = input_file(path_text, data_dir, field=field, what="benchmark file")
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a parquet file"
        raise InvalidInput(f"{str(path)!r} is not a readable parquet file: {clip(str(exc))}", field=field) from None
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise InvalidInput(
            f"{str(path)!r} lacks column(s) {', '.join(missing)} of the routing format ({', '.join(COLUMNS)})",
            field=field,
        )
    return str(path.resolve())


def source_fingerprint(path: str) -> dict[str, Any]:
    """Identifies the file a checkpoint was made from: a resumed job restarts if the file changed."""
    stat = Path(path).stat()
    return {
        "path": path,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "rows": pq.ParquetFile(path).metadata.num_rows,
    }

"""The labeller's files: the prompts to label (JSONL or parquet), label descriptions, the labelled rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from escalon.errors import ConfigError
from escalon.offline.labelling.labeller import Labelled


def read_prompts(path: Path | str, column: str = "prompt") -> list[dict[str, Any]]:
    """Rows of a JSONL or parquet file that has a non-empty text column `column`; ConfigError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no input file at {path}; give a .jsonl or .parquet file with a {column!r} column",
                          field="in")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        try:
            rows = pd.read_parquet(path).to_dict("records")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a usage error
            raise ConfigError(f"cannot read {path} as parquet: {exc}", field="in") from None
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} line {number} is not JSON ({exc.msg}); write one JSON object a line",
                                  field="in") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path} line {number} is a {type(row).__name__}, not an object with a "
                                  f"{column!r} field", field="in")
            rows.append(row)
    else:
        raise ConfigError(f"{path} is neither .jsonl nor .parquet; convert it to one of them", field="in")
    if not rows:
        raise ConfigError(f"{path} holds no rows; nothing to label", field="in")
    missing = [i for i, r in enumerate(rows, start=1) if column not in r]
    if len(missing) == len(rows):
        seen = sorted({k for r in rows[:50] for k in r})
        raise ConfigError(f"{path} has no {column!r} column (it has: {', '.join(seen) or 'none'}); name the text "
                          "column with --column", field="column")
    empty = [i for i, r in enumerate(rows, start=1)
             if not isinstance(r.get(column), str) or not r.get(column).strip()]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ConfigError(f"{path}: row(s) {shown} have an empty or non-text {column!r}; drop them or fill them in",
                          field="in")
    return rows


def read_descriptions(path: Path | str | None) -> dict[str, str]:
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no descriptions file at {path}", field="descriptions") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON ({exc.msg}); give an object label → description",
                          field="descriptions") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"{path} must be a JSON object mapping each label to a description string",
                          field="descriptions")
    return {str(k): v for k, v in raw.items()}


def output_row(row: dict[str, Any], result: Labelled) -> dict[str, Any]:
    """The input row (JSON-safe) with the label fields added."""
    safe = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
    return {**safe, "label": result.label, "probability": round(result.probability, 6), "source": result.source,
            "distribution": {k: round(v, 6) for k, v in sorted(result.distribution.items(), key=lambda kv: -kv[1])}}

"""A routing benchmark in the shared long format, as matrices the router can learn from and be measured on.

One row per (prompt, model): prompt_id, task, split, prompt, model, response (may be null), score in [0, 1],
cost_usd (the format the shared benchmark data sets use). `load_benchmark` accepts a folder holding `benchmark.parquet` or
the file itself, and makes no assumption about which tasks or models it holds:

- Splits: `train`/`training` train, `test`/`testing`/`eval`/`evaluation`/`heldout` test, `dev`/`val`/
  `validation` train-side (a router may tune on them). Anything else (or null) is unknown. When the file
  has no usable test or no usable train split, every prompt is split deterministically by a hash of its
  prompt_id (TEST_SHARE to test) and `split_note` says so; otherwise prompts with an unknown split are
  hash-assigned the same way. A prompt is in one split only (its first row decides).
- Missing (prompt, model) pairs stay missing (NaN): learners use observed rows only.
- Duplicated (prompt, model) rows: the first is kept, and `notes` counts them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from escalon.errors import ConfigError, InvalidInput

COLUMNS = ("prompt_id", "task", "split", "prompt", "model", "response", "score", "cost_usd")
TRAIN_LABELS = {"train", "training", "dev", "val", "valid", "validation"}
TEST_LABELS = {"test", "testing", "eval", "evaluation", "heldout", "held_out", "held-out"}
TEST_SHARE = 0.3


def hash_unit(key: str, seed: int | str | None = None) -> float:
    """A number in [0, 1) fixed by the key (and the seed, when given): the same on every machine and run."""
    text = str(key) if seed is None else f"{seed}:{key}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def hash_split(key: str, test_share: float = TEST_SHARE, *, val_share: float = 0.0, seed: int | None = None) -> str:
    """Deterministic split assignment from the key alone (a prompt id, a normalised prompt): the same key lands
    in the same split on every machine. `test_share` of keys go to test, `val_share` to val, the rest to train;
    a seed draws another assignment."""
    h = hash_unit(key, seed)
    if h < test_share:
        return "test"
    return "val" if h < test_share + val_share else "train"


def rung_name(model: str) -> str:
    """A catalogue-valid rung name for a benchmark's model id (lower case, [a-z0-9.-], ≤ 63 chars)."""
    base = model.split("/")[-1].lower()
    name = re.sub(r"[^a-z0-9.\-]+", "-", base).strip("-.") or "model"
    if not name[0].isalnum():
        name = "m" + name
    return name[:63].rstrip("-.")


def model_family(model: str) -> str:
    """A family guess from the model id: the organisation (`mistralai/...`) or the leading word
    (`llama-3.1-8b` → llama, `gpt-4` → gpt). Judges prefer evidence from another family."""
    if "/" in model:
        return model.split("/")[0].lower()
    match = re.match(r"[a-zA-Z]+", model)
    return match.group(0).lower() if match else model.lower()


@dataclass
class Benchmark:
    name: str
    path: Path
    prompts: pd.DataFrame  # index 0..n-1: prompt_id, task, prompt, split ("train" | "test")
    models: list[str]
    scores: np.ndarray  # [n_prompts, n_models], NaN where not observed
    costs: np.ndarray  # [n_prompts, n_models], NaN where not observed
    responses: np.ndarray | None  # object [n_prompts, n_models] (None where not recorded); None: no responses at all
    split_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.prompts)

    @property
    def train_idx(self) -> np.ndarray:
        return np.flatnonzero(self.prompts["split"].to_numpy() == "train")

    @property
    def test_idx(self) -> np.ndarray:
        return np.flatnonzero(self.prompts["split"].to_numpy() == "test")

    @property
    def texts(self) -> list[str]:
        return self.prompts["prompt"].tolist()

    @property
    def tasks(self) -> np.ndarray:
        return self.prompts["task"].to_numpy()

    def has_responses(self) -> bool:
        return self.responses is not None

    def rung_names(self) -> list[str]:
        names, seen = [], set()
        for m in self.models:
            name = rung_name(m)
            while name in seen:
                name = f"{name[:58]}-{len(seen)}"
            seen.add(name)
            names.append(name)
        return names

    def subset(self, idx: np.ndarray) -> Benchmark:
        idx = np.asarray(idx)
        return Benchmark(self.name, self.path, self.prompts.iloc[idx].reset_index(drop=True), list(self.models),
                         self.scores[idx], self.costs[idx], None if self.responses is None else self.responses[idx],
                         self.split_note, list(self.notes))


def benchmark_file(path: Path | str) -> Path:
    """The parquet file: `path` itself, or benchmark.parquet inside a benchmark folder (the shared layout)."""
    path = Path(path)
    if path.is_dir():
        path = path / "benchmark.parquet"
    if not path.is_file():
        raise InvalidInput(f"no benchmark file at {path}: give a benchmark.parquet or the folder holding one",
                           field="benchmark")
    return path


def read_table(path: Path | str, required: tuple[str, ...] = COLUMNS) -> tuple[Path, pd.DataFrame]:
    """The benchmark's rows as they are in the file (one per prompt and model), once its `required` columns
    are there; InvalidInput naming `benchmark` otherwise."""
    file = benchmark_file(path)
    try:
        table = pd.read_parquet(file)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a parquet file"
        raise InvalidInput(f"{file} is not a readable parquet file: {exc}", field="benchmark") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InvalidInput(f"{file} lacks columns {', '.join(missing)} (the shared routing format has "
                           f"{', '.join(COLUMNS)})", field="benchmark")
    return file, table


def load_benchmark(path: Path | str, *, test_share: float = TEST_SHARE) -> Benchmark:
    """The benchmark as matrices (prompts × models); response, split and task may be absent from the file."""
    try:
        file, table = read_table(path, tuple(c for c in COLUMNS if c not in ("response", "split", "task")))
    except InvalidInput as exc:  # to a router being configured with it, a bad benchmark is a configuration error
        raise ConfigError(str(exc)) from None
    notes: list[str] = []
    table = table.copy()
    if "task" not in table.columns:
        table["task"] = "unknown"
        notes.append("no task column: every prompt is task 'unknown'")
    if "split" not in table.columns:
        table["split"] = None
    if "response" not in table.columns:
        table["response"] = None
    table["prompt_id"] = table["prompt_id"].astype(str)
    table["model"] = table["model"].astype(str)
    table["task"] = table["task"].astype(object).where(table["task"].notna(), "unknown").astype(str)
    table = table[table["prompt"].notna() & table["score"].notna()]
    before = len(table)
    table = table.drop_duplicates(["prompt_id", "model"], keep="first")
    if len(table) < before:
        notes.append(f"{before - len(table)} duplicated (prompt, model) rows dropped (first kept)")

    prompts = table.drop_duplicates("prompt_id", keep="first")[["prompt_id", "task", "prompt", "split"]]
    prompts = prompts.reset_index(drop=True)
    split_note = _normalise_splits(prompts, test_share)
    models = sorted(table["model"].unique())
    pos = pd.Series(np.arange(len(prompts)), index=prompts["prompt_id"])
    rows = pos.loc[table["prompt_id"]].to_numpy()
    cols = pd.Series(np.arange(len(models)), index=models).loc[table["model"]].to_numpy()
    scores = np.full((len(prompts), len(models)), np.nan)
    costs = np.full((len(prompts), len(models)), np.nan)
    scores[rows, cols] = np.clip(table["score"].to_numpy(dtype=float), 0.0, 1.0)
    cost_values = table["cost_usd"].to_numpy(dtype=float)
    if np.isnan(cost_values).any():
        notes.append(f"{int(np.isnan(cost_values).sum())} rows without cost_usd: priced at their model's median")
        frame = pd.DataFrame({"m": cols, "c": cost_values})
        cost_values = frame.groupby("m")["c"].transform(lambda c: c.fillna(c.median() if c.notna().any() else 0.0))
        cost_values = cost_values.to_numpy(dtype=float)
    costs[rows, cols] = cost_values
    responses = None
    has = table["response"].notna().to_numpy()
    if has.any():
        responses = np.full((len(prompts), len(models)), None, dtype=object)
        responses[rows[has], cols[has]] = table["response"].to_numpy(dtype=object)[has]
    return Benchmark(file.parent.name, file, prompts, models, scores, costs, responses, split_note, notes)


def _normalise_splits(prompts: pd.DataFrame, test_share: float) -> str:
    raw = prompts["split"].astype(object).where(prompts["split"].notna(), "").astype(str).str.strip().str.lower()
    mapped = np.where(raw.isin(TEST_LABELS), "test", np.where(raw.isin(TRAIN_LABELS), "train", ""))
    counts = {str(k): int(v) for k, v in raw.value_counts().items()}
    has_train, has_test = (mapped == "train").any(), (mapped == "test").any()
    if not (has_train and has_test):
        prompts["split"] = [hash_split(p, test_share) for p in prompts["prompt_id"]]
        return (f"split column values {counts} give no usable {'test' if has_train else 'train'} split: "
                f"every prompt was split deterministically by a SHA-256 hash of its prompt_id "
                f"({test_share:.0%} test)")
    unknown = mapped == ""
    if unknown.any():
        mapped[unknown] = [hash_split(p, test_share) for p in prompts["prompt_id"][unknown]]
        prompts["split"] = mapped
        return (f"split column values {counts}: {int(unknown.sum())} prompts with an unrecognised split were "
                f"assigned by a SHA-256 hash of their prompt_id ({test_share:.0%} test)")
    prompts["split"] = mapped
    if set(counts) != {"train", "test"}:
        return f"split column values {counts} mapped to train/test"
    return ""

"""What every job kind is: typed params, a run function, and the context it runs in.

A job function is plain Python: `run(params, ctx) -> result dict`. It knows nothing about Celery or the
store. Through `ctx` it loads its last checkpoint, saves a new one after each step (which also reports
progress and is where cancellation is noticed), and writes artefacts atomically. Tests call job functions
directly with `LocalContext`; the worker calls them with the store-backed context in escalon.distill.runner.

Rules a job function keeps so that redelivery is safe (STYLE practice 8):
  * idempotent: running it again from the same checkpoint gives the same result;
  * checkpoint after each step, and resume from `ctx.load_checkpoint()` when one exists;
  * artefacts only through `ctx.write_artefact` (temp file + os.replace: never half-written).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from escalon.files import atomic_write


class JobCancelled(Exception):
    """Raised by the context when cancellation was requested; the job ends CANCELLED."""


class TransientJobError(Exception):
    """A job's own "try again later" (a teacher endpoint down): retried with backoff like broker errors."""


class JobParams(BaseModel):
    """Base of every kind's params: unknown fields are errors, so typos are caught at SubmitJob."""

    model_config = ConfigDict(extra="forbid")
    #: fields that change how fast a job runs, never what it computes: a checkpoint made under other values
    #: of these still resumes
    PACING: ClassVar[frozenset[str]] = frozenset()

    def fingerprint(self) -> str:
        """What a checkpoint is keyed on: a checkpoint made under other params (pacing aside) is not resumed."""
        return digest(self.model_dump(mode="json", exclude=set(self.PACING)))


def digest(value: Any) -> str:
    """A short stable digest of JSON-able data (keys sorted)."""
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class JobContext(Protocol):
    job_id: str
    attempt: int
    artefact_dir: Path

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state saved by the last `save_checkpoint` of any earlier attempt, or None."""

    def save_checkpoint(
        self,
        state: dict[str, Any],
        *,
        progress: float,
        message: str,
        step: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Persist `state` (JSON) with progress; raises JobCancelled when cancellation was requested."""

    def report(self, progress: float, message: str) -> None:
        """Progress without a checkpoint; raises JobCancelled when cancellation was requested."""

    def write_artefact(self, name: str, data: str | bytes) -> Path:
        """Write <artefact_dir>/<name> atomically and return its path."""


P = TypeVar("P", bound=JobParams)


@dataclass(frozen=True)
class JobKind(Generic[P]):
    """One registered kind of job."""

    name: str
    description: str
    params: type[P]
    run: Callable[[P, JobContext], dict[str, Any]]
    default_queue: str = "cpu"
    #: submit-time checks that need a little I/O (the input file exists and has the right columns); returns
    #: the params normalised (paths made absolute). Raises escalon.errors.InvalidInput naming the field.
    prepare: Callable[[P, Path], P] | None = None


def json_roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint looks like after the store saved and loaded it (tuples become lists, keys strings)."""
    return json.loads(json.dumps(state))


@dataclass
class LocalContext:
    """A context in memory: for tests, notebooks and local runs. Records what the job reported."""

    artefact_dir: Path
    job_id: str = "local"
    attempt: int = 1
    checkpoint: dict[str, Any] | None = None
    cancel_requested: bool = False
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    steps: list[int | None] = field(default_factory=list)
    progress: list[tuple[float, str]] = field(default_factory=list)

    def load_checkpoint(self) -> dict[str, Any] | None:
        return json_roundtrip(self.checkpoint) if self.checkpoint is not None else None

    def save_checkpoint(
        self,
        state: dict[str, Any],
        *,
        progress: float,
        message: str,
        step: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        self.checkpoint = json_roundtrip(state)
        self.checkpoints.append(self.checkpoint)
        self.steps.append(step)
        self.report(progress, message)

    def report(self, progress: float, message: str) -> None:
        self.progress.append((progress, message))
        if self.cancel_requested:
            raise JobCancelled(message)

    def write_artefact(self, name: str, data: str | bytes) -> Path:
        return atomic_write(safe_child(self.artefact_dir, name), data)


def safe_child(folder: Path, name: str) -> Path:
    """folder/name, refusing names that would leave the folder."""
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise ValueError(f"artefact name {name!r} must be a plain file name")
    return folder / name


def pause(seconds: float) -> None:
    """The `step_delay_s` of demo and test params: make a job slow enough to watch, kill or cancel."""
    if seconds > 0:
        time.sleep(seconds)

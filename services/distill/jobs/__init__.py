"""The job kinds the distill service runs, and the checks SubmitJob applies before anything is queued.

    from escalon.distill.jobs import KINDS, validate
    kind, params = validate("profile", {"benchmark": "/data/bench.parquet"}, data_dir)
    result = kind.run(params, LocalContext(artefact_dir=tmp))   # no Celery, no store

Adding a kind: write `jobs/<kind>.py` with a `JobParams` subclass, `run(params, ctx)`, optional
`prepare(params, data_dir)`, and a `KIND = JobKind(...)`; list it in `_BUILT_IN` below.

Kinds that need another service's code (the judges' report, folding a promoted student into the router's
artefact) live above the services, in escalon.offline.jobs, and reach the worker through the
`escalon.distill.jobs` entry-point group (pyproject.toml): this package never imports them, as KServe's
server never imports its runtimes. KINDS is read on first use, once per process.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from escalon.distill.jobs import evaluate, harvest, profile, siked, undo
from escalon.distill.jobs.base import (
    JobCancelled,
    JobContext,
    JobKind,
    JobParams,
    LocalContext,
    TransientJobError,
)
from escalon.errors import InvalidInput, clip, shown

ENTRY_POINTS = "escalon.distill.jobs"
_BUILT_IN: tuple[JobKind, ...] = (profile.KIND, evaluate.KIND, harvest.KIND, undo.KIND, siked.KIND)

__all__ = [
    "KINDS",
    "JobCancelled",
    "JobContext",
    "JobKind",
    "JobParams",
    "LocalContext",
    "TransientJobError",
    "get_kind",
    "kinds",
    "validate",
]


def kinds() -> Mapping[str, JobKind]:
    """Every kind this worker or front knows: the built-in ones, then the installed ones (entry points)."""
    table = globals().get("KINDS")
    if table is None:
        installed = [ep.load() for ep in sorted(entry_points(group=ENTRY_POINTS), key=lambda ep: ep.name)]
        table = MappingProxyType({kind.name: kind for kind in (*_BUILT_IN, *installed)})
        globals()["KINDS"] = table
    return table


def __getattr__(name: str):
    if name == "KINDS":  # `jobs.KINDS`: the table, built on first use
        return kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_kind(name: str) -> JobKind:
    if not name:
        raise InvalidInput(f"give a job kind: one of {', '.join(kinds())}", field="kind")
    try:
        return kinds()[name]
    except KeyError:
        raise InvalidInput(f"unknown job kind {shown(name)}; known kinds: {', '.join(kinds())}", field="kind") from None


def parse_params(kind: JobKind, raw: dict[str, Any]) -> JobParams:
    """Typed params, or InvalidInput naming the first bad field as `params.<field>` (all listed in the message)."""
    try:
        return kind.params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        fields = [".".join(["params", *(str(p) for p in err["loc"])]) for err in errors]
        message = f"{errors[0]['msg']} (got {shown(errors[0].get('input'))}) in the params of a {kind.name!r} job"
        if len(errors) > 1:
            message += "; also " + "; ".join(f"{clip(f)}: {e['msg']}" for f, e in zip(fields[1:6], errors[1:6], strict=True))
        raise InvalidInput(message, field=clip(fields[0])) from None


def validate(kind_name: str, raw: dict[str, Any], data_dir: Path) -> tuple[JobKind, JobParams]:
    """Everything SubmitJob checks: kind known, params typed, inputs present. Raises InvalidInput."""
    kind = get_kind(kind_name)
    params = parse_params(kind, raw)
    if kind.prepare is not None:
        params = kind.prepare(params, data_dir)
    return kind, params


def run(kind_name: str, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run a stored job: its params were validated at submit; parse them again into their type."""
    kind = kinds().get(kind_name)
    if kind is None:
        raise ValueError(
            f"this worker does not know job kind {kind_name!r} (known: {', '.join(kinds())}); is it older than the front?"
        )
    return kind.run(kind.params.model_validate(params), ctx)

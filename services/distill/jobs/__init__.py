"""The job kinds the distill service runs, and the checks SubmitJob applies before anything is queued.

    from escalon.distill.jobs import KINDS, validate
    kind, params = validate("profile", {"benchmark": "/data/bench.parquet"}, data_dir)
    result = kind.run(params, LocalContext(artefact_dir=tmp))   # no Celery, no store

Adding a kind: write `jobs/<kind>.py` with a `JobParams` subclass, `run(params, ctx)`, optional
`prepare(params, data_dir)`, and a `KIND = JobKind(...)`; list it in `_ALL` below.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from escalon.distill.jobs import evaluate, harvest, judge_report, profile, promote, siked, undo
from escalon.distill.jobs.base import (
    JobCancelled,
    JobContext,
    JobKind,
    JobParams,
    LocalContext,
    TransientJobError,
    atomic_write,
)
from escalon.errors import InvalidInput

_ALL: tuple[JobKind, ...] = (profile.KIND, evaluate.KIND, harvest.KIND, undo.KIND, siked.KIND, promote.KIND,
                             judge_report.KIND)
KINDS = MappingProxyType({kind.name: kind for kind in _ALL})

__all__ = [
    "KINDS",
    "JobCancelled",
    "JobContext",
    "JobKind",
    "JobParams",
    "LocalContext",
    "TransientJobError",
    "atomic_write",
    "get_kind",
    "validate",
]


def get_kind(name: str) -> JobKind:
    if not name:
        raise InvalidInput(f"give a job kind: one of {', '.join(KINDS)}", field="kind")
    try:
        return KINDS[name]
    except KeyError:
        raise InvalidInput(f"unknown job kind {name!r}; known kinds: {', '.join(KINDS)}", field="kind") from None


def parse_params(kind: JobKind, raw: dict[str, Any]) -> JobParams:
    """Typed params, or InvalidInput naming the first bad field as `params.<field>` (all listed in the message)."""
    try:
        return kind.params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        fields = [".".join(["params", *(str(p) for p in err["loc"])]) for err in errors]
        message = f"{errors[0]['msg']} (got {errors[0].get('input')!r}) in the params of a {kind.name!r} job"
        if len(errors) > 1:
            message += "; also " + "; ".join(f"{f}: {e['msg']}" for f, e in zip(fields[1:], errors[1:], strict=True))
        raise InvalidInput(message, field=fields[0]) from None


def validate(kind_name: str, raw: dict[str, Any], data_dir: Path) -> tuple[JobKind, JobParams]:
    """Everything SubmitJob checks: kind known, params typed, inputs present. Raises InvalidInput."""
    kind = get_kind(kind_name)
    params = parse_params(kind, raw)
    if kind.prepare is not None:
        params = kind.prepare(params, data_dir)
    return kind, params


def run(kind_name: str, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run a stored job: its params were validated at submit; parse them again into their type."""
    kind = KINDS.get(kind_name)
    if kind is None:
        raise ValueError(
            f"this worker does not know job kind {kind_name!r} (known: {', '.join(KINDS)}); is it older than the front?"
        )
    return kind.run(kind.params.model_validate(params), ctx)

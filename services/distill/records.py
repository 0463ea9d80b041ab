"""What the job store holds, as the distill service's code sees it: job states, jobs, their events, claims
and pages of a listing (the tables themselves: escalon.distill.schema; the store: escalon.distill.store)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

UTC = dt.UTC


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class LeaseLost(Exception):
    """This worker no longer owns the job: its lease expired and another worker took it over."""


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row."""

    job_id: str
    kind: str
    queue: str
    state: JobState
    progress: float
    message: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str
    attempts: int
    checkpoint: dict[str, Any] | None
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    enqueued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @property
    def finished(self) -> bool:
        return self.state.finished


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: str
    attempt: int
    event: str
    step: int | None
    message: str
    metrics: dict[str, Any] | None
    created_at: dt.datetime


class ClaimOutcome(enum.StrEnum):
    CLAIMED = "claimed"  # this worker now runs the job
    FINISHED = "finished"  # already succeeded/failed/cancelled: nothing to do (a duplicate delivery)
    BUSY = "busy"  # another live worker holds the lease (a duplicate delivery while it runs)
    CANCELLED = "cancelled"  # cancel was requested before it started: now CANCELLED
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_token: str


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def job_from_row(row: Any) -> Job:
    m = dict(row._mapping)
    m["state"] = JobState(m["state"])
    return Job(**m)

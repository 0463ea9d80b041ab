"""Typed settings of the distill service: the gRPC front and its Celery workers read the same ones.

Everything has a default under ESCALON_DATA_DIR, so `ESCALON_DATA_DIR=/srv/escalon` alone relocates the
broker, the result store, the job store and the job artefacts:

    broker        sqla+sqlite:///<data_dir>/broker.sqlite   (kombu's SQLAlchemy transport: no server needed)
    results       db+sqlite:///<data_dir>/results.sqlite    (Celery's database result backend)
    job store     sqlite:///<data_dir>/jobs.sqlite          (the source of truth for job state)
    artefacts     <data_dir>/jobs/<job_id>/

In production point them at servers: ESCALON_DISTILL_BROKER_URL=redis://redis:6379/0 or
amqp://user:pass@rabbitmq:5672//, ESCALON_DISTILL_DATABASE_URL=postgresql+psycopg://user@db/escalon.
Nothing here performs I/O: folders are created by the store and the worker when they start.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from escalon.config import ServiceSettings

QUEUES = ("cpu", "gpu")
_BROKER_SCHEMES = ("sqla+", "sqlalchemy+", "redis://", "rediss://", "amqp://", "amqps://", "pyamqp://", "memory://")
_BACKEND_SCHEMES = ("db+", "redis://", "rediss://", "rpc://", "file://", "cache+memory://", "disabled")
_DATABASE_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://", "postgres://")


def _psycopg3(url: str) -> str:
    """`postgresql://` means psycopg2 to SQLAlchemy, which Escalon does not ship: use psycopg 3 instead."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


class DistillSettings(ServiceSettings):
    """Settings of `python -m escalon.distill` (the gRPC front) and `python -m escalon.distill worker`."""

    # populate_by_name: `DistillSettings(data_dir=...)` must work as well as ESCALON_DATA_DIR (the base class
    # gives data_dir an env alias, and with extra="ignore" a field name would otherwise be dropped silently).
    model_config = SettingsConfigDict(env_prefix="ESCALON_DISTILL_", extra="ignore", populate_by_name=True)
    help_defaults = {name: "derived from ESCALON_DATA_DIR" for name in ("broker_url", "result_backend", "database_url")}

    port: int = Field(default=50054, ge=0, le=65535, description="gRPC port of the front; 0 picks a free one")
    broker_url: str = Field(
        default="",
        description="Celery broker: sqla+sqlite:///... (default, under the data dir), redis://host:6379/0, "
        "amqp://user:pass@host:5672//",
    )
    result_backend: str = Field(
        default="",
        description="Celery result store (task return values; job results live in the job store): "
        "db+sqlite:///... (default), redis://..., db+postgresql+psycopg://...",
    )
    database_url: str = Field(
        default="",
        description="job store: sqlite:///<data_dir>/jobs.sqlite (default) or postgresql+psycopg://user@host/db",
    )
    broker_polling_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often a worker polls a database broker (sqla+...) for new messages",
    )
    visibility_timeout_s: int = Field(
        default=3600,
        gt=0,
        description="Redis broker: an unacknowledged message is redelivered after this long (must exceed "
        "the longest retry countdown; a job still running then is protected by its lease)",
    )
    lease_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="a running job renews its lease every lease/3; a job whose worker stopped renewing for "
        "this long is requeued and resumes from its checkpoint",
    )
    reap_interval_s: float = Field(
        default=15.0, gt=0, le=3600, description="how often a worker looks for jobs whose lease expired"
    )
    watch_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="how often WatchJob polls the job store for changes"
    )
    max_retries: int = Field(
        default=5, ge=0, le=100, description="retries of a job after transient errors (broker or database down)"
    )
    retry_backoff_s: float = Field(
        default=2.0, gt=0, description="base of the exponential retry backoff (doubling per retry, half of it random)"
    )
    retry_backoff_max_s: float = Field(default=120.0, gt=0, description="cap of one retry delay")

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, url: str) -> str:
        if url and not url.startswith(_BROKER_SCHEMES):
            raise ValueError(f"unsupported broker URL scheme; use one of {', '.join(_BROKER_SCHEMES)}")
        if url.startswith(("sqla+", "sqlalchemy+")):
            prefix, rest = url.split("+", 1)
            return f"{prefix}+{_psycopg3(rest)}"
        return url

    @field_validator("result_backend")
    @classmethod
    def _backend_scheme(cls, url: str) -> str:
        if url and not url.startswith(_BACKEND_SCHEMES):
            raise ValueError(f"unsupported result backend scheme; use one of {', '.join(_BACKEND_SCHEMES)}")
        if url.startswith("db+"):
            return "db+" + _psycopg3(url[3:])
        return url

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, url: str) -> str:
        if url and not url.startswith(_DATABASE_SCHEMES):
            raise ValueError("the job store must be sqlite:///path or postgresql+psycopg://user@host/db")
        return _psycopg3(url)

    @model_validator(mode="after")
    def _defaults_under_data_dir(self) -> DistillSettings:
        data = self.data_dir.expanduser().absolute()
        self.data_dir = data
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{data / 'broker.sqlite'}"
        if not self.result_backend:
            self.result_backend = f"db+sqlite:///{data / 'results.sqlite'}"
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'jobs.sqlite'}"
        return self

    @property
    def jobs_dir(self) -> Path:
        """Where each job's artefacts go: <data_dir>/jobs/<job_id>/."""
        return self.data_dir / "jobs"

    @property
    def broker_kind(self) -> str:
        """`sqlalchemy`, `redis`, `amqp` or `memory`: what decides the transport options."""
        url = self.broker_url
        if url.startswith(("sqla+", "sqlalchemy+")):
            return "sqlalchemy"
        if url.startswith(("redis://", "rediss://")):
            return "redis"
        if url.startswith(("amqp://", "amqps://", "pyamqp://")):
            return "amqp"
        return "memory"

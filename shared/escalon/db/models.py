"""The tables of Escalon's own database, as SQLAlchemy 2 declarative models. The schema itself is made by the
Alembic migrations next to this file (migrations/versions/); a test checks the two agree.

  routes      one row per route the router answered (or refused): the knob, the plan, every attempt, the
              outcome; prompts and answers only when the operator opted in, else their hash and length
  api_keys    a caller's key: tenant, budgets, rate limit, allow-lists; the secret only as a salted SHA-256
  key_spend   spend per key and budget period (day, month), charged from each route's actual cost
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, TypeDecorator,
                        false)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UTC = dt.UTC


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on both databases (SQLite keeps no zone: store naive UTC, read back aware)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


class Base(DeclarativeBase):
    pass


class Route(Base):
    __tablename__ = "routes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    request_id: Mapped[str] = mapped_column(String(128), nullable=False)
    trace_id: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    replica: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    tenant: Mapped[str | None] = mapped_column(String(128))
    key_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), nullable=False)  # OK, or the gRPC status name
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    operating_point: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    knob: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    answer_type: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    task: Mapped[str | None] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    plan: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    rung: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    total_cost_usd: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    prompt: Mapped[str | None] = mapped_column(Text)  # only when the operator opted in
    prompt_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    prompt_chars: Mapped[int] = mapped_column(Integer, nullable=False)
    answer: Mapped[str | None] = mapped_column(Text)
    answer_sha256: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    answer_chars: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    __table_args__ = (
        Index("ix_routes_created", "created_at"),
        Index("ix_routes_request", "request_id"),
        Index("ix_routes_tenant_created", "tenant", "created_at"),
        Index("ix_routes_rung_created", "rung", "created_at"),
        Index("ix_routes_task_created", "task", "created_at"),
    )


class ApiKey(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public part of the key
    tenant: Mapped[str] = mapped_column(String(128), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    salt: Mapped[str] = mapped_column(String(64), nullable=False)  # hex
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False)  # hex of sha256(salt || secret)
    scopes: Mapped[list[str]] = mapped_column(JSONType, nullable=False)  # route, jobs
    budget_day_usd: Mapped[float | None] = mapped_column(Float)
    budget_month_usd: Mapped[float | None] = mapped_column(Float)
    rate_limit: Mapped[str | None] = mapped_column(String(64))  # the limits library's notation, "10/second"
    allowed_rungs: Mapped[list[str] | None] = mapped_column(JSONType)
    allowed_operating_points: Mapped[list[str] | None] = mapped_column(JSONType)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # the tenant opted in: its routes keep prompts and answers even when ESCALON_ROUTE_LOG_PROMPTS is off
    store_prompts: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_api_keys_tenant", "tenant"),)


class KeySpend(Base):
    __tablename__ = "key_spend"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)  # "day:2026-12-03", "month:2026-12"
    spent_usd: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    routes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)

"""The route log, API keys and their spend.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from escalon.db.models import BigId, JSONType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("replica", sa.String(200), nullable=False),
        sa.Column("tenant", sa.String(128)),
        sa.Column("key_id", sa.String(32)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("operating_point", sa.String(64), nullable=False),
        sa.Column("knob", JSONType, nullable=False),
        sa.Column("answer_type", sa.String(32), nullable=False),
        sa.Column("task", sa.String(64)),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("plan", JSONType, nullable=False),
        sa.Column("attempts", JSONType, nullable=False),
        sa.Column("rung", sa.String(64)),
        sa.Column("confidence", sa.Float),
        sa.Column("total_cost_usd", sa.Float, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("prompt_sha256", sa.String(64), nullable=False),
        sa.Column("prompt_chars", sa.Integer, nullable=False),
        sa.Column("answer", sa.Text),
        sa.Column("answer_sha256", sa.String(64), nullable=False),
        sa.Column("answer_chars", sa.Integer, nullable=False),
    )
    op.create_index("ix_routes_created", "routes", ["created_at"])
    op.create_index("ix_routes_request", "routes", ["request_id"])
    op.create_index("ix_routes_tenant_created", "routes", ["tenant", "created_at"])
    op.create_index("ix_routes_rung_created", "routes", ["rung", "created_at"])
    op.create_index("ix_routes_task_created", "routes", ["task", "created_at"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("scopes", JSONType, nullable=False),
        sa.Column("budget_day_usd", sa.Float),
        sa.Column("budget_month_usd", sa.Float),
        sa.Column("rate_limit", sa.String(64)),
        sa.Column("allowed_rungs", JSONType),
        sa.Column("allowed_operating_points", JSONType),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "key_spend",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("period", sa.String(16), primary_key=True),
        sa.Column("spent_usd", sa.Float, nullable=False),
        sa.Column("routes", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("key_spend")
    op.drop_index("ix_api_keys_tenant", "api_keys")
    op.drop_table("api_keys")
    for name in ("ix_routes_task_created", "ix_routes_rung_created", "ix_routes_tenant_created", "ix_routes_request",
                 "ix_routes_created"):
        op.drop_index(name, "routes")
    op.drop_table("routes")

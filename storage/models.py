"""Database tables (SQLModel). Times are int epoch seconds UTC everywhere.

The Alembic migrations in `storage/migrations/versions` must describe exactly
these tables; `tests/storage/test_migrations.py` checks that autogenerate finds
no difference on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

metadata = SQLModel.metadata


class Account(SQLModel, table=True):
    __tablename__ = "accounts"  # type: ignore[assignment]

    id: str = Field(primary_key=True)
    name: str = ""
    owner_email: str = ""
    plan: str = ""
    crm_id: str = ""
    billing_day: int = 1
    timezone: str = "UTC"
    quotas: dict[str, float] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
    updated_at: int = Field(sa_type=sa.BigInteger)


class UsagePoint(SQLModel, table=True):
    """One bucket of one metric for one account. Narrow on purpose: this is the big table."""

    __tablename__ = "usage_points"  # type: ignore[assignment]
    __table_args__ = (
        # Covering index: reading a metric's time range for all accounts is an index-only scan
        # (2.7x faster than going back to the table per row at 10k accounts; docs/benchmarks.md).
        # The primary key (account_id, metric, bucket_start) serves per-account reads.
        sa.Index("ix_usage_points_metric_bucket_cover", "metric", "bucket_start", "account_id", "value"),
        {"sqlite_with_rowid": False},
    )

    account_id: str = Field(primary_key=True)
    metric: str = Field(primary_key=True)
    bucket_start: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    value: float = Field(sa_type=sa.Double)


class UsageFirstSeen(SQLModel, table=True):
    """Earliest stored bucket per account and metric (maintained by upsert_usage).

    Cells before it are "not onboarded yet" (missing, not zero); keeping it here
    saves a MIN() over the whole history on every evaluation.
    """

    __tablename__ = "usage_first_seen"  # type: ignore[assignment]
    __table_args__ = ({"sqlite_with_rowid": False},)

    metric: str = Field(primary_key=True)
    account_id: str = Field(primary_key=True)
    first_bucket: int = Field(sa_type=sa.BigInteger)


class UsageCoverage(SQLModel, table=True):
    """Stored buckets (base resolution) in which at least one account has a point for the metric.

    A rule bucket with no covered base bucket was not delivered: missing for everyone.
    """

    __tablename__ = "usage_coverage"  # type: ignore[assignment]
    __table_args__ = ({"sqlite_with_rowid": False},)

    metric: str = Field(primary_key=True)
    bucket_start: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})


class AlertEpisode(SQLModel, table=True):
    __tablename__ = "alert_episodes"  # type: ignore[assignment]
    __table_args__ = (
        sa.Index("ix_alert_episodes_key", "rule_id", "account_id", "metric", "discriminator"),
        sa.Index("ix_alert_episodes_status", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rule_id: str
    account_id: str
    metric: str
    discriminator: str = ""
    status: str
    started_at: int = Field(sa_type=sa.BigInteger)
    fired_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    resolved_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    last_notified_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    consecutive: int = 0
    once: bool = False
    severity: str = "warning"
    last_seen_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    last_explanation: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
    acknowledged_by: str | None = None
    acknowledged_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    snoozed_until: int | None = Field(default=None, sa_type=sa.BigInteger)
    rule_hash: str = ""
    slack_channel: str | None = None
    slack_ts: str | None = None


class AlertEvent(SQLModel, table=True):
    """Audit trail: one row per lifecycle transition or manual action."""

    __tablename__ = "alert_events"  # type: ignore[assignment]
    __table_args__ = (sa.Index("ix_alert_events_episode", "episode_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    episode_id: int = Field(
        sa_column_args=[sa.ForeignKey("alert_episodes.id", ondelete="CASCADE")], nullable=False
    )
    event: str
    at: int = Field(sa_type=sa.BigInteger)
    notify: bool = False
    reason: str = ""
    actor: str | None = None
    explanation: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)


class OutboxEntry(SQLModel, table=True):
    """A side effect waiting to be delivered (Slack post, CRM write...)."""

    __tablename__ = "outbox"  # type: ignore[assignment]
    __table_args__ = (
        sa.UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
        sa.Index("ix_outbox_status_next", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str
    kind: str
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
    status: str = "pending"
    attempts: int = 0
    next_attempt_at: int = Field(sa_type=sa.BigInteger)
    last_error: str | None = None
    created_at: int = Field(sa_type=sa.BigInteger)
    sent_at: int | None = Field(default=None, sa_type=sa.BigInteger)


class SourceCursorRow(SQLModel, table=True):
    __tablename__ = "source_cursors"  # type: ignore[assignment]

    source_id: str = Field(primary_key=True)
    cursor: str | None = None
    watermark: int | None = Field(default=None, sa_type=sa.BigInteger)
    last_success_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    last_error: str | None = None
    updated_at: int = Field(sa_type=sa.BigInteger)


TABLES: tuple[sa.Table, ...] = (
    Account.__table__,  # type: ignore[attr-defined]
    UsagePoint.__table__,  # type: ignore[attr-defined]
    AlertEpisode.__table__,  # type: ignore[attr-defined]
    AlertEvent.__table__,  # type: ignore[attr-defined]
    OutboxEntry.__table__,  # type: ignore[attr-defined]
    SourceCursorRow.__table__,  # type: ignore[attr-defined]
)

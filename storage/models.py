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
    # The web UI's owner filter and owner-only access (bot/web/queries.py): an owner's accounts
    # without scanning every account.
    __table_args__ = (sa.Index("ix_accounts_owner_email", "owner_email"),)

    id: str = Field(primary_key=True)
    name: str = ""
    owner_email: str = ""
    plan: str = ""
    crm_id: str = ""
    billing_day: int = 1
    timezone: str = "UTC"
    quotas: dict[str, float] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
    updated_at: int = Field(sa_type=sa.BigInteger)
    csm_email: str = ""  # 0012_crm_account_facts
    arr: float | None = None
    renewal_at: int | None = Field(default=None, sa_type=sa.BigInteger)


class UsagePoint(SQLModel, table=True):
    """One bucket of one metric for one account. Narrow on purpose: this is the big table.

    Keyed bucket-major, (metric, bucket_start, account_id), and nothing else (0014_usage_bucket_major):
    a delivery of new buckets for every account is an append at the end of each metric's key range
    (pages filled in order; the right edge of the B-tree for the last metric, an interior insert
    point for the others, about twice the cost a row), where the old account-major key put each new
    row on its own leaf page (one new day at 100k accounts:
    400,000 pages, ~1.6 GB of WAL, 44-57 s; docs/benchmarks.md). Reading a metric's time range for
    all accounts is a range scan of the key; reading a few accounts seeks their key in each stored
    bucket (usage_coverage lists them; storage.usage._fill_short).
    """

    __tablename__ = "usage_points"  # type: ignore[assignment]
    __table_args__ = (
        sa.PrimaryKeyConstraint("metric", "bucket_start", "account_id", name="pk_usage_points"),
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


class UsageTile(SQLModel, table=True):
    """A cached tile of aggregated usage: TILE_COLS buckets of `step` seconds x up to TILE_ROWS accounts.

    Rows are accounts by their number in usage_tile_rows (ord // TILE_ROWS = grp); `sums` holds the
    float64 bucket sums (n_rows x TILE_COLS, C order), `has` the packed bits "has a point". Derived
    from usage_points only (storage/tiles.py): writes mark their buckets in usage_tile_dirty and the
    next read recomputes those columns, so a tile is never trusted past a write.
    """

    __tablename__ = "usage_tiles"  # type: ignore[assignment]

    metric: str = Field(primary_key=True)
    step: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    tile: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    grp: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    n_rows: int
    sums: bytes = Field(sa_type=sa.LargeBinary)
    has: bytes = Field(sa_type=sa.LargeBinary)


class UsageTileSet(SQLModel, table=True):
    """When a (metric, step, tile) was last read (wall clock): tiles idle for long are dropped."""

    __tablename__ = "usage_tile_sets"  # type: ignore[assignment]
    __table_args__ = ({"sqlite_with_rowid": False},)

    metric: str = Field(primary_key=True)
    step: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    tile: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    read_at: int = Field(sa_type=sa.BigInteger)


class UsageTileRow(SQLModel, table=True):
    """The row number of each account in the tiles (assigned once, never reused)."""

    __tablename__ = "usage_tile_rows"  # type: ignore[assignment]
    __table_args__ = (sa.UniqueConstraint("ord", name="uq_usage_tile_rows_ord"), {"sqlite_with_rowid": False})

    account_id: str = Field(primary_key=True)
    ord: int


class UsageTileDirty(SQLModel, table=True):
    """Base buckets written since the tiles covering them were last computed.

    Every write to usage_points adds or bumps (seq + 1) its buckets here in the same transaction;
    a tile refresh deletes a mark only if its seq is still the one it read.
    """

    __tablename__ = "usage_tile_dirty"  # type: ignore[assignment]
    __table_args__ = ({"sqlite_with_rowid": False},)

    metric: str = Field(primary_key=True)
    bucket_start: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    seq: int = Field(sa_type=sa.BigInteger)


OPEN_EPISODE_SQL = "status IN ('pending', 'firing')"


class AlertEpisode(SQLModel, table=True):
    __tablename__ = "alert_episodes"  # type: ignore[assignment]
    __table_args__ = (
        sa.Index("ix_alert_episodes_key", "rule_id", "account_id", "metric", "discriminator"),
        sa.Index("ix_alert_episodes_status", "status"),
        # States of a few accounts (incremental cycles, /usage <account>) without scanning all episodes.
        sa.Index("ix_alert_episodes_account", "account_id", "id"),
        # At most one open episode per key, whoever writes it (two concurrent cycles cannot both
        # start one: the second insert fails and its cycle runs again; bot/service/cycle_lock.py).
        sa.Index("uq_alert_episodes_open", "rule_id", "account_id", "metric", "discriminator", unique=True,
                 postgresql_where=sa.text(OPEN_EPISODE_SQL), sqlite_where=sa.text(OPEN_EPISODE_SQL)),
        # The web UI's alert list: newest first by start (keyset pages), alone or by state or rule
        # (bot/web/queries.py; 0011_web_ui_indexes).
        sa.Index("ix_alert_episodes_started", "started_at", "id"),
        sa.Index("ix_alert_episodes_status_started", "status", "started_at", "id"),
        sa.Index("ix_alert_episodes_rule_started", "rule_id", "started_at", "id"),
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
    # The usual level frozen when the episode opened (rules.model.Reference as JSON) and the
    # resolve hold: decided evaluations in a row without the condition, since when, last one.
    reference: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON, nullable=True)
    clear_count: int = 0
    recovering_since: int | None = Field(default=None, sa_type=sa.BigInteger)
    cleared_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    held: bool = False  # opened at a first evaluation (the first-run policy holds its firing)


class FirstEvaluation(SQLModel, table=True):
    """When a rule, or an account, was first evaluated: conditions already true then are recorded
    without paging people (the first-run policy, bot.service.pipeline)."""

    __tablename__ = "first_evaluations"  # type: ignore[assignment]
    __table_args__ = ({"sqlite_with_rowid": False},)

    scope: str = Field(primary_key=True)  # "rule" | "account"
    subject: str = Field(primary_key=True)  # rule id or account id
    first_at: int = Field(sa_type=sa.BigInteger)


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
        # One row per side effect and notifier: kind names the notifier ("notify:slack"), so the same
        # alert is queued once for each notifier and a notifier only ever delivers its own rows.
        sa.UniqueConstraint("kind", "idempotency_key", name="uq_outbox_kind_key"),
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
    # The current claim (storage/outbox.py): a fencing token per claim, and the lease's end on the
    # DATABASE clock (not a replica's), so a skewed replica cannot take a row another one still holds.
    claim_token: str | None = None
    lease_until: int | None = Field(default=None, sa_type=sa.BigInteger)
    claimed_by: str | None = None


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


# ----------------------------------------------------------------------- Slack (0002_slack)


class SlackUser(SQLModel, table=True):
    """Slack user lookups by email (users.lookupByEmail / users.info), cached.

    user_id None = Slack said no user has this email (a negative entry, re-asked after its TTL).
    """

    __tablename__ = "slack_users"  # type: ignore[assignment]
    __table_args__ = (sa.Index("ix_slack_users_user_id", "user_id"),)

    email: str = Field(primary_key=True)  # lower-cased
    user_id: str | None = None
    dm_channel: str | None = None  # the bot's DM channel with the user (conversations.open)
    tz: str | None = None  # the user's IANA timezone (users.info / lookupByEmail `tz`): quiet hours
    looked_up_at: int = Field(sa_type=sa.BigInteger)


class SlackMessage(SQLModel, table=True):
    """The parent message of an alert episode in one destination; its thread holds the follow-ups."""

    __tablename__ = "slack_messages"  # type: ignore[assignment]
    __table_args__ = (
        sa.UniqueConstraint("episode_id", "destination", name="uq_slack_messages_episode_destination"),
        sa.Index("ix_slack_messages_channel_ts", "channel", "ts"),
    )

    id: int | None = Field(default=None, primary_key=True)
    episode_id: int = Field(
        sa_column_args=[sa.ForeignKey("alert_episodes.id", ondelete="CASCADE")], nullable=False
    )
    destination: str  # "dm:<owner email>" or "channel:<name or id as routed>"
    channel: str  # Slack channel id
    ts: str
    alert: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
    last_event: str = ""
    last_event_at: int = Field(sa_type=sa.BigInteger)
    created_at: int = Field(sa_type=sa.BigInteger)


class SlackDeliveryStep(SQLModel, table=True):
    """One chat.postMessage of an outbox delivery. ts is None while the outcome is unknown
    (crash or lost response after the request was sent); a retry then looks for the message
    by its metadata before posting again."""

    __tablename__ = "slack_delivery_steps"  # type: ignore[assignment]

    step: str = Field(primary_key=True)
    channel: str
    thread_ts: str | None = None
    ts: str | None = None
    attempted_at: int = Field(sa_type=sa.BigInteger)
    done_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    # Who may post it now (a fencing token, and the lease's end on the database clock).
    claim_token: str | None = None
    lease_until: int | None = Field(default=None, sa_type=sa.BigInteger)


class SlackFeedback(SQLModel, table=True):
    """'Not useful' clicks, per rule (and episode, and user)."""

    __tablename__ = "slack_feedback"  # type: ignore[assignment]
    __table_args__ = (
        sa.UniqueConstraint("episode_id", "user_id", "verdict", name="uq_slack_feedback_episode_user_verdict"),
        sa.Index("ix_slack_feedback_rule", "rule_id", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rule_id: str
    episode_id: int = Field(
        sa_column_args=[sa.ForeignKey("alert_episodes.id", ondelete="CASCADE")], nullable=False
    )
    user_id: str
    verdict: str
    at: int = Field(sa_type=sa.BigInteger)


class SlackDigestItem(SQLModel, table=True):
    """An alert held back for an owner's daily digest DM."""

    __tablename__ = "slack_digest_items"  # type: ignore[assignment]
    __table_args__ = (
        sa.UniqueConstraint("item_key", name="uq_slack_digest_items_item_key"),
        sa.Index("ix_slack_digest_items_owner", "owner_email", "sent_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    item_key: str
    owner_email: str
    alert: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
    created_at: int = Field(sa_type=sa.BigInteger)
    digest_key: str | None = None  # set when the item is taken into a digest
    sent_at: int | None = Field(default=None, sa_type=sa.BigInteger)


class SlackAccountSnooze(SQLModel, table=True):
    """`/usage snooze <account> <duration>`: no Slack alerts for the account until `until`."""

    __tablename__ = "slack_account_snoozes"  # type: ignore[assignment]

    account_id: str = Field(primary_key=True)
    until: int = Field(sa_type=sa.BigInteger)
    snoozed_by: str
    snoozed_at: int = Field(sa_type=sa.BigInteger)


class SlackRequestSeen(SQLModel, table=True):
    """A signed Slack request already handled (replay protection, shared by replicas).

    `key` is a hash of the request's signature header (which signs its timestamp and body);
    `request_ts` is its X-Slack-Request-Timestamp: a row is pruned once a request with that timestamp
    can no longer pass the signature check's 5-minute window."""

    __tablename__ = "slack_requests_seen"  # type: ignore[assignment]
    __table_args__ = (sa.Index("ix_slack_requests_seen_request_ts", "request_ts"),)

    key: str = Field(primary_key=True)
    request_ts: int = Field(sa_type=sa.BigInteger)
    seen_at: int = Field(sa_type=sa.BigInteger)


SLACK_TABLES: tuple[sa.Table, ...] = (
    SlackUser.__table__,  # type: ignore[attr-defined]
    SlackMessage.__table__,  # type: ignore[attr-defined]
    SlackDeliveryStep.__table__,  # type: ignore[attr-defined]
    SlackFeedback.__table__,  # type: ignore[attr-defined]
    SlackDigestItem.__table__,  # type: ignore[attr-defined]
    SlackAccountSnooze.__table__,  # type: ignore[attr-defined]
    SlackRequestSeen.__table__,  # type: ignore[attr-defined]
)


# ----------------------------------------------------------------- Salesforce sync (0003_crm)


class CrmRecordState(SQLModel, table=True):
    """Per account and Salesforce object: the field values Salesforce last accepted from usagebot.

    The CRM sync sends only fields whose desired value differs from `written`.
    `match_key` is the record Id or external id the values were written to; when
    it changes, `written` no longer describes the new record. `last_error` and
    `failures` describe the latest failed attempt (cleared by the next success); `parked` the
    values a sync no longer sends (see below).
    """

    __tablename__ = "crm_record_state"  # type: ignore[assignment]

    account_id: str = Field(primary_key=True)
    sf_object: str = Field(primary_key=True)
    match_key: str
    written: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
    written_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    last_error: str | None = None
    failures: int = 0
    last_attempt_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    updated_at: int = Field(sa_type=sa.BigInteger)
    # the field values Salesforce refused for good (integrations.salesforce.errors), or after too many
    # failures: not sent again until they change or `usagebot crm retry` clears this; None = not parked
    parked: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON(none_as_null=True), nullable=True)


class CrmTask(SQLModel, table=True):
    """The Salesforce Task created for an alert episode (at most one per episode).

    status: "created" (sf_task_id set), "failed" (Salesforce refused it; retried
    next sync), "parked" (refused for good, or RETRY_LIMIT tries counted by `attempts`: not
    planned again until `usagebot crm retry`), "unknown" (about to be created, or the request failed in a way that
    may have created it: the next sync looks it up by `task_key` before creating
    another). `task_key` is written into the Task (bot/crm/sync.py), unique per episode.
    """

    __tablename__ = "crm_tasks"  # type: ignore[assignment]
    __table_args__ = (sa.UniqueConstraint("task_key", name="uq_crm_tasks_task_key"),)

    episode_id: int = Field(
        primary_key=True, sa_column_kwargs={"autoincrement": False},
        sa_column_args=[sa.ForeignKey("alert_episodes.id", ondelete="CASCADE")],
    )
    account_id: str
    rule_id: str
    status: str
    subject: str = ""
    what_id: str | None = None
    sf_task_id: str | None = None
    attempts: int = 0
    last_error: str | None = None
    first_attempt_at: int = Field(sa_type=sa.BigInteger)
    updated_at: int = Field(sa_type=sa.BigInteger)
    task_key: str | None = None  # None only on rows written before 0009_exactly_once


class CrmSyncRun(SQLModel, table=True):
    """One real (not dry-run) CRM sync: what it did and how much API it used."""

    __tablename__ = "crm_sync_runs"  # type: ignore[assignment]
    __table_args__ = (sa.Index("ix_crm_sync_runs_started", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    started_at: int = Field(sa_type=sa.BigInteger)
    finished_at: int = Field(sa_type=sa.BigInteger)
    accounts: int = 0
    changed: int = 0
    written: int = 0
    failed: int = 0
    deferred: int = 0
    unmatched: int = 0
    tasks_created: int = 0
    tasks_failed: int = 0
    api_calls: int = 0
    api_used: int | None = None
    api_max: int | None = None
    stopped: str | None = None


CRM_TABLES: tuple[sa.Table, ...] = (
    CrmRecordState.__table__,  # type: ignore[attr-defined]
    CrmTask.__table__,  # type: ignore[attr-defined]
    CrmSyncRun.__table__,  # type: ignore[attr-defined]
)


# ----------------------------------------------------------------- service (sources, scheduler)


class IngestedEvent(SQLModel, table=True):
    """Event ids already added to usage (push ingest, event feeds): deduplication by id.

    Ids are forgotten by EVENT time (`event_at`), the clock acceptance checks too: an id is pruned
    only once its event is older than the source's `events_forgotten_before`, which refuses it.
    """

    __tablename__ = "ingested_events"  # type: ignore[assignment]
    __table_args__ = (sa.Index("ix_ingested_events_event_at", "event_at"),)

    source_id: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    received_at: int = Field(sa_type=sa.BigInteger)
    event_at: int = Field(sa_type=sa.BigInteger)


class SourceStatus(SQLModel, table=True):
    """Freshness of a usage source (the cursor itself lives in source_cursors)."""

    __tablename__ = "source_status"  # type: ignore[assignment]

    source_id: str = Field(primary_key=True)
    kind: str = "poll"  # "poll" or "push"
    metrics: list[str] = Field(default_factory=list, sa_type=sa.JSON, nullable=False)
    registered_at: int = Field(sa_type=sa.BigInteger)
    last_poll_at: int | None = Field(default=None, sa_type=sa.BigInteger)
    last_data_at: int | None = Field(default=None, sa_type=sa.BigInteger)  # newest data timestamp seen
    last_new_data_at: int | None = Field(default=None, sa_type=sa.BigInteger)  # when data last changed
    failures: int = 0  # consecutive failed polls
    stale_since: int | None = Field(default=None, sa_type=sa.BigInteger)
    updated_at: int = Field(sa_type=sa.BigInteger)
    # Event ids of events before this time were pruned: such events are refused (or dropped), never
    # counted again (storage.sources.prune_events).
    events_forgotten_before: int | None = Field(default=None, sa_type=sa.BigInteger)


class SourceSeries(SQLModel, table=True):
    """Which (metric, account) series a source has delivered (to mute them when it goes stale)."""

    __tablename__ = "source_series"  # type: ignore[assignment]

    source_id: str = Field(primary_key=True)
    metric: str = Field(primary_key=True)
    account_id: str = Field(primary_key=True)


class UsageChange(SQLModel, table=True):
    """Usage written since the last evaluation: (account, metric, first and last bucket written).
    account_id None (0017): a write of new buckets, every account stored in those buckets of the metric."""

    __tablename__ = "usage_changes"  # type: ignore[assignment]

    id: int | None = Field(default=None, primary_key=True)
    account_id: str | None = None
    metric: str
    bucket_start: int = Field(sa_type=sa.BigInteger)
    last_bucket: int | None = Field(default=None, sa_type=sa.BigInteger)  # None: rows from before 0008
    source_id: str = ""
    changed_at: int = Field(sa_type=sa.BigInteger)


class RuleProgress(SQLModel, table=True):
    """The last bucket end each rule was evaluated at by the scheduler."""

    __tablename__ = "rule_progress"  # type: ignore[assignment]

    rule_id: str = Field(primary_key=True)
    evaluated_through: int = Field(sa_type=sa.BigInteger)
    updated_at: int = Field(sa_type=sa.BigInteger)


class CrmAccountFacts(SQLModel, table=True):
    """The account facts pulled from Salesforce (0012_crm_account_facts): `facts` holds the
    AccountFacts fields the CRM mapping supplies (blank values included). They overlay the accounts
    CSV: storage.accounts writes every account's row with these on top, whichever comes last."""

    __tablename__ = "crm_account_facts"  # type: ignore[assignment]

    account_id: str = Field(primary_key=True)
    sf_id: str
    facts: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)
    modstamp: str = ""  # the record's SystemModstamp when pulled
    pulled_at: int = Field(sa_type=sa.BigInteger)


class CrmPullCursor(SQLModel, table=True):
    """Where the incremental pull of account facts left off (the newest SystemModstamp seen)."""

    __tablename__ = "crm_pull_cursor"  # type: ignore[assignment]

    name: str = Field(primary_key=True)
    modstamp: str
    updated_at: int = Field(sa_type=sa.BigInteger)


class LeaderLease(SQLModel, table=True):
    """Leader election by lease row (when no PostgreSQL advisory lock is used)."""

    __tablename__ = "leader_lease"  # type: ignore[assignment]

    name: str = Field(primary_key=True)
    holder: str
    acquired_at: int = Field(sa_type=sa.BigInteger)
    renewed_at: int = Field(sa_type=sa.BigInteger)
    expires_at: int = Field(sa_type=sa.BigInteger)


SERVICE_TABLES: tuple[sa.Table, ...] = (
    IngestedEvent.__table__,  # type: ignore[attr-defined]
    SourceStatus.__table__,  # type: ignore[attr-defined]
    SourceSeries.__table__,  # type: ignore[attr-defined]
    UsageChange.__table__,  # type: ignore[attr-defined]
    RuleProgress.__table__,  # type: ignore[attr-defined]
    LeaderLease.__table__,  # type: ignore[attr-defined]
    CrmAccountFacts.__table__,  # type: ignore[attr-defined]
    CrmPullCursor.__table__,  # type: ignore[attr-defined]
)
TABLES = (*TABLES, *SERVICE_TABLES)

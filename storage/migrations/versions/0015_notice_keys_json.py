"""Notice keys of refused buckets and cohort events in the JSON form (storage.outbox.idempotency_key).

Before 097b084 these keys joined their parts with ':' (`source-refused:{source}:{account}:{metric}:
{start}`, `cohort:{rule}:{cohort}:{at}[:{direction}]`). The code now looks for the JSON form only, so
after an upgrade a bucket refused again within a window's overlap, or a cohort event of a bucket
evaluated again, would have been told once more. Each such row's key is rebuilt from what its own
payload records (never by splitting the old key, which was ambiguous when a part held ':'). A row
whose new key another row of its notifier already holds keeps its old key (that thing was told under
both). Keys of other notices did not change. Downgrade: nothing (the old code never reads the new
keys as told again, so it would tell those things once more, as before this migration).

Revision ID: 0015_notice_keys_json
Revises: 0014_usage_bucket_major
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0015_notice_keys_json"
down_revision: str | None = "0014_usage_bucket_major"
branch_labels: str | None = None
depends_on: str | None = None

_OUTBOX = sa.table("outbox", sa.column("id", sa.Integer), sa.column("kind", sa.String),
                   sa.column("idempotency_key", sa.String), sa.column("payload", sa.JSON))
BATCH = 500  # old-form rows read per query (each read page is rewritten before the next is read)


def _key(kind: str, *parts: str | int) -> str:
    """The JSON form as of this revision (frozen here: a later change of storage.outbox must not
    change what this migration wrote)."""
    return f"{kind}:" + json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False)


def _epoch(text: Any) -> int | None:
    """rules.periods.iso's "2026-11-03T00:00:00Z" as epoch seconds; None when it is not that."""
    try:
        return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def new_key(old: str, payload: dict[str, Any]) -> str | None:
    """The JSON-form key of an old-form row from its payload; None when the payload does not say."""
    details = payload.get("details") if isinstance(payload.get("details"), dict) else {}
    if old.startswith("source-refused:"):
        source, account, metric = details.get("source"), details.get("account"), details.get("metric")
        start = _epoch(details.get("bucket"))
        if not all(isinstance(p, str) for p in (source, account, metric)) or start is None:
            return None
        return _key("source-refused", source, account, metric, start)
    rule, cohort, at = details.get("rule"), details.get("cohort"), payload.get("at")
    if not isinstance(rule, str) or not isinstance(cohort, str) or not isinstance(at, int):
        return None
    way = details.get("direction")
    return _key("cohort", rule, cohort, at, *([way] if isinstance(way, str) and way else []))


def upgrade() -> None:
    if context.is_offline_mode():  # a data step: it reads rows, which an offline SQL script cannot
        op.execute("-- 0015_notice_keys_json: old-form notice keys are rewritten only by an online upgrade")
        return
    conn = op.get_bind()
    old_form = sa.or_(
        sa.and_(_OUTBOX.c.idempotency_key.like("source-refused:%"),
                sa.not_(_OUTBOX.c.idempotency_key.like("source-refused:[%"))),
        sa.and_(_OUTBOX.c.idempotency_key.like("cohort:%"), sa.not_(_OUTBOX.c.idempotency_key.like("cohort:[%"))),
    )
    last = 0
    while True:  # keyset pages by id: an outbox of millions of old rows is never held at once
        rows = conn.execute(sa.select(_OUTBOX.c.id, _OUTBOX.c.kind, _OUTBOX.c.idempotency_key, _OUTBOX.c.payload)
                            .where(old_form, _OUTBOX.c.id > last).order_by(_OUTBOX.c.id).limit(BATCH)).all()
        for row in rows:
            _rewrite(conn, row)
        if len(rows) < BATCH:
            return
        last = rows[-1].id


def _rewrite(conn: sa.Connection, row: Any) -> None:
    """Give one old-form row its JSON-form key, unless its payload does not say it or another row of
    its notifier already holds that key (then the thing was told under both: the row is kept as is)."""
    payload = row.payload if isinstance(row.payload, dict) else json.loads(row.payload or "{}")
    key = new_key(row.idempotency_key, payload)
    if key is None:
        return
    taken = conn.execute(sa.select(_OUTBOX.c.id).where(_OUTBOX.c.kind == row.kind,
                                                       _OUTBOX.c.idempotency_key == key)).first()
    if taken is None:
        conn.execute(_OUTBOX.update().where(_OUTBOX.c.id == row.id).values(idempotency_key=key))


def downgrade() -> None:
    pass

"""Outbox: side effects written with the state change, delivered later with retries.

Lifecycle of a row: pending -> (claimed by a worker) -> sent, or failed (due
again after a backoff) -> ... -> dead after `max_attempts` claims.
`claim_due` counts an attempt and leases the row for `lease` seconds, so a
worker that crashes mid-delivery does not lose it and a concurrent worker
does not take it twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from storage.db import write_transaction
from storage.jsonsafe import json_safe
from storage.models import OutboxEntry

outbox_table: sa.Table = OutboxEntry.__table__  # type: ignore[attr-defined]
_c = outbox_table.c

PENDING, SENT, FAILED, DEAD = "pending", "sent", "failed", "dead"
LEGACY_NOTIFY_KIND = "notify"  # rows queued before notifications were per notifier (delivered by Slack)


def notify_kind(notifier: str) -> str:
    """The outbox kind of one notifier's notification rows ("notify:slack"): a notifier claims
    only its own rows, so a manual run with the console never takes Slack's."""
    return f"notify:{notifier}"


def outbox_kinds(notifier_name: str) -> list[str]:
    """The outbox kinds a notifier delivers: its own, and for Slack the rows queued before
    notifications were per notifier."""
    kinds = [notify_kind(notifier_name)]
    if notifier_name == "slack":
        kinds.append(LEGACY_NOTIFY_KIND)
    return kinds


DEFAULT_LEASE = 300
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class OutboxItem:
    idempotency_key: str
    kind: str
    payload: Mapping[str, Any]
    not_before: int | None = None  # earliest delivery time (default: now)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    idempotency_key: str
    kind: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: int
    last_error: str | None
    created_at: int
    sent_at: int | None


def default_backoff(attempts: int) -> int:
    """Seconds before the next try after `attempts` failed tries: 30 s doubling, at most 1 h."""
    return int(min(3600, 30 * 2 ** max(0, attempts - 1)))


def _insert_rows(conn: Connection, items: Sequence[OutboxItem], now: int) -> int:
    rows: list[dict[str, Any]] = []
    for n, it in enumerate(items):
        if not it.idempotency_key:
            raise ValueError(f"outbox item #{n} ({it.kind!r}): idempotency_key must not be empty")
        try:
            payload = json_safe(dict(it.payload), f"outbox item {it.idempotency_key!r} ({it.kind!r}) payload")
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        rows.append({
            "idempotency_key": it.idempotency_key, "kind": it.kind, "payload": payload, "status": PENDING,
            "attempts": 0, "next_attempt_at": now if it.not_before is None else int(it.not_before),
            "last_error": None, "created_at": now, "sent_at": None,
        })
    if not rows:
        return 0
    ins: Any = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(outbox_table)
    stmt = ins.on_conflict_do_nothing(index_elements=[_c.kind, _c.idempotency_key]).returning(_c.id)
    inserted = 0
    for row in rows:  # one by one: RETURNING tells exactly which keys were new
        inserted += len(conn.execute(stmt, row).all())
    return inserted


def enqueue(conn_or_engine: Connection | Engine, items: Iterable[OutboxItem], now: int | None = None) -> int:
    """Add items (ON CONFLICT (kind, idempotency_key) DO NOTHING); returns how many were new.

    Pass a Connection to enqueue inside the caller's transaction.
    """
    at = int(time.time()) if now is None else int(now)
    batch = list(items)
    if isinstance(conn_or_engine, Connection):
        return _insert_rows(conn_or_engine, batch, at)
    with conn_or_engine.begin() as conn:
        return _insert_rows(conn, batch, at)


def _to_row(r: Any) -> OutboxRow:
    return OutboxRow(
        id=int(r.id), idempotency_key=r.idempotency_key, kind=r.kind, payload=dict(r.payload or {}),
        status=r.status, attempts=int(r.attempts), next_attempt_at=int(r.next_attempt_at),
        last_error=r.last_error, created_at=int(r.created_at),
        sent_at=None if r.sent_at is None else int(r.sent_at),
    )


def claim_due(
    engine: Engine, now: int, limit: int = 100, kinds: Sequence[str] | None = None, lease: int = DEFAULT_LEASE,
) -> list[OutboxRow]:
    """Pending/failed rows with next_attempt_at <= now, oldest first.

    Each claimed row's attempts is incremented and its next_attempt_at moved
    to now + lease; the caller must then mark_sent or mark_failed it.
    """
    q = (
        sa.select(outbox_table)
        .where(_c.status.in_([PENDING, FAILED]), _c.next_attempt_at <= now)
        .order_by(_c.next_attempt_at, _c.id)
        .limit(limit)
    )
    if kinds is not None:
        q = q.where(_c.kind.in_(list(kinds)))
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        rows = conn.execute(q).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        conn.execute(
            sa.update(outbox_table).where(_c.id.in_(ids))
            .values(attempts=_c.attempts + 1, next_attempt_at=now + lease)
        )
        claimed = conn.execute(sa.select(outbox_table).where(_c.id.in_(ids))).all()
    by_id = {r.id: _to_row(r) for r in claimed}
    return [by_id[i] for i in ids]


def mark_sent(engine: Engine, ids: Iterable[int], now: int) -> int:
    """Mark rows delivered; returns how many rows changed."""
    id_list = list(ids)
    if not id_list:
        return 0
    with engine.begin() as conn:
        res = conn.execute(
            sa.update(outbox_table).where(_c.id.in_(id_list))
            .values(status=SENT, sent_at=now, last_error=None)
        )
        return int(res.rowcount)


def mark_failed(
    engine: Engine, id: int, now: int, error: str, retry_in: int | None = None, max_attempts: int = 10,
) -> str:
    """Record a failed delivery; returns the new status ("failed" or "dead").

    The row is due again at now + retry_in (default: `default_backoff`) unless
    it has been tried `max_attempts` times, then it is dead (never retried).
    """
    with write_transaction(engine) as conn:
        row = conn.execute(sa.select(_c.attempts).where(_c.id == id)).one_or_none()
        if row is None:
            raise KeyError(f"outbox row {id} does not exist")
        attempts = max(int(row.attempts), 1)
        delay = default_backoff(attempts) if retry_in is None else max(0, int(retry_in))
        status = DEAD if attempts >= max_attempts else FAILED
        conn.execute(
            sa.update(outbox_table).where(_c.id == id).values(
                status=status, attempts=attempts, last_error=error[:MAX_ERROR_CHARS],
                next_attempt_at=now + delay,
            )
        )
    return status


def mark_dead(engine: Engine, id: int, now: int, error: str) -> None:
    """Give up on a row now (a permanent error such as an unknown Slack channel)."""
    with engine.begin() as conn:
        res = conn.execute(
            sa.update(outbox_table).where(_c.id == id)
            .values(status=DEAD, last_error=error[:MAX_ERROR_CHARS], next_attempt_at=now)
        )
        if res.rowcount == 0:
            raise KeyError(f"outbox row {id} does not exist")


def retry_dead(engine: Engine, now: int, ids: Iterable[int] | None = None) -> int:
    """Put dead rows (all, or `ids`) back in the queue with a fresh attempt count."""
    q = sa.update(outbox_table).where(_c.status == DEAD)
    if ids is not None:
        q = q.where(_c.id.in_(list(ids)))
    with engine.begin() as conn:
        return int(conn.execute(q.values(status=PENDING, attempts=0, next_attempt_at=now)).rowcount)


def list_outbox(engine: Engine, status: str | None = None, limit: int = 100) -> list[OutboxRow]:
    """Newest rows first (for the CLI and audits)."""
    q = sa.select(outbox_table).order_by(_c.id.desc()).limit(limit)
    if status is not None:
        q = q.where(_c.status == status)
    with engine.connect() as conn:
        return [_to_row(r) for r in conn.execute(q)]


def counts(engine: Engine) -> dict[str, int]:
    """Row count per status."""
    with engine.connect() as conn:
        return {s: int(n) for s, n in conn.execute(sa.select(_c.status, sa.func.count()).group_by(_c.status))}

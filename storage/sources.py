"""Storage for the service: usage batches from sources, push dedup ids, freshness, changes, leadership.

`store_batch` writes one batch of a source in ONE transaction: the usage
points, the event ids (push ingest and event feeds: deduplicated, then added
to their buckets), account facts, the source's cursor and freshness, the
(metric, account) series it feeds and the "usage changed" marks the evaluator
reads. If anything fails nothing is written, so a poll or a push request is
stored whole or not at all.

Two kinds of usage rows:
- totals (polled sources): each row is the usage total of its bucket; rows of
  one batch in the same (account, metric, base bucket) are added up, then
  REPLACE what is stored (re-reading an overlap window changes nothing).
- events (push ingest, `fields.id` feeds): each event is new usage; events
  whose id was seen before are dropped, the rest are ADDED to what is stored.
  Ids are kept until `prune_events` forgets those of events older than a
  horizon (by the EVENT's time, the clock acceptance checks); the horizon is
  stored per source, and events older than it are never counted again
  (`StoreResult.events_expired`; push ingest refuses them up front).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from storage.accounts import _row as _account_row
from storage.accounts import accounts_table
from storage.cursors import MAX_ERROR_CHARS, cursors_table
from storage.db import write_transaction
from storage.models import (
    IngestedEvent,
    LeaderLease,
    RuleProgress,
    SourceSeries,
    SourceStatus,
    UsagePoint,
)
from storage.outbox import OutboxItem, enqueue
from storage.usage import UsageValueError, check_totals, write_points  # (keeps first-seen / coverage in step)

events_table: sa.Table = IngestedEvent.__table__  # type: ignore[attr-defined]
status_table: sa.Table = SourceStatus.__table__  # type: ignore[attr-defined]
series_table: sa.Table = SourceSeries.__table__  # type: ignore[attr-defined]
progress_table: sa.Table = RuleProgress.__table__  # type: ignore[attr-defined]
lease_table: sa.Table = LeaderLease.__table__  # type: ignore[attr-defined]
usage_table: sa.Table = UsagePoint.__table__  # type: ignore[attr-defined]

BASE_STEP = 60
_CHUNK = 1000
_U = usage_table.c


class UsageLike(Protocol):
    account: str
    metric: str
    ts: int
    value: float


class EventLike(UsageLike, Protocol):
    id: str


@dataclass(frozen=True)
class SourceState:
    """Cursor (source_cursors) and freshness (source_status) of one source."""

    source_id: str
    kind: str = "poll"
    metrics: tuple[str, ...] = ()
    registered_at: int | None = None
    last_poll_at: int | None = None
    last_data_at: int | None = None
    last_new_data_at: int | None = None
    failures: int = 0
    stale_since: int | None = None
    cursor: str | None = None
    watermark: int | None = None
    last_success_at: int | None = None
    last_error: str | None = None
    events_forgotten_before: int | None = None  # ids of events before this were pruned: refuse them


@dataclass
class StoreResult:
    points_written: int = 0
    changed: dict[tuple[str, str], int] = field(default_factory=dict)  # (account, metric) -> earliest bucket
    events_new: int = 0
    events_duplicate: int = 0
    events_expired: int = 0  # older than the source's pruning horizon: their ids may be forgotten, not counted
    accounts: int = 0
    newest: int | None = None  # newest data timestamp in the batch


def _insert(conn: Connection, table: sa.Table) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _opt(x: Any) -> int | None:
    return None if x is None else int(x)


# ------------------------------------------------------------------------ reads


def _state(status: Any, cur: Any, source_id: str) -> SourceState:
    return SourceState(
        source_id=source_id,
        kind=status.kind if status is not None else "poll",
        metrics=tuple(status.metrics or ()) if status is not None else (),
        registered_at=_opt(status.registered_at) if status is not None else None,
        last_poll_at=_opt(status.last_poll_at) if status is not None else None,
        last_data_at=_opt(status.last_data_at) if status is not None else None,
        last_new_data_at=_opt(status.last_new_data_at) if status is not None else None,
        failures=int(status.failures) if status is not None else 0,
        stale_since=_opt(status.stale_since) if status is not None else None,
        events_forgotten_before=_opt(status.events_forgotten_before) if status is not None else None,
        cursor=cur.cursor if cur is not None else None,
        watermark=_opt(cur.watermark) if cur is not None else None,
        last_success_at=_opt(cur.last_success_at) if cur is not None else None,
        last_error=cur.last_error if cur is not None else None,
    )


def get_source_state(engine: Engine, source_id: str) -> SourceState | None:
    with engine.connect() as conn:
        st = conn.execute(sa.select(status_table).where(status_table.c.source_id == source_id)).one_or_none()
        cur = conn.execute(sa.select(cursors_table).where(cursors_table.c.source_id == source_id)).one_or_none()
    if st is None and cur is None:
        return None
    return _state(st, cur, source_id)


def list_source_states(engine: Engine) -> list[SourceState]:
    with engine.connect() as conn:
        st = {r.source_id: r for r in conn.execute(sa.select(status_table))}
        cur = {r.source_id: r for r in conn.execute(sa.select(cursors_table))}
    return [_state(st.get(s), cur.get(s), s) for s in sorted(set(st) | set(cur))]


def register_source(engine: Engine, source_id: str, kind: str, now: int) -> None:
    """Make sure the source has a status row (its registration time starts the freshness clock)."""
    with engine.begin() as conn:
        _ensure_status(conn, source_id, kind, now)


def _ensure_status(conn: Connection, source_id: str, kind: str, now: int, lock: bool = False) -> Any:
    """The source's status row (created if missing); `lock`: held until commit (PostgreSQL row lock),
    so prune_events cannot move the source's horizon while a batch is being stored."""
    ins = _insert(conn, status_table).values(
        source_id=source_id, kind=kind, metrics=[], registered_at=now, failures=0, updated_at=now)
    conn.execute(ins.on_conflict_do_nothing(index_elements=[status_table.c.source_id]))
    q = sa.select(status_table).where(status_table.c.source_id == source_id)
    if lock and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return conn.execute(q).one()


# ------------------------------------------------------------------------ usage writes


def _sums(records: Iterable[UsageLike], base_step: int, what: str) -> tuple[dict[tuple[str, str, int], float], int | None]:
    acc: dict[tuple[str, str, int], float] = {}
    newest: int | None = None
    for n, r in enumerate(records):
        try:
            ts = int(r.ts)
            value = float(r.value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{what} #{n} ({r!r}): ts must be epoch seconds and value a number") from None
        if not math.isfinite(value):
            raise UsageValueError(f"{what} #{n} ({r!r}): value {value} is not a finite number")
        if not r.account or not r.metric:
            raise ValueError(f"{what} #{n} ({r!r}): account and metric must not be empty")
        key = (str(r.account), str(r.metric), ts - ts % base_step)
        acc[key] = acc.get(key, 0.0) + value
        newest = ts if newest is None or ts > newest else newest
    check_totals(acc, what.rsplit(":", 1)[0])
    return acc, newest


def _existing(conn: Connection, keys: Iterable[tuple[str, str, int]]) -> dict[tuple[str, str, int], float]:
    ranges: dict[str, list[int]] = {}
    accounts: dict[str, set[str]] = {}
    for a, m, b in keys:
        lo_hi = ranges.setdefault(m, [b, b])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], b), max(lo_hi[1], b)
        accounts.setdefault(m, set()).add(a)
    out: dict[tuple[str, str, int], float] = {}
    for m, (lo, hi) in ranges.items():
        q = sa.select(_U.account_id, _U.bucket_start, _U.value).where(
            _U.metric == m, _U.bucket_start >= lo, _U.bucket_start <= hi)
        if len(accounts[m]) <= _CHUNK:
            q = q.where(_U.account_id.in_(sorted(accounts[m])))
        for a, b, v in conn.execute(q):
            out[(a, m, int(b))] = float(v)
    return out


def _new_event_ids(conn: Connection, source_id: str, times: Mapping[str, int], now: int) -> set[str]:
    """Insert event ids (id -> event time); returns those that were not stored before (the rest are
    duplicates)."""
    new: set[str] = set()
    c = events_table.c
    ids = list(times)
    for i in range(0, len(ids), 500):
        rows = [{"source_id": source_id, "event_id": e, "received_at": now, "event_at": int(times[e])}
                for e in ids[i : i + 500]]
        stmt = (_insert(conn, events_table).values(rows)
                .on_conflict_do_nothing(index_elements=[c.source_id, c.event_id]).returning(c.event_id))
        new.update(conn.execute(stmt).scalars())
    return new


def _mark_series(conn: Connection, source_id: str, pairs: set[tuple[str, str]]) -> None:
    if not pairs:
        return
    have = {(m, a) for m, a in conn.execute(
        sa.select(series_table.c.metric, series_table.c.account_id).where(series_table.c.source_id == source_id))}
    missing = [{"source_id": source_id, "metric": m, "account_id": a} for (a, m) in sorted(pairs)
               if (m, a) not in have]  # key order: concurrent writers lock rows in one order
    if missing:
        stmt = _insert(conn, series_table).on_conflict_do_nothing(
            index_elements=[series_table.c.source_id, series_table.c.metric, series_table.c.account_id])
        for i in range(0, len(missing), _CHUNK):
            conn.execute(stmt, missing[i : i + _CHUNK])


def _save_cursor(conn: Connection, source_id: str, values: Mapping[str, Any]) -> None:
    ins = _insert(conn, cursors_table).values(source_id=source_id, **values)
    conn.execute(ins.on_conflict_do_update(index_elements=[cursors_table.c.source_id], set_=dict(values)))


def store_batch(
    engine: Engine,
    source_id: str,
    now: int,
    *,
    totals: Iterable[UsageLike] = (),
    events: Iterable[EventLike] = (),
    accounts: Sequence[Any] = (),
    cursor: str | None = None,
    watermark: int | None = None,
    kind: str = "poll",
    base_step: int = BASE_STEP,
    outbox: Sequence[OutboxItem] = (),
    error: str | None = None,
) -> StoreResult:
    """Store one batch of `source_id` atomically (see the module doc); returns what changed.

    `cursor` / `watermark` are saved as the source's new position (pass the
    previous ones to keep them). Accounts are AccountFacts (upserted by id).
    `outbox` items (e.g. an admin notice about a rejected file) are enqueued in
    the same transaction; `error` (a rejected part of an otherwise good poll)
    is kept as the source's last error.
    """
    total_sums, newest_t = _sums(totals, base_step, f"source {source_id!r}: usage row")
    event_list = list(events)
    for n, e in enumerate(event_list):
        if not isinstance(e.id, str) or not e.id:
            raise ValueError(f"source {source_id!r}: event #{n} ({e!r}) has no id")
    result = StoreResult()
    with write_transaction(engine) as conn:
        status = _ensure_status(conn, source_id, kind, now, lock=bool(event_list))
        changed: dict[tuple[str, str], int] = {}

        if total_sums:
            existing = _existing(conn, total_sums)
            rows = [(a, m, b, v) for (a, m, b), v in total_sums.items() if existing.get((a, m, b)) != v]
            write_points(conn, rows, additive=False)
            result.points_written += len(rows)
            for a, m, b, _ in rows:
                changed[(a, m)] = min(b, changed.get((a, m), b))

        newest_e: int | None = None
        if event_list:
            horizon = _opt(status.events_forgotten_before)
            seen: dict[str, EventLike] = {}
            for e in event_list:
                if horizon is not None and int(e.ts) < horizon:
                    result.events_expired += 1  # its id may have been pruned: it cannot be deduplicated
                    continue
                seen.setdefault(e.id, e)  # the same id twice in one batch counts once
            new_ids = _new_event_ids(conn, source_id, {i: int(e.ts) for i, e in seen.items()}, now)
            fresh = [seen[i] for i in seen if i in new_ids]
            result.events_new = len(fresh)
            result.events_duplicate = len(event_list) - len(fresh) - result.events_expired
            ev_sums, newest_e = _sums(fresh, base_step, f"source {source_id!r}: event")
            rows = [(a, m, b, v) for (a, m, b), v in ev_sums.items()]
            write_points(conn, rows, additive=True)
            result.points_written += len(rows)
            for a, m, b, _ in rows:
                changed[(a, m)] = min(b, changed.get((a, m), b))

        if accounts:
            values = [_account_row(a, now) for a in accounts]
            ins = _insert(conn, accounts_table)
            stmt = ins.on_conflict_do_update(
                index_elements=[accounts_table.c.id],
                set_={c: ins.excluded[c] for c in values[0] if c != "id"})
            for i in range(0, len(values), _CHUNK):
                conn.execute(stmt, values[i : i + _CHUNK])
            result.accounts = len(values)

        newest = max((x for x in (newest_t, newest_e) if x is not None), default=None)
        result.newest = newest
        result.changed = changed
        pairs = {k[:2] for k in total_sums} | {(e.account, e.metric) for e in event_list}
        _mark_series(conn, source_id, pairs)

        prev_data = _opt(status.last_data_at)
        data_at = prev_data if newest is None else max(newest, prev_data or newest)
        advanced = bool(changed) or (newest is not None and (prev_data is None or newest > prev_data))
        metrics = sorted(set(status.metrics or ()) | {m for _, m in pairs})
        conn.execute(sa.update(status_table).where(status_table.c.source_id == source_id).values(
            kind=kind, metrics=metrics, last_poll_at=now, last_data_at=data_at,
            last_new_data_at=now if advanced else status.last_new_data_at, failures=0, updated_at=now))
        _save_cursor(conn, source_id, {"cursor": cursor, "watermark": watermark, "last_success_at": now,
                                       "last_error": error[:MAX_ERROR_CHARS] if error else None,
                                       "updated_at": now})
        if outbox:
            enqueue(conn, outbox, now=now)
    return result


def record_failure(engine: Engine, source_id: str, error: str, now: int, kind: str = "poll") -> None:
    """A failed poll: keep the cursor, count the failure, remember the error (secrets already removed)."""
    with write_transaction(engine) as conn:
        status = _ensure_status(conn, source_id, kind, now)
        conn.execute(sa.update(status_table).where(status_table.c.source_id == source_id).values(
            last_poll_at=now, failures=int(status.failures) + 1, updated_at=now))
        prev = conn.execute(sa.select(cursors_table).where(cursors_table.c.source_id == source_id)).one_or_none()
        _save_cursor(conn, source_id, {
            "cursor": prev.cursor if prev else None, "watermark": prev.watermark if prev else None,
            "last_success_at": prev.last_success_at if prev else None,
            "last_error": error[:MAX_ERROR_CHARS], "updated_at": now})


def set_stale(engine: Engine, source_id: str, stale_since: int | None, now: int,
              outbox: Sequence[OutboxItem] = ()) -> None:
    """Mark a source stale (since a time) or fresh again (None), with its admin notices, in one transaction."""
    with write_transaction(engine) as conn:
        _ensure_status(conn, source_id, "poll", now)
        conn.execute(sa.update(status_table).where(status_table.c.source_id == source_id)
                     .values(stale_since=stale_since, updated_at=now))
        if outbox:
            enqueue(conn, outbox, now=now)


def series_of(engine: Engine, source_ids: Iterable[str]) -> dict[str, set[str]]:
    """metric -> accounts delivered by any of the given sources."""
    ids = list(source_ids)
    out: dict[str, set[str]] = {}
    if not ids:
        return out
    with engine.connect() as conn:
        q = sa.select(series_table.c.metric, series_table.c.account_id).where(series_table.c.source_id.in_(ids))
        for m, a in conn.execute(q):
            out.setdefault(m, set()).add(a)
    return out


def prune_events(engine: Engine, before: int) -> int:
    """Forget the ids of events whose own time is before `before`; returns how many.

    `before` becomes every source's horizon (events_forgotten_before, never moved back) in the same
    transaction: store_batch drops events older than it and push ingest refuses them, so a
    forgotten id can never be counted again, whatever the clock of the replica that receives
    it. Ids are pruned by event time, the clock acceptance is checked on, not by arrival.
    """
    st = status_table.c
    with write_transaction(engine) as conn:
        conn.execute(sa.update(status_table)
                     .where(sa.or_(st.events_forgotten_before.is_(None), st.events_forgotten_before < before))
                     .values(events_forgotten_before=before))
        return int(conn.execute(sa.delete(events_table).where(events_table.c.event_at < before)).rowcount)


def count_events(engine: Engine, source_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(events_table)
                                .where(events_table.c.source_id == source_id)).scalar_one())


# ------------------------------------------------------------------------ rule progress


def get_rule_progress(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {r: int(t) for r, t in conn.execute(
            sa.select(progress_table.c.rule_id, progress_table.c.evaluated_through))}


def set_rule_progress(engine: Engine, through: Mapping[str, int], now: int) -> None:
    if not through:
        return
    with engine.begin() as conn:
        ins = _insert(conn, progress_table)
        stmt = ins.on_conflict_do_update(
            index_elements=[progress_table.c.rule_id],
            set_={"evaluated_through": ins.excluded.evaluated_through, "updated_at": ins.excluded.updated_at})
        conn.execute(stmt, [{"rule_id": r, "evaluated_through": int(t), "updated_at": now}
                            for r, t in sorted(through.items())])


# ------------------------------------------------------------------------ leader lease


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    acquired_at: int
    renewed_at: int
    expires_at: int


def get_lease(engine: Engine, name: str) -> Lease | None:
    with engine.connect() as conn:
        r = conn.execute(sa.select(lease_table).where(lease_table.c.name == name)).one_or_none()
    return None if r is None else Lease(r.name, r.holder, int(r.acquired_at), int(r.renewed_at), int(r.expires_at))


def try_lease(engine: Engine, name: str, holder: str, now: int, ttl: int) -> bool:
    """Take or renew the lease `name` for `holder` until now + ttl; True when `holder` holds it.

    The lease is taken over only once it has expired, so a replica that stops
    renewing (dead, or cut off from the database) loses it after `ttl`.
    """
    c = lease_table.c
    with write_transaction(engine) as conn:
        renewed = conn.execute(
            sa.update(lease_table).where(c.name == name, c.holder == holder)
            .values(renewed_at=now, expires_at=now + ttl)).rowcount
        if renewed:
            return True
        taken = conn.execute(
            sa.update(lease_table).where(c.name == name, c.expires_at <= now)
            .values(holder=holder, acquired_at=now, renewed_at=now, expires_at=now + ttl)).rowcount
        if taken:
            return True
        ins = _insert(conn, lease_table).values(name=name, holder=holder, acquired_at=now, renewed_at=now,
                                                expires_at=now + ttl)
        return conn.execute(ins.on_conflict_do_nothing(index_elements=[c.name]).returning(c.name)).first() is not None


def release_lease(engine: Engine, name: str, holder: str) -> bool:
    """Give the lease up (graceful shutdown) so another replica takes over at once."""
    with engine.begin() as conn:
        return bool(conn.execute(sa.delete(lease_table).where(
            lease_table.c.name == name, lease_table.c.holder == holder)).rowcount)


def dumps_cursor(value: Mapping[str, Any]) -> str:
    """Cursors that are structures (e.g. the files seen in a drop folder) are stored as compact JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))

"""Storage of what sources deliver: usage batches, push dedup ids, source freshness and series.

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

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.accounts import upsert_accounts
from storage.columnar import arrow_array, arrow_strings
from storage.cursors import cursors_table
from storage.db import write_transaction
from storage.dialect import dialect_insert as _insert
from storage.error_text import stored_error
from storage.models import (
    IngestedEvent,
    SourceSeries,
    SourceStatus,
    UsagePoint,
)
from storage.outbox import OutboxItem, enqueue
from storage.usage import UsageValueError, check_totals, write_points  # (keeps first-seen / coverage in step)
from storage.usage_columns import UsagePoints
from storage.usage_load import Replaced, replacing_transaction
from storage.usage_values import UsageColumns, newest_ts, overflow_error

events_table: sa.Table = IngestedEvent.__table__  # type: ignore[attr-defined]
status_table: sa.Table = SourceStatus.__table__  # type: ignore[attr-defined]
series_table: sa.Table = SourceSeries.__table__  # type: ignore[attr-defined]
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


def _column_sums(columns: Sequence[UsageColumns], records: Sequence[UsageLike], base_step: int,
                 what: str) -> tuple[UsagePoints, int | None]:
    """The totals of a batch delivered as columns (a columnar CSV read; then `records`, the rows the
    row parser read after it, in file order) summed per (account, metric, bucket) in that order, as
    _sums adds them, in numpy (storage.usage_columns.UsagePoints, frozen in usage_points' key order),
    and the newest ts. A total past the largest float64 raises _sums' error."""
    points = UsagePoints(base_step=base_step)
    for chunk in columns:
        points.add(chunk)
    if records:
        points.add(list(records))
    try:
        points.freeze(bucket_major=True)
    except UsageValueError:
        i = int(np.flatnonzero(~np.isfinite(points.value))[0])
        raise overflow_error(what.rsplit(":", 1)[0], points.account_ids[int(points.account[i])],
                             points.metrics[int(points.metric[i])], int(points.bucket[i])) from None
    return points, newest_ts(columns, records)


def _changed_columns(conn: Connection, points: UsagePoints) -> np.ndarray:
    """Which summed rows of `points` differ from what is stored (as _existing finds them for _sums):
    the stored rows of each metric's bucket range (of its accounts, when they are few) are matched to
    the rows, which are sorted by (metric, bucket, account) code, by binary search."""
    changed = np.ones(len(points), dtype=bool)
    ids = points.account_ids
    rank: dict[str, int] | None = None
    a, b = points.account, points.bucket
    bounds = np.searchsorted(points.metric, np.arange(len(points.metrics) + 1))
    for code, m in enumerate(points.metrics):
        lo, hi = int(bounds[code]), int(bounds[code + 1])
        if lo == hi:
            continue
        q = sa.select(_U.account_id, _U.bucket_start, _U.value).where(
            _U.metric == m, _U.bucket_start >= int(b[lo]), _U.bucket_start <= int(b[hi - 1]))
        codes = np.unique(a[lo:hi])
        if len(codes) <= _CHUNK:
            q = q.where(_U.account_id.in_([ids[i] for i in codes.tolist()]))
        stored = conn.execute(q).all()
        if not stored:
            continue
        rank = rank if rank is not None else {x: i for i, x in enumerate(ids)}
        known = [(rank[x], int(sb), float(v)) for x, sb, v in stored if x in rank]
        if not known:
            continue
        sa_, sb_, sv = (np.asarray(col) for col in zip(*known, strict=True))
        key = b[lo:hi] * len(ids) + a[lo:hi]  # ascending: the rows are in (bucket, account) order
        want = sb_.astype(np.int64) * len(ids) + sa_.astype(np.int64)
        pos = np.minimum(np.searchsorted(key, want), hi - lo - 1)
        hit = (a[lo:hi][pos] == sa_) & (b[lo:hi][pos] == sb_)
        same = hit & (points.value[lo:hi][pos] == sv)
        changed[lo + pos[same]] = False
    return changed


def _store_columns(conn: Connection, points: UsagePoints, result: StoreResult,
                   changed: dict[tuple[str, str], int],
                   staged: Callable[[Connection], Replaced] | None) -> set[tuple[str, str]]:
    """Write the rows of `points` that differ from the stored ones (replacing them) as columns; fill
    result.points_written and `changed` (account, metric) -> earliest changed bucket, as the record
    path does; returns every (account, metric) of the batch. `staged`: the rows are staged already
    (storage.usage_load.replacing_transaction), compared and written in SQL; else compared here."""
    ids, metrics = points.account_ids, points.metrics
    n = len(ids)
    pair = points.metric.astype(np.int64) * n + points.account
    if staged is not None:
        done = staged(conn)
        result.points_written += done.written
        for a, m, bucket in done.first_changed:
            changed[(a, m)] = min(bucket, changed.get((a, m), bucket))
        return {(ids[p % n], metrics[p // n]) for p in np.unique(pair).tolist()}
    fresh = np.flatnonzero(_changed_columns(conn, points))
    if len(fresh):
        names, mets = arrow_strings(ids), arrow_strings(metrics)
        write_points(conn, UsageColumns(names.take(arrow_array(points.account[fresh].astype(np.int64))),
                                        mets.take(arrow_array(pair[fresh] // n)), points.bucket[fresh],
                                        points.value[fresh]))
        result.points_written += len(fresh)
        # the rows of a metric are in bucket order: a pair's first changed row is its earliest bucket
        first_pairs, at = np.unique(pair[fresh], return_index=True)
        for p, k in zip(first_pairs.tolist(), fresh[at].tolist(), strict=True):
            key = (ids[p % n], metrics[p // n])
            bucket = int(points.bucket[k])
            changed[key] = min(bucket, changed.get(key, bucket))
    return {(ids[p % n], metrics[p // n]) for p in np.unique(pair).tolist()}


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


def _counted_once(events: Iterable[EventLike], horizon: int | None) -> tuple[dict[str, EventLike], int]:
    """The events a store counts, by id (the same id twice in one batch counts once: its first copy),
    and how many are older than the pruning horizon (their ids may have been pruned: they cannot be
    deduplicated, so they are not counted)."""
    seen: dict[str, EventLike] = {}
    expired = 0
    for e in events:
        if horizon is not None and int(e.ts) < horizon:
            expired += 1
            continue
        seen.setdefault(e.id, e)
    return seen, expired


def _known_event_ids(conn: Connection, source_id: str, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are stored for the source (seen before: duplicates)."""
    known: set[str] = set()
    c = events_table.c
    for i in range(0, len(ids), 500):
        known.update(conn.execute(sa.select(c.event_id).where(
            c.source_id == source_id, c.event_id.in_(ids[i : i + 500]))).scalars())
    return known


def added_overflows(engine: Engine, source_id: str, events: Iterable[EventLike],
                    replaced: Mapping[tuple[str, str, int], float] | None = None,
                    base_step: int = BASE_STEP
                    ) -> tuple[dict[tuple[str, str, int], float | None], dict[str, tuple[str, str, int]]]:
    """Before storing `events` again (store_batch refused them): every bucket whose total would not
    be finite, with its stored total (None: none), and the bucket of each new (not stored before)
    id's counted copy (its first one: a later copy of the id in another bucket adds nothing). The events are counted
    as store_batch counts them: each id once, those stored before or before the pruning horizon not
    at all, summed in order, added to the stored total (`replaced`: the total the same delivery's
    totals replace it with). One read, not the store's transaction: a writer meanwhile may change
    a total (the caller retries a refusal it did not foresee)."""
    with engine.connect() as conn:
        horizon = _opt(conn.execute(sa.select(status_table.c.events_forgotten_before)
                                    .where(status_table.c.source_id == source_id)).scalar_one_or_none())
        seen, _ = _counted_once(events, horizon)
        known = _known_event_ids(conn, source_id, list(seen))
        sums: dict[tuple[str, str, int], float] = {}
        counted: dict[str, tuple[str, str, int]] = {}
        for i, e in seen.items():
            if i not in known:
                ts = int(e.ts)
                key = counted[i] = (str(e.account), str(e.metric), ts - ts % base_step)
                sums[key] = sums.get(key, 0.0) + float(e.value)
        stored = _existing(conn, [k for k in sums if replaced is None or k not in replaced])
    base = {**stored, **(replaced or {})}
    return {k: base.get(k) for k, v in sums.items() if not math.isfinite(base.get(k, 0.0) + v)}, counted


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


def _watermark(conn: Connection, source_id: str, given: int | None) -> int | None:
    """The watermark to save: the newest data timestamp stored so far never moves back, so it is the
    later of the stored one and `given` (None: the stored one kept). A batch says how far ITS rows
    reach; a part of a poll that was refused (nothing of it stored) moves nothing."""
    stored = conn.execute(sa.select(cursors_table.c.watermark)
                          .where(cursors_table.c.source_id == source_id)).scalar_one_or_none()
    if stored is None or given is None:
        return given if stored is None else int(stored)
    return max(int(stored), given)


def _save_cursor(conn: Connection, source_id: str, values: Mapping[str, Any]) -> None:
    ins = _insert(conn, cursors_table).values(source_id=source_id, **values)
    conn.execute(ins.on_conflict_do_update(index_elements=[cursors_table.c.source_id], set_=dict(values)))


def store_batch(
    engine: Engine,
    source_id: str,
    now: int,
    *,
    totals: Iterable[UsageLike] = (),
    columns: Sequence[UsageColumns] = (),
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

    `cursor` is saved as the source's new position (pass the previous one to keep it); `watermark`
    is how far the batch's data reaches: the saved watermark is the later of it and the stored one
    (None keeps the stored one), so it only ever counts stored rows and never moves back. Accounts are AccountFacts (upserted by id).
    `outbox` items (e.g. an admin notice about a rejected file) are enqueued in
    the same transaction; `error` (a rejected part of an otherwise good poll)
    is kept as the source's last error. `columns` (chunks of a columnar CSV read) are totals too,
    before `totals` in the order of summing; with them the totals stay columns to the write.
    """
    what = f"source {source_id!r}: usage row"
    points: UsagePoints | None = None
    if columns:
        points, newest_t = _column_sums(columns, list(totals), base_step, what)
        total_sums: dict[tuple[str, str, int], float] = {}
    else:
        total_sums, newest_t = _sums(totals, base_step, what)
    event_list = list(events)
    for n, e in enumerate(event_list):
        if not isinstance(e.id, str) or not e.id:
            raise ValueError(f"source {source_id!r}: event #{n} ({e!r}) has no id")
    result = StoreResult()
    with replacing_transaction(engine, points) as (conn, staged):
        status = _ensure_status(conn, source_id, kind, now, lock=bool(event_list))
        changed: dict[tuple[str, str], int] = {}
        pairs: set[tuple[str, str]] = set()

        if points is not None:
            pairs = _store_columns(conn, points, result, changed, staged)
        if total_sums:
            existing = _existing(conn, total_sums)
            rows = [(a, m, b, v) for (a, m, b), v in total_sums.items() if existing.get((a, m, b)) != v]
            write_points(conn, rows, additive=False)
            result.points_written += len(rows)
            for a, m, b, _ in rows:
                changed[(a, m)] = min(b, changed.get((a, m), b))

        newest_e: int | None = None
        if event_list:
            seen, result.events_expired = _counted_once(event_list, _opt(status.events_forgotten_before))
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
            upsert_accounts(conn, accounts, now)  # key order; the facts pulled from the CRM stay on top
            result.accounts = len(accounts)

        newest = max((x for x in (newest_t, newest_e) if x is not None), default=None)
        result.newest = newest
        result.changed = changed
        pairs |= {k[:2] for k in total_sums} | {(e.account, e.metric) for e in event_list}
        _mark_series(conn, source_id, pairs)

        prev_data = _opt(status.last_data_at)
        data_at = prev_data if newest is None else max(newest, prev_data or newest)
        advanced = bool(changed) or (newest is not None and (prev_data is None or newest > prev_data))
        metrics = sorted(set(status.metrics or ()) | {m for _, m in pairs})
        conn.execute(sa.update(status_table).where(status_table.c.source_id == source_id).values(
            kind=kind, metrics=metrics, last_poll_at=now, last_data_at=data_at,
            last_new_data_at=now if advanced else status.last_new_data_at, failures=0, updated_at=now))
        _save_cursor(conn, source_id, {"cursor": cursor, "watermark": _watermark(conn, source_id, watermark),
                                       "last_success_at": now,
                                       "last_error": stored_error(error) if error else None,
                                       "updated_at": now})
        if outbox:
            enqueue(conn, outbox, now=now)
    return result


def record_failure(engine: Engine, source_id: str, error: str, now: int, kind: str = "poll",
                   cursor: str | None = None) -> None:
    """A failed poll: keep the cursor (or store `cursor`, when the failure says where the next poll
    should start: a shorter window), count the failure, remember the error (secrets already removed)."""
    with write_transaction(engine) as conn:
        status = _ensure_status(conn, source_id, kind, now)
        conn.execute(sa.update(status_table).where(status_table.c.source_id == source_id).values(
            last_poll_at=now, failures=int(status.failures) + 1, updated_at=now))
        prev = conn.execute(sa.select(cursors_table).where(cursors_table.c.source_id == source_id)).one_or_none()
        _save_cursor(conn, source_id, {
            "cursor": cursor if cursor is not None else (prev.cursor if prev else None),
            "watermark": prev.watermark if prev else None,
            "last_success_at": prev.last_success_at if prev else None,
            "last_error": stored_error(error), "updated_at": now})


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

"""Outbox: side effects written with the state change, delivered later with retries.

Lifecycle of a row: pending -> (claimed by a worker) -> sent, or failed (due
again after a backoff) -> ... -> dead after `max_attempts` claims.

Claims are fenced: `claim_due` counts an attempt, gives the claimed rows a new
random `claim_token` and leases them until `lease` seconds from now on the
DATABASE clock (storage.db.db_clock). A row is handed out again only once its
lease has expired on that one clock, however skewed the replicas' clocks are.
The holder renews the lease while it works (`renew`, e.g. right before each
post, and from a heartbeat thread: `LeaseKeeper`), and every outcome
(`mark_sent` / `mark_failed` / `mark_dead` with the token) is written only
while the token is still the row's: a deliverer that lost its claim (paused
past its lease, cut off from the database) gets `ClaimLost` and changes
nothing. Due times (`next_attempt_at`, backoffs) use the caller's `now`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from storage.db import db_clock, write_transaction
from storage.error_text import stored_error
from storage.jsonsafe import json_safe
from storage.models import OutboxEntry

T = TypeVar("T")

log = logging.getLogger(__name__)

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


def idempotency_key(kind: str, *parts: str | int) -> str:
    """The idempotency key of a notice about the thing `parts` name: "kind:" and the parts as a JSON
    array. An f-string joining the parts with ':' made two things one key when a part held ':'
    (account 'acme:x' metric 'calls' and account 'acme' metric 'x:calls'): the second was never told."""
    return f"{kind}:" + json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False)


DEFAULT_LEASE = 300
_UNCLAIMED = {"claim_token": None, "lease_until": None, "claimed_by": None}


class ClaimLost(RuntimeError):
    """The row is no longer held with this claim token (its lease expired and another worker took
    it, or an operator changed it); the caller must not act on it any more."""


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
    claim_token: str | None = None  # set on rows returned by claim_due
    lease_until: int | None = None  # database clock


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


def known_keys(engine: Engine, keys: Iterable[str]) -> set[str]:
    """Which of `keys` some outbox row holds (of any kind, in any state; rows are never pruned once
    sent): a caller tells of a thing once by looking its key up before it queues the notice."""
    return _keys_held(engine, keys)


def queued_keys(engine: Engine, keys: Iterable[str]) -> set[str]:
    """Which of `keys` have a row still queued (pending or failed: to be carried out)."""
    return _keys_held(engine, keys, _c.status.in_([PENDING, FAILED]))


def _keys_held(engine: Engine, keys: Iterable[str], *where: Any) -> set[str]:
    """Which of `keys` a row matching `where` holds, looked up 500 keys a query."""
    wanted = sorted(set(keys))
    found: set[str] = set()
    with engine.connect() as conn:
        for i in range(0, len(wanted), 500):
            q = sa.select(_c.idempotency_key).where(_c.idempotency_key.in_(wanted[i : i + 500]), *where).distinct()
            found.update(conn.execute(q).scalars())
    return found


def untold(engine: Engine, items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """The items whose notice key no outbox row holds yet (known_keys), one per key (at the place of
    its first item), in order: what a caller that tells of a thing once still has to tell."""
    listed = list(items)
    told = known_keys(engine, [key(i) for i in listed])
    return list({key(i): i for i in listed if key(i) not in told}.values())


def _to_row(r: Any) -> OutboxRow:
    return OutboxRow(
        id=int(r.id), idempotency_key=r.idempotency_key, kind=r.kind, payload=dict(r.payload or {}),
        status=r.status, attempts=int(r.attempts), next_attempt_at=int(r.next_attempt_at),
        last_error=r.last_error, created_at=int(r.created_at),
        sent_at=None if r.sent_at is None else int(r.sent_at),
        claim_token=r.claim_token, lease_until=None if r.lease_until is None else int(r.lease_until),
    )


def claim_due(
    engine: Engine, now: int, limit: int = 100, kinds: Sequence[str] | None = None, lease: int = DEFAULT_LEASE,
    holder: str | None = None, exclude: Iterable[int] = (), keys: Sequence[str] | None = None,
) -> list[OutboxRow]:
    """Pending/failed rows with next_attempt_at <= now and no live claim, oldest first.

    Each claimed row's attempts is incremented, it gets a new claim token (the same for the
    rows of one call) and a lease until `lease` seconds from now on the database clock; the
    caller must then mark_sent / mark_failed / mark_dead it with that token (or let the lease
    expire). The database clock counts whole seconds, so a lease ends once the clock is PAST
    lease_until: it lasts at least `lease` seconds, never less. `holder` names the claimer for operators; `exclude`: row ids not to take;
    `keys`: only rows with these idempotency keys.
    """
    if limit <= 0:
        return []
    db_now = db_clock(engine.dialect.name)
    q = (
        sa.select(outbox_table)
        .where(_c.status.in_([PENDING, FAILED]), _c.next_attempt_at <= now,
               sa.or_(_c.lease_until.is_(None), _c.lease_until < db_now))
        .order_by(_c.next_attempt_at, _c.id)
        .limit(limit)
    )
    if kinds is not None:
        q = q.where(_c.kind.in_(list(kinds)))
    if keys is not None:
        q = q.where(_c.idempotency_key.in_(list(keys)))
    skip = list(exclude)
    if skip:
        q = q.where(_c.id.notin_(skip))
    token = uuid.uuid4().hex
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        rows = conn.execute(q).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        conn.execute(
            sa.update(outbox_table).where(_c.id.in_(ids))
            .values(attempts=_c.attempts + 1, claim_token=token, lease_until=db_now + int(lease),
                    claimed_by=(holder or "")[:200] or None)
        )
        claimed = conn.execute(sa.select(outbox_table).where(_c.id.in_(ids))).all()
    by_id = {r.id: _to_row(r) for r in claimed}
    return [by_id[i] for i in ids]


def renew(engine: Engine, token: str, ids: Iterable[int], lease: int = DEFAULT_LEASE) -> set[int]:
    """Extend the lease of rows still held with `token` to `lease` seconds from now (database
    clock); returns the ids still held (a row missing from it was lost: do not deliver it)."""
    id_list = list(ids)
    if not id_list:
        return set()
    db_now = db_clock(engine.dialect.name)
    with engine.begin() as conn:
        res = conn.execute(
            sa.update(outbox_table)
            .where(_c.id.in_(id_list), _c.claim_token == token, _c.status.in_([PENDING, FAILED]))
            .values(lease_until=db_now + int(lease)).returning(_c.id))
        return {int(i) for i in res.scalars()}


class LeaseKeeper:
    """Keeps the claim on a batch of rows alive while one worker delivers them.

        with LeaseKeeper(engine, token, [r.id for r in rows], lease) as keeper:
            for row in rows:
                if not keeper.take(row.id):  # renewed right before the work, or lost
                    continue
                ...deliver, mark_sent / mark_failed with the token...
                keeper.done(row.id)

    `take` renews the row's lease at once (a per-row check right before the side effect); a
    heartbeat thread renews every row not yet done every `interval` (lease / 4) seconds, so a
    run that outlives one lease keeps its rows while it is alive, and a dead or frozen one loses
    them after at most one lease. Rows found lost are never taken.
    """

    def __init__(self, engine: Engine, token: str, ids: Iterable[int], lease: int = DEFAULT_LEASE,
                 interval: float | None = None) -> None:
        self.engine = engine
        self.token = token
        self.lease = int(lease)
        self.interval = interval if interval is not None else max(0.2, lease / 4)
        self._pending = set(ids)
        self.lost: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="outbox-lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def take(self, id: int) -> bool:
        """Renew the row's claim now; False when it is lost (do not deliver it)."""
        with self._lock:
            if id in self.lost:
                return False
        held = id in renew(self.engine, self.token, [id], self.lease)
        if not held:
            self._forget({id})
        return held

    def done(self, id: int) -> None:
        with self._lock:
            self._pending.discard(id)

    def _forget(self, ids: set[int]) -> None:
        with self._lock:
            self._pending -= ids
            self.lost |= ids

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = set(self._pending)
            if not ids:
                continue
            try:
                held = renew(self.engine, self.token, ids, self.lease)
            except Exception as exc:  # the next take() fails loudly; keep beating meanwhile
                log.warning("outbox lease renewal failed: %s: %s", type(exc).__name__, exc)
                continue
            with self._lock:
                gone = (ids - held) & self._pending  # rows done meanwhile are not lost
            if gone:
                log.warning("outbox rows %s: claim lost to another worker; not delivering them", sorted(gone))
                self._forget(gone)


def _held(token: str | None) -> Any:
    return sa.true() if token is None else _c.claim_token == token


def _lost(conn: Connection, id: int, token: str | None) -> None:
    """Raise KeyError (no such row) or ClaimLost (the row is held by another claim now)."""
    r = conn.execute(sa.select(_c.claim_token, _c.status).where(_c.id == id)).one_or_none()
    if r is None:
        raise KeyError(f"outbox row {id} does not exist")
    raise ClaimLost(f"outbox row {id}: claim {token} lost (row is {r.status}, "
                    f"claimed {'by another worker' if r.claim_token else 'by nobody'}); outcome not recorded")


def mark_sent(engine: Engine, ids: Iterable[int], now: int, token: str | None = None) -> int:
    """Mark rows delivered; returns how many rows changed.

    token: the claim token the rows were delivered under; rows no longer held with it are left
    alone (not counted). None: unfenced (tests, operators).
    """
    id_list = list(ids)
    if not id_list:
        return 0
    with engine.begin() as conn:
        res = conn.execute(
            sa.update(outbox_table).where(_c.id.in_(id_list), _held(token))
            .values(status=SENT, sent_at=now, last_error=None, **_UNCLAIMED)
        )
        return int(res.rowcount)


def mark_failed(
    engine: Engine, id: int, now: int, error: str, retry_in: int | None = None, max_attempts: int | None = 10,
    token: str | None = None, counted: bool = True,
) -> str:
    """Record a failed delivery; returns the new status ("failed" or "dead").

    The row is due again at now + retry_in (default: `default_backoff`) unless
    it has been tried `max_attempts` times, then it is dead (never retried); max_attempts=None: the
    tries are counted but never make it dead (a row something else bounds, e.g. a click's Task).
    counted=False: a deferral, no try (the claim's attempt is given back) and never dead.
    token: the claim it failed under; raises ClaimLost when the row is held by another claim
    (its outcome there is not ours to overwrite: a row sent meanwhile must stay sent).
    """
    with write_transaction(engine) as conn:
        row = conn.execute(sa.select(_c.attempts).where(_c.id == id, _held(token))).one_or_none()
        if row is None:
            _lost(conn, id, token)
        attempts = max(int(row.attempts), 1) if counted else max(int(row.attempts) - 1, 0)
        delay = default_backoff(attempts) if retry_in is None else max(0, int(retry_in))
        status = DEAD if counted and max_attempts is not None and attempts >= max_attempts else FAILED
        conn.execute(
            sa.update(outbox_table).where(_c.id == id).values(
                status=status, attempts=attempts, last_error=stored_error(error),
                next_attempt_at=now + delay, **_UNCLAIMED,
            )
        )
    return status


def mark_dead(engine: Engine, id: int, now: int, error: str, token: str | None = None) -> None:
    """Give up on a row now (a permanent error such as an unknown Slack channel)."""
    with engine.begin() as conn:
        res = conn.execute(
            sa.update(outbox_table).where(_c.id == id, _held(token))
            .values(status=DEAD, last_error=stored_error(error), next_attempt_at=now, **_UNCLAIMED)
        )
        if res.rowcount == 0:
            _lost(conn, id, token)


def discard_unsent(conn: Connection, kinds: Sequence[str]) -> int:
    """Delete the rows of `kinds` not sent yet (pending, failed, dead), claimed or not, inside the
    caller's transaction; returns how many. For a plan that supersedes an earlier one (the CRM
    sync): only call it while holding the lock every deliverer of these kinds holds too."""
    res = conn.execute(sa.delete(outbox_table).where(_c.kind.in_(list(kinds)), _c.status != SENT))
    return int(res.rowcount)


def retry_dead(engine: Engine, now: int, ids: Iterable[int] | None = None) -> int:
    """Put dead rows (all, or `ids`) back in the queue with a fresh attempt count."""
    q = sa.update(outbox_table).where(_c.status == DEAD)
    if ids is not None:
        q = q.where(_c.id.in_(list(ids)))
    with engine.begin() as conn:
        return int(conn.execute(q.values(status=PENDING, attempts=0, next_attempt_at=now, **_UNCLAIMED)).rowcount)


def requeue_finished(conn: Connection, keys: Sequence[str], now: int,
                     payload: Mapping[str, Any] | None = None) -> int:
    """Put the finished rows (sent or dead) with these idempotency keys back in the queue, due `now`
    with a fresh attempt count (and `payload` instead of theirs, when given), inside the caller's
    transaction; returns how many. For a row whose work was undone or refused for good and is asked
    for again (a parked Salesforce Task: storage.crm.unpark_tasks, the "Log task" button)."""
    if not keys:
        return 0
    values: dict[str, Any] = {"status": PENDING, "attempts": 0, "next_attempt_at": int(now), "last_error": None,
                              "sent_at": None, **_UNCLAIMED}
    if payload is not None:
        values["payload"] = json_safe(dict(payload), f"outbox rows {', '.join(keys)} payload")
    q = sa.update(outbox_table).where(_c.idempotency_key.in_(list(keys)), _c.status.in_([SENT, DEAD]))
    return int(conn.execute(q.values(**values)).rowcount)


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

"""Alert episodes and their audit trail.

Several episodes may exist over time for one key (rule, account, metric,
discriminator); the one with the highest id is the key's *current* episode.
`record_step` persists one lifecycle step (episode rows, audit events and the
outbox items) in a single transaction, and is idempotent: retrying the same
step writes no second episode, event or outbox row. The database keeps at most
one open (pending/firing) episode per key (uq_alert_episodes_open): a step that
would start a second one, because another writer started one since its states
were read, fails whole with EpisodeConflict (read the states again and retry).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from rules.lifecycle import RESOLVED, EpisodeState, Key, LifecycleResult, Transition
from rules.model import Reference
from storage.db import write_transaction
from storage.jsonsafe import json_safe
from storage.models import AlertEpisode, AlertEvent
from storage.outbox import OutboxItem, enqueue

episodes_table: sa.Table = AlertEpisode.__table__  # type: ignore[attr-defined]
events_table: sa.Table = AlertEvent.__table__  # type: ignore[attr-defined]
_e = episodes_table.c
_v = events_table.c
_CHUNK = 1000
_STATE_FIELDS = tuple(f.name for f in fields(EpisodeState) if f.name != "episode_id")
_KEY_COLS = (_e.rule_id, _e.account_id, _e.metric, _e.discriminator)
OPEN_INDEX = "uq_alert_episodes_open"


class EpisodeConflict(RuntimeError):
    """Another writer stored an open episode of a key this step starts one for; nothing was written."""


def _open_conflict(exc: IntegrityError) -> bool:
    text = str(exc.orig)
    return OPEN_INDEX in text or "alert_episodes.rule_id, alert_episodes.account_id" in text  # PostgreSQL, SQLite


# ------------------------------------------------------------------------ mapping


def _opt(x: Any) -> int | None:
    return None if x is None else int(x)


def state_from_row(d: Mapping[str, Any]) -> EpisodeState:
    """An alert_episodes row (as a mapping of its columns) as the lifecycle's EpisodeState."""
    return EpisodeState(
        rule_id=d["rule_id"], account_id=d["account_id"], metric=d["metric"], discriminator=d["discriminator"],
        status=d["status"], started_at=int(d["started_at"]), consecutive=int(d["consecutive"]),
        fired_at=_opt(d["fired_at"]), resolved_at=_opt(d["resolved_at"]),
        last_notified_at=_opt(d["last_notified_at"]), once=bool(d["once"]), severity=d["severity"],
        last_seen_at=_opt(d["last_seen_at"]), last_explanation=dict(d["last_explanation"] or {}),
        acknowledged_by=d["acknowledged_by"], acknowledged_at=_opt(d["acknowledged_at"]),
        snoozed_until=_opt(d["snoozed_until"]), reference=Reference.from_json(d["reference"]),
        clear_count=int(d["clear_count"] or 0), recovering_since=_opt(d["recovering_since"]),
        cleared_at=_opt(d["cleared_at"]), held=bool(d["held"]), episode_id=int(d["id"]),
    )


def _to_state(r: Any) -> EpisodeState:
    return state_from_row(r._mapping)


def _explanation(expl: Mapping[str, Any], where: str) -> dict[str, Any]:
    return json_safe(dict(expl), where, lenient=True)  # type: ignore[no-any-return]


def _values(s: EpisodeState, rule_hash: str) -> dict[str, Any]:
    where = f"episode {s.key}"
    return {
        "rule_id": s.rule_id, "account_id": s.account_id, "metric": s.metric,
        "discriminator": s.discriminator, "status": s.status, "started_at": s.started_at,
        "fired_at": s.fired_at, "resolved_at": s.resolved_at, "last_notified_at": s.last_notified_at,
        "consecutive": s.consecutive, "once": s.once, "severity": s.severity, "last_seen_at": s.last_seen_at,
        "last_explanation": _explanation(s.last_explanation, where), "acknowledged_by": s.acknowledged_by,
        "acknowledged_at": s.acknowledged_at, "snoozed_until": s.snoozed_until, "rule_hash": rule_hash,
        "reference": s.reference.to_json() if s.reference is not None else None,
        "clear_count": s.clear_count, "recovering_since": s.recovering_since, "cleared_at": s.cleared_at,
        "held": s.held,
    }


def _values_columns() -> list[str]:
    """The columns _values() writes (one compiled UPDATE serves every row of a step)."""
    probe = EpisodeState(rule_id="", account_id="", metric="", discriminator="", status=RESOLVED, started_at=0)
    return list(_values(probe, ""))


def _same(a: EpisodeState, b: EpisodeState) -> bool:
    """Equal as stored (explanations compared after the JSON round trip)."""
    for name in _STATE_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if name == "last_explanation":
            x, y = _explanation(x, ""), _explanation(y, "")
        if x != y:
            return False
    return True


# -------------------------------------------------------------------------- reads


def _latest_ids(rule_ids: Sequence[str] | None = None) -> Any:
    q = sa.select(sa.func.max(_e.id)).group_by(*_KEY_COLS)
    if rule_ids is not None:
        q = q.where(_e.rule_id.in_(list(rule_ids)))
    return q


def load_states(
    engine: Engine, rule_ids: Iterable[str] | None = None, account_ids: Iterable[str] | None = None
) -> dict[Key, EpisodeState]:
    """The current (latest) episode per key, open or resolved, with episode_id set.

    rule_ids / account_ids: only keys of these rules / accounts (an incremental cycle
    reads its accounts' states through ix_alert_episodes_account, not every episode).
    """
    ids = None if rule_ids is None else list(rule_ids)
    if account_ids is None:
        q = sa.select(episodes_table).where(_e.id.in_(_latest_ids(ids)))
        with engine.connect() as conn:
            return {s.key: s for s in (_to_state(r) for r in conn.execute(q))}
    with engine.connect() as conn:
        return {s.key: s for s in map(_to_state, _current_rows(conn, account_ids, ids))}


def _current_rows(conn: Connection, account_ids: Iterable[str], rule_ids: Sequence[str] | None = None) -> Iterator[Any]:
    """The current (highest id) row of every key of these accounts (of these rules), batched by account."""
    accounts = sorted(set(account_ids))
    for i in range(0, len(accounts), _CHUNK):
        latest = _latest_ids(rule_ids).where(_e.account_id.in_(accounts[i:i + _CHUNK]))
        yield from conn.execute(sa.select(episodes_table).where(_e.id.in_(latest)))


def _rows_by_id(conn: Connection, ids: Iterable[int]) -> dict[int, Any]:
    id_list = sorted(set(ids))
    out: dict[int, Any] = {}
    for i in range(0, len(id_list), _CHUNK):
        q = sa.select(episodes_table).where(_e.id.in_(id_list[i : i + _CHUNK]))
        out.update((int(r.id), r) for r in conn.execute(q))
    return out


def _latest_rows(conn: Connection, keys: Iterable[Key]) -> dict[Key, Any]:
    """The current (highest id) row of each of `keys` that has one; batched by account."""
    wanted = set(keys)
    out: dict[Key, Any] = {}
    for r in _current_rows(conn, {k[1] for k in wanted}):
        key = (r.rule_id, r.account_id, r.metric, r.discriminator)
        if key in wanted:
            out[key] = r
    return out


def _latest_row(conn: Connection, key: Key) -> Any:
    q = (
        sa.select(episodes_table)
        .where(*(c == v for c, v in zip(_KEY_COLS, key, strict=True)))
        .order_by(_e.id.desc())
        .limit(1)
    )
    return conn.execute(q).one_or_none()


# ------------------------------------------------------------------------- writes


_UPDATE_BY_ID = (
    sa.update(episodes_table)
    .where(_e.id == sa.bindparam("b_id"))
    .values({name: sa.bindparam("b_" + name) for name in _values_columns()})
)


class _StepWriter:
    def __init__(self, conn: Connection, rule_hashes: Mapping[str, str], stored: dict[int, Any]) -> None:
        self.conn = conn
        self.rule_hashes = rule_hashes
        self.stored = stored
        self.ids: dict[Key, int] = {}
        self.written: dict[int, EpisodeState] = {}
        self.updates: list[dict[str, Any]] = []  # row updates, sent in one executemany by flush()
        self.latest: dict[Key, Any] = {}  # prefetched current rows of keys not yet written in this step
        self.prefetched: set[Key] = set()
        self.events: list[dict[str, Any]] = []  # audit rows, checked and inserted together by flush_events()

    def flush(self) -> None:
        """Send the queued row updates (before any read of alert_episodes, and at the end)."""
        if self.updates:
            self.conn.execute(_UPDATE_BY_ID, self.updates)
            self.updates = []

    def rule_hash(self, s: EpisodeState, row: Any = None) -> str:
        return str(
            self.rule_hashes.get(s.rule_id)
            or s.last_explanation.get("rule_hash")
            or (row.rule_hash if row is not None else "")
            or ""
        )

    def episode_id_for(self, s: EpisodeState) -> int | None:
        """The row `s` belongs to, or None when `s` starts a new episode."""
        if s.key in self.ids:  # already handled in this step
            eid = self.ids[s.key]
            if self.written[eid].status == RESOLVED and s.is_open:
                return self.recorded_before(s)
            return eid
        if s.episode_id is None:
            return self.recorded_before(s)
        row = self.stored.get(s.episode_id)
        if row is None:
            raise ValueError(
                f"episode {s.key}: stored row id {s.episode_id} does not exist (deleted, or another database?)"
            )
        if tuple(getattr(row, c.name) for c in _KEY_COLS) != s.key:
            raise ValueError(f"episode {s.key}: stored row id {s.episode_id} belongs to another key")
        if row.status == RESOLVED and s.is_open:
            return self.recorded_before(s)
        return s.episode_id

    def prefetch(self, keys: Iterable[Key]) -> None:
        """Read the current rows of `keys` in a few queries instead of one per new episode."""
        todo = set(keys) - self.prefetched
        self.latest.update(_latest_rows(self.conn, todo))
        self.prefetched |= todo

    def recorded_before(self, s: EpisodeState) -> int | None:
        """For a state that starts a new episode: the row a previous run of this very step wrote, if any."""
        if s.key in self.prefetched and s.key not in self.ids:  # nothing written for the key yet
            row = self.latest.get(s.key)
        else:
            self.flush()
            row = _latest_row(self.conn, s.key)
        if row is None or int(row.started_at) != s.started_at or (row.status == RESOLVED and s.is_open):
            return None
        self.stored[int(row.id)] = row
        return int(row.id)

    def write(self, s: EpisodeState) -> int:
        return self.write_to(self.episode_id_for(s), s)

    def write_to(self, eid: int | None, s: EpisodeState) -> int:
        """Store `s` in row `eid` (from episode_id_for), or in a new row when eid is None."""
        row = self.stored.get(eid) if eid is not None else None
        values = _values(s, self.rule_hash(s, row))
        if eid is None:
            eid = int(self.conn.execute(sa.insert(episodes_table).values(**values).returning(_e.id)).scalar_one())
        elif eid not in self.written or not _same(self.written[eid], s):
            self.updates.append({"b_" + k: v for k, v in values.items()} | {"b_id": eid})
        self.ids[s.key] = eid
        self.written[eid] = replace(s, episode_id=eid)
        return eid

    def insert_many(self, states: Sequence[EpisodeState]) -> list[int]:
        """New episode rows in one executemany; their ids in the order of `states`."""
        if not states:
            return []
        rows = [_values(s, self.rule_hash(s)) for s in states]
        stmt = sa.insert(episodes_table).returning(_e.id, sort_by_parameter_order=True)
        ids = [int(i) for i in self.conn.execute(stmt, rows).scalars()]
        for s, eid in zip(states, ids, strict=True):
            self.ids[s.key] = eid
            self.written[eid] = replace(s, episode_id=eid)
        return ids

    def event(self, eid: int, t: Transition) -> None:
        """Queue the audit row of transition `t` on episode `eid` (see flush_events)."""
        s = t.state
        expl = dict(t.finding.explanation() if t.finding is not None else s.last_explanation)
        if not expl.get("rule_hash"):
            expl["rule_hash"] = self.rule_hash(s, self.stored.get(eid))
        self.events.append(dict(
            episode_id=eid, event=t.event, at=t.at, notify=t.notify, reason=t.reason, actor=None,
            explanation=_explanation(expl, f"event {t.event} of episode {s.key}"),
        ))

    def flush_events(self) -> None:
        """Insert the queued audit rows, except those already stored (the same step recorded
        again keeps one audit row per episode, event and time)."""
        if not self.events:
            return
        eids = sorted({e["episode_id"] for e in self.events})
        stored: set[tuple[int, str, int]] = set()
        for i in range(0, len(eids), _CHUNK):
            q = sa.select(_v.episode_id, _v.event, _v.at).where(
                _v.episode_id.in_(eids[i:i + _CHUNK]), _v.at.in_(sorted({e["at"] for e in self.events})))
            stored.update((int(a), str(b), int(c)) for a, b, c in self.conn.execute(q))
        fresh = []
        for e in self.events:
            k = (e["episode_id"], e["event"], e["at"])
            if k not in stored:
                stored.add(k)
                fresh.append(e)
        if fresh:
            self.conn.execute(sa.insert(events_table), fresh)
        self.events = []


def _write_transitions_batched(w: _StepWriter, transitions: Sequence[Transition]) -> None:
    """Each transition's episode row and audit row, with a few statements for the whole step:
    the current rows of keys starting an episode are read together, new rows inserted in one
    executemany, updates sent in one executemany, audit rows checked and inserted together."""
    def starts_new(s: EpisodeState) -> bool:
        if s.episode_id is None:
            return True
        row = w.stored.get(s.episode_id)
        return row is not None and row.status == RESOLVED and s.is_open

    w.prefetch(t.key for t in transitions if starts_new(t.state))
    eids: list[int | None] = []
    new_states: list[EpisodeState] = []
    for t in transitions:
        eid = w.episode_id_for(t.state)
        if eid is None:
            new_states.append(t.state)
            eids.append(None)
        else:
            eids.append(w.write_to(eid, t.state))
    inserted = iter(w.insert_many(new_states))
    for t, eid in zip(transitions, eids, strict=True):
        w.event(eid if eid is not None else next(inserted), t)


OutboxPlan = Sequence[OutboxItem] | Callable[[Mapping[Key, int]], Sequence[OutboxItem]]


def record_step(
    engine: Engine,
    result: LifecycleResult,
    outbox: OutboxPlan,
    rule_hashes: Mapping[str, str],
    now: int | None = None,
    also: Sequence[Callable[[Connection], object]] = (),
) -> dict[Key, int]:
    """Persist one lifecycle step atomically; returns key -> episode id for every state in it.

    For each transition: the episode row is updated (state.episode_id), or a
    new row is inserted when the transition starts a new episode (no id yet, or
    the stored row is resolved and the new state is open); an alert_events row
    records the transition with its explanation. States that changed without a
    transition (e.g. a pending episode's `consecutive`) are updated too; resolved
    states without a transition are taken as stored (advance() never changes
    them), so steps stay cheap however long the history. Outbox
    items are inserted with ON CONFLICT (kind, idempotency_key) DO NOTHING; `outbox` may be a
    function of key -> episode id, called inside the transaction once the episodes are written, so
    the items can name the episodes they are about. If anything fails, nothing is written. `rule_hashes` maps rule id -> hash; when
    a rule is missing there, the explanation's rule_hash is used. `also`: further writes
    that belong to the same step (called with the transaction's connection).
    """
    try:
        return _record_step(engine, result, outbox, rule_hashes, now, also)
    except IntegrityError as exc:
        if not _open_conflict(exc):
            raise
        raise EpisodeConflict(f"another evaluation stored an open episode of the same key meanwhile: "
                              f"{' '.join(str(exc.orig).split())[:300]}") from None


def _record_step(engine: Engine, result: LifecycleResult, outbox: OutboxPlan,
                 rule_hashes: Mapping[str, str], now: int | None,
                 also: Sequence[Callable[[Connection], object]]) -> dict[Key, int]:
    at = now if now is not None else max((t.at for t in result.transitions), default=None)
    with write_transaction(engine) as conn:
        in_transitions = {t.key for t in result.transitions}
        # A stored resolved state with no transition is as advance() found it: nothing to compare.
        unchanged = {
            k for k, s in result.states.items()
            if k not in in_transitions and s.episode_id is not None and s.status == RESOLVED
        }
        known = [s.episode_id for k, s in result.states.items() if s.episode_id is not None and k not in unchanged]
        known += [t.state.episode_id for t in result.transitions if t.state.episode_id is not None]
        w = _StepWriter(conn, rule_hashes, _rows_by_id(conn, known))
        transitions = result.transitions
        if len({t.key for t in transitions}) == len(transitions):  # one transition per key (advance's rule)
            _write_transitions_batched(w, transitions)
        else:  # a hand-made step with several transitions of one key: row by row, in order
            for t in transitions:
                w.event(w.write(t.state), t)
        for key, s in result.states.items():
            if key in w.ids:
                final = w.written[w.ids[key]]
                if not _same(final, s):
                    w.write(s)
                continue
            if key in unchanged:
                w.ids[key] = s.episode_id  # type: ignore[assignment]
                continue
            if s.episode_id is not None:
                row = w.stored.get(s.episode_id)
                if row is not None and _same(_to_state(row), s):
                    w.ids[key] = s.episode_id
                    continue
            w.write(s)
        w.flush()
        w.flush_events()
        items = outbox(dict(w.ids)) if callable(outbox) else outbox
        if items:
            enqueue(conn, items, now=at)
        for write in also:
            write(conn)
        return dict(w.ids)


def record_action(
    engine: Engine, state: EpisodeState, event: str, at: int, actor: str | None = None, reason: str = "",
) -> int:
    """A manual change (acknowledged, snoozed, ...): store the action columns of `state`
    (acknowledged_by/_at, snoozed_until) on its episode row and add an event.

    Only those columns are written: an evaluation cycle may have changed the row
    (status, counters, explanation) since `state` was loaded, and a button click
    must not write stale values back. `state` must come from load_states
    (episode_id set); returns the episode id.
    """
    with write_transaction(engine) as conn:
        return record_action_in(conn, state, event, at, actor, reason)


def record_action_in(
    conn: Connection, state: EpisodeState, event: str, at: int, actor: str | None = None, reason: str = "",
) -> int:
    """record_action inside the caller's transaction (with the change the action asked for)."""
    if state.episode_id is None:
        raise ValueError(f"episode {state.key}: {event!r} needs a stored episode (episode_id is None)")
    row = conn.execute(sa.select(episodes_table).where(_e.id == state.episode_id)).one_or_none()
    if row is None:
        raise ValueError(f"episode {state.key}: stored row id {state.episode_id} does not exist")
    conn.execute(
        sa.update(episodes_table).where(_e.id == state.episode_id)
        .values(acknowledged_by=state.acknowledged_by, acknowledged_at=state.acknowledged_at,
                snoozed_until=state.snoozed_until)
    )
    conn.execute(sa.insert(events_table).values(
        episode_id=state.episode_id, event=event, at=at, notify=False, reason=reason, actor=actor,
        explanation=_explanation(state.last_explanation, f"{event} of episode {state.key}"),
    ))
    return state.episode_id


def set_slack_message(engine: Engine, episode_id: int, channel: str, ts: str) -> None:
    """Remember the Slack message of an episode (resolutions are posted in its thread)."""
    with engine.begin() as conn:
        res = conn.execute(
            sa.update(episodes_table).where(_e.id == episode_id).values(slack_channel=channel, slack_ts=ts)
        )
        if res.rowcount == 0:
            raise KeyError(f"episode {episode_id} does not exist")


def _episode_dict(r: Any) -> dict[str, Any]:
    d = dict(r._mapping)
    d["key"] = tuple(d[c.name] for c in _KEY_COLS)
    return d


def get_episode(engine: Engine, episode_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        r = conn.execute(sa.select(episodes_table).where(_e.id == episode_id)).one_or_none()
    return None if r is None else _episode_dict(r)


def find_episode(engine: Engine, key: Key, started_at: int | None = None) -> dict[str, Any] | None:
    """The current episode of `key`, or the one of `key` that started at `started_at`."""
    q = sa.select(episodes_table).where(*(c == v for c, v in zip(_KEY_COLS, key, strict=True)))
    if started_at is not None:
        q = q.where(_e.started_at == started_at)
    with engine.connect() as conn:
        r = conn.execute(q.order_by(_e.id.desc()).limit(1)).one_or_none()
    return None if r is None else _episode_dict(r)


def episode_history(
    engine: Engine, rule_id: str | None = None, account_id: str | None = None, limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest episodes first, each a dict of its columns plus "key" and "events" (oldest first)."""
    q = sa.select(episodes_table).order_by(_e.id.desc()).limit(limit)
    if rule_id is not None:
        q = q.where(_e.rule_id == rule_id)
    if account_id is not None:
        q = q.where(_e.account_id == account_id)
    with engine.connect() as conn:
        episodes = [_episode_dict(r) for r in conn.execute(q)]
        events: dict[int, list[dict[str, Any]]] = {e["id"]: [] for e in episodes}
        ids = list(events)
        for i in range(0, len(ids), _CHUNK):
            eq = (
                sa.select(events_table)
                .where(_v.episode_id.in_(ids[i : i + _CHUNK]))
                .order_by(_v.at, _v.id)
            )
            for r in conn.execute(eq):
                events[r.episode_id].append(dict(r._mapping))
    for e in episodes:
        e["events"] = events[e["id"]]
    return episodes

"""CRM sync state: the values Salesforce last accepted per record, tasks per episode, sync runs."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.db import write_transaction
from storage.dialect import dialect_insert as _insert
from storage.error_text import stored_error
from storage.jsonsafe import json_safe
from storage.models import AlertEpisode, CrmRecordState, CrmSyncRun, CrmTask
from storage.outbox import requeue_finished

state_table: sa.Table = CrmRecordState.__table__  # type: ignore[attr-defined]
tasks_table: sa.Table = CrmTask.__table__  # type: ignore[attr-defined]
runs_table: sa.Table = CrmSyncRun.__table__  # type: ignore[attr-defined]
_episodes: sa.Table = AlertEpisode.__table__  # type: ignore[attr-defined]
_s, _t, _r, _e = state_table.c, tasks_table.c, runs_table.c, _episodes.c
_CHUNK = 1000


@dataclass(frozen=True)
class RecordState:
    account_id: str
    sf_object: str
    match_key: str
    written: dict[str, Any]
    written_at: int | None
    last_error: str | None
    failures: int
    parked: dict[str, Any] | None = None


@dataclass(frozen=True)
class WriteOutcome:
    """The result of sending one record: `fields` were accepted (success) or not (`error`);
    `park`: retrying these fields cannot help (they are parked, see record_outcomes)."""

    account_id: str
    match_key: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    park: bool = False


def load_record_states(engine: Engine, sf_object: str) -> dict[str, RecordState]:
    """account id -> stored state for `sf_object`."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(state_table).where(_s.sf_object == sf_object)).all()
    return {
        r.account_id: RecordState(r.account_id, r.sf_object, r.match_key, dict(r.written or {}),
                                  None if r.written_at is None else int(r.written_at), r.last_error,
                                  int(r.failures), r.parked)
        for r in rows
    }


def record_outcomes(
    engine: Engine, sf_object: str, outcomes: Sequence[WriteOutcome], now: int, replace_written: bool = False,
    park_after: int | None = None,
) -> set[str]:
    """Store a batch of write results in one transaction.

    Success: the accepted fields are merged into `written` (or replace it when
    `replace_written`, used when the values were read back from Salesforce), the
    error is cleared. Failure: `written` is kept (so the next diff sends the
    fields again), the error and the failure count are recorded; the fields are
    parked (`parked`: the next syncs do not send these values again) when the
    outcome says `park` or the record failed `park_after` times in a row. A
    success, or a changed `match_key`, ends the parking; a changed `match_key`
    also starts `written` afresh. Returns the account ids parked by this batch.
    """
    if not outcomes:
        return set()
    with write_transaction(engine) as conn:
        ids = [o.account_id for o in outcomes]
        stored: dict[str, Any] = {}
        for i in range(0, len(ids), _CHUNK):
            q = sa.select(state_table).where(_s.sf_object == sf_object, _s.account_id.in_(ids[i : i + _CHUNK]))
            stored.update((r.account_id, r) for r in conn.execute(q))
        rows = []
        parked: set[str] = set()
        for o in outcomes:
            old = stored.get(o.account_id)
            same_record = old is not None and old.match_key == o.match_key
            written = dict(old.written or {}) if same_record else {}
            row = {"account_id": o.account_id, "sf_object": sf_object, "match_key": o.match_key,
                   "last_attempt_at": now, "updated_at": now}
            if o.error is None:
                if replace_written:
                    written = {}
                written.update(json_safe(dict(o.fields), f"CRM values of account {o.account_id!r}"))
                row.update(written=written, written_at=now, last_error=None, failures=0, parked=None)
            else:
                failures = (int(old.failures) if same_record else 0) + 1
                park = o.park or (park_after is not None and failures >= park_after)
                if park:
                    parked.add(o.account_id)
                row.update(written=written, written_at=old.written_at if same_record else None,
                           last_error=stored_error(o.error), failures=failures,
                           parked=json_safe(dict(o.fields), f"CRM values of account {o.account_id!r}") if park
                           else None)
            rows.append(row)
        ins = _insert(conn, state_table)
        stmt = ins.on_conflict_do_update(
            index_elements=[_s.account_id, _s.sf_object],
            set_={c: ins.excluded[c] for c in ("match_key", "written", "written_at", "last_error", "failures",
                                                "last_attempt_at", "updated_at", "parked")},
        )
        conn.execute(stmt, rows)
    return parked


def failed_records(engine: Engine, sf_object: str, limit: int = 100) -> list[RecordState]:
    """Records whose latest write failed (retried by the next sync unless parked), most failures first."""
    q = (sa.select(state_table).where(_s.sf_object == sf_object, _s.last_error.is_not(None))
         .order_by(_s.failures.desc(), _s.account_id).limit(limit))
    with engine.connect() as conn:
        return [RecordState(r.account_id, r.sf_object, r.match_key, dict(r.written or {}), r.written_at,
                            r.last_error, int(r.failures), r.parked) for r in conn.execute(q)]


def unpark_records(engine: Engine, sf_object: str, account_ids: Sequence[str] | None = None) -> int:
    """Send parked records again at the next sync (all, or these accounts) with a fresh failure
    count; returns how many were parked."""
    q = sa.update(state_table).where(_s.sf_object == sf_object, _s.parked.is_not(None))
    if account_ids is not None:
        q = q.where(_s.account_id.in_(list(account_ids)))
    with write_transaction(engine) as conn:
        return int(conn.execute(q.values(parked=None, failures=0)).rowcount)


# -------------------------------------------------------------------------- tasks


def count_parked_records(engine: Engine, sf_object: str) -> int:
    """How many records of sf_object are parked (refused for good; not sent until unpark_records)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(state_table)
                                .where(_s.sf_object == sf_object, _s.parked.is_not(None))).scalar_one())


def unpark_tasks(engine: Engine, account_ids: Sequence[str] | None = None,
                 episode_ids: Sequence[int] | None = None, now: int | None = None) -> int:
    """Plan parked Tasks again at the next sync (all, or these accounts' / episodes') with a fresh
    try count; returns how many were parked. A Task asked for with the "Log task" button is also sent
    again by its click's outbox row (queued again, due `now`), so it is sent even when the syncs plan
    no Tasks. An unparked Task a create was sent for (it has its record's id) is "unknown" again: it
    may have been in doubt (lost answers the lookup did not find), so its key is looked up before it
    is created again; one that never got that far (its record not found) is "failed"."""
    with write_transaction(engine) as conn:
        return unpark_tasks_in(conn, account_ids, episode_ids, now)


def unpark_tasks_in(conn: Connection, account_ids: Sequence[str] | None = None,
                    episode_ids: Sequence[int] | None = None, now: int | None = None) -> int:
    """unpark_tasks inside the caller's transaction (a "Log task" click: with its row queued again)."""
    where = [_t.status == "parked"]
    if account_ids is not None:
        where.append(_t.account_id.in_(list(account_ids)))
    if episode_ids is not None:
        where.append(_t.episode_id.in_([int(e) for e in episode_ids]))
    ids = [int(e) for e in conn.execute(sa.select(_t.episode_id).where(*where)).scalars()]
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        # a Task a create was sent for (it has its record's id) may exist: `unknown`, looked up before
        # it is created again; one that never got that far (no record found) is simply `failed`
        conn.execute(sa.update(tasks_table).where(_t.episode_id.in_(chunk)).values(
            status=sa.case((_t.what_id.is_(None), "failed"), else_="unknown"), attempts=0))
        requeue_finished(conn, [task_click_key(e) for e in chunk], int(time.time()) if now is None else now)
    return len(ids)


def parked_tasks(engine: Engine, limit: int = 100) -> list[TaskRow]:
    """Parked Tasks (refused for good; not planned until unpark_tasks), by account then episode."""
    q = (sa.select(tasks_table).where(_t.status == "parked").order_by(_t.account_id, _t.episode_id).limit(limit))
    with engine.connect() as conn:
        return [_task_row(r) for r in conn.execute(q)]


def count_parked_tasks(engine: Engine) -> int:
    """How many Tasks are parked (refused for good; not planned until unpark_tasks)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(tasks_table)
                                .where(_t.status == "parked")).scalar_one())


def task_key(rule_id: str, account_id: str, metric: str, discriminator: str, started_at: int) -> str:
    """The unique key of an episode's Task, written into the Task and looked up on recovery.

    Derived from the episode's identity (its key and start), so it is the same in every
    database and for every retry, and differs between episodes that share a subject (the 80%
    and 100% quota episodes of one period). Migration 0008 holds a frozen copy of this formula.
    """
    ident = "\x1f".join([rule_id, account_id, metric, discriminator or "", str(int(started_at))])
    return "usagebot-" + hashlib.sha256(ident.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class TaskCandidate:
    """A fired alert episode that may need a Salesforce Task."""

    episode_id: int
    rule_id: str
    account_id: str
    metric: str
    severity: str
    fired_at: int
    explanation: dict[str, Any]
    discriminator: str = ""
    started_at: int = 0

    @property
    def key(self) -> str:
        return task_key(self.rule_id, self.account_id, self.metric, self.discriminator, self.started_at)


@dataclass(frozen=True)
class TaskRow:
    episode_id: int
    account_id: str
    rule_id: str
    status: str
    subject: str
    what_id: str | None
    sf_task_id: str | None
    attempts: int
    last_error: str | None
    first_attempt_at: int
    task_key: str | None = None


@dataclass(frozen=True)
class TaskOutcome:
    """What to store for one episode's task: status created / failed / unknown ("unknown": the
    create may have happened; the next sync looks the key up before creating again)."""

    candidate: TaskCandidate
    status: str
    subject: str
    what_id: str | None
    sf_task_id: str | None = None
    error: str | None = None
    attempted: bool = True


def episodes_fired_since(engine: Engine, since: int) -> list[TaskCandidate]:
    """Episodes (open or resolved) that fired at or after `since`, oldest first."""
    q = (sa.select(_e.id, _e.rule_id, _e.account_id, _e.metric, _e.severity, _e.fired_at, _e.last_explanation,
                   _e.discriminator, _e.started_at)
         .where(_e.fired_at.is_not(None), _e.fired_at >= since).order_by(_e.fired_at, _e.id))
    with engine.connect() as conn:
        return [TaskCandidate(int(r.id), r.rule_id, r.account_id, r.metric, r.severity, int(r.fired_at),
                              dict(r.last_explanation or {}), r.discriminator or "", int(r.started_at))
                for r in conn.execute(q)]


def task_click_key(episode_id: int) -> str:
    """The outbox key of an episode's "Log task" click (bot.crm.task_button): one per episode."""
    return f"crm:task-click:{int(episode_id)}"


def episode_candidate(engine: Engine, episode_id: int) -> TaskCandidate | None:
    """One stored episode as a task candidate (the "Log task" button), None when there is none."""
    q = (sa.select(_e.id, _e.rule_id, _e.account_id, _e.metric, _e.severity, _e.fired_at, _e.started_at,
                   _e.last_explanation, _e.discriminator).where(_e.id == episode_id))
    with engine.connect() as conn:
        r = conn.execute(q).one_or_none()
    if r is None:
        return None
    return TaskCandidate(int(r.id), r.rule_id, r.account_id, r.metric, r.severity, int(r.fired_at or r.started_at),
                         dict(r.last_explanation or {}), r.discriminator or "", int(r.started_at))


def load_tasks(engine: Engine, episode_ids: Iterable[int]) -> dict[int, TaskRow]:
    ids = sorted(set(episode_ids))
    out: dict[int, TaskRow] = {}
    with engine.connect() as conn:
        for i in range(0, len(ids), _CHUNK):
            for r in conn.execute(sa.select(tasks_table).where(_t.episode_id.in_(ids[i : i + _CHUNK]))):
                out[int(r.episode_id)] = _task_row(r)
    return out


def _task_row(r: Any) -> TaskRow:
    """A crm_tasks row as a TaskRow."""
    return TaskRow(int(r.episode_id), r.account_id, r.rule_id, r.status, r.subject, r.what_id, r.sf_task_id,
                   int(r.attempts), r.last_error, int(r.first_attempt_at), r.task_key)


def record_tasks(engine: Engine, outcomes: Sequence[TaskOutcome], now: int) -> None:
    """Insert or update the task rows of several episodes in one transaction (the key included)."""
    if not outcomes:
        return
    with write_transaction(engine) as conn:
        ins = _insert(conn, tasks_table)
        stmt = ins.on_conflict_do_update(
            index_elements=[_t.episode_id],
            set_={"status": ins.excluded.status, "subject": ins.excluded.subject, "what_id": ins.excluded.what_id,
                  "sf_task_id": ins.excluded.sf_task_id, "last_error": ins.excluded.last_error,
                  "updated_at": ins.excluded.updated_at, "task_key": ins.excluded.task_key,
                  "attempts": _t.attempts + ins.excluded.attempts},
        )
        for o in outcomes:  # one by one: `attempts` adds this row's own count
            c = o.candidate
            conn.execute(stmt, {
                "episode_id": c.episode_id, "account_id": c.account_id, "rule_id": c.rule_id, "status": o.status,
                "subject": o.subject, "what_id": o.what_id, "sf_task_id": o.sf_task_id,
                "attempts": 1 if o.attempted else 0,
                "last_error": None if o.error is None else stored_error(o.error), "first_attempt_at": now,
                "updated_at": now, "task_key": c.key})


def restore_tasks(engine: Engine, previous: Mapping[int, TaskRow | None]) -> None:
    """Put the task rows of these episodes back as they were (`previous`; None: there was none), in
    one transaction: their recorded intent was never carried out (Salesforce refused the request
    before looking at any Task: the API budget, the login), so it is no try."""
    with write_transaction(engine) as conn:
        gone = [int(e) for e, r in previous.items() if r is None]
        if gone:
            conn.execute(sa.delete(tasks_table).where(_t.episode_id.in_(gone)))
        for e, r in previous.items():
            if r is not None:
                conn.execute(sa.update(tasks_table).where(_t.episode_id == int(e)).values(
                    status=r.status, what_id=r.what_id, sf_task_id=r.sf_task_id, attempts=r.attempts,
                    last_error=r.last_error))


# --------------------------------------------------------------------------- runs


def record_sync_run(engine: Engine, values: Mapping[str, Any]) -> int:
    """Store one real sync's summary (keys: the crm_sync_runs columns); returns its id."""
    cols = {c.name for c in runs_table.columns} - {"id"}
    unknown = set(values) - cols
    if unknown:
        raise ValueError(f"record_sync_run: unknown column(s) {', '.join(sorted(unknown))}")
    with engine.begin() as conn:
        return int(conn.execute(sa.insert(runs_table).values(**values).returning(_r.id)).scalar_one())


def last_sync_runs(engine: Engine, limit: int = 1) -> list[dict[str, Any]]:
    """The newest real syncs first, each a dict of the crm_sync_runs columns."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs_table).order_by(_r.started_at.desc(), _r.id.desc()).limit(limit))
        return [dict(r._mapping) for r in rows]

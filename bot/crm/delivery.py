"""CRM writes as outbox rows: a sync's plan is queued, then carried out by `CrmOutlet` with retries.

A real sync (bot.crm.sync) plans what to send (changed fields, Tasks) and `queue_plan` writes it in ONE
transaction as outbox rows: one `crm:fields` row per batch of at most `batch_size` records (one row
for a Bulk API job), one `crm:tasks` row per batch of Tasks. The same transaction drops the rows of
an earlier plan that were not sent: this plan is computed from the values Salesforce last accepted
(storage.crm), so it holds everything they would have done. Every CRM delivery (the sync's own, and
the service's deliver job retrying between syncs) runs under the "crm_sync" lock, so no row is
dropped while someone sends it.

Exactly-once stays where issue 12 put it: a Task's intent is recorded (status "unknown") before its
create, each Task carries its episode's key, and a create in doubt is looked up by key before it is
sent again; field writes are idempotent (the same values again). How a failure ends the row
(integrations.notifier.DeliveryError): 5xx / network -> retried with backoff; the API budget
(REQUEST_LIMIT_EXCEEDED, `max_api_share`) -> due again in STOP_DEFER; a request Salesforce refuses
(INVALID_FIELD, a key field that is no External ID) -> dead, for an operator (the next sync plans it
again). After such a failure the rest of the run is deferred without a request.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy.engine import Engine

from bot.crm.plan import CrmSyncReport, FieldWrite, PlannedTask
from bot.service.pipeline import DeliveryReport, deliver_rows
from integrations.notifier import DeliveryError
from integrations.salesforce.client import (
    RecordResult,
    SalesforceAuthError,
    SalesforceClient,
    SalesforceError,
    SalesforceLimitError,
    SalesforceRequestError,
    SalesforceUnavailable,
)
from integrations.salesforce.config import SalesforceConfig
from integrations.salesforce.errors import RETRY_LIMIT, record_error_hint
from rules.model import DAY
from rules.periods import iso
from storage.crm import (
    TaskOutcome,
    WriteOutcome,
    load_tasks,
    record_outcomes,
    record_tasks,
    restore_tasks,
)
from storage.db import write_transaction
from storage.locks import LockTimeout, exclusive
from storage.outbox import OutboxItem, discard_unsent, enqueue

FIELDS_KIND, TASKS_KIND = "crm:fields", "crm:tasks"
CLICK_KIND = "crm:task-click"  # a Task asked for with the "Log task" button (bot.crm.task_button): one row per episode
CLICKED = "clicked_by"  # the payload key of a click's row (who clicked)
PLAN_KINDS = (FIELDS_KIND, TASKS_KIND)  # a sync's own rows: a new plan replaces the unsent ones
CRM_KINDS = (*PLAN_KINDS, CLICK_KIND)
SOQL_CHUNK = 200  # keys per "WHERE x IN (...)" query (keeps the GET URL well under its limit)
KEY_LINE = "usagebot key: "  # the last line of a Task's Description: the episode's unique key
LOOKUP_MARGIN = DAY  # a Task looked up by key may have been created this long before our first attempt
STOP_DEFER = 3600  # seconds the rows of a sync stopped by the API budget wait (the next sync re-plans them)
MAX_ROWS = 1_000_000  # a sync carries out its whole plan (10k accounts = 50 rows of 200)
LOCK = "crm_sync"
TRIES_SPENT = f"parked after {RETRY_LIMIT} tries"  # a Task not created after RETRY_LIMIT tries (refusals, lost answers)

log = logging.getLogger(__name__)


class _Failed(Exception):
    """A request-level failure whose outcomes are already recorded (its records failed, not deferred)."""

    def __init__(self, error: SalesforceError) -> None:
        super().__init__(str(error))
        self.error = error


# ------------------------------------------------------------------------ queueing


def _chunks(seq: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


def queue_plan(engine: Engine, cfg: SalesforceConfig, writes: Sequence[FieldWrite], tasks: Sequence[PlannedTask],
               bulk: bool, now: int) -> int:
    """The plan as outbox rows, replacing the unsent rows of earlier plans (one transaction); returns
    how many rows. Call it holding the LOCK."""
    plan = uuid.uuid4().hex[:12]
    items: list[OutboxItem] = []
    for n, batch in enumerate([writes] if bulk and writes else _chunks(writes, cfg.batch_size)):
        items.append(OutboxItem(f"crm:fields:{plan}:{n}", FIELDS_KIND, {
            "op": "fields", "object": cfg.object, "mode": "bulk" if bulk else "collections",
            "records": [asdict(w) for w in batch]}, not_before=now))
    for n, chunk in enumerate(_chunks(tasks, cfg.batch_size)):
        items.append(OutboxItem(f"crm:tasks:{plan}:{n}", TASKS_KIND,
                                {"op": "tasks", "tasks": [t.to_json() for t in chunk]}, not_before=now))
    with write_transaction(engine) as conn:
        discard_unsent(conn, PLAN_KINDS)  # never a click's row: the sync does not plan it again
        enqueue(conn, items, now)
    return len(items)


def deliver_crm(engine: Engine, cfg: SalesforceConfig, connect: Callable[[], SalesforceClient],
                report: CrmSyncReport, now: int, holder: str | None = None) -> DeliveryReport:
    """Carry out the due CRM rows (call it holding the LOCK); outcomes go into `report`."""
    return deliver_rows(engine, CrmOutlet(engine, cfg, connect, report, now), now, limit=MAX_ROWS, holder=holder)


def retry_crm_rows(engine: Engine, cfg: SalesforceConfig, connect: Callable[[], SalesforceClient],
                   report: CrmSyncReport, now: int, holder: str | None = None) -> DeliveryReport | None:
    """The deliver job's turn at the CRM rows that failed before: skipped (None) while a sync runs."""
    try:
        with exclusive(engine, LOCK, wait=0):
            return deliver_crm(engine, cfg, connect, report, now, holder)
    except LockTimeout:
        return None


class CrmOutlet:
    """The outlet of CRM_KINDS rows (see the module docstring)."""

    name = "crm"
    kinds = CRM_KINDS

    def __init__(self, engine: Engine, cfg: SalesforceConfig, connect: Callable[[], SalesforceClient],
                 report: CrmSyncReport, now: int) -> None:
        self.engine, self.cfg, self.connect, self.report, self.now = engine, cfg, connect, report, now

    def handle(self, payload: Mapping[str, Any]) -> None:
        op = payload.get("op")
        if op not in ("fields", "tasks"):
            raise DeliveryError(f"not a CRM outbox row: {str(dict(payload))[:200]}", permanent=True)
        if self.report.stopped:
            self._defer(payload)
            raise DeliveryError(f"not sent: the sync stopped: {self.report.stopped}", retry_after=STOP_DEFER)
        try:
            if op == "fields":
                self._fields(payload)
            else:
                self._tasks(payload)
            return
        except _Failed as failed:  # outcomes recorded: the records / tasks failed
            exc, tried = failed.error, True
        except SalesforceError as e:  # budget, login, a lookup: nothing was sent; the row waits
            exc, tried = e, False
            self._defer(payload)
        self.report.stopped = self.report.stopped or str(exc)
        if isinstance(exc, SalesforceLimitError):
            raise DeliveryError(str(exc), retry_after=STOP_DEFER) from None
        # a click's row waits for its Task (retried with backoff, never dead) after a try (the Task's
        # RETRY_LIMIT bounds it) and through an outage (a login, the network, a 5xx: no try, it ends);
        # a request Salesforce refuses before any try (a lookup of a misnamed key field) is for an
        # operator: dead at once (`usagebot outbox list`, `usagebot outbox retry`), as any row
        if CLICKED in payload and (tried or not isinstance(exc, SalesforceRequestError)):
            self._click_waits(payload, str(exc))
            return  # its Task is created or parked (refused for good): the click's row is done
        raise DeliveryError(str(exc), permanent=isinstance(exc, SalesforceRequestError)) from None

    def _click_waits(self, payload: Mapping[str, Any], why: str | None = None) -> None:
        """A click's row is done when its Task is created or parked, not before (a sync plans no Task
        that [salesforce.tasks] does not want, so this row is what retries it): while the Task is
        not (failed, unknown, never tried), the row is retried with backoff and never dead, as the
        Task's own tries bound it (parked after RETRY_LIMIT; an in-doubt Task whose record is missing
        counts a try each time too), or an outage ends (CrmOutlet.handle: not after a refusal before
        any try, which makes the row dead)."""
        ids = [int(t["candidate"]["episode_id"]) for t in payload["tasks"]]
        after = load_tasks(self.engine, ids)
        waiting = [e for e in ids if e not in after or after[e].status not in ("created", "parked")]
        if waiting:
            row = after.get(waiting[0])
            raise DeliveryError(f"the Salesforce Task is not created yet: {why or (row and row.last_error)}",
                                persistent=True)

    def _defer(self, payload: Mapping[str, Any]) -> None:
        if payload.get("op") == "fields":
            self.report.deferred += len(payload.get("records") or [])
        else:
            self.report.tasks_deferred += len(payload.get("tasks") or [])

    def _fields(self, payload: Mapping[str, Any]) -> None:
        batch = [FieldWrite(str(r["account_id"]), str(r["match_key"]), dict(r["fields"])) for r in payload["records"]]
        if payload.get("mode") == "bulk":
            _send_bulk(self.connect(), self.cfg, self.engine, batch, self.now, self.report)
        else:
            _send_collection(self.connect(), self.cfg, self.engine, batch, self.now, self.report)

    def _tasks(self, payload: Mapping[str, Any]) -> None:
        raw = list(payload["tasks"])
        previous = load_tasks(self.engine, [int(t["candidate"]["episode_id"]) for t in raw])
        planned = [PlannedTask.from_json(t, previous.get(int(t["candidate"]["episode_id"]))) for t in raw]
        todo = [p for p in planned if p.previous is None or p.previous.status != "created"]  # done meanwhile
        _create_tasks(self.connect(), self.cfg, self.engine, todo, self.now, self.report)
        if CLICKED in payload:
            self._click_waits(payload)


# ------------------------------------------------------------------------ helpers


def _soql_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def key_field(cfg: SalesforceConfig) -> str:
    return cfg.external_id_field if cfg.match == "external_id" and cfg.external_id_field else "Id"


def lookup(client: SalesforceClient, cfg: SalesforceConfig, keys: Sequence[str],
           columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """match key -> record (the given columns) for the records of `cfg.object` with these keys."""
    kf = key_field(cfg)
    cols = list(dict.fromkeys(["Id", kf, *columns]))
    out: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(sorted(set(keys)), SOQL_CHUNK):
        soql = (f"SELECT {', '.join(cols)} FROM {cfg.object} "
                f"WHERE {kf} IN ({', '.join(_soql_quote(k) for k in chunk)})")
        for rec in client.query_all(soql):
            out[str(rec.get(kf))] = rec
            if kf == "Id" and rec.get("Id"):
                out[str(rec["Id"])[:15]] = rec  # 15- and 18-character ids name the same record
    return out


def _payload(cfg: SalesforceConfig, change: FieldWrite) -> dict[str, Any]:
    return {key_field(cfg): change.match_key, **change.values()}


def _outcome(change: FieldWrite, result: RecordResult) -> WriteOutcome:
    if result.ok:
        return WriteOutcome(change.account_id, change.match_key, change.values())
    error, hint = result.error or "failed", result.hint
    if hint is not None:  # retrying cannot help: parked, named, with what to do
        error = (f"{error} -> parked, not sent again with these values: {hint}; then "
                 f"`usagebot crm retry {change.account_id}`")
    return WriteOutcome(change.account_id, change.match_key, change.values(), error=error, park=hint is not None)


# ------------------------------------------------------------------------- writes


def _send_collection(client: SalesforceClient, cfg: SalesforceConfig, engine: Engine,
                     batch: Sequence[FieldWrite], now: int, report: CrmSyncReport) -> None:
    """One sObject Collections request (<= 200 records)."""
    payload = [_payload(cfg, c) for c in batch]
    try:
        if cfg.match == "external_id":
            assert cfg.external_id_field is not None
            results = client.upsert(cfg.object, cfg.external_id_field, payload)
        else:
            results = client.update(cfg.object, payload)
    except SalesforceError as exc:
        _failed(exc, engine, cfg, batch, now, report)
        raise
    report.write_requests += 1
    _record(report, engine, cfg, batch, results, now)


def _send_bulk(client: SalesforceClient, cfg: SalesforceConfig, engine: Engine,
               changes: Sequence[FieldWrite], now: int, report: CrmSyncReport) -> None:
    report.mode = "bulk"
    kf = key_field(cfg)
    try:
        by_key = client.bulk_write(cfg.object, [_payload(cfg, c) for c in changes], kf,
                                   cfg.external_id_field if cfg.match == "external_id" else None)
    except SalesforceError as exc:
        _failed(exc, engine, cfg, changes, now, report)
        raise
    report.write_requests += 1
    missing = RecordResult(False, error="not in the bulk job's results")
    _record(report, engine, cfg, changes, [by_key.get(c.match_key, missing) for c in changes], now)


def _record(report: CrmSyncReport, engine: Engine, cfg: SalesforceConfig, batch: Sequence[FieldWrite],
            results: Sequence[RecordResult], now: int) -> None:
    outcomes = [_outcome(c, r) for c, r in zip(batch, results, strict=True)]
    parked = record_outcomes(engine, cfg.object, outcomes, now, park_after=RETRY_LIMIT)
    for o in outcomes:
        if o.error is None:
            report.written += 1
            continue
        error = o.error
        if o.account_id in parked and not o.park:  # a retryable error, RETRY_LIMIT times in a row
            error = (f"{error} -> parked after {RETRY_LIMIT} failed writes in a row; "
                     f"`usagebot crm retry {o.account_id}` sends it again")
        report.failed.append((o.account_id, error))
        if o.account_id in parked:
            report.parked_now.add(o.account_id)
            log.error("Salesforce %s of account %s refused for good: %s", cfg.object, o.account_id, error)


def _failed(exc: SalesforceError, engine: Engine, cfg: SalesforceConfig, batch: Sequence[FieldWrite], now: int,
            report: CrmSyncReport) -> None:
    """A request-level failure: the batch failed (its fault: raises _Failed) or is deferred (not: returns)."""
    if isinstance(exc, SalesforceUnavailable | SalesforceRequestError):
        error = f"not written: {exc}"
        record_outcomes(engine, cfg.object, [WriteOutcome(c.account_id, c.match_key, error=error) for c in batch],
                        now)
        report.failed.extend((c.account_id, error) for c in batch)
        raise _Failed(exc) from None  # API budget or login (returns): nothing wrong with these records


# -------------------------------------------------------------------------- tasks


def _create_tasks(client: SalesforceClient, cfg: SalesforceConfig, engine: Engine,
                  planned: Sequence[PlannedTask], now: int, report: CrmSyncReport) -> None:
    if not planned:
        return
    tc = cfg.tasks
    records: dict[str, dict[str, Any]] = {}
    if tc.owner == "account_owner" or cfg.match == "external_id":
        records = lookup(client, cfg, [p.match_key for p in planned], ["OwnerId"])

    def target(p: PlannedTask) -> tuple[str | None, str | None]:
        if cfg.match == "id" and tc.owner != "account_owner":
            return p.match_key, None
        rec = records.get(p.match_key) or records.get(p.match_key[:15])
        return (None, None) if rec is None else (str(rec["Id"]), rec.get("OwnerId"))

    todo: list[tuple[PlannedTask, str, str | None]] = []
    for p in planned:
        what_id, owner_id = target(p)
        if what_id is None:
            error = f"no {cfg.object} record with {key_field(cfg)} = {p.match_key!r}"
            if p.previous is not None and p.previous.status == "unknown" and p.previous.what_id:
                # a create in doubt (one was sent: it has its record's id) stays in doubt, never
                # `failed` (its next try would create without looking): a try, and parked after
                # RETRY_LIMIT with its record id kept, so an unpark makes it `unknown` again and it is
                # looked up before anything is created. Without a record id no create was ever sent.
                status, error = _task_failure(
                    p, f"{error}; an earlier create may have worked: looked up when the record is found", report)
                record_tasks(engine, [TaskOutcome(p.candidate, "unknown" if status == "failed" else status,
                                                  p.subject, p.previous.what_id, error=error)], now)
                continue
            status, error = _task_failure(p, error, report)
            record_tasks(engine, [TaskOutcome(p.candidate, status, p.subject, None, error=error)], now)
            continue
        todo.append((p, what_id, owner_id))

    # A create whose outcome is unknown (a crash after the intent was recorded, a lost answer) may
    # have worked: look its key up before creating again.
    unsure = [(p, w) for p, w, _ in todo if p.previous is not None and p.previous.status == "unknown"]
    found = _find_tasks(client, cfg, unsure) if unsure else {}
    if found:
        record_tasks(engine, [TaskOutcome(p.candidate, "created", p.subject, w, sf_task_id=found[p.key],
                                          attempted=False) for p, w in unsure if p.key in found], now)
        report.tasks_created += len(found)
        todo = [(p, w, o) for p, w, o in todo if p.key not in found]
    # Each lost answer was one try (counted when its intent was recorded). A Task RETRY_LIMIT creates
    # were sent for and that the lookup does not find is parked, not sent for ever (never one in doubt).
    spent = {p.key for p, _ in unsure if p.key not in found and p.previous is not None
             and p.previous.attempts >= RETRY_LIMIT}
    for p, w, _ in todo:
        if p.key in spent:
            assert p.previous is not None
            status, error = _task_failure(p, f"{p.previous.last_error or 'answer lost'}; no Task with its key "
                                             "in Salesforce", report)
            record_tasks(engine, [TaskOutcome(p.candidate, status, p.subject, w, error=error, attempted=False)],
                         now)
    todo = [t for t in todo if t[0].key not in spent]
    if todo:
        _create(client, cfg, engine, todo, now, report)


def _create(client: SalesforceClient, cfg: SalesforceConfig, engine: Engine,
            todo: Sequence[tuple[PlannedTask, str, str | None]], now: int, report: CrmSyncReport) -> None:
    """One create (or upsert on tasks.key_field) request for these tasks, its intent recorded first."""
    tc = cfg.tasks
    recs = []
    for p, what_id, owner_id in todo:
        rec = {"Subject": p.subject, "Description": p.description, "WhatId": what_id,
               "ActivityDate": p.due_date, "Status": tc.status, "Priority": p.priority}
        if tc.owner == "account_owner" and owner_id:
            rec["OwnerId"] = owner_id
        if tc.key_field:
            rec[tc.key_field] = p.key
        recs.append(rec)
    # the login and the API budget first: a login host that cannot be reached, or a budget used up,
    # is no try (nothing was sent); CrmOutlet.handle defers the row with the Task as it was
    client.check_budget()
    client.connect()
    # the intent, committed BEFORE the request: whatever happens next, the next try looks first
    record_tasks(engine, [TaskOutcome(p.candidate, "unknown", p.subject, w, error="sent; outcome not known yet")
                          for p, w, _ in todo], now)
    try:
        results = client.upsert("Task", tc.key_field, recs) if tc.key_field else client.create("Task", recs)
    except SalesforceError as exc:
        if isinstance(exc, SalesforceLimitError | SalesforceAuthError) or (
                isinstance(exc, SalesforceUnavailable) and exc.login):  # refused before any Task was looked
            # at (the API budget, the login, a login host that cannot be reached): no try; the row is deferred
            restore_tasks(engine, {p.candidate.episode_id: p.previous for p, _, _ in todo})
            raise
        if isinstance(exc, SalesforceUnavailable) and exc.ambiguous:  # may have worked: looked up, not parked
            record_tasks(engine, [TaskOutcome(p.candidate, "unknown", p.subject, w, error=str(exc),
                                              attempted=False) for p, w, _ in todo], now)
            report.tasks_failed.extend((p.candidate.episode_id, str(exc)) for p, _, _ in todo)
        else:
            failures = [(p, w, *_task_failure(p, str(exc), report)) for p, w, _ in todo]
            record_tasks(engine, [TaskOutcome(p.candidate, status, p.subject, w, error=error, attempted=False)
                                  for p, w, status, error in failures], now)
        raise _Failed(exc) from None
    outcomes = []
    for (p, what_id, _), r in zip(todo, results, strict=True):
        if r.ok:
            outcomes.append(TaskOutcome(p.candidate, "created", p.subject, what_id, sf_task_id=r.id, attempted=False))
            report.tasks_created += 1
        else:
            status, error = _task_failure(p, r.error or "failed", report)
            outcomes.append(TaskOutcome(p.candidate, status, p.subject, what_id, error=error, attempted=False))
    record_tasks(engine, outcomes, now)


def _task_failure(p: PlannedTask, error: str, report: CrmSyncReport) -> tuple[str, str]:
    """(status, error) of a Task Salesforce refused, added to the report: "parked" (not planned again
    until `usagebot crm retry`) when the error is one retrying cannot fix or after RETRY_LIMIT tries,
    else "failed" (sent again next sync). Tries: the stored attempts before this sync, plus this one
    (attempts count each create request sent once, when its intent is recorded: a lost answer is one try;
    a request refused before any Task was looked at, the API budget or the login, is none)."""
    tries = (p.previous.attempts if p.previous is not None else 0) + 1
    hint = record_error_hint(error)
    if hint is None and tries < RETRY_LIMIT:
        report.tasks_failed.append((p.candidate.episode_id, error))
        return "failed", error
    why = hint or TRIES_SPENT
    error = f"{error} -> {why}; `usagebot crm retry {p.candidate.account_id}` sends it again"
    report.tasks_failed.append((p.candidate.episode_id, error))
    report.tasks_parked_now += 1
    return "parked", error


def _find_tasks(client: SalesforceClient, cfg: SalesforceConfig,
                unsure: Sequence[tuple[PlannedTask, str]]) -> dict[str, str]:
    """task key -> Task Id of the Tasks that exist for these planned tasks (looked up by their key:
    the key field when configured, else the key line of the Descriptions of the record's Tasks)."""
    keys = {p.key for p, _ in unsure}
    out: dict[str, str] = {}
    kf = cfg.tasks.key_field
    if kf:
        for chunk in _chunks(sorted(keys), SOQL_CHUNK):
            soql = f"SELECT Id, {kf} FROM Task WHERE {kf} IN ({', '.join(_soql_quote(k) for k in chunk)})"
            for rec in client.query_all(soql):
                out[str(rec.get(kf))] = str(rec["Id"])
        return out
    since = min(p.previous.first_attempt_at for p, _ in unsure if p.previous is not None) - LOOKUP_MARGIN
    for chunk in _chunks(sorted({w for _, w in unsure}), SOQL_CHUNK):
        soql = (f"SELECT Id, WhatId, Description FROM Task WHERE WhatId IN "
                f"({', '.join(_soql_quote(w) for w in chunk)}) AND CreatedDate >= {iso(since)}")
        for rec in client.query_all(soql):
            key = _key_in(rec.get("Description"))
            if key in keys:
                out.setdefault(key, str(rec["Id"]))
    return out


def _key_in(description: Any) -> str | None:
    for line in reversed(str(description or "").splitlines()):
        if line.startswith(KEY_LINE):
            return line[len(KEY_LINE):].strip()
    return None

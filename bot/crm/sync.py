"""CRM sync: usage health -> Salesforce fields (diff-only, batched) and Tasks per alert episode.

One sync:
1. computes every account's health as of the start of the UTC day (bot.crm.preview)
   and the field values the mapping gives it;
2. diffs them against the values Salesforce last accepted (storage.crm), or, with
   `reconcile`, against the values read back from Salesforce;
3. sends only changed fields of changed records, <= 200 records per sObject
   Collections request (allOrNone=false), or one Bulk API 2.0 job when at least
   `bulk_threshold` records changed; stores each batch's per-record results
   (failures keep their error and are sent again next sync);
4. creates a Task for each alert episode that asks for one, exactly once per episode:
   the intent is recorded (status "unknown") before the request, and each Task
   carries the episode's unique key (storage.crm.task_key), so a sync after a
   crash or a lost answer looks the key up and records the Task it finds
   instead of creating another (with tasks.key_field, creates are upserts on
   that External ID field: Salesforce itself refuses a second Task per key);
5. records the run (crm_sync_runs).
Steps 3 and 4 go through the outbox (bot.crm.delivery): the plan is queued as rows in one
transaction (replacing the unsent rows of an earlier plan), then carried out at once; rows that
fail are retried by the service's deliver job between syncs, and the next sync plans afresh.
A dry run does 1-2 (and lists the tasks) and stores nothing, so running it twice
shows the same thing, and a real sync right after it sends exactly what it showed.
The sync stops early (the rest waits for the next sync) on REQUEST_LIMIT_EXCEEDED,
when the org's API usage reaches `max_api_share` of its daily limit, on login or
session problems, on 5xx answers that outlast the retries, and on request-level
errors (e.g. a mapped field that does not exist). Real syncs run one at a time per
database (the "crm_sync" lock of storage.locks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from sqlalchemy.engine import Engine

from bot.crm.delivery import KEY_LINE, deliver_crm, lookup, queue_plan
from bot.crm.plan import CrmSyncReport, FieldWrite, PlannedTask
from bot.crm.preview import account_health, health_as_of
from integrations.salesforce.client import SalesforceClient, SalesforceError
from integrations.salesforce.config import SalesforceConfig
from integrations.salesforce.diff import (
    DesiredRecord,
    RecordChange,
    align_read_value,
    diff_records,
    format_change,
)
from integrations.salesforce.mapping import field_values, match_key
from rules.health import HealthModel
from rules.model import DAY, AccountFacts, RuleSet
from rules.periods import iso
from storage.crm import (
    RecordState,
    TaskCandidate,
    TaskRow,
    WriteOutcome,
    count_parked_tasks,
    episodes_fired_since,
    load_record_states,
    load_tasks,
    record_outcomes,
    record_sync_run,
    task_click_key,
)
from storage.error_text import stored_error
from storage.jsonsafe import json_safe
from storage.locks import LockTimeout, exclusive
from storage.outbox import queued_keys

SYNC_LOCK_WAIT = 900.0  # seconds a real sync waits for another one on the same database
ClientFactory = Callable[[SalesforceConfig], SalesforceClient]


# ----------------------------------------------------------------------- planning


def desired_records(
    engine: Engine, ruleset: RuleSet, cfg: SalesforceConfig, model: HealthModel, now: int,
) -> tuple[list[DesiredRecord], list[tuple[str, str]], dict[str, AccountFacts]]:
    """(records to hold these values, accounts without a record and why, all accounts by id)."""
    desired, unmatched, accounts = [], [], {}
    for acct, h in account_health(engine, ruleset, now, model):
        accounts[acct.id] = acct
        key, why = match_key(acct, cfg)
        if key is None:
            unmatched.append((acct.id, why))
            continue
        desired.append(DesiredRecord(acct.id, acct.name, key, field_values(h, cfg.fields, iso, cfg.text_limit)))
    return desired, unmatched, accounts


def _kind_of(ruleset: RuleSet) -> Callable[[TaskCandidate], str]:
    kinds = {r.id: r.kind for r in ruleset.rules}
    return lambda c: kinds.get(c.rule_id, str(c.explanation.get("kind", "")))


def plan_tasks(
    engine: Engine, ruleset: RuleSet, cfg: SalesforceConfig, accounts: Mapping[str, AccountFacts], now: int,
) -> list[PlannedTask]:
    """Episodes that fired within tasks.max_age, match the task filters and have no task yet."""
    tc = cfg.tasks
    if not tc.enabled:
        return []
    kind_of = _kind_of(ruleset)
    candidates = [c for c in episodes_fired_since(engine, now - tc.max_age)
                  if tc.wants(c.severity, kind_of(c), c.rule_id)]
    existing = load_tasks(engine, [c.episode_id for c in candidates])
    # a "Log task" click's row still queued carries its Task (retried until created or parked): the
    # plan leaves it out, so one create per run, not two (the plan's row and the click's)
    clicked = queued_keys(engine, [task_click_key(c.episode_id) for c in candidates])
    out = []
    for c in candidates:
        prev = existing.get(c.episode_id)
        acct = accounts.get(c.account_id)
        # created: done; parked: refused for good (storage.crm unpark_tasks / `usagebot crm retry`)
        if (prev is not None and prev.status in ("created", "parked")) or acct is None:
            continue
        if task_click_key(c.episode_id) in clicked:
            continue
        planned = planned_task(cfg, c, acct, kind_of(c), now, prev)
        if planned is not None:
            out.append(planned)
    return out


def planned_task(cfg: SalesforceConfig, c: TaskCandidate, acct: AccountFacts, kind: str, now: int,
                 prev: TaskRow | None = None, note: str = "") -> PlannedTask | None:
    """The Task of one episode (subject, description ending in its key line, priority, due date),
    or None when the account has no Salesforce record to hang it on. `note`: a line added before
    the key line (e.g. who asked for it from Slack)."""
    tc = cfg.tasks
    key, _why = match_key(acct, cfg)
    if key is None:
        return None
    message = str(c.explanation.get("message") or c.rule_id)
    subject = tc.subject.format(account=acct.name or acct.id, message=message, rule=c.rule_id,
                                severity=c.severity, kind=kind, metric=c.metric)[:255]
    description = "\n".join([
        message,
        "",
        f"Rule: {c.rule_id} ({kind}, {c.severity}) on metric {c.metric}",
        f"Value: {c.explanation.get('value')}  baseline: {c.explanation.get('baseline')}  "
        f"threshold: {c.explanation.get('threshold')}",
        f"Fired: {iso(c.fired_at)}",
        f"usagebot account {acct.id}, alert episode #{c.episode_id}",
        *([note] if note else []),
        f"{KEY_LINE}{c.key}",
    ])
    due = iso(health_as_of(now) + tc.due_in_days * DAY)[:10]
    return PlannedTask(c, acct, key, kind, subject, description, tc.priority.get(c.severity, "Normal"), due, prev)


def _reconcile(client: SalesforceClient, cfg: SalesforceConfig, desired: Sequence[DesiredRecord],
               ) -> dict[str, tuple[str, dict[str, Any]]]:
    """account id -> (match key, current field values read from Salesforce)."""
    found = lookup(client, cfg, [d.match_key for d in desired], list(cfg.fields.values()))
    out = {}
    for d in desired:
        rec = found.get(d.match_key)
        if rec is not None:
            out[d.account_id] = (d.match_key, {f: align_read_value(rec.get(f), d.values.get(f)) for f in d.values})
    return out


# --------------------------------------------------------------------------- main


def run_crm_sync(
    engine: Engine, ruleset: RuleSet, sf_config: SalesforceConfig, health_model: HealthModel, now: int,
    dry_run: bool, out: TextIO | None = None, client: SalesforceClient | None = None,
    reconcile: bool = False, client_factory: ClientFactory | None = None, verbose: bool = True,
) -> CrmSyncReport:
    """One CRM sync (see the module docstring); prints the plan and the outcome to `out` if given.

    `client`: an existing connection (tests pass one on a fake org); otherwise one
    is made with `client_factory` (default SalesforceClient) only if something has
    to be read or sent. Salesforce problems end the sync early with
    `report.stopped` set; they are not raised. A real sync waits for one running
    elsewhere on the same database (up to SYNC_LOCK_WAIT seconds, then it stops).
    """
    if dry_run:
        return _run_crm_sync(engine, ruleset, sf_config, health_model, now, dry_run, out, client, reconcile,
                             client_factory, verbose)
    try:
        with exclusive(engine, "crm_sync", wait=SYNC_LOCK_WAIT):
            return _run_crm_sync(engine, ruleset, sf_config, health_model, now, dry_run, out, client, reconcile,
                                 client_factory, verbose)
    except LockTimeout as exc:
        report = CrmSyncReport(as_of=health_as_of(now), dry_run=False, object=sf_config.object, stopped=str(exc))
        return _finish(report, engine, client, now, out)


def _run_crm_sync(
    engine: Engine, ruleset: RuleSet, sf_config: SalesforceConfig, health_model: HealthModel, now: int,
    dry_run: bool, out: TextIO | None, client: SalesforceClient | None, reconcile: bool,
    client_factory: ClientFactory | None, verbose: bool,
) -> CrmSyncReport:
    cfg = sf_config
    as_of = health_as_of(now)
    report = CrmSyncReport(as_of=as_of, dry_run=dry_run, object=cfg.object)
    desired, unmatched, accounts = desired_records(engine, ruleset, cfg, health_model, now)
    report.accounts, report.unmatched = len(accounts), unmatched
    stored = load_record_states(engine, cfg.object)
    written = {a: (s.match_key, s.written) for a, s in stored.items()}
    errors = {a: s.last_error for a, s in stored.items() if s.last_error}
    conn: SalesforceClient | None = client

    def connect() -> SalesforceClient:
        nonlocal conn
        if conn is None:
            conn = (client_factory or SalesforceClient)(cfg)
        return conn

    try:
        if reconcile and desired:
            current = _reconcile(connect(), cfg, desired)
            if not dry_run:
                record_outcomes(engine, cfg.object, [WriteOutcome(a, k, v) for a, (k, v) in current.items()], now,
                                replace_written=True)
            written.update(current)
    except SalesforceError as exc:
        report.stopped = f"reading current values: {exc}"
    report.changes, report.parked = _without_parked(diff_records(desired, written, errors), stored)
    report.tasks = plan_tasks(engine, ruleset, cfg, accounts, now)
    report.tasks_parked = count_parked_tasks(engine) if cfg.tasks.enabled else 0
    if out is not None:
        print_plan(report, out, verbose)
    if dry_run or report.stopped:
        return _finish(report, engine, conn, now, out)

    queue_plan(engine, cfg, [FieldWrite(c.account_id, c.match_key, c.values()) for c in report.changes],
               report.tasks, bool(cfg.bulk_threshold and len(report.changes) >= cfg.bulk_threshold), now)
    deliver_crm(engine, cfg, connect, report, now)
    return _finish(report, engine, conn, now, out)


def _without_parked(changes: list[RecordChange], stored: Mapping[str, RecordState],
                    ) -> tuple[list[RecordChange], list[tuple[str, str]]]:
    """The changes to send, and (account id, error) of those left out: their values are the ones
    Salesforce refused for good on the same record (storage.crm `parked`; `usagebot crm retry`
    sends them again). Changed values are sent: they may be accepted."""
    send, parked = [], []
    for c in changes:
        s = stored.get(c.account_id)
        if s is not None and s.parked is not None and s.match_key == c.match_key \
                and json_safe(c.values(), "CRM values") == s.parked:
            parked.append((c.account_id, s.last_error or "parked"))
        else:
            send.append(c)
    return send, parked


def _finish(report: CrmSyncReport, engine: Engine, client: SalesforceClient | None, now: int,
            out: TextIO | None) -> CrmSyncReport:
    if client is not None:
        report.api_calls = client.calls
        report.api_usage = client.usage
    if not report.dry_run:
        report.run_id = record_sync_run(engine, {
            "started_at": now, "finished_at": now, "accounts": report.accounts, "changed": len(report.changes),
            "written": report.written, "failed": len(report.failed), "deferred": report.deferred,
            "unmatched": len(report.unmatched), "tasks_created": report.tasks_created,
            "tasks_failed": len(report.tasks_failed), "api_calls": report.api_calls,
            "api_used": report.api_usage.used if report.api_usage else None,
            "api_max": report.api_usage.limit if report.api_usage else None,
            "stopped": None if report.stopped is None else stored_error(report.stopped),
        })
    if out is not None:
        print_outcome(report, out)
    return report


# ----------------------------------------------------------------------- printing


def print_plan(report: CrmSyncReport, out: TextIO, verbose: bool = True) -> None:
    """The plan: a summary (changed fields with their record counts); every record and task when `verbose`."""
    what = "dry run" if report.dry_run else "sync"
    print(f"CRM {what} as of {iso(report.as_of)}: {report.accounts} account(s), {len(report.changes)} "
          f"{report.object} record(s) to update, {report.unchanged} unchanged, {len(report.unmatched)} without "
          f"a Salesforce record", file=out)
    if not verbose:
        fields: dict[str, int] = {}
        for c in report.changes:
            for fc in c.changes:
                fields[fc.field] = fields.get(fc.field, 0) + 1
        for name, n in sorted(fields.items()):
            print(f"  {name}: {n:,} record(s) change", file=out)
        retries = sum(1 for c in report.changes if c.retry_of)
        if retries:
            print(f"  {retries:,} of them failed before and are sent again", file=out)
        if report.parked:
            print(f"  {len(report.parked):,} record(s) parked (refused for good; `usagebot crm status` lists "
                  "them, `usagebot crm retry` sends them again)", file=out)
        if report.tasks:
            print(f"Tasks to create: {len(report.tasks)}", file=out)
        if report.changes or report.tasks or report.unmatched:
            print("(--verbose lists every record's 'field: old -> new', the tasks and the skipped accounts)",
                  file=out)
        return
    for account_id, why in report.unmatched[:20]:
        print(f"  skipped {account_id}: {why}", file=out)
    if len(report.unmatched) > 20:
        print(f"  ... and {len(report.unmatched) - 20} more without a Salesforce record", file=out)
    for c in report.changes:
        retry = f" [retry: {c.retry_of}]" if c.retry_of else ""
        print(f"{report.object} {c.match_key} ({c.account_name or c.account_id}, {c.account_id}){retry}:", file=out)
        for fc in c.changes:
            print(f"  {format_change(fc)}", file=out)
    if report.tasks:
        print(f"Tasks to create: {len(report.tasks)}", file=out)
        for t in report.tasks:
            print(t.line(), file=out)


def print_outcome(report: CrmSyncReport, out: TextIO) -> None:
    if report.dry_run:
        print("Dry run: nothing was sent to Salesforce and nothing was stored.", file=out)
        if report.stopped:
            print(f"Stopped: {report.stopped}", file=out)
        return
    if report.changes:
        via = "one Bulk API 2.0 job" if report.mode == "bulk" else f"{report.write_requests} request(s)"
        print(f"Sent {len(report.changes) - report.deferred} record(s) in {via}: {report.written} written, "
              f"{len(report.failed)} failed", file=out)
        for account_id, error in report.failed[:50]:
            again = "" if account_id in report.parked_now else " (sent again next sync)"
            print(f"  failed {account_id}: {error}{again}", file=out)
    else:
        print("Nothing to update.", file=out)
    for account_id, error in report.parked[:50]:
        print(f"  parked {account_id} (not sent; `usagebot crm retry {account_id}` sends it again): {error}",
              file=out)
    if report.tasks_parked:
        print(f"  {report.tasks_parked:,} Task(s) parked (refused for good, not sent; `usagebot crm status` "
              "lists them, `usagebot crm retry` sends them again)", file=out)
    if report.tasks:
        print(f"Tasks: {report.tasks_created} created, {len(report.tasks_failed)} failed, "
              f"{report.tasks_deferred} deferred", file=out)
        for episode_id, error in report.tasks_failed[:50]:
            print(f"  task for episode #{episode_id} failed: {error}", file=out)
    if report.stopped:
        print(f"Stopped: {report.stopped}. {report.deferred} record(s) wait for the next sync.", file=out)
    usage = (f"; org API usage {report.api_usage.used:,} of {report.api_usage.limit:,} today"
             if report.api_usage else "")
    print(f"API: {report.api_calls} call(s) this sync{usage}.", file=out)

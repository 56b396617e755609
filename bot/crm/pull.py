"""Pull account facts from Salesforce: owner, CSM, plan, quotas, ARR, renewal, billing day.

One pull = one SOQL query (integrations.salesforce.accounts) of the Accounts changed since the
stored cursor (the newest SystemModstamp seen; none = every Account), read page by page. Each
record becomes the facts it supplies, matched to a usagebot account by its external id field
(match = "external_id") or by the accounts' crm_id (match = "id"; records of no known account are
counted and skipped). The facts are stored (crm_account_facts) and put on top of the account's
row, in ONE transaction with the new cursor: a crash stores nothing and the next pull starts over
from the old cursor. The accounts CSV stays the default for every fact the CRM does not supply and
for accounts not in the CRM (storage.accounts keeps the CRM's facts on top when the CSV is loaded
again). A dry run queries Salesforce but writes nothing, cursor included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy.engine import Engine

from integrations.salesforce.accounts import PulledRecord, pull_soql, record_facts, soql_datetime
from integrations.salesforce.client import SalesforceClient, SalesforceError
from integrations.salesforce.config import SalesforceConfig
from integrations.salesforce.diff import FieldChange
from rules.model import AccountFacts
from rules.periods import iso
from storage.accounts import apply_crm_facts, list_accounts, with_crm_facts
from storage.crm_accounts import get_pull_cursor, save_pull_cursor, save_pulled
from storage.db import write_transaction
from storage.locks import LockTimeout, exclusive

FACT_FIELDS = ("name", "owner_email", "csm_email", "plan", "crm_id", "arr", "renewal_at", "billing_day",
               "timezone")
PULL_LOCK_WAIT = 60.0


def show_change(c: FieldChange) -> str:
    """ "owner_email: alice@example.com -> bob@example.com" (dates as dates, "(none)" for no value)."""
    return f"{c.field}: {_show(c.field, c.old)} -> {_show(c.field, c.new)}"


@dataclass(frozen=True)
class AccountChange:
    account_id: str
    sf_id: str
    new_account: bool
    changes: tuple[FieldChange, ...]


@dataclass
class PullReport:
    dry_run: bool
    since: str | None  # the cursor the pull started from (None = a full pull)
    records: int = 0
    unmatched: int = 0  # records of no usagebot account (match = "id": no account has that crm_id)
    changed: list[AccountChange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "Account <Id>: <field>: why"
    cursor: str | None = None  # the newest SystemModstamp seen
    api_calls: int = 0
    stopped: str = ""

    @property
    def ok(self) -> bool:
        return not self.stopped


def _show(name: str, value: Any) -> str:
    if value is None or value == "":
        return "(none)"
    if name == "renewal_at":
        return iso(int(value))[:10]
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return str(value)


def diff_facts(old: AccountFacts | None, new: AccountFacts) -> tuple[FieldChange, ...]:
    """What a pull changes on one account: field old -> new (quotas per metric, as quota.<metric>)."""
    out = [FieldChange(f, getattr(old, f) if old else None, getattr(new, f)) for f in FACT_FIELDS
           if (getattr(old, f) if old else None) != getattr(new, f)]
    before = dict(old.quotas) if old else {}
    for metric in sorted(set(before) | set(new.quotas)):
        if before.get(metric) != new.quotas.get(metric):
            out.append(FieldChange(f"quota.{metric}", before.get(metric), new.quotas.get(metric)))
    return tuple(out)


def _match(pulled: Sequence[PulledRecord], accounts: Mapping[str, AccountFacts], report: PullReport
           ) -> list[tuple[str, PulledRecord]]:
    by_crm = {a.crm_id: a.id for a in accounts.values() if a.crm_id}
    out = []
    for p in pulled:
        account_id = p.account_id if p.account_id is not None else by_crm.get(p.sf_id)
        if not account_id:
            report.unmatched += 1
            continue
        out.append((account_id, p))
    return out


def run_crm_pull(engine: Engine, sf: SalesforceConfig, now: int, dry_run: bool, client: SalesforceClient,
                 full: bool = False) -> PullReport:
    """One pull (see the module docstring). Salesforce problems end it with `report.stopped` set
    (nothing stored), never raised. A real pull waits for one running elsewhere on the same database."""
    if dry_run:
        return _pull(engine, sf, now, True, client, full)
    try:
        with exclusive(engine, "crm_pull", wait=PULL_LOCK_WAIT):
            return _pull(engine, sf, now, False, client, full)
    except LockTimeout as exc:
        return PullReport(dry_run=False, since=None, stopped=str(exc))


def _pull(engine: Engine, sf: SalesforceConfig, now: int, dry_run: bool, client: SalesforceClient,
          full: bool) -> PullReport:
    pull = sf.accounts
    assert pull is not None, "[salesforce.accounts] is not configured"
    since = None if full else get_pull_cursor(engine)
    report = PullReport(dry_run=dry_run, since=since)
    calls = client.calls
    try:
        records = client.query_all(pull_soql(pull, sf, since))
    except SalesforceError as exc:
        report.stopped = str(exc)
        report.api_calls = client.calls - calls
        return report
    report.api_calls = client.calls - calls
    report.records = len(records)
    pulled = [record_facts(r, pull, sf) for r in records]
    report.cursor = max((p.modstamp for p in pulled if p.modstamp), key=soql_datetime, default=since)
    accounts = {a.id: a for a in list_accounts(engine)}
    pulled_facts: dict[str, Mapping[str, Any]] = {}
    stored: list[tuple[str, str, Mapping[str, Any], str]] = []
    for account_id, p in _match(pulled, accounts, report):
        report.problems += [f"{sf.object} {p.sf_id} (account {account_id}): {why}" for why in p.problems]
        old = accounts.get(account_id)
        new = with_crm_facts(old or AccountFacts(id=account_id, name=account_id), p.facts)
        stored.append((account_id, p.sf_id, p.facts, p.modstamp))
        changes = diff_facts(old, new)
        if changes:
            report.changed.append(AccountChange(account_id, p.sf_id, old is None, changes))
            pulled_facts[account_id] = p.facts  # the same account twice in one pull: the later record wins
            accounts[account_id] = new
    if not dry_run:
        with write_transaction(engine) as conn:
            save_pulled(conn, stored, now)
            apply_crm_facts(conn, {a.account_id: pulled_facts[a.account_id] for a in report.changed}, now)
            if report.cursor:
                save_pull_cursor(conn, report.cursor, now)
    return report


def print_pull(report: PullReport, out: TextIO, limit: int | None = None) -> None:
    """What changed, per account (field old -> new), then a summary line."""
    shown = report.changed if limit is None else report.changed[:limit]
    for c in shown:
        tag = " (new account)" if c.new_account else ""
        print(f"{c.account_id} ({c.sf_id}){tag}:", file=out)
        for ch in c.changes:
            print(f"  {show_change(ch)}", file=out)
    if len(shown) < len(report.changed):
        print(f"... and {len(report.changed) - len(shown)} more account(s)", file=out)
    for p in report.problems:
        print(f"skipped: {p}", file=out)
    since = f"changed since {report.since}" if report.since else "all records (first pull)"
    verb = "would change" if report.dry_run else "changed"
    print(f"Salesforce accounts pull ({since}): {report.records} record(s) read, {len(report.changed)} "
          f"account(s) {verb}, {report.unmatched} record(s) of no usagebot account; {report.api_calls} API "
          f"call(s)" + ("; dry run: nothing stored" if report.dry_run else ""), file=out)

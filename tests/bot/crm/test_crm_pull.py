"""Account facts from Salesforce (`usagebot crm pull`): the real simple-salesforce client against the
fake org: SOQL with relationship paths, pages by nextRecordsUrl, SystemModstamp increments, errors,
limits, dry runs, and the accounts CSV as the default beneath the CRM's facts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from bot.crm.pull import run_crm_pull, show_change
from integrations.salesforce.client import SalesforceClient
from integrations.salesforce.config import AccountPullConfig, SalesforceConfig
from rules.model import AccountFacts
from storage.accounts import list_accounts, upsert_accounts
from storage.crm_accounts import get_pull_cursor
from tests.bot.helpers import run_cli
from tests.fakes.salesforce_server import FakeSalesforce, running
from tests.integrations.salesforce.helpers import password_config

T0 = 1_795_478_400  # 2026-11-24T00:00:00Z
PULL = AccountPullConfig(owner="Owner.Email", csm="CSM__r.Email", plan="Plan__c", arr="ARR__c",
                         renewal="Renewal_Date__c", billing_day="Billing_Day__c",
                         quotas={"api_calls": "API_Quota__c"})
ACCOUNT_FIELDS = {"Name", "OwnerId", "CSM__c", "Plan__c", "ARR__c", "Renewal_Date__c", "Billing_Day__c",
                  "API_Quota__c", "Usagebot_Id__c"}


def user(n: int) -> str:
    return f"005{n:012d}AAA"


@pytest.fixture
def fake() -> Iterator[FakeSalesforce]:
    yield from running(page_size=2, fields={"Account": ACCOUNT_FIELDS, "User": {"Email"}})


def book(fake: FakeSalesforce, n: int = 5) -> list[str]:
    """Users owner0.. and csm0..; Accounts for usagebot ids a0..a{n-1} (by Usagebot_Id__c)."""
    fake.now = T0
    for i in range(3):
        fake.add_record("User", {"Email": f"Owner{i}@Example.com"}, id=user(i))
        fake.add_record("User", {"Email": f"csm{i}@example.com"}, id=user(10 + i))
    ids = []
    for i in range(n):
        fake.now = T0 + 60 * i  # created a minute apart
        ids.append(fake.add_record("Account", {
            "Name": f"Account {i}", "OwnerId": user(i % 3), "CSM__c": user(10 + i % 3), "Plan__c": "growth",
            "ARR__c": 12_000.0 * (i + 1), "Renewal_Date__c": "2027-01-15", "Billing_Day__c": 5,
            "API_Quota__c": 50_000, "Usagebot_Id__c": f"a{i}"}))
    return ids


def config(fake: FakeSalesforce, **pull: object) -> SalesforceConfig:
    return password_config(fake, match="external_id", external_id_field="Usagebot_Id__c",
                           accounts=replace(PULL, **pull))


def pull(engine: Engine, fake: FakeSalesforce, cfg: SalesforceConfig | None = None, dry_run: bool = False,
         now: int = T0 + 3600):
    cfg = cfg or config(fake)
    client = SalesforceClient(cfg, session=fake.session(), sleep=lambda s: None)
    return run_crm_pull(engine, cfg, now, dry_run, client), client


def test_first_pull_reads_every_fact_over_pages_then_an_increment_reads_only_the_changed(engine, fake):
    ids = book(fake)
    upsert_accounts(engine, [AccountFacts("a1", "From CSV", owner_email="csv@example.com", timezone="Europe/Paris",
                                          quotas={"seats": 10.0})], now=T0)
    report, client = pull(engine, fake)
    assert report.ok and report.records == 5 and len(report.changed) == 5 and report.unmatched == 0
    assert client.calls == 1 + 3  # login + 3 pages of 2 (nextRecordsUrl)
    query = [r for r in fake.data_requests() if "/query" in r.path]
    assert len(query) == 3 and "query/01g" in query[1].path
    a1 = {a.id: a for a in list_accounts(engine)}["a1"]
    assert a1 == AccountFacts(
        id="a1", name="Account 1", plan="growth", owner_email="owner1@example.com", crm_id=ids[1],
        quotas={"seats": 10.0, "api_calls": 50_000.0}, billing_day=5, timezone="Europe/Paris",
        csm_email="csm1@example.com", arr=24_000.0, renewal_at=1_799_971_200)  # 2027-01-15 UTC
    assert get_pull_cursor(engine) == "2026-11-24T00:04:00.000+0000"  # the newest SystemModstamp read

    # An hour later one account is reassigned in Salesforce: the next pull asks for what changed since.
    fake.now = T0 + 3600
    fake.modify("Account", ids[3], OwnerId=user(2))
    fake.log.clear()
    report, client = pull(engine, fake, now=T0 + 7200)
    soql = [r.path for r in fake.data_requests() if "/query" in r.path]
    assert len(soql) == 1 and "SystemModstamp+%3E%3D+2026-11-24T00%3A04%3A00Z" in soql[0]
    assert report.records == 2 and client.calls == 2  # a4 (at the cursor's second, again) and a3; login + 1 page
    assert [(c.account_id, [show_change(x) for x in c.changes]) for c in report.changed] == [
        ("a3", ["owner_email: owner0@example.com -> owner2@example.com"])]
    assert get_pull_cursor(engine) == "2026-11-24T01:00:00.000+0000"
    fake.log.clear()
    report, _ = pull(engine, fake)
    assert report.records == 1 and report.changed == []  # the same second again: read, unchanged


def test_a_dry_run_shows_the_changes_and_stores_nothing(engine, fake):
    book(fake, 3)
    report, _ = pull(engine, fake, dry_run=True)
    assert len(report.changed) == 3 and report.changed[0].new_account
    assert "owner_email: (none) -> owner0@example.com" in [show_change(c) for c in report.changed[0].changes]
    assert list_accounts(engine) == [] and get_pull_cursor(engine) is None


def test_the_csv_stays_the_default_beneath_the_crm_and_for_accounts_not_in_it(engine, fake):
    book(fake, 2)
    pull(engine, fake)
    csv = [AccountFacts("a0", "CSV name", owner_email="old-owner@example.com", plan="starter", timezone="Asia/Tokyo"),
           AccountFacts("z9", "Only in the CSV", owner_email="z@example.com", plan="starter")]
    upsert_accounts(engine, csv, now=T0 + 9000)  # the CSV loaded again after the pull
    got = {a.id: a for a in list_accounts(engine)}
    assert (got["a0"].owner_email, got["a0"].plan, got["a0"].name) == ("owner0@example.com", "growth", "Account 0")
    assert got["a0"].timezone == "Asia/Tokyo"  # not mapped: the CSV's
    assert got["z9"] == csv[1]


def test_an_accounts_csv_loaded_while_a_pull_runs_keeps_its_fields(engine, fake, monkeypatch):
    """Seen (issue 17 note): the pull read every account, asked Salesforce, then wrote whole rows, so a
    CSV loaded in between had its non-CRM fields (timezone, quotas of unmapped metrics) written back
    as they were. The pull now reads the rows it writes inside its write transaction."""
    import bot.crm.pull as pull_module

    book(fake, 2)
    upsert_accounts(engine, [AccountFacts("a0", "CSV", timezone="UTC", quotas={"seats": 5.0})], now=T0)
    read = pull_module.list_accounts

    def read_then_csv_loads(eng):  # the pull has read; now the CSV load commits
        got = read(eng)
        upsert_accounts(engine, [AccountFacts("a0", "CSV", timezone="Asia/Tokyo", quotas={"seats": 9.0})], now=T0 + 1)
        return got

    monkeypatch.setattr(pull_module, "list_accounts", read_then_csv_loads)
    report, _ = pull(engine, fake)
    assert report.ok and {c.account_id for c in report.changed} == {"a0", "a1"}
    a0 = {a.id: a for a in list_accounts(engine)}["a0"]
    assert (a0.timezone, dict(a0.quotas)) == ("Asia/Tokyo", {"seats": 9.0, "api_calls": 50_000.0})  # the CSV's
    assert (a0.name, a0.owner_email, a0.arr) == ("Account 0", "owner0@example.com", 12_000.0)  # the CRM's on top


def test_match_by_record_id_skips_records_of_no_known_account(engine, fake):
    ids = book(fake, 3)
    upsert_accounts(engine, [AccountFacts("acme", "Acme", crm_id=ids[0], owner_email="x@example.com")], now=T0)
    cfg = password_config(fake, accounts=PULL)
    report, _ = pull(engine, fake, cfg)
    assert report.unmatched == 2 and [c.account_id for c in report.changed] == ["acme"]
    assert [a.owner_email for a in list_accounts(engine)] == ["owner0@example.com"]


def test_bad_values_are_named_and_left_out(engine, fake):
    ids = book(fake, 2)
    fake.modify("Account", ids[1], Billing_Day__c=31, ARR__c="n/a")
    report, _ = pull(engine, fake)
    assert report.ok and len(report.problems) == 2
    assert f"Account {ids[1]} (account a1): Billing_Day__c: billing day must be 1..28, got 31" in report.problems
    assert any("ARR__c" in p for p in report.problems)
    a1 = {a.id: a for a in list_accounts(engine)}["a1"]
    assert a1.billing_day == 1 and a1.arr is None and a1.owner_email == "owner1@example.com"


@pytest.mark.parametrize("fault", ["unknown field", "limit", "outage"])
def test_salesforce_errors_stop_the_pull_and_store_nothing(engine, fake, fault):
    book(fake, 3)
    cfg = config(fake)
    if fault == "unknown field":
        cfg = config(fake, plan="Tier__c")
    elif fault == "limit":
        fake.api_used = fake.api_limit
    else:
        fake.fail(503, times=10, path_contains="/query")
    report, _ = pull(engine, fake, cfg)
    assert not report.ok and list_accounts(engine) == [] and get_pull_cursor(engine) is None
    expected = {"unknown field": "No such column 'Tier__c'", "limit": "REQUEST_LIMIT_EXCEEDED",
                "outage": "HTTP 503"}[fault]
    assert expected in report.stopped


def test_a_page_that_fails_once_is_retried(engine, fake):
    book(fake, 5)
    fake.fail(503, times=1, path_contains="/query/01g")  # the second page
    report, _ = pull(engine, fake)
    assert report.ok and len(report.changed) == 5


def test_cli_pull_dry_run_then_pull(engine, fake, tmp_path: Path, monkeypatch, db_url):
    book(fake, 2)
    monkeypatch.setenv("SF_SESSION_ID", fake.new_session())
    cfg = tmp_path / "usagebot.toml"
    cfg.write_text(f"""
[storage]
url = "{db_url}"

[salesforce]
session_id = "${{SF_SESSION_ID}}"
instance_url = "{fake.instance_url}"
ca_bundle = "{fake.ca_file}"
match = "external_id"
external_id_field = "Usagebot_Id__c"

[salesforce.accounts]
owner = "Owner.Email"
csm = "CSM__r.Email"
arr = "ARR__c"
renewal = "Renewal_Date__c"

[salesforce.accounts.quotas]
api_calls = "API_Quota__c"
""")
    code, out, err = run_cli("crm", "pull", "--dry-run", "--config", str(cfg))
    assert code == 0, err
    assert "a0 (" in out and "  owner_email: (none) -> owner0@example.com" in out
    assert "  renewal_at: (none) -> 2027-01-15" in out and "  quota.api_calls: (none) -> 50,000" in out
    assert "2 account(s) would change" in out and "dry run: nothing stored" in out
    assert list_accounts(engine) == []
    code, out, err = run_cli("crm", "pull", "--config", str(cfg))
    assert code == 0 and "2 account(s) changed" in out
    assert [a.csm_email for a in list_accounts(engine)] == ["csm0@example.com", "csm1@example.com"]
    code, out, _ = run_cli("crm", "pull", "--config", str(cfg))
    assert code == 0 and "0 account(s) changed" in out and "changed since 2026-11-24T00:01:00.000+0000" in out


def test_config_errors_name_the_field(tmp_path: Path):
    cfg = tmp_path / "u.toml"
    cfg.write_text('[salesforce]\n[salesforce.accounts]\nowner = "Owner Email"\nevry = "1h"\n'
                   '[salesforce.accounts.quotas]\napi_calls = 5\n')
    code, _, err = run_cli("crm", "pull", "--config", str(cfg))
    assert code == 1
    assert "u.toml:3" in err and "'Owner Email' is not a Salesforce field" in err
    assert "evry" in err and "api_calls" in err

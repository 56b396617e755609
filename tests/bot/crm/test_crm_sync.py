"""CRM sync against the fake Salesforce org: diff-only batched writes, failures, limits, tasks, dry runs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy.engine import Engine

from bot.crm.sync import run_crm_sync
from integrations.salesforce.client import SalesforceClient
from integrations.salesforce.config import SalesforceConfig
from rules.health import DEFAULT_MODEL
from rules.model import DAY, RuleSet
from storage.crm import failed_records, last_sync_runs, load_record_states, load_tasks
from tests.fakes.salesforce_server import FakeSalesforce, running
from tests.integrations.salesforce.helpers import (
    NOW,
    fire_episode,
    password_config,
    seed_accounts,
    set_usage,
    sf_id,
    tasks_on,
)

RULES = RuleSet(rules=())


@pytest.fixture
def fake() -> Iterator[FakeSalesforce]:
    yield from running()


@pytest.fixture
def sqlite(tmp_path) -> Iterator[Engine]:
    """For tests of Salesforce behaviour: storage is covered on both databases by the others."""
    from storage.db import make_engine, migrate

    eng = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def sync(engine: Engine, fake: FakeSalesforce, cfg: SalesforceConfig | None = None, dry_run: bool = False,
         now: int = NOW, client: SalesforceClient | None = None, **kw):
    cfg = cfg or password_config(fake)
    out = io.StringIO()
    client = client or SalesforceClient(cfg, session=fake.session(), sleep=lambda s: None)
    report = run_crm_sync(engine, RULES, cfg, DEFAULT_MODEL, now, dry_run=dry_run, out=out, client=client, **kw)
    return report, out.getvalue(), client


def patched(fake: FakeSalesforce) -> list[dict]:
    return fake.written("PATCH")


def test_first_sync_writes_all_fields_then_only_what_changed(engine, fake):
    seed_accounts(engine, 5, fake=fake)
    report, out, client = sync(engine, fake)
    assert report.ok and report.written == 5 and len(report.changes) == 5
    rec = fake.records["Account"][sf_id(2)]
    assert rec["Usage_Health_Score__c"] == 90 and rec["Usage_Health_Band__c"] == "Healthy"
    assert rec["Usage_Trend__c"] == "Stable" and rec["Expansion_Signal__c"] is False
    assert rec["Quota_Utilization__c"] is None and rec["Last_Usage_Alert__c"] is None
    assert client.calls == 2 and client.logins == 1  # login + one collection request
    assert "Usage_Health_Score__c: (unknown) -> 90" in out

    # Nothing changed: nothing is sent, not even a login.
    fake.log.clear()
    report, out, client = sync(engine, fake)
    assert report.changes == [] and client.calls == 0 and fake.log == []
    assert "Nothing to update." in out

    # One account declines: only it, and only its changed fields, are sent.
    set_usage(engine, ["a0003"], 20.0, days=30)
    report, out, client = sync(engine, fake)
    sent = patched(fake)
    assert [r["id"] for r in sent] == [sf_id(3)]
    assert set(sent[0]) == {"attributes", "id", "Usage_Health_Score__c", "Usage_Health_Band__c", "Usage_Trend__c"}
    assert sent[0]["Usage_Trend__c"] == "Declining" and sent[0]["Usage_Health_Band__c"] == "Watch"
    assert 'Usage_Trend__c: "Stable" -> "Declining"' in out
    assert report.written == 1 and client.calls == 2
    state = load_record_states(engine, "Account")["a0003"]
    assert state.written["Usage_Trend__c"] == "Declining" and state.last_error is None
    runs = last_sync_runs(engine, limit=5)
    assert [r["written"] for r in runs] == [1, 0, 5]


def test_per_record_failures_are_recorded_and_retried_next_sync_while_the_rest_succeed(engine, fake):
    seed_accounts(engine, 5, fake=fake)
    fake.record_errors[sf_id(1)] = ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record")
    report, out, _ = sync(engine, fake)
    assert report.written == 4 and report.failed == [
        ("a0001", "UNABLE_TO_LOCK_ROW: unable to obtain exclusive access to this record")]
    assert "failed a0001: UNABLE_TO_LOCK_ROW: unable to obtain exclusive access to this record (sent again next sync)" in out
    failing = failed_records(engine, "Account")
    assert [(f.account_id, f.failures) for f in failing] == [("a0001", 1)]
    assert "Usage_Health_Score__c" not in fake.records["Account"][sf_id(1)]

    # Still failing: sent again (only that record), failure count grows.
    fake.log.clear()
    report, out, _ = sync(engine, fake)
    assert [r["id"] for r in patched(fake)] == [sf_id(1)] and "[retry: UNABLE_TO_LOCK_ROW" in out
    assert failed_records(engine, "Account")[0].failures == 2

    del fake.record_errors[sf_id(1)]
    report, _, _ = sync(engine, fake)
    assert report.ok and report.written == 1 and failed_records(engine, "Account") == []
    assert fake.records["Account"][sf_id(1)]["Usage_Health_Score__c"] == 90


@pytest.mark.parametrize("code", ["STRING_TOO_LONG", "ENTITY_IS_DELETED", "INVALID_FIELD_FOR_INSERT_UPDATE",
                                  "FIELD_CUSTOM_VALIDATION_EXCEPTION"])
def test_a_record_error_retrying_cannot_fix_is_parked_named_and_sent_again_after_crm_retry(engine, fake, code):
    from storage.crm import unpark_records

    seed_accounts(engine, 3, fake=fake)
    fake.record_errors[sf_id(1)] = (code, "refused")
    report, out, _ = sync(engine, fake)
    assert report.written == 2 and [a for a, _ in report.failed] == ["a0001"]
    error = report.failed[0][1]
    assert code in error and "parked" in error and "usagebot crm retry a0001" in error
    assert "(sent again next sync)" not in out
    [state] = failed_records(engine, "Account")
    assert state.parked is not None and state.failures == 1

    # before: sent again at every sync with a growing failure count; now not sent with the same values
    for _ in range(3):
        fake.log.clear()
        report, out, _ = sync(engine, fake)
        assert patched(fake) == [] and [a for a, _ in report.parked] == ["a0001"]
        assert "parked a0001" in out and failed_records(engine, "Account")[0].failures == 1

    # the admin fixes it in Salesforce, then `usagebot crm retry`: sent once more, written, nothing lost
    del fake.record_errors[sf_id(1)]
    assert unpark_records(engine, "Account", ["a0001"]) == 1
    report, _, _ = sync(engine, fake)
    assert report.ok and report.written == 1 and failed_records(engine, "Account") == []
    assert fake.records["Account"][sf_id(1)]["Usage_Health_Score__c"] == 90


def test_a_record_failing_with_a_retryable_error_is_parked_after_the_retry_limit(engine, fake):
    from integrations.salesforce.errors import RETRY_LIMIT

    seed_accounts(engine, 2, fake=fake)
    fake.record_errors[sf_id(1)] = ("UNABLE_TO_LOCK_ROW", "locked")
    for _ in range(RETRY_LIMIT):
        _, out, _ = sync(engine, fake)
    said = next(line for line in out.splitlines() if "failed a0001" in line)  # the run that parked it says so
    assert "parked after" in said and "usagebot crm retry a0001" in said and "sent again next sync" not in said
    assert failed_records(engine, "Account")[0].failures == RETRY_LIMIT
    assert failed_records(engine, "Account")[0].parked is not None
    fake.log.clear()
    report, _, _ = sync(engine, fake)
    assert patched(fake) == [] and [a for a, _ in report.parked] == ["a0001"]  # bounded: no more attempts


def test_batches_of_at_most_200_records(sqlite, fake):
    seed_accounts(sqlite, 450, days=2, fake=fake)
    report, _, client = sync(sqlite, fake)
    sizes = [len(r.body["records"]) for r in fake.log if "/composite/sobjects" in r.path]
    assert sizes == [200, 200, 50] and report.write_requests == 3 and report.written == 450
    assert client.calls == 1 + 3


def test_small_batch_size_from_config(sqlite, fake):
    seed_accounts(sqlite, 5, fake=fake)
    report, _, _ = sync(sqlite, fake, password_config(fake, batch_size=2))
    assert report.write_requests == 3 and report.written == 5


def test_stops_short_of_the_configured_share_of_the_daily_api_limit(sqlite, fake):
    seed_accounts(sqlite, 5, fake=fake)
    fake.api_limit, fake.api_used = 10_000, 7_497
    cfg = password_config(fake, batch_size=1, max_api_share=0.75)  # usagebot may go up to 7,500
    report, out, _ = sync(sqlite, fake, cfg)
    assert report.written == 3 and report.deferred == 2 and report.failed == []
    assert fake.api_used == 7_500
    assert "stopped short of the daily API limit" in report.stopped and "max_api_share = 0.75" in report.stopped
    assert "2 record(s) wait for the next sync" in out
    assert failed_records(sqlite, "Account") == []  # deferred, not failed

    report, _, _ = sync(sqlite, fake, replace(cfg, max_api_share=0.9))
    assert report.ok and report.written == 2


def test_request_limit_exceeded_stops_the_sync_and_defers_everything(sqlite, fake):
    seed_accounts(sqlite, 3, fake=fake)
    fake.api_used = fake.api_limit
    report, out, _ = sync(sqlite, fake)
    assert "REQUEST_LIMIT_EXCEEDED" in report.stopped and report.deferred == 3 and report.written == 0
    assert report.api_usage is not None and report.api_usage.used == fake.api_limit
    fake.api_used = 0
    report, _, _ = sync(sqlite, fake)
    assert report.ok and report.written == 3


def test_5xx_is_retried_then_succeeds(sqlite, fake):
    seed_accounts(sqlite, 3, fake=fake)
    fake.fail(503, times=1, path_contains="/composite/sobjects")
    report, _, client = sync(sqlite, fake)
    assert report.ok and report.written == 3 and client.calls == 3  # login, 503, retry


def test_5xx_outlasting_the_retries_fails_the_batch_and_stops(sqlite, fake):
    seed_accounts(sqlite, 4, fake=fake)
    fake.fail(500, times=10, path_contains="/composite/sobjects")
    cfg = password_config(fake, batch_size=2, retries=1)
    report, _, _ = sync(sqlite, fake, cfg)
    assert "HTTP 500" in report.stopped and "after 2 tries" in report.stopped
    assert len(report.failed) == 2 and report.deferred == 2
    assert failed_records(sqlite, "Account")[0].last_error.startswith("not written: ")
    fake.faults.clear()
    report, _, _ = sync(sqlite, fake, cfg)
    assert report.ok and report.written == 4


def test_a_mapped_field_missing_in_salesforce_stops_with_its_name(sqlite, fake):
    seed_accounts(sqlite, 2, fake=fake)
    fake.fields = {"Account": {"Name", "OwnerId", "Usage_Health_Score__c", "Usage_Health_Band__c",
                               "Usage_Trend__c", "Quota_Utilization__c", "Last_Usage_Alert__c",
                               "Last_Usage_Alert_At__c"}}
    report, _, _ = sync(sqlite, fake)
    assert "INVALID_FIELD" in report.stopped and "Expansion_Signal__c" in report.stopped
    cfg = password_config(fake, fields={"score": "Usage_Health_Score__c", "trend": "Usage_Trend__c"})
    report, _, _ = sync(sqlite, fake, cfg)
    assert report.ok and report.written == 2


def test_expired_session_logs_in_again(sqlite, fake):
    seed_accounts(sqlite, 2, fake=fake)
    report, _, client = sync(sqlite, fake)
    fake.expire_sessions()
    set_usage(sqlite, ["a0000"], 0.0, days=30)
    report, _, client = sync(sqlite, fake, client=client)
    assert report.ok and report.written == 1 and client.logins == 2
    statuses = [r.status for r in fake.log if "/composite/" in r.path]
    assert statuses == [200, 401, 200]


def test_session_id_auth_cannot_log_in_again_and_says_so(sqlite, fake):
    seed_accounts(sqlite, 2, fake=fake)
    from rules.config import Secret

    cfg = SalesforceConfig(auth="session", session_id=Secret("stale-session"), instance_url=fake.instance_url,
                           ca_bundle=fake.ca_file, retry_backoff=0.0)
    report, _, _ = sync(sqlite, fake, cfg, client=SalesforceClient(cfg))
    assert "cannot log in again" in report.stopped and "stale-session" not in report.stopped
    assert report.deferred == 2 and failed_records(sqlite, "Account") == []


def test_wrong_password_stops_without_revealing_secrets(sqlite, fake):
    seed_accounts(sqlite, 1, fake=fake)
    cfg = password_config(fake)
    from rules.config import Secret

    cfg = replace(cfg, password=Secret("wrong-pass-XYZ"))
    report, out, _ = sync(sqlite, fake, cfg)
    assert "INVALID_LOGIN" in report.stopped and "login.salesforce.com" in report.stopped
    for secret in ("wrong-pass-XYZ", fake.security_token, fake.password):
        assert secret not in report.stopped and secret not in out


def test_accounts_without_a_salesforce_record_are_skipped_with_the_reason(sqlite, fake):
    from rules.model import AccountFacts
    from storage.accounts import upsert_accounts

    seed_accounts(sqlite, 2, fake=fake)
    upsert_accounts(sqlite, [AccountFacts("b1", "No Id"), AccountFacts("b2", "Bad Id", crm_id="acme-42")])
    report, out, _ = sync(sqlite, fake)
    assert dict(report.unmatched) == {
        "b1": "no crm_id (the Salesforce record Id) in the account facts",
        "b2": "crm_id 'acme-42' is not a Salesforce Id (15 or 18 letters and digits)"}
    assert report.written == 2 and "skipped b2: crm_id 'acme-42'" in out


def test_upsert_by_external_id(engine, fake):
    ids = seed_accounts(engine, 3, fake=fake)
    for n, a in enumerate(ids[:2]):
        fake.records["Account"][sf_id(n)]["Usagebot_Account_Id__c"] = a
    cfg = password_config(fake, match="external_id", external_id_field="Usagebot_Account_Id__c")
    report, _, _ = sync(engine, fake, cfg)
    assert all("/composite/sobjects/Account/Usagebot_Account_Id__c" in r.path for r in fake.data_requests())
    assert fake.records["Account"][sf_id(0)]["Usage_Health_Score__c"] == 90
    # a0002 has no record with that external id: upsert would create one and Salesforce refuses (no Name)
    assert report.written == 2 and [a for a, _ in report.failed] == ["a0002"]
    assert report.failed[0][1].startswith("REQUIRED_FIELD_MISSING: Required fields are missing: [Name] (fields: Name)"
                                          " -> parked")  # retrying cannot help: parked with what to do


def test_reconcile_reads_current_values_and_sends_only_real_differences(engine, fake):
    seed_accounts(engine, 2, fake=fake)
    fire_episode(engine, "a0001", severity="warning")
    rec = fake.records["Account"][sf_id(0)]
    rec.update({"Usage_Health_Score__c": 90.0, "Usage_Health_Band__c": "Healthy", "Usage_Trend__c": "Stable",
                "Quota_Utilization__c": None, "Last_Usage_Alert__c": None, "Last_Usage_Alert_At__c": None,
                "Expansion_Signal__c": False})
    rec1 = fake.records["Account"][sf_id(1)]
    rec1.update({"Last_Usage_Alert_At__c": "2026-11-23T00:00:00.000+0000", "Usage_Health_Score__c": 12.0})
    report, out, _ = sync(engine, fake, reconcile=True)
    assert [r["id"] for r in patched(fake)] == [sf_id(1)]
    sent = patched(fake)[0]
    assert "Last_Usage_Alert_At__c" not in sent and sent["Usage_Health_Score__c"] == 85
    assert "Usage_Health_Score__c: 12 -> 85" in out
    assert load_record_states(engine, "Account")["a0000"].written["Usage_Health_Score__c"] == 90


def test_bulk_api_for_large_syncs(sqlite, fake):
    seed_accounts(sqlite, 5, fake=fake)
    fake.record_errors[sf_id(4)] = ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")
    cfg = password_config(fake, bulk_threshold=3)
    report, out, _ = sync(sqlite, fake, cfg)
    assert report.mode == "bulk" and report.written == 4
    assert report.failed == [("a0004", "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access")]
    assert fake.records["Account"][sf_id(0)]["Usage_Health_Score__c"] == 90
    assert fake.records["Account"][sf_id(0)]["Last_Usage_Alert__c"] is None  # "#N/A" clears
    assert "one Bulk API 2.0 job" in out
    assert not any("/composite/" in r.path for r in fake.log)
    del fake.record_errors[sf_id(4)]
    report, _, _ = sync(sqlite, fake, cfg)  # 1 change < threshold: a collection request
    assert report.mode == "collections" and report.written == 1


def test_dry_run_twice_changes_nothing_and_the_real_sync_writes_exactly_what_it_showed(engine, fake):
    seed_accounts(engine, 4, fake=fake)
    sync(engine, fake)
    set_usage(engine, ["a0001", "a0002"], 0.0, days=20)
    fire_episode(engine, "a0002")
    fake.log.clear()
    d1, out1, c1 = sync(engine, fake, dry_run=True)
    d2, out2, c2 = sync(engine, fake, dry_run=True)
    assert out1 == out2 and c1.calls == c2.calls == 0 and fake.log == []
    assert len(last_sync_runs(engine, limit=10)) == 1  # dry runs are not recorded
    assert "Dry run: nothing was sent to Salesforce and nothing was stored." in out1

    shown: dict[str, dict[str, str]] = {}
    current = None
    for line in out1.splitlines():
        if line.startswith("Account "):
            current = line.split()[1]
            shown[current] = {}
        elif line.startswith("  ") and " -> " in line and current:
            name, change = line.strip().split(": ", 1)
            shown[current][name] = change.split(" -> ", 1)[1]
    report, _, _ = sync(engine, fake)
    from integrations.salesforce.diff import format_value

    sent = {r["id"]: {k: format_value(v) for k, v in r.items() if k not in ("attributes", "id")}
            for r in patched(fake)}
    assert sent == shown and set(sent) == {sf_id(1), sf_id(2)}


def test_tasks_once_per_episode_for_chosen_severities_and_kinds(engine, fake):
    seed_accounts(engine, 4, fake=fake)
    crit = fire_episode(engine, "a0001", severity="critical")
    fire_episode(engine, "a0002", rule_id="calls-spike", kind="spike", severity="warning")
    exp = fire_episode(engine, "a0003", rule_id="calls-expansion", kind="expansion", severity="info",
                       message="api_calls grew 3 weeks in a row")
    fire_episode(engine, "a0000", rule_id="old-drop", severity="critical", fired_at=NOW - 30 * DAY)
    cfg = password_config(fake, tasks=tasks_on(severities=("critical",), kinds=("expansion",)))
    report, out, _ = sync(engine, fake, cfg)
    assert report.tasks_created == 2 and report.tasks_failed == []
    tasks = sorted(fake.records["Task"].values(), key=lambda t: t["WhatId"])
    assert [t["WhatId"] for t in tasks] == [sf_id(1), sf_id(3)]
    assert tasks[0]["OwnerId"] == "005000000000001AAA" and tasks[0]["Priority"] == "High"
    assert tasks[0]["Subject"] == "Usage alert for Account 1: api_calls dropped 60%"
    assert tasks[0]["ActivityDate"] == "2026-11-27" and tasks[0]["Status"] == "Not Started"
    assert f"alert episode #{crit}" in tasks[0]["Description"]
    assert tasks[1]["Priority"] == "Low"
    rows = load_tasks(engine, [crit, exp])
    assert {r.status for r in rows.values()} == {"created"} and rows[crit].sf_task_id == tasks[0]["Id"]
    assert "Tasks to create: 2" in out

    report, out, _ = sync(engine, fake, cfg)
    assert report.tasks == [] and len(fake.records["Task"]) == 2


def test_task_whose_create_answer_was_lost_is_looked_up_before_creating_again(engine, fake):
    seed_accounts(engine, 2, fake=fake)
    fake.now = NOW
    ep = fire_episode(engine, "a0001")
    cfg = password_config(fake, tasks=tasks_on(), retries=3)
    sync(engine, fake, cfg)  # fields written, task created
    assert len(fake.records["Task"]) == 1
    ep2 = fire_episode(engine, "a0000", rule_id="other-drop")
    # Salesforce creates the Task, but its answer is lost (a 503 from a proxy after the work was done)
    fake.fail(503, times=1, path_contains="/composite/sobjects", method="POST", after=True)
    fake.log.clear()
    report, _, _ = sync(engine, fake, cfg)
    assert "HTTP 503" in report.stopped and load_tasks(engine, [ep2])[ep2].status == "unknown"
    posts = [r for r in fake.log if r.method == "POST" and "/composite/" in r.path]
    assert len(posts) == 1  # creates are not retried within a sync
    assert len(fake.records["Task"]) == 2

    # The next sync finds it by its key and creates no second one.
    created = next(t for t in fake.records["Task"].values() if t["WhatId"] == sf_id(0))
    fake.log.clear()
    report, _, _ = sync(engine, fake, cfg)
    assert report.tasks_created == 1 and load_tasks(engine, [ep2])[ep2].sf_task_id == created["Id"]
    assert not [r for r in fake.log if r.method == "POST" and "/composite/" in r.path]
    assert load_tasks(engine, [ep])[ep].status == "created" and len(fake.records["Task"]) == 2


def test_quota_episodes_sharing_a_subject_each_get_their_own_task(engine, fake):
    """The 80% and 100% quota episodes of one period have the same subject; recovery by record and
    subject recorded one Task for both (issue 12, item 3). Recovery is by each episode's unique key."""
    seed_accounts(engine, 1, fake=fake)
    fake.now = NOW
    msg = "api_calls quota use is high"
    eps = [fire_episode(engine, "a0000", rule_id="calls-quota", kind="quota", message=msg, discriminator=d)
           for d in ("2026-11:0.8", "2026-11:1.0")]
    cfg = password_config(fake, tasks=tasks_on(kinds=("quota",)))
    fake.fail(503, times=1, path_contains="/composite/sobjects", method="POST", after=True)
    sync(engine, fake, cfg)  # both created, the answer lost
    rows = load_tasks(engine, eps)
    assert [rows[e].status for e in eps] == ["unknown", "unknown"]
    assert rows[eps[0]].subject == rows[eps[1]].subject and len(fake.records["Task"]) == 2
    report, _, _ = sync(engine, fake, cfg)
    rows = load_tasks(engine, eps)
    ids = {t["Id"]: t for t in fake.records["Task"].values()}
    assert report.tasks_created == 2 and len(ids) == 2
    assert {rows[e].sf_task_id for e in eps} == set(ids)  # one Task each, none recorded twice
    for e in eps:
        assert ids[rows[e].sf_task_id]["Description"].endswith(f"usagebot key: {rows[e].task_key}")


def test_with_a_key_field_tasks_are_upserted_on_it(engine, fake):
    seed_accounts(engine, 2, fake=fake)
    fake.external_ids = {"Task": {"Usagebot_Key__c"}}
    eps = [fire_episode(engine, "a0000"), fire_episode(engine, "a0001")]
    cfg = password_config(fake, tasks=tasks_on(key_field="Usagebot_Key__c"), retries=0)
    fake.fail(503, times=1, path_contains="/composite/sobjects/Task/Usagebot_Key__c", method="PATCH", after=True)
    report, _, _ = sync(engine, fake, cfg)
    assert report.tasks_failed and len(fake.records["Task"]) == 2  # created; the answer was lost
    report, _, _ = sync(engine, fake, cfg)  # the upsert again: it updates the same Tasks
    rows = load_tasks(engine, eps)
    assert report.tasks_created == 2 and len(fake.records["Task"]) == 2
    by_key = {t["Usagebot_Key__c"]: t["Id"] for t in fake.records["Task"].values()}
    assert by_key == {rows[e].task_key: rows[e].sf_task_id for e in eps}
    # a key field that is not an External ID field is refused by Salesforce, and said so
    fake.external_ids = {"Task": set()}
    fire_episode(engine, "a0000", rule_id="other-drop")
    report, _, _ = sync(engine, fake, cfg)
    assert report.tasks_failed and "is not an External ID" in report.tasks_failed[0][1]


def test_task_for_a_record_that_does_not_exist_fails_with_the_reason(sqlite, fake):
    seed_accounts(sqlite, 1, fake=fake)
    fire_episode(sqlite, "a0000")
    del fake.records["Account"][sf_id(0)]
    cfg = password_config(fake, tasks=tasks_on(), fields={"score": "Usage_Health_Score__c"})
    report, _, _ = sync(sqlite, fake, cfg)
    assert report.tasks_failed and "no Account record with Id" in report.tasks_failed[0][1]


def test_bulk_job_after_the_session_expired_logs_in_again(sqlite, fake):
    seed_accounts(sqlite, 4, fake=fake)
    cfg = password_config(fake, bulk_threshold=2)
    report, _, client = sync(sqlite, fake, cfg, dry_run=False)
    set_usage(sqlite, ["a0001", "a0002"], 0.0, days=30)
    fake.expire_sessions()
    report, _, client = sync(sqlite, fake, cfg, client=client)
    assert report.mode == "bulk" and report.ok and report.written == 2 and client.logins == 2


def test_health_of_one_account_equals_its_health_among_all(engine):
    from bot.crm.preview import account_health

    seed_accounts(engine, 3)
    set_usage(engine, ["a0001"], 10.0, days=30)
    fire_episode(engine, "a0001", severity="warning")
    everyone = {a.id: h for a, h in account_health(engine, RULES, NOW)}
    (acct, alone), = account_health(engine, RULES, NOW, account_ids=["a0001"])
    assert acct.id == "a0001" and alone == everyone["a0001"]
    assert alone.trend == "Declining" and alone.explain().startswith("trend 0/35")
    assert alone.last_alert == "api_calls dropped 60%"


@pytest.mark.parametrize("answer", [{}, [], {"hasErrors": False}, "<html>ok</html>"])
def test_a_task_create_answered_with_an_unreadable_200_is_looked_up_not_created_again(sqlite, fake, answer):
    """Salesforce creates the Task, then a proxy's 200 carries something that is no list of results
    (an empty object or list, an HTML page): the outcome is unknown, so the next sync looks the Task
    up by its key (before: JSON of the wrong shape recorded the Task as failed and the next sync
    created a second one)."""
    seed_accounts(sqlite, 1, fake=fake)
    fake.now = NOW
    ep = fire_episode(sqlite, "a0000")
    cfg = password_config(fake, tasks=tasks_on(), retries=3)
    fake.fail(200, times=1, path_contains="/composite/sobjects", method="POST", body=answer, after=True)
    report, _, _ = sync(sqlite, fake, cfg)
    assert load_tasks(sqlite, [ep])[ep].status == "unknown" and len(fake.records["Task"]) == 1
    report, _, _ = sync(sqlite, fake, cfg)
    assert load_tasks(sqlite, [ep])[ep].status == "created" and len(fake.records["Task"]) == 1


def _task_creates(fake: FakeSalesforce) -> int:
    return len([r for r in fake.log if r.method == "POST" and "/composite/sobjects" in r.path])


def test_a_task_refused_for_good_is_parked_not_sent_again_and_sent_after_crm_retry(sqlite, fake):
    from storage.crm import count_parked_tasks, unpark_tasks

    seed_accounts(sqlite, 1, fake=fake)
    ep = fire_episode(sqlite, "a0000")
    cfg = password_config(fake, tasks=tasks_on())
    fake.create_errors["Task"] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Due date required")
    report, _, _ = sync(sqlite, fake, cfg)
    assert load_tasks(sqlite, [ep])[ep].status == "parked" and count_parked_tasks(sqlite) == 1
    assert "usagebot crm retry a0000" in report.tasks_failed[0][1]
    fake.log.clear()
    report, out, _ = sync(sqlite, fake, cfg)
    assert _task_creates(fake) == 0 and report.tasks == [] and report.tasks_parked == 1
    assert "1 Task(s) parked" in out and "usagebot crm retry" in out
    del fake.create_errors["Task"]
    assert unpark_tasks(sqlite, ["a0000"]) == 1
    report, _, _ = sync(sqlite, fake, cfg)
    assert report.tasks_created == 1 and load_tasks(sqlite, [ep])[ep].status == "created"


def test_a_task_failing_with_a_retryable_error_is_parked_after_the_retry_limit(sqlite, fake):
    from integrations.salesforce.errors import RETRY_LIMIT

    seed_accounts(sqlite, 1, fake=fake)
    ep = fire_episode(sqlite, "a0000")
    cfg = password_config(fake, tasks=tasks_on())
    fake.create_errors["Task"] = ("UNABLE_TO_LOCK_ROW", "locked")
    for n in range(1, RETRY_LIMIT):
        sync(sqlite, fake, cfg)
        assert load_tasks(sqlite, [ep])[ep].status == "failed", n
    report, _, _ = sync(sqlite, fake, cfg)
    assert load_tasks(sqlite, [ep])[ep].status == "parked" and "parked after" in report.tasks_failed[0][1]
    fake.log.clear()
    sync(sqlite, fake, cfg)
    assert _task_creates(fake) == 0


def test_a_task_whose_outcome_is_unknown_is_looked_up_never_parked_in_doubt_and_bounded(sqlite, fake):
    """Each lost answer is one try (counted once, at the intent): the Task is never parked while its
    create is in doubt, but once RETRY_LIMIT creates were sent and the lookup finds no Task, it is
    parked instead of being sent for ever; `usagebot crm retry` sends it again."""
    from integrations.salesforce.errors import RETRY_LIMIT
    from storage.crm import unpark_tasks

    seed_accounts(sqlite, 1, fake=fake)
    ep = fire_episode(sqlite, "a0000")
    cfg = password_config(fake, tasks=tasks_on(), retries=0)
    for n in range(1, RETRY_LIMIT + 1):
        fake.fail(503, times=1, path_contains="/composite/sobjects", method="POST")
        sync(sqlite, fake, cfg)
        row = load_tasks(sqlite, [ep])[ep]
        assert (row.status, row.attempts) == ("unknown", n)
    fake.log.clear()
    report, _, _ = sync(sqlite, fake, cfg)  # looked up: not there, and RETRY_LIMIT creates were sent
    row = load_tasks(sqlite, [ep])[ep]
    assert (row.status, row.attempts) == ("parked", RETRY_LIMIT) and _task_creates(fake) == 0
    assert "usagebot crm retry a0000" in report.tasks_failed[0][1] and "HTTP 503" in report.tasks_failed[0][1]
    assert unpark_tasks(sqlite, ["a0000"]) == 1
    report, _, _ = sync(sqlite, fake, cfg)
    assert report.tasks_created == 1 and load_tasks(sqlite, [ep])[ep].status == "created"


def test_a_lost_answer_then_a_refusal_count_one_try_each(sqlite, fake):
    seed_accounts(sqlite, 1, fake=fake)
    ep = fire_episode(sqlite, "a0000")
    cfg = password_config(fake, tasks=tasks_on(), retries=0)
    fake.fail(503, times=1, path_contains="/composite/sobjects", method="POST")
    sync(sqlite, fake, cfg)
    assert load_tasks(sqlite, [ep])[ep].attempts == 1
    fake.create_errors["Task"] = ("UNABLE_TO_LOCK_ROW", "locked")
    sync(sqlite, fake, cfg)
    row = load_tasks(sqlite, [ep])[ep]
    assert (row.status, row.attempts) == ("failed", 2)
    del fake.create_errors["Task"]
    sync(sqlite, fake, cfg)
    row = load_tasks(sqlite, [ep])[ep]
    assert (row.status, row.attempts) == ("created", 3)  # three creates were sent: three tries, each once


def test_a_task_create_refused_by_the_api_budget_is_no_try_and_never_parked(sqlite, fake):
    """The org's API budget is used up at the create (REQUEST_LIMIT_EXCEEDED: nothing was done): no try
    is counted and the Task is deferred, never parked for it (before: each such sync counted a try, and
    RETRY_LIMIT of them parked a Task nothing was wrong with)."""
    from integrations.salesforce.errors import RETRY_LIMIT

    seed_accounts(sqlite, 1, fake=fake)
    ep = fire_episode(sqlite, "a0000")
    cfg = password_config(fake, tasks=tasks_on(owner="api_user"), retries=0)  # no lookup before the create
    body = [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}]
    for _ in range(RETRY_LIMIT + 1):
        fake.fail(403, times=1, path_contains="/composite/sobjects", method="POST", body=body)
        report, _, _ = sync(sqlite, fake, cfg)
        assert report.tasks_failed == [] and report.tasks_deferred == 1, report.tasks_failed
        assert "REQUEST_LIMIT_EXCEEDED" in (report.stopped or "")
        row = load_tasks(sqlite, [ep]).get(ep)
        assert row is None or (row.status != "parked" and row.attempts == 0), row
    report, _, _ = sync(sqlite, fake, cfg)
    row = load_tasks(sqlite, [ep])[ep]
    assert report.tasks_created == 1 and (row.status, row.attempts) == ("created", 1)


def _task_count(fake: FakeSalesforce, what_id: str) -> int:
    return len([t for t in fake.records["Task"].values() if t.get("WhatId") == what_id])


def test_a_task_in_doubt_stays_in_doubt_while_its_account_is_missing_and_is_never_created_twice(sqlite, fake):
    """A create whose answer was lost (it did create the Task), then syncs that do not find the
    Account: the Task stays "unknown" (never "failed", whose next try creates without looking), each
    such sync a try, parked after RETRY_LIMIT with its record id kept (before the review fix it was
    retried for ever). `crm retry` makes it "unknown" again, so when the Account is back it is looked
    up, found and not created a second time (before: it became "failed" and was created again)."""
    from integrations.salesforce.errors import RETRY_LIMIT
    from storage.crm import unpark_tasks

    seed_accounts(sqlite, 1, fake=fake)
    ep = fire_episode(sqlite, "a0000")
    cfg = password_config(fake, tasks=tasks_on(), retries=0)
    fake.fail(503, times=1, path_contains="/composite/sobjects", method="POST", after=True)
    sync(sqlite, fake, cfg)
    assert load_tasks(sqlite, [ep])[ep].status == "unknown" and _task_count(fake, sf_id(0)) == 1
    account = fake.records["Account"].pop(sf_id(0))
    for n in range(2, RETRY_LIMIT):  # the lost answer was try 1; each sync without the Account one more
        sync(sqlite, fake, cfg)
        row = load_tasks(sqlite, [ep])[ep]
        assert (row.status, row.attempts, row.what_id) == ("unknown", n, sf_id(0)), row
        assert "no Account record" in (row.last_error or "")
    sync(sqlite, fake, cfg)
    row = load_tasks(sqlite, [ep])[ep]
    assert (row.status, row.attempts, row.what_id) == ("parked", RETRY_LIMIT, sf_id(0)), row
    sync(sqlite, fake, cfg)  # parked: not tried again
    assert load_tasks(sqlite, [ep])[ep].attempts == RETRY_LIMIT
    fake.records["Account"][sf_id(0)] = account
    assert unpark_tasks(sqlite, ["a0000"]) == 1 and load_tasks(sqlite, [ep])[ep].status == "unknown"
    fake.log.clear()
    sync(sqlite, fake, cfg)
    row = load_tasks(sqlite, [ep])[ep]
    assert row.status == "created" and _task_creates(fake) == 0 and _task_count(fake, sf_id(0)) == 1


def test_an_unparked_task_no_create_was_sent_for_is_failed_and_parks_again(sqlite, fake):
    """A Task parked because its Account was never found (no create sent: no record id) is "failed"
    when unparked, not "unknown" (before: "unknown" with no record id, never tried nor parked again
    while the Account stayed missing, retried at every sync for ever)."""
    from integrations.salesforce.errors import RETRY_LIMIT
    from storage.crm import unpark_tasks

    seed_accounts(sqlite, 1, fake=fake)
    ep = fire_episode(sqlite, "a0000")
    cfg = password_config(fake, tasks=tasks_on(), retries=0)
    fake.records["Account"].pop(sf_id(0))
    for _ in range(RETRY_LIMIT):
        sync(sqlite, fake, cfg)
    assert load_tasks(sqlite, [ep])[ep].status == "parked"
    assert unpark_tasks(sqlite, ["a0000"]) == 1
    row = load_tasks(sqlite, [ep])[ep]
    assert (row.status, row.attempts, row.what_id) == ("failed", 0, None), row
    for _ in range(RETRY_LIMIT):
        sync(sqlite, fake, cfg)
    assert load_tasks(sqlite, [ep])[ep].status == "parked"


def test_an_unparked_task_that_was_in_doubt_is_looked_up_before_it_is_created_again(sqlite, fake):
    """RETRY_LIMIT lost answers park the Task when the lookup misses it (e.g. Salesforce's search
    lagging); `usagebot crm retry` must not create it blindly: it is looked up first."""
    from integrations.salesforce.errors import RETRY_LIMIT
    from storage.crm import unpark_tasks

    seed_accounts(sqlite, 1, fake=fake)
    ep = fire_episode(sqlite, "a0000")
    cfg = password_config(fake, tasks=tasks_on(), retries=0)
    for _ in range(RETRY_LIMIT):
        fake.fail(503, times=1, path_contains="/composite/sobjects", method="POST")
        sync(sqlite, fake, cfg)
    sync(sqlite, fake, cfg)
    assert load_tasks(sqlite, [ep])[ep].status == "parked"
    # the Task exists after all (the last lost answer did create it; the lookup had not seen it yet)
    fake.add_record("Task", {"WhatId": sf_id(0), "Subject": "x", "CreatedDate": fake._created_date(),
                             "Description": f"usagebot key: {row_key(sqlite, ep)}"})
    assert unpark_tasks(sqlite, ["a0000"]) == 1
    fake.log.clear()
    report, _, _ = sync(sqlite, fake, cfg)
    row = load_tasks(sqlite, [ep])[ep]
    assert row.status == "created" and _task_creates(fake) == 0 and _task_count(fake, sf_id(0)) == 1


def row_key(engine: Engine, ep: int) -> str:
    key = load_tasks(engine, [ep])[ep].task_key
    assert key
    return key


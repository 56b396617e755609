"""Acting from Slack (issue 17): "Log task" creates the Salesforce Task on click, once (double clicks,
a retried request, a Salesforce failure then the deliver job, a sync planning the same episode);
"Assign to CSM" DMs the account's CSM once and records who assigned it. Real bolt over signed HTTP
against the fake Slack, the real simple-salesforce client against the fake Salesforce."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from bot.crm.delivery import CLICK_KIND, retry_crm_rows
from bot.crm.plan import CrmSyncReport
from bot.crm.sync import run_crm_sync
from bot.crm.task_button import TaskButton
from bot.slack.app import build_slack_app, serve_http
from integrations.salesforce.client import SalesforceClient
from integrations.slack.assign import ASSIGN_KIND, SlackAssignments
from integrations.slack.notifier import SlackNotifier
from rules.health import DEFAULT_MODEL
from rules.model import RuleSet
from storage.accounts import list_accounts, upsert_accounts
from storage.crm import load_tasks
from storage.episodes import episode_history, find_episode
from storage.outbox import list_outbox
from tests.bot.slack.test_slack_app import KEY, NAMES, _click, _post, _sign
from tests.fakes.salesforce_server import FakeSalesforce, running
from tests.fakes.slack_server import FakeSlack
from tests.integrations.salesforce.helpers import password_config, tasks_on
from tests.integrations.slack.scenario import (
    FIRED,
    SPIKE_DAY,
    Scenario,
    TestClock,
    assert_valid_message,
    slack_config,
)

NAMES.setdefault("U0CAROL01", "carol")


@dataclass
class Served:
    fake: FakeSlack
    sf: FakeSalesforce
    url: str
    engine: Any
    clock: TestClock
    episode_id: int
    sf_account: str
    cfg: Any


@pytest.fixture
def clock() -> TestClock:
    return TestClock()


@pytest.fixture
def fake(clock) -> Iterator[FakeSlack]:
    with FakeSlack.running(clock=clock) as f:
        f.add_user("U0ALICE01", "alice@example.com", "alice")
        f.add_user("U0BOBBY01", "bob@example.com", "bob")
        f.add_user("U0CAROL01", "carol@example.com", "carol")
        f.add_channel("usage-alerts", "C0ALERTS1")
        yield f


@pytest.fixture
def sf() -> Iterator[FakeSalesforce]:
    yield from running()


def _factory(sf: FakeSalesforce):  # noqa: ANN202
    return lambda cfg: SalesforceClient(cfg, session=sf.session(), sleep=lambda s: None)


@pytest.fixture
def served(engine, fake, sf, clock) -> Iterator[Served]:
    config = slack_config(fake, crm_tasks=True)
    sc = Scenario(engine, clock)
    sf_account = sf.add_record("Account", {"Name": "Acme Corp", "OwnerId": "005000000000001AAA"})
    acme = list_accounts(engine, ["acme"])[0]
    upsert_accounts(engine, [replace(acme, crm_id=sf_account, csm_email="carol@example.com")], now=clock.now)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(SlackNotifier(config, engine, clock=clock, interactive=True))
    cfg = password_config(sf, retries=0)
    app = build_slack_app(config, engine, clock=clock, tasks=TaskButton(engine, cfg, clock, _factory(sf)))
    server = serve_http(app, config, host="127.0.0.1", port=0, block=False)
    url = f"http://127.0.0.1:{server.server_address[1]}{config.http_path}"
    try:
        yield Served(fake, sf, url, engine, clock, int(find_episode(engine, KEY)["id"]), sf_account, cfg)
    finally:
        server.shutdown()
        server.server_close()


def _tasks(s: Served) -> list[dict[str, Any]]:
    return list(s.sf.records.get("Task", {}).values())


def _events(s: Served) -> list[tuple[str, str | None]]:
    return [(e["event"], e["actor"]) for e in episode_history(s.engine, rule_id="calls-spike")[0]["events"]]


def test_alerts_show_log_task_and_assign_buttons(served):
    blocks = json.dumps(served.fake.channel("#usage-alerts").messages[0]["blocks"])
    assert "usagebot_log_task" in blocks and "usagebot_assign_csm" in blocks
    assert_valid_message(served.fake.channel("#usage-alerts").messages[0])


def test_log_task_creates_one_salesforce_task_recorded_with_who_clicked(served):
    assert _post(served, _click(served, "usagebot_log_task", rid="t1")).status_code == 200
    (answer,) = served.fake.wait_response("t1")
    (task,) = _tasks(served)
    assert task["WhatId"] == served.sf_account and "Logged from Slack by U0BOBBY01 (bob)" in task["Description"]
    row = load_tasks(served.engine, [served.episode_id])[served.episode_id]
    assert row.status == "created" and row.sf_task_id in answer["text"] and "by U0BOBBY01" in answer["text"]
    assert ("task_requested", "U0BOBBY01 (bob)") in _events(served)
    assert "Salesforce Task logged by <@U0BOBBY01>" in json.dumps(served.fake.channel("#usage-alerts").messages[0])
    (out,) = [r for r in list_outbox(served.engine, limit=100) if r.kind == CLICK_KIND]
    assert out.status == "sent" and out.payload["clicked_by"] == "U0BOBBY01 (bob)"
    # a second click by someone else, and the same signed request sent again: no second Task
    _post(served, _click(served, "usagebot_log_task", user="U0ALICE01", rid="t2"))
    (again,) = served.fake.wait_response("t2")
    assert "Already done" in again["text"] and "by U0BOBBY01" in again["text"]
    assert len(_tasks(served)) == 1 and _events(served).count(("task_requested", "U0BOBBY01 (bob)")) == 1


def test_concurrent_double_clicks_make_one_task(served):
    bodies = [_click(served, "usagebot_log_task", user=u, rid=f"d{i}")
              for i, u in enumerate(["U0BOBBY01", "U0ALICE01", "U0BOBBY01"])]
    threads = [threading.Thread(target=_post, args=(served, b)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        served.fake.wait_response(f"d{i}")
    assert len(_tasks(served)) == 1
    assert len([r for r in list_outbox(served.engine, limit=100) if r.kind == CLICK_KIND]) == 1
    assert [e for e, _ in _events(served)].count("task_requested") == 1


def test_a_salesforce_failure_leaves_the_click_queued_for_the_deliver_job(served):
    served.sf.fail(503, times=1, path_contains="/sobjects")
    _post(served, _click(served, "usagebot_log_task", rid="f1"))
    (answer,) = served.fake.wait_response("f1")
    assert "not created yet" in answer["text"] and "retried automatically" in answer["text"]
    assert _tasks(served) == []
    # a CRM sync in between (tasks on) must not discard the click's row nor make a second Task
    run_crm_sync(served.engine, RuleSet(rules=()), replace(served.cfg, tasks=tasks_on()), DEFAULT_MODEL,
                 served.clock.now + 10, dry_run=False, out=io.StringIO(), client_factory=_factory(served.sf))
    report = CrmSyncReport(as_of=served.clock.now, dry_run=False)
    retry_crm_rows(served.engine, served.cfg, lambda: _factory(served.sf)(served.cfg), report,
                   served.clock.now + 7200)
    assert len(_tasks(served)) == 1
    assert load_tasks(served.engine, [served.episode_id])[served.episode_id].status == "created"
    assert {r.status for r in list_outbox(served.engine, limit=100) if r.kind == CLICK_KIND} <= {"sent", "pending"}


def test_log_task_without_salesforce_says_so(engine, fake, clock):
    config = slack_config(fake)
    sc = Scenario(engine, clock)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(SlackNotifier(config, engine, clock=clock, interactive=True))
    assert "usagebot_log_task" not in json.dumps(fake.channel("#usage-alerts").messages[0]["blocks"])
    server = serve_http(build_slack_app(config, engine, clock=clock), config, host="127.0.0.1", port=0, block=False)
    try:
        s = Served(fake, None, f"http://127.0.0.1:{server.server_address[1]}{config.http_path}", engine, clock,  # type: ignore[arg-type]
                   int(find_episode(engine, KEY)["id"]), "", None)
        _post(s, _click(s, "usagebot_log_task", rid="n1"))
        (answer,) = fake.wait_response("n1")
        assert "Salesforce is not configured" in answer["text"]
    finally:
        server.shutdown()
        server.server_close()


def test_assign_to_csm_dms_the_csm_once_and_records_it(served):
    _post(served, _click(served, "usagebot_assign_csm", rid="a1"))
    (answer,) = served.fake.wait_response("a1")
    assert "carol@example.com" in answer["text"]
    dm = served.fake.dm_with("U0CAROL01")
    assert dm is not None and len(dm.messages) == 1
    (first,) = [c for c in served.fake.calls_of("chat.postMessage") if c.params.get("channel") == dm.id]
    assert "<@U0BOBBY01> assigned this alert to you" in json.dumps(first.params.get("blocks"))
    for ch in (dm, served.fake.channel("#usage-alerts")):  # every copy shows the assignment
        assert "Assigned to carol@example.com by <@U0BOBBY01>" in json.dumps(ch.messages[0]["blocks"])
    assert_valid_message(dm.messages[0])
    assert ("assigned_csm", "U0BOBBY01 (bob)") in _events(served)
    body = _click(served, "usagebot_assign_csm", user="U0ALICE01", rid="a2")
    _post(served, body)
    (again,) = served.fake.wait_response("a2")
    assert "Already assigned to carol@example.com by U0BOBBY01" in again["text"]
    assert len(served.fake.dm_with("U0CAROL01").messages) == 1
    (row,) = [r for r in list_outbox(served.engine, limit=100) if r.kind == ASSIGN_KIND]
    assert row.status == "sent"
    # the CSM's copy is one of the episode's messages: an acknowledgement updates it too
    _post(served, _click(served, "usagebot_ack", rid="a3"))
    served.fake.wait_response("a3")
    copy = served.fake.dm_with("U0CAROL01").messages[0]
    assert copy["edits"] == 2 and "Acknowledged by <@U0BOBBY01>" in json.dumps(copy["blocks"])  # assigned, acked


def test_assign_without_a_csm_is_answered(served):
    acme = list_accounts(served.engine, ["acme"])[0]
    upsert_accounts(served.engine, [replace(acme, csm_email="")], now=served.clock.now)
    _post(served, _click(served, "usagebot_assign_csm", rid="n2"))
    (answer,) = served.fake.wait_response("n2")
    assert "has no CSM" in answer["text"] and "csm_email" in answer["text"]


def test_a_failed_csm_dm_is_retried_by_the_deliver_job(served):
    served.fake.rate_limit("chat.postMessage", 120, count=1)
    _post(served, _click(served, "usagebot_assign_csm", rid="r1"))
    (answer,) = served.fake.wait_response("r1")
    assert "not sent yet" in answer["text"]
    from bot.service.pipeline import deliver_rows

    notifier = SlackNotifier(slack_config(served.fake, crm_tasks=True), served.engine, clock=served.clock,
                             interactive=True)
    report = deliver_rows(served.engine, SlackAssignments(notifier), served.clock.now + 3600)
    assert report.sent == 1
    assert len(served.fake.dm_with("U0CAROL01").messages) == 1


_ = _sign  # the signature helper is shared with test_slack_app


def _task_row(s: Served):  # noqa: ANN202
    return load_tasks(s.engine, [s.episode_id])[s.episode_id]


def _sync_tasks(s: Served, at: int) -> None:
    run_crm_sync(s.engine, RuleSet(rules=()), replace(s.cfg, tasks=tasks_on(rules=("calls-spike",))), DEFAULT_MODEL, at,
                 dry_run=False, out=io.StringIO(), client_factory=_factory(s.sf))


def test_a_click_refused_for_good_names_the_error_and_the_fix_and_a_second_click_tries_again(served):
    """A Task Salesforce refuses for good (a validation rule) is parked: the click's answer names the
    error and what to do, never "retried automatically" (nothing retries a parked Task). After the
    fix, a click (anyone's) unparks that Task and sends it again at once."""
    served.sf.create_errors["Task"] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Tasks need a Type")
    _post(served, _click(served, "usagebot_log_task", rid="p1"))
    (answer,) = served.fake.wait_response("p1")
    assert _task_row(served).status == "parked" and _tasks(served) == []
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in answer["text"] and "usagebot crm retry acme" in answer["text"]
    assert "Log task" in answer["text"] and "retried automatically" not in answer["text"]
    del served.sf.create_errors["Task"]
    _post(served, _click(served, "usagebot_log_task", user="U0ALICE01", rid="p2"))
    (again,) = served.fake.wait_response("p2")
    (task,) = _tasks(served)
    assert _task_row(served).status == "created" and task["Id"] in again["text"] and "by U0ALICE01" in again["text"]
    assert [e for e, _ in _events(served)].count("task_requested") == 2


def test_a_click_on_a_task_the_sync_parked_tries_it_once_more_at_once(served):
    served.sf.create_errors["Task"] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Tasks need a Type")
    _sync_tasks(served, served.clock.now)
    assert _task_row(served).status == "parked"
    creates = len([r for r in served.sf.log if r.method == "POST" and "/composite/sobjects" in r.path])
    _post(served, _click(served, "usagebot_log_task", rid="s1"))
    (answer,) = served.fake.wait_response("s1")
    assert len([r for r in served.sf.log if r.method == "POST" and "/composite/sobjects" in r.path]) == creates + 1
    row = _task_row(served)
    assert row.status == "parked" and row.attempts == 1  # unparked with a fresh count, refused again
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in answer["text"] and "retried automatically" not in answer["text"]


def test_a_click_refused_for_now_is_retried_by_the_deliver_job(served):
    """A refusal a retry may fix (a locked row) leaves the click's row queued: the answer's "retried
    automatically" is true even when the sync makes no Tasks ([salesforce.tasks] off)."""
    served.sf.create_errors["Task"] = ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")
    _post(served, _click(served, "usagebot_log_task", rid="l1"))
    (answer,) = served.fake.wait_response("l1")
    assert _task_row(served).status == "failed" and "retried automatically" in answer["text"]
    del served.sf.create_errors["Task"]
    report = CrmSyncReport(as_of=served.clock.now, dry_run=False)
    retry_crm_rows(served.engine, served.cfg, lambda: _factory(served.sf)(served.cfg), report,
                   served.clock.now + 7200)
    assert _task_row(served).status == "created" and len(_tasks(served)) == 1


def test_crm_retry_sends_a_parked_click_again_without_task_sync(served):
    """`usagebot crm retry` (storage.crm.unpark_tasks) on a Task parked from a click: the click's row
    is queued again, so the deliver job sends it even when the syncs plan no Tasks."""
    from storage.crm import unpark_tasks

    served.sf.create_errors["Task"] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Tasks need a Type")
    _post(served, _click(served, "usagebot_log_task", rid="c1"))
    served.fake.wait_response("c1")
    assert _task_row(served).status == "parked"
    del served.sf.create_errors["Task"]
    assert unpark_tasks(served.engine, ["acme"], now=served.clock.now) == 1
    report = CrmSyncReport(as_of=served.clock.now, dry_run=False)
    retry_crm_rows(served.engine, served.cfg, lambda: _factory(served.sf)(served.cfg), report, served.clock.now)
    assert _task_row(served).status == "created" and len(_tasks(served)) == 1


def _click_row(s: Served):  # noqa: ANN202
    (row,) = [r for r in list_outbox(s.engine, limit=100) if r.kind == CLICK_KIND]
    return row


def test_a_click_row_never_dies_while_its_task_is_failed(served):
    """Deferrals (the API budget) use none of the row's tries, and a request Salesforce refuses at the
    create leaves the Task `failed` (a try): the row is retried until the Task is created or parked,
    never dead on the way (before: 10 deferrals then one refusal, or one request-level error, made
    it dead while the Task was only failed, and with [salesforce.tasks] off nothing retried it)."""
    served.sf.create_errors["Task"] = ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")
    _post(served, _click(served, "usagebot_log_task", rid="n1"))
    served.fake.wait_response("n1")
    at = served.clock.now
    limit = [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}]
    for _ in range(12):  # the API budget: deferred, no try of the row, none of the Task
        at = max(at, _click_row(served).next_attempt_at)
        served.sf.fail(403, times=1, path_contains="/services/data/", body=limit)
        retry_crm_rows(served.engine, served.cfg, lambda: _factory(served.sf)(served.cfg),
                       CrmSyncReport(as_of=at, dry_run=False), at)
        assert _click_row(served).status == "failed" and _task_row(served).attempts == 1
    # a request-level refusal of the create (HTTP 400): the Task failed again, the row waits
    served.sf.fail(400, times=1, path_contains="/composite/sobjects", method="POST",
                   body=[{"errorCode": "JSON_PARSER_ERROR", "message": "unexpected"}])
    at = max(at, _click_row(served).next_attempt_at)
    retry_crm_rows(served.engine, served.cfg, lambda: _factory(served.sf)(served.cfg),
                   CrmSyncReport(as_of=at, dry_run=False), at)
    assert _task_row(served).status == "failed" and _click_row(served).status == "failed"
    row = _task_row(served)  # recorded as what it is (before: the error went into the subject)
    assert "JSON_PARSER_ERROR" in (row.last_error or "") and row.sf_task_id is None and "Usage" in row.subject
    del served.sf.create_errors["Task"]
    at = max(at, _click_row(served).next_attempt_at)
    retry_crm_rows(served.engine, served.cfg, lambda: _factory(served.sf)(served.cfg),
                   CrmSyncReport(as_of=at, dry_run=False), at)
    assert _task_row(served).status == "created" and _click_row(served).status == "sent"


def test_a_login_that_cannot_be_reached_is_no_try_of_a_clicked_task(served):
    """The create is the client's first request (owner api_user: no lookup before it): a login host
    that cannot be reached leaves the Task untried and the row deferred, never parked (before: each
    such try counted, so about 8 minutes of login outage parked a click's Task)."""
    from integrations.salesforce.errors import RETRY_LIMIT

    cfg = replace(served.cfg, tasks=replace(served.cfg.tasks, owner="api_user"))
    button = TaskButton(served.engine, cfg, served.clock, _factory(served.sf))
    served.sf.login_unreachable = 1
    answer = button.click(served.episode_id, "U0BOBBY01 (bob)")
    assert "cannot reach" in answer.message and "retried automatically" in answer.message, answer.message
    at = served.clock.now
    for _ in range(RETRY_LIMIT + 1):
        row = load_tasks(served.engine, [served.episode_id]).get(served.episode_id)
        assert row is None or (row.status != "parked" and row.attempts == 0), row
        assert _click_row(served).status in ("pending", "failed")
        at = max(at, _click_row(served).next_attempt_at)
        served.sf.login_unreachable = 1
        retry_crm_rows(served.engine, cfg, lambda: _factory(served.sf)(cfg), CrmSyncReport(as_of=at, dry_run=False), at)
    at = max(at, _click_row(served).next_attempt_at)
    retry_crm_rows(served.engine, cfg, lambda: _factory(served.sf)(cfg), CrmSyncReport(as_of=at, dry_run=False), at)
    assert (_task_row(served).status, _task_row(served).attempts) == ("created", 1) and len(_tasks(served)) == 1


def test_a_click_on_a_parked_task_requeues_unparks_and_records_in_one_transaction(served):
    """The click's row queued again, the Task unparked and the task_requested event are one
    transaction: a failure in the middle (here the database refuses the unpark, as a kill -9 would
    end it) leaves none of them, never a queued row on a still-parked Task (before: the requeue was
    committed on its own)."""
    import sqlalchemy as sa

    if served.engine.dialect.name != "sqlite":
        pytest.skip("the fault is a SQLite trigger")
    served.sf.create_errors["Task"] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Tasks need a Type")
    _post(served, _click(served, "usagebot_log_task", rid="x1"))
    served.fake.wait_response("x1")
    assert _task_row(served).status == "parked" and _click_row(served).status == "sent"
    del served.sf.create_errors["Task"]
    with served.engine.begin() as conn:
        conn.execute(sa.text("CREATE TRIGGER no_unpark BEFORE UPDATE ON crm_tasks WHEN OLD.status = 'parked' "
                             "BEGIN SELECT RAISE(ABORT, 'killed here'); END"))
    events = _events(served)
    button = TaskButton(served.engine, served.cfg, served.clock, _factory(served.sf))
    with pytest.raises(sa.exc.DatabaseError, match="killed here"):
        button.click(served.episode_id, "U0ALICE01 (alice)")
    assert _task_row(served).status == "parked" and _click_row(served).status == "sent" and _events(served) == events
    with served.engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER no_unpark"))
    answer = button.click(served.episode_id, "U0ALICE01 (alice)")
    assert _task_row(served).status == "created" and answer.changed and len(_tasks(served)) == 1
    assert _events(served).count(("task_requested", "U0ALICE01 (alice)")) == 1


def test_a_click_whose_task_is_parked_after_lost_answers_says_what_happened(served):
    """RETRY_LIMIT creates whose answers were lost, and the lookup finds no Task: parked, and the
    click is told the Task was not created after that many tries, not that Salesforce refused it."""
    from integrations.salesforce.errors import RETRY_LIMIT

    button = TaskButton(served.engine, served.cfg, served.clock, _factory(served.sf))
    answer = None
    for _ in range(RETRY_LIMIT + 1):
        if _task_row_or_none(served) is not None:  # the click's row is due again
            served.clock.now = max(served.clock.now, _click_row(served).next_attempt_at)
        served.sf.fail(503, times=1, path_contains="/composite/sobjects", method="POST")
        answer = button.click(served.episode_id, "U0BOBBY01 (bob)")
    assert answer is not None and _task_row(served).status == "parked", _task_row(served)
    assert f"not created after {RETRY_LIMIT} tries" in answer.message and "refused" not in answer.message
    assert "HTTP 503" in answer.message and "usagebot crm retry acme" in answer.message


def _click_times(s: Served, button: TaskButton, times: int, before_each: Any = None):  # noqa: ANN202
    """Click Log task `times` times, each when the click's row is due again; the last answer."""
    answer = None
    for i in range(times):
        if _task_row_or_none(s) is not None:  # the click's row is due again
            s.clock.now = max(s.clock.now, _click_row(s).next_attempt_at)
        if before_each is not None:
            before_each(i)
        answer = button.click(s.episode_id, "U0BOBBY01 (bob)")
    return answer


def test_a_task_parked_after_long_refusals_keeps_the_marker_and_the_advice(served):
    """Refusals a retry may fix, each with an error longer than a stored error (a 3,000-character
    message): parked after RETRY_LIMIT tries, and the answer still says so and how to send it again
    (an error is cut in its middle, so the marker and the advice at its end are kept)."""
    from integrations.salesforce.errors import RETRY_LIMIT

    served.sf.create_errors["Task"] = ("UNABLE_TO_LOCK_ROW", "row locked " + "x" * 3000)
    button = TaskButton(served.engine, served.cfg, served.clock, _factory(served.sf))
    answer = _click_times(served, button, RETRY_LIMIT)
    row = _task_row(served)
    assert answer is not None and row.status == "parked" and row.attempts == RETRY_LIMIT, row
    assert len(row.last_error or "") <= 2000 and "parked after" in (row.last_error or "")
    assert f"not created after {RETRY_LIMIT} tries" in answer.message, answer.message
    assert "UNABLE_TO_LOCK_ROW" in answer.message and "usagebot crm retry acme" in answer.message


def test_a_task_refused_for_good_on_its_last_try_is_told_refused(served):
    """RETRY_LIMIT - 1 refusals a retry may fix, then a refusal for good on the last try: the answer
    says Salesforce refused the Task (its error and fix), not that it was not created after its
    tries (before: read off the count of tries, which had reached RETRY_LIMIT)."""
    from integrations.salesforce.errors import RETRY_LIMIT

    def refuse(i: int) -> None:
        served.sf.create_errors["Task"] = (("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")
                                          if i < RETRY_LIMIT - 1 else
                                          ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Tasks need a Type"))

    button = TaskButton(served.engine, served.cfg, served.clock, _factory(served.sf))
    answer = _click_times(served, button, RETRY_LIMIT, refuse)
    row = _task_row(served)
    assert answer is not None and row.status == "parked" and row.attempts == RETRY_LIMIT, row
    assert "Salesforce refused the Task" in answer.message and "tries" not in answer.message, answer.message
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in answer.message


def _task_row_or_none(s: Served):  # noqa: ANN202
    return load_tasks(s.engine, [s.episode_id]).get(s.episode_id)


def test_a_sync_with_tasks_on_sends_a_queued_click_once_not_twice(served):
    """A clicked Task still waiting (a locked row) and [salesforce.tasks] on: the sync leaves it to
    the click's row, so one create per sync run, not two (the plan's row and the click's)."""
    served.sf.create_errors["Task"] = ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")
    _post(served, _click(served, "usagebot_log_task", rid="o1"))
    served.fake.wait_response("o1")
    assert _task_row(served).attempts == 1
    creates = len([r for r in served.sf.log if r.method == "POST" and "/composite/sobjects" in r.path])
    _sync_tasks(served, _click_row(served).next_attempt_at)
    assert len([r for r in served.sf.log if r.method == "POST" and "/composite/sobjects" in r.path]) == creates + 1
    assert _task_row(served).attempts == 2
    del served.sf.create_errors["Task"]
    _sync_tasks(served, _click_row(served).next_attempt_at)
    assert _task_row(served).status == "created" and len(_tasks(served)) == 1 and _click_row(served).status == "sent"


def test_a_relogin_that_cannot_be_reached_at_the_create_is_no_try(served):
    """The session expired and the login host cannot be reached when the create is sent: Salesforce
    never looked at the Task (401 before the work), so it is no try and the row waits."""
    cfg = replace(served.cfg, tasks=replace(served.cfg.tasks, owner="api_user"))
    client = _factory(served.sf)(cfg)
    client.connect()
    served.sf.expire_sessions()
    served.sf.login_unreachable = 1
    answer = TaskButton(served.engine, cfg, served.clock, lambda _c: client).click(served.episode_id, "U0BOBBY01 (bob)")
    row = _task_row_or_none(served)
    assert row is None or row.attempts == 0, (row, answer.message)
    assert "retried automatically" in answer.message and _click_row(served).status == "failed"


def test_a_click_whose_account_lookup_is_refused_is_dead_not_retried_for_ever(served):
    """The Account lookup before the create refused (a misnamed key field: 400 INVALID_FIELD): no
    Task try was made, so nothing bounds a wait for the Task; the click's row is dead at once,
    visible in `usagebot outbox list` and sent again by `usagebot outbox retry` (before the review
    fix: retried as "not created yet" for ever, the Task never tried)."""
    served.sf.fail(400, times=100, path_contains="/query",
                   body=[{"errorCode": "INVALID_FIELD", "message": "No such column 'Usage_Key__c' on Account"}])
    _post(served, _click(served, "usagebot_log_task", rid="lk"))
    (answer,) = served.fake.wait_response("lk")
    row = _click_row(served)
    assert row.status == "dead" and "INVALID_FIELD" in (row.last_error or ""), row
    assert "retried automatically" not in answer["text"] and "outbox" in answer["text"], answer["text"]
    assert load_tasks(served.engine, [served.episode_id]).get(served.episode_id) is None


def test_a_click_row_waits_through_a_login_outage_after_its_task_was_tried(served):
    """The Task failed once (a locked row: a try), then the login host cannot be reached for 12
    deliveries (no try: nothing sent): the click's row waits, never dead, and the Task is created
    once the login is back (with the review fix's first form the row died after 10 such deliveries
    and, with [salesforce.tasks] off, nothing retried the Task)."""
    served.sf.create_errors["Task"] = ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")
    _post(served, _click(served, "usagebot_log_task", rid="lo"))
    served.fake.wait_response("lo")
    assert (_task_row(served).status, _task_row(served).attempts) == ("failed", 1)
    del served.sf.create_errors["Task"]
    at = served.clock.now
    for _ in range(12):
        at = max(at, _click_row(served).next_attempt_at)
        served.sf.login_unreachable = 1
        retry_crm_rows(served.engine, served.cfg, lambda: _factory(served.sf)(served.cfg),
                       CrmSyncReport(as_of=at, dry_run=False), at)
        assert _click_row(served).status == "failed" and _task_row(served).attempts == 1
    at = max(at, _click_row(served).next_attempt_at)
    retry_crm_rows(served.engine, served.cfg, lambda: _factory(served.sf)(served.cfg),
                   CrmSyncReport(as_of=at, dry_run=False), at)
    assert _task_row(served).status == "created" and _click_row(served).status == "sent"

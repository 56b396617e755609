"""CRM writes and Tasks go through the outbox (issue 14): a sync queues its plan as rows and carries
them out; a failed batch is retried between syncs by the deliver job; a newer plan replaces the rows
an older one left unsent; the exactly-once Task mechanism of issue 12 is untouched."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from bot.crm.delivery import CRM_KINDS, LOCK, STOP_DEFER, retry_crm_rows
from bot.crm.plan import CrmSyncReport
from bot.crm.sync import run_crm_sync
from integrations.salesforce.client import SalesforceClient
from rules.health import DEFAULT_MODEL
from rules.model import RuleSet
from storage.crm import failed_records, load_tasks
from storage.locks import exclusive
from storage.outbox import list_outbox
from tests.fakes.salesforce_server import FakeSalesforce, running
from tests.integrations.salesforce.helpers import (
    NOW,
    fire_episode,
    password_config,
    seed_accounts,
    sf_id,
    tasks_on,
)


@pytest.fixture
def fake() -> Iterator[FakeSalesforce]:
    yield from running()


def _client(fake: FakeSalesforce, cfg) -> SalesforceClient:  # noqa: ANN001
    return SalesforceClient(cfg, session=fake.session(), sleep=lambda s: None)


def _sync(engine: Engine, fake: FakeSalesforce, cfg, now: int = NOW) -> CrmSyncReport:  # noqa: ANN001
    return run_crm_sync(engine, RuleSet(rules=()), cfg, DEFAULT_MODEL, now, dry_run=False, out=io.StringIO(),
                        client=_client(fake, cfg))


def _crm_rows(engine: Engine) -> list:
    return [r for r in list_outbox(engine, limit=1000) if r.kind in CRM_KINDS]


def test_a_sync_queues_its_writes_and_tasks_as_outbox_rows(engine: Engine, fake: FakeSalesforce) -> None:
    seed_accounts(engine, 5, fake=fake)
    ep = fire_episode(engine, "a0001")
    cfg = password_config(fake, batch_size=2, tasks=tasks_on())
    report = _sync(engine, fake, cfg)
    assert report.ok and report.written == 5 and report.tasks_created == 1
    rows = sorted(_crm_rows(engine), key=lambda r: r.id)
    assert [r.kind for r in rows] == ["crm:fields"] * 3 + ["crm:tasks"] and {r.status for r in rows} == {"sent"}
    assert [len(r.payload["records"]) for r in rows[:3]] == [2, 2, 1]
    assert rows[3].payload["tasks"][0]["candidate"]["episode_id"] == ep
    assert load_tasks(engine, [ep])[ep].status == "created"


def test_a_failed_batch_is_retried_by_the_deliver_job_before_the_next_sync(engine: Engine,
                                                                         fake: FakeSalesforce) -> None:
    seed_accounts(engine, 4, fake=fake)
    cfg = password_config(fake, batch_size=2, retries=0)
    fake.fail(503, times=1, path_contains="/composite/sobjects")
    report = _sync(engine, fake, cfg)
    assert report.written == 0 and len(report.failed) == 2 and report.deferred == 2 and "HTTP 503" in report.stopped
    rows = sorted(_crm_rows(engine), key=lambda r: r.id)
    assert [r.status for r in rows] == ["failed", "failed"]
    assert rows[0].next_attempt_at > NOW and rows[1].next_attempt_at == NOW + STOP_DEFER  # failed; deferred
    retried = CrmSyncReport(as_of=NOW, dry_run=False)
    at = max(r.next_attempt_at for r in rows)
    out = retry_crm_rows(engine, cfg, lambda: _client(fake, cfg), retried, at)
    assert out is not None and out.sent == 2 and retried.written == 4
    assert failed_records(engine, "Account") == [] and {r.status for r in _crm_rows(engine)} == {"sent"}
    assert fake.records["Account"][sf_id(3)]["Usage_Health_Score__c"] == 90
    fake.log.clear()
    assert _sync(engine, fake, cfg).changes == [] and fake.log == []  # the next sync has nothing left to do


def test_a_newer_plan_replaces_what_an_older_one_left_unsent(engine: Engine, fake: FakeSalesforce) -> None:
    seed_accounts(engine, 3, fake=fake)
    cfg = password_config(fake, retries=0)
    fake.api_used = fake.api_limit  # REQUEST_LIMIT_EXCEEDED: the rows wait
    report = _sync(engine, fake, cfg)
    assert "REQUEST_LIMIT_EXCEEDED" in report.stopped and report.deferred == 3
    (old,) = _crm_rows(engine)
    assert old.status == "failed" and old.next_attempt_at == NOW + STOP_DEFER
    fake.api_used = 0
    report = _sync(engine, fake, cfg)  # the same time: the old row is not due, the new plan is
    assert report.ok and report.written == 3
    (row,) = _crm_rows(engine)
    assert row.idempotency_key != old.idempotency_key and row.status == "sent"  # the old row dropped, not sent too
    fake.log.clear()
    assert retry_crm_rows(engine, cfg, lambda: _client(fake, cfg), CrmSyncReport(NOW, False),
                          NOW + 2 * STOP_DEFER).sent == 0 and fake.log == []  # type: ignore[union-attr]


def test_the_deliver_job_leaves_the_rows_alone_while_a_sync_runs(engine: Engine, fake: FakeSalesforce) -> None:
    seed_accounts(engine, 2, fake=fake)
    cfg = password_config(fake, retries=0)
    fake.fail(503, times=1, path_contains="/composite/sobjects")
    _sync(engine, fake, cfg)
    held, release = threading.Event(), threading.Event()

    def sync_running() -> None:
        with exclusive(engine, LOCK, wait=5):
            held.set()
            release.wait(10)

    t = threading.Thread(target=sync_running)
    t.start()
    try:
        assert held.wait(5)
        assert retry_crm_rows(engine, cfg, lambda: _client(fake, cfg), CrmSyncReport(NOW, False), NOW + 3600) is None
        assert [r.status for r in _crm_rows(engine)] == ["failed"]
    finally:
        release.set()
        t.join()


def test_a_lost_task_answer_is_looked_up_when_the_deliver_job_retries(engine: Engine, fake: FakeSalesforce) -> None:
    """Issue 12's guarantee on the retry path: the intent is recorded, the key looked up, no second Task."""
    seed_accounts(engine, 1, fake=fake)
    fake.now = NOW
    ep = fire_episode(engine, "a0000")
    cfg = password_config(fake, tasks=tasks_on(), retries=3, fields={"score": "Usage_Health_Score__c"})
    _sync(engine, fake, cfg)  # fields written
    ep2 = fire_episode(engine, "a0000", rule_id="other-drop")
    fake.fail(503, times=1, path_contains="/composite/sobjects", method="POST", after=True)
    report = _sync(engine, fake, cfg)
    assert load_tasks(engine, [ep2])[ep2].status == "unknown" and "HTTP 503" in report.stopped
    (row,) = [r for r in _crm_rows(engine) if r.kind == "crm:tasks" and r.status == "failed"]
    fake.log.clear()
    retried = CrmSyncReport(NOW, False)
    assert retry_crm_rows(engine, cfg, lambda: _client(fake, cfg), retried, row.next_attempt_at).sent == 1  # type: ignore[union-attr]
    assert retried.tasks_created == 1 and not [r for r in fake.log if r.method == "POST" and "/composite/" in r.path]
    assert len(fake.records["Task"]) == 2 and load_tasks(engine, [ep, ep2])[ep2].status == "created"


def test_the_service_deliver_job_retries_crm_rows(tmp_path, fake: FakeSalesforce) -> None:  # noqa: ANN001
    from dataclasses import replace

    from bot.config.app import load_config
    from bot.serve.service import Service
    from integrations.console import ConsoleNotifier
    from tests.bot.service.test_service_integrations import _config

    cfg = replace(load_config(_config(tmp_path, "")), salesforce=password_config(fake, retries=0))
    svc = Service(cfg, clock=lambda: NOW, notifier=ConsoleNotifier(out=io.StringIO()),
                  crm_client_factory=lambda c: SalesforceClient(c, session=fake.session(), sleep=lambda s: None))
    svc.prepare()
    try:
        seed_accounts(svc.engine, 3, fake=fake)  # type: ignore[arg-type]
        fake.fail(503, times=1, path_contains="/composite/sobjects")
        assert svc.crm_job(NOW).written == 0
        (row,) = _crm_rows(svc.engine)  # type: ignore[arg-type]
        assert row.status == "failed"
        report = svc.deliver_job(row.next_attempt_at)
        assert report.sent == 1 and _crm_rows(svc.engine)[0].status == "sent"  # type: ignore[arg-type]
        assert fake.records["Account"][sf_id(2)]["Usage_Health_Score__c"] == 90
    finally:
        svc.stop()

"""`usagebot serve` with Slack and Salesforce configured: the Slack HTTP endpoint is mounted on the
service's server (verified by slack-bolt), the CRM sync and digest jobs are scheduled and run."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import httpx

from bot.config.app import load_config
from bot.serve.service import Service
from integrations.console import ConsoleNotifier
from integrations.salesforce.client import SalesforceClient
from tests.fakes.salesforce_server import running
from tests.integrations.salesforce.helpers import NOW, password_config, seed_accounts

SIGNING = "signing-secret-for-tests"
RULES = Path(__file__).resolve().parents[3] / "rules" / "examples" / "default.toml"


def _config(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(f"""
[storage]
url = "sqlite:///{tmp_path / 'u.db'}"
[rules]
paths = ["{RULES}"]
[service]
host = "127.0.0.1"
port = 0
[scheduler]
leader = "none"
{extra}
""")
    return p


def _signed(body: bytes, secret: str = SIGNING) -> dict[str, str]:
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig, "Content-Type": "application/json"}


def test_slack_http_mode_is_served_by_the_service(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, f"""
[slack]
bot_token = "xoxb-test"
signing_secret = "{SIGNING}"
mode = "http"
base_url = "http://127.0.0.1:9/api/"
default_channel = "#usage"
[slack.digest]
enabled = true
"""))
    svc = Service(cfg)
    assert "digest" in [j.id for j in svc.jobs()]
    svc.start(scheduler=False)
    try:
        assert svc.http is not None
        url = f"http://127.0.0.1:{svc.http.port}/slack/events"
        body = json.dumps({"type": "url_verification", "challenge": "abc123"}).encode()
        ok = httpx.post(url, content=body, headers=_signed(body))
        assert ok.status_code == 200 and "abc123" in ok.text
        forged = httpx.post(url, content=body, headers=_signed(body, "wrong-secret"))
        assert forged.status_code == 401
    finally:
        svc.stop()


def test_crm_sync_job_writes_health_fields_to_salesforce(tmp_path: Path) -> None:
    for fake in running():
        cfg = replace(load_config(_config(tmp_path, "")), salesforce=password_config(fake))
        svc = Service(cfg, clock=lambda: NOW, notifier=ConsoleNotifier(out=io.StringIO()),
                      crm_client_factory=lambda c, f=fake: SalesforceClient(c, session=f.session(), sleep=lambda s: None))
        assert "crm_sync" in [j.id for j in svc.jobs()]
        svc.prepare()
        seed_accounts(svc.engine, 3, fake=fake)  # type: ignore[arg-type]
        try:
            report = svc.crm_job(NOW)
            assert report.stopped is None and report.written == 3
            assert len(fake.written("PATCH")) >= 1
            assert svc.run_once()["crm_sync"] == "ok"
        finally:
            svc.stop()


def test_the_service_pulls_account_facts_on_the_configured_schedule(tmp_path: Path) -> None:
    from integrations.salesforce.config import AccountPullConfig
    from storage.accounts import list_accounts

    for fake in running():
        pull = AccountPullConfig(owner="Owner.Email", every=900)
        cfg = replace(load_config(_config(tmp_path, "")), salesforce=password_config(fake, accounts=pull))
        svc = Service(cfg, clock=lambda: NOW, notifier=ConsoleNotifier(out=io.StringIO()),
                      crm_client_factory=lambda c, f=fake: SalesforceClient(c, session=f.session(), sleep=lambda s: None))
        job = next(j for j in svc.jobs() if j.id == "crm_pull")
        assert job.run_at_start
        svc.prepare()
        seed_accounts(svc.engine, 2, fake=fake)  # type: ignore[arg-type]
        fake.add_record("User", {"Email": "new.owner@example.com"}, id="005000000000001AAA")
        try:
            report = svc.crm_pull_job(NOW)
            assert report.ok and [c.account_id for c in report.changed] == ["a0001"]
            owners = [a.owner_email for a in list_accounts(svc.engine)]  # type: ignore[arg-type]
            assert owners == ["owner0@example.com", "new.owner@example.com"]  # a0000's OwnerId: no User
        finally:
            svc.stop()
        no_schedule = replace(cfg, salesforce=password_config(fake, accounts=replace(pull, every=0)))
        assert "crm_pull" not in [j.id for j in Service(no_schedule).jobs()]


def test_parked_crm_records_and_tasks_are_gauges(tmp_path: Path) -> None:
    from tests.integrations.salesforce.helpers import fire_episode, sf_id, tasks_on

    for fake in running():
        cfg = replace(load_config(_config(tmp_path, "")), salesforce=password_config(fake, tasks=tasks_on()))
        svc = Service(cfg, clock=lambda: NOW, notifier=ConsoleNotifier(out=io.StringIO()),
                      crm_client_factory=lambda c, f=fake: SalesforceClient(c, session=f.session(), sleep=lambda s: None))
        svc.prepare()
        seed_accounts(svc.engine, 2, fake=fake)  # type: ignore[arg-type]
        fire_episode(svc.engine, "a0000")  # type: ignore[arg-type]
        fake.record_errors[sf_id(1)] = ("STRING_TOO_LONG", "too long")
        fake.create_errors["Task"] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "refused")
        try:
            svc.crm_job(NOW)
            got = {s.name: s.value for s in svc._collect()}
            assert got["usagebot_crm_parked_records"] == 1 and got["usagebot_crm_parked_tasks"] == 1
        finally:
            svc.stop()

"""`usagebot crm sync` / `crm status` end to end: config file, database, the fake org over HTTPS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integrations.salesforce.diff import format_value
from storage.db import make_engine, migrate
from tests.bot.helpers import run_cli
from tests.fakes.salesforce_server import FakeSalesforce, running
from tests.integrations.salesforce.helpers import fire_episode, seed_accounts, set_usage, sf_id

AT = "2026-11-24T10:00:00Z"


@pytest.fixture
def fake() -> Iterator[FakeSalesforce]:
    yield from running()


@pytest.fixture
def setup(tmp_path: Path, fake: FakeSalesforce, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    db = f"sqlite:///{tmp_path / 'usagebot.db'}"
    engine = make_engine(db)
    migrate(engine)
    seed_accounts(engine, 3, fake=fake)
    set_usage(engine, ["a0001"], 0.0, days=25)
    fire_episode(engine, "a0002", severity="critical")
    engine.dispose()
    session = fake.new_session()
    monkeypatch.setenv("SF_SESSION_ID", session)
    cfg = tmp_path / "usagebot.toml"
    cfg.write_text(f"""
[storage]
url = "{db}"

[salesforce]
session_id = "${{SF_SESSION_ID}}"
instance_url = "{fake.instance_url}"
ca_bundle = "{fake.ca_file}"
retry_backoff = 0

[salesforce.tasks]
severities = ["critical"]

[health.weights]
trend = 40
active_days = 20
quota_use = 20
open_alerts = 20
""")
    return cfg, session


def shown_values(out: str) -> dict[str, dict[str, str]]:
    shown: dict[str, dict[str, str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("Account "):
            current = line.split()[1]
            shown[current] = {}
        elif line.startswith("  ") and " -> " in line and current:
            name, change = line.strip().split(": ", 1)
            shown[current][name] = change.split(" -> ", 1)[1]
    return shown


def test_dry_run_twice_then_the_real_sync_writes_exactly_what_was_shown(setup, fake):
    cfg, session = setup
    code1, out1, err1 = run_cli("crm", "sync", "--dry-run", "--verbose", "--config", str(cfg), "--at", AT)
    code2, out2, _ = run_cli("crm", "sync", "--dry-run", "--verbose", "--config", str(cfg), "--at", AT)
    assert code1 == code2 == 0, err1
    assert out1 == out2 and fake.log == []
    assert out1.startswith("CRM dry run as of 2026-11-24T00:00:00Z: 3 account(s), 3 Account record(s) to update")
    assert "Usage_Health_Score__c: (unknown) -> " in out1 and "Tasks to create: 1" in out1
    assert "Dry run: nothing was sent to Salesforce and nothing was stored." in out1

    code, out, err = run_cli("crm", "sync", "--config", str(cfg), "--at", AT)
    assert code == 0, err
    sent = {r["id"]: {k: format_value(v) for k, v in r.items() if k not in ("attributes", "id")}
            for r in fake.written("PATCH")}
    assert sent == shown_values(out1) and set(sent) == {sf_id(0), sf_id(1), sf_id(2)}
    assert "3 written, 0 failed" in out and "Tasks: 1 created" in out
    task = next(iter(fake.records["Task"].values()))
    assert task["WhatId"] == sf_id(2) and task["Priority"] == "High"
    for text in (out1, out, err):
        assert session not in text

    code, out, _ = run_cli("crm", "sync", "--config", str(cfg), "--at", AT)
    assert code == 0 and "Nothing to update." in out and "0 Account record(s) to update" in out
    code, out, _ = run_cli("crm", "status", "--config", str(cfg))
    assert code == 0
    assert out.splitlines()[1].startswith("2026-11-24T10:00:00Z: 3 changed, 3 written, 0 failed, 0 deferred, 1 task(s)")


def test_a_stopped_sync_exits_1_and_says_why(setup, fake):
    cfg, _ = setup
    fake.api_used = fake.api_limit
    code, out, err = run_cli("crm", "sync", "--config", str(cfg), "--at", AT)
    assert code == 1 and "REQUEST_LIMIT_EXCEEDED" in err and "3 record(s) wait for the next sync" in out


def test_config_problems_are_listed_with_file_and_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[salesforce]\ndomain = "login.salesforce.com"\n[health.weights]\ntrend = 90\n')
    code, _, err = run_cli("crm", "sync", "--dry-run", "--config", str(cfg))
    assert code == 1
    assert f"{cfg}:2: salesforce.domain: give the part before" in err
    assert f"{cfg}:3: health.weights: weights must add up to 100" in err
    assert "2 problem(s) in the config; nothing was done." in err


def test_a_real_sync_without_credentials_is_refused_but_a_dry_run_works(tmp_path, fake):
    db = f"sqlite:///{tmp_path / 'u.db'}"
    engine = make_engine(db)
    migrate(engine)
    seed_accounts(engine, 2)
    engine.dispose()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[salesforce]\nusername = "${SF_USER:-}"\n')
    code, _, err = run_cli("crm", "sync", "--config", str(cfg), "--db", db, "--at", AT)
    assert code == 2 and "no Salesforce credentials" in err and "--dry-run" in err
    code, out, err = run_cli("crm", "sync", "--dry-run", "--config", str(cfg), "--db", db, "--at", AT)
    assert code == 0 and "2 Account record(s) to update" in out


def test_bad_at_and_missing_config_are_usage_errors(tmp_path):
    code, _, err = run_cli("crm", "sync", "--dry-run", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "no such file" in err
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    code, _, err = run_cli("crm", "sync", "--dry-run", "--config", str(cfg), "--at", "yesterday")
    assert code == 2 and "--at: 'yesterday' is not an ISO-8601" in err


def test_a_parked_record_is_shown_by_status_and_sent_again_after_crm_retry(setup, fake):
    cfg, _ = setup
    fake.record_errors[sf_id(1)] = ("INVALID_FIELD_FOR_INSERT_UPDATE", "Unable to create/update fields")
    code, out, _ = run_cli("crm", "sync", "--config", str(cfg), "--at", AT)
    assert "2 written, 1 failed" in out and "usagebot crm retry" in out
    code, out, _ = run_cli("crm", "status", "--config", str(cfg))
    assert code == 0 and any(line.startswith("parked: ") and "read-only" in line for line in out.splitlines())
    del fake.record_errors[sf_id(1)]
    code, out, err = run_cli("crm", "retry", "--config", str(cfg))
    assert code == 0 and "1 parked record(s) and 0 parked Task(s) will be sent again" in out, err
    code, out, _ = run_cli("crm", "sync", "--config", str(cfg), "--at", AT)
    assert code == 0 and "1 written, 0 failed" in out


def test_a_parked_task_is_shown_by_status_and_created_after_crm_retry(setup, fake):
    cfg, _ = setup
    fake.create_errors["Task"] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Due date required")
    run_cli("crm", "sync", "--config", str(cfg), "--at", AT)
    code, out, _ = run_cli("crm", "sync", "--config", str(cfg), "--at", AT)
    assert "1 Task(s) parked" in out and "usagebot crm retry" in out
    code, out, _ = run_cli("crm", "status", "--config", str(cfg))
    [line] = [ln for ln in out.splitlines() if ln.startswith("parked Task: ")]
    assert code == 0 and "account a0002" in line and "Due date required" in line and "crm retry a0002" in line
    del fake.create_errors["Task"]
    code, out, err = run_cli("crm", "retry", "--config", str(cfg))
    assert code == 0 and "0 parked record(s) and 1 parked Task(s) will be sent again" in out, err
    code, out, _ = run_cli("crm", "sync", "--config", str(cfg), "--at", AT)
    assert code == 0 and "Tasks: 1 created, 0 failed" in out

"""Slack, the console and a signed webhook, configured together, each receive one cycle's alerts
through their own outbox rows; one receiver being down holds back nobody else (issue 14)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from bot.config.app import load_config
from bot.serve.service import Service
from bot.service.pipeline import run_cycle
from integrations.console import ConsoleNotifier
from integrations.slack.notifier import SlackNotifier
from integrations.webhook import WebhookNotifier
from rules.model import DAY
from storage.outbox import list_outbox
from tests.fakes.slack_server import FakeSlack
from tests.fakes.webhook_server import FakeWebhook
from tests.integrations.slack.scenario import (
    FIRED,
    RENOTIFIED,
    RESOLVED,
    SPIKE_DAY,
    SPIKE_RULE,
    T0,
    TOKEN,
    Scenario,
)

HOOK_SECRET = "hook-secret-0123456789abcdef"


@pytest.fixture
def fakes() -> Iterator[tuple[FakeSlack, FakeWebhook]]:
    with FakeSlack.running() as slack, FakeWebhook.running(HOOK_SECRET) as hook:
        slack.add_user("U0ALICE01", "alice@example.com", "alice")
        slack.add_user("U0BOBBY01", "bob@example.com", "bob")
        slack.add_channel("usage-alerts", "C0ALERTS1")
        slack.add_channel("usagebot-admin", "C0ADMIN01")
        yield slack, hook


def _service(tmp_path: Path, db_url: str, slack: FakeSlack, hook: FakeWebhook, now: list[int]) -> Service:
    (tmp_path / "rules.toml").write_text(SPIKE_RULE)
    (tmp_path / "config.toml").write_text(f"""
[storage]
url = "{db_url}"
[rules]
paths = ["rules.toml"]
[service]
admin_channel = "#usagebot-admin"
[scheduler]
leader = "none"
[evaluation]
first_run = "notify"
[slack]
bot_token = "{TOKEN}"
base_url = "{slack.api_url}"
default_channel = "#usage-alerts"
min_post_interval = 0.0
max_inline_wait = 0

[[notifiers]]
type = "console"

[[notifiers]]
type = "webhook"
name = "ops"
url = "{hook.url}"
secret = "${{HOOK_SECRET}}"
""")
    cfg = load_config(tmp_path / "config.toml", env={"HOOK_SECRET": HOOK_SECRET})
    svc = Service(cfg, clock=lambda: now[0])
    svc.prepare()
    return svc


def _day(svc: Service, day: int, now: list[int]) -> None:
    now[0] = T0 + day * DAY
    run_cycle(svc.engine, svc.ruleset, now[0], notices=svc.notices)  # type: ignore[arg-type]
    svc.deliver_job(now[0] + 60)


def test_slack_console_and_webhook_each_get_every_alert(tmp_path: Path, db_url: str, engine: Engine,
                                                         fakes: tuple[FakeSlack, FakeWebhook],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    slack, hook = fakes
    now = [T0]
    svc = _service(tmp_path, db_url, slack, hook, now)
    try:
        kinds = {type(n): n.name for n in svc.all_notifiers()}
        assert kinds == {SlackNotifier: "slack", ConsoleNotifier: "console", WebhookNotifier: "ops"}
        assert svc.notices.notifiers == ("slack", "console", "ops")
        Scenario(svc.engine, lambda: now[0])  # type: ignore[arg-type]  # the book: acme spikes
        for day in (SPIKE_DAY, FIRED, RENOTIFIED, RESOLVED):
            _day(svc, day, now)
        rows = list_outbox(svc.engine, limit=1000)  # type: ignore[arg-type]
        by_kind: dict[str, list[str]] = {}
        for r in rows:
            by_kind.setdefault(r.kind, []).append(r.idempotency_key)
        assert set(by_kind) == {"notify:slack", "notify:console", "notify:ops"}
        keys = {k: sorted(v) for k, v in by_kind.items()}
        assert keys["notify:slack"] == keys["notify:console"] == keys["notify:ops"]  # one row each
        assert {r.status for r in rows} == {"sent"}
        events = [a["event"] for a in hook.accepted]
        assert events == ["fired", "renotified", "resolved"]
        assert {a["episode_id"] for a in hook.accepted} == {rows[0].payload["episode_id"]}
        printed = capsys.readouterr().out
        assert "FIRED · Acme Corp" in printed and "RENOTIFIED · Acme Corp" in printed and "RESOLVED · Acme Corp" in printed
        posts = slack.calls_of("chat.postMessage")
        assert len(posts) == 6  # a thread (parent + 2 replies) in the channel and in alice's DM
    finally:
        svc.stop()


def test_a_webhook_that_is_down_holds_back_nobody(tmp_path: Path, db_url: str, engine: Engine,
                                                   fakes: tuple[FakeSlack, FakeWebhook]) -> None:
    slack, hook = fakes
    hook.fail(503, times=1000)
    now = [T0]
    svc = _service(tmp_path, db_url, slack, hook, now)
    try:
        Scenario(svc.engine, lambda: now[0])  # type: ignore[arg-type]
        _day(svc, SPIKE_DAY, now)
        _day(svc, FIRED, now)
        rows = {r.kind: r for r in list_outbox(svc.engine, limit=100)}  # type: ignore[arg-type]
        assert rows["notify:slack"].status == rows["notify:console"].status == "sent"
        assert rows["notify:ops"].status == "failed" and "HTTP 503" in (rows["notify:ops"].last_error or "")
        assert len(slack.calls_of("chat.postMessage")) == 2 and hook.accepted == []
        hook.faults.clear()
        svc.deliver_job(rows["notify:ops"].next_attempt_at)  # the receiver is back: the row goes out
        assert [a["event"] for a in hook.accepted] == ["fired"]
        assert len(slack.calls_of("chat.postMessage")) == 2  # nothing sent twice elsewhere
    finally:
        svc.stop()

"""`usagebot outbox list|retry|deliver`: a dead webhook row is seen, queued again and delivered."""

from __future__ import annotations

from pathlib import Path

from bot.service.pipeline import deliver_outbox
from integrations.notice import AlertNotice
from integrations.webhook import WebhookConfig, WebhookNotifier
from rules.config import Secret
from storage.db import make_engine, migrate
from storage.outbox import OutboxItem, enqueue, list_outbox, notify_kind
from tests.bot.helpers import run_cli
from tests.fakes.webhook_server import FakeWebhook
from tests.integrations.test_notice import OLD_ROW

SECRET = "hook-secret-0123456789abcdef"


def test_a_dead_row_is_listed_retried_and_delivered(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    (tmp_path / "rules.toml").write_text("")
    with FakeWebhook.running(SECRET) as hook:
        (tmp_path / "config.toml").write_text(f"""
[storage]
url = "{url}"
[rules]
paths = ["rules.toml"]
[[notifiers]]
type = "webhook"
name = "ops"
url = "{hook.url}"
secret = "{SECRET}"
""")
        engine = make_engine(url)
        migrate(engine)
        notice = AlertNotice.from_json(OLD_ROW)
        enqueue(engine, [OutboxItem(notice.idempotency_key, notify_kind("ops"), notice.to_json())], now=1000)
        hook.fail(410)
        n = WebhookNotifier(WebhookConfig("ops", Secret(hook.url), Secret(SECRET)))
        assert deliver_outbox(engine, n, 1000).dead == 1
        code, out, err = run_cli("outbox", "list", "--status", "dead", "--db", url)
        assert code == 0, err
        assert "outbox: 1 dead" in out and f"dead notify:ops {notice.idempotency_key}" in out and "HTTP 410" in out
        code, out, err = run_cli("outbox", "retry", "--db", url)
        assert code == 0 and "1 dead row(s) queued again" in out
        code, out, err = run_cli("outbox", "deliver", "--config", str(tmp_path / "config.toml"))
        assert code == 0, err
        assert "ops: 1 sent, 0 not sent" in out and len(hook.accepted) == 1
        assert [r.status for r in list_outbox(engine)] == ["sent"]
        engine.dispose()


def test_a_listed_error_is_masked_before_it_is_cut(tmp_path: Path) -> None:
    """`outbox list` cut each error to 300 characters, then masked what it printed: a secret where the
    cut fell left fewer than 8 of its characters, which masking cannot tell from text (a row stored
    before the secret was configured)."""
    from storage.outbox import mark_dead

    url = f"sqlite:///{tmp_path / 'u.db'}"
    engine = make_engine(url)
    migrate(engine)
    enqueue(engine, [OutboxItem("k1", notify_kind("ops"), AlertNotice.from_json(OLD_ROW).to_json())], now=1000)
    (row,) = list_outbox(engine)
    mark_dead(engine, row.id, 1000, "x" * 295 + SECRET)
    engine.dispose()
    Secret(SECRET)
    code, out, err = run_cli("outbox", "list", "--db", url)
    assert code == 0, err
    assert "x" * 295 + "***" in out and SECRET[:5] not in out, out

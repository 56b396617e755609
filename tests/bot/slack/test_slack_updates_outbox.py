"""Message updates triggered by buttons go through the outbox (issue 14): the click queues a
`slack:update` row that is delivered at once; when Slack fails it stays queued and is retried."""

from __future__ import annotations

from bot.service.pipeline import deliver_rows
from integrations.slack.notifier import SlackNotifier
from integrations.slack.updates import UPDATE_KIND, SlackUpdates
from storage.outbox import list_outbox
from tests.bot.slack.test_slack_app import _click, _post, _serve, clock, fake  # noqa: F401  (fixtures)


def _updates(engine):  # noqa: ANN001, ANN202
    return [r for r in list_outbox(engine, limit=100) if r.kind == UPDATE_KIND]


def test_a_click_updates_the_message_through_an_outbox_row(engine, fake, clock) -> None:  # noqa: F811
    s, server = _serve(engine, fake, clock)
    try:
        before = len(fake.calls_of("chat.update"))
        assert _post(s, _click(s, "usagebot_ack", rid="ack")).status_code == 200
        (answer,) = fake.wait_response("ack")
        assert "Acknowledged" in answer["text"]
        (row,) = _updates(engine)
        assert row.status == "sent" and row.payload["episode_id"] == s.episode_id
        assert len(fake.calls_of("chat.update")) > before
        assert "Acknowledged by" in str(fake.channel("#usage-alerts").messages[0]["blocks"])
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_update_is_retried_and_the_click_is_not_an_error(engine, fake, clock) -> None:  # noqa: F811
    s, server = _serve(engine, fake, clock)
    try:
        fake.fail("chat.update", "status", 503, count=5)
        assert _post(s, _click(s, "usagebot_ack", rid="ack")).status_code == 200
        (answer,) = fake.wait_response("ack")
        assert "Acknowledged" in answer["text"]  # the action happened; only the message lags
        (row,) = _updates(engine)
        assert row.status == "failed" and "503" in (row.last_error or "")
        assert "Acknowledged by" not in str(fake.channel("#usage-alerts").messages[0]["blocks"])
        fake.faults.clear()
        notifier = SlackNotifier(s.config, engine, clock=clock, interactive=True)
        report = deliver_rows(engine, SlackUpdates(notifier), row.next_attempt_at)  # the deliver job's turn
        assert report.sent == 1 and _updates(engine)[0].status == "sent"
        assert "Acknowledged by" in str(fake.channel("#usage-alerts").messages[0]["blocks"])
    finally:
        server.shutdown()
        server.server_close()

"""deliver_outbox with the errors a Slack notifier raises: retry_after and permanent."""

from __future__ import annotations

from bot.service.pipeline import deliver_outbox
from integrations.slack.errors import PermanentSlackError, RetryLater, SlackUnavailable
from storage.outbox import OutboxItem, enqueue, list_outbox, notify_kind


class Raising:
    name = "console"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def deliver(self, alert):
        raise self.exc


def _row(engine):
    enqueue(engine, [OutboxItem("notify:k", notify_kind("console"), {"event": "fired"})], now=1000)


def test_retry_after_reschedules_exactly_and_never_kills_the_row(engine):
    _row(engine)
    notifier = Raising(RetryLater("rate limited", 42))
    now = 1000
    for _ in range(15):  # more deferrals than the dead limit of failures
        report = deliver_outbox(engine, notifier, now)
        assert report.deferred == 1 and report.dead == 0
        row = list_outbox(engine)[0]
        assert row.status == "failed" and row.next_attempt_at == now + 42
        now += 42


def test_permanent_error_marks_dead_and_transient_backs_off(engine):
    _row(engine)
    r = deliver_outbox(engine, Raising(SlackUnavailable("Slack chat.postMessage answered HTTP 503")), 1000)
    assert r.failed == 1 and r.dead == 0 and r.deferred == 0
    row = list_outbox(engine)[0]
    assert row.status == "failed" and row.next_attempt_at == 1000 + 60
    r = deliver_outbox(engine, Raising(PermanentSlackError("channel #x not found", "channel_not_found")), 1060)
    assert r.dead == 1
    row = list_outbox(engine)[0]
    assert row.status == "dead" and "channel #x not found" in row.last_error


def test_a_deferral_is_no_try_of_the_row(engine):
    """Deferrals (a 429's Retry-After, the API budget) are not the row failing: they use up none of
    its tries, so 15 of them then one transient failure leave it failed with one try, not dead."""
    _row(engine)
    now = 1000
    for _ in range(15):
        deliver_outbox(engine, Raising(RetryLater("rate limited", 42)), now)
        assert list_outbox(engine)[0].attempts == 0
        now += 42
    r = deliver_outbox(engine, Raising(SlackUnavailable("Slack chat.postMessage answered HTTP 503")), now)
    row = list_outbox(engine)[0]
    assert r.dead == 0 and (row.status, row.attempts) == ("failed", 1)

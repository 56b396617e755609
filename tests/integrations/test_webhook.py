"""The signed webhook notifier against a real local receiver (tests/fakes/webhook_server.py) through
httpx: signatures the receiver verifies itself, retries through the outbox, 429 with Retry-After,
dead-lettering, lost answers deduplicated by the Idempotency-Key, and the documented payload."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from bot.service.pipeline import deliver_outbox
from integrations.notice import AlertNotice
from integrations.notifiers import parse_notifiers
from integrations.webhook import (
    WebhookConfig,
    WebhookNotifier,
    body_of,
    payload,
    retry_after,
    signature,
    verify,
)
from rules.config import Secret, document_from_text
from storage.outbox import OutboxItem, enqueue, list_outbox, notify_kind, retry_dead
from tests.fakes.webhook_server import FakeWebhook
from tests.integrations.drip import dripping
from tests.integrations.test_notice import OLD_ADMIN_ROW, OLD_ROW

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-5f0c1e9a8b7d6c5e4f3a2b1c"
NOW = 1_790_899_200


@pytest.fixture
def receiver() -> Iterator[FakeWebhook]:
    with FakeWebhook.running(SECRET) as fake:
        yield fake


def _notifier(receiver: FakeWebhook, secret: str = SECRET, name: str = "ops") -> WebhookNotifier:
    return WebhookNotifier(WebhookConfig(name, Secret(receiver.url), Secret(secret), timeout=5))


def _queue(engine: Engine, name: str = "ops", row: dict | None = None) -> AlertNotice:
    notice = AlertNotice.from_json(row or OLD_ROW)
    enqueue(engine, [OutboxItem(notice.idempotency_key, notify_kind(name), notice.to_json())], now=NOW)
    return notice


def test_a_notice_arrives_signed_with_its_idempotency_key(engine: Engine, receiver: FakeWebhook) -> None:
    notice = _queue(engine)
    report = deliver_outbox(engine, _notifier(receiver), NOW)
    assert report.sent == 1 and report.failed == 0
    (req,) = receiver.requests
    assert req.status == 200 and req.headers["idempotency-key"] == notice.idempotency_key
    assert req.headers["content-type"] == "application/json"
    assert re.fullmatch(r"v1=[0-9a-f]{64}", req.headers["x-usagebot-signature"])
    assert verify(SECRET, req.headers, req.body)  # the documented recipe, as a receiver would run it
    assert not verify(SECRET, req.headers, req.body.replace(b"Acme", b"Acne"))  # a changed body fails
    assert not verify("another-secret-of-16+", req.headers, req.body)
    assert not verify(SECRET, req.headers, req.body, now=int(req.headers["x-usagebot-timestamp"]) + 301)  # stale
    for bad in ({"x-usagebot-timestamp": "\u00b2"}, {"x-usagebot-timestamp": "9" * 5000},
                {"x-usagebot-signature": "v1=\u00e9"}):  # int('²') and compare_digest('é') raised
        assert not verify(SECRET, {**req.headers, **bad}, req.body), bad
    assert receiver.accepted == [payload(notice)]


def test_the_payload_is_versioned_and_every_field_is_documented(receiver: FakeWebhook) -> None:
    notice = AlertNotice.from_json({**OLD_ROW, "episode_id": 7})
    body = payload(notice)
    assert body["version"] == 1 and body["type"] == "alert" and body["event"] == "fired" and body["episode_id"] == 7
    assert body["alert"] == OLD_ROW  # the alert record (docs/backtest.md's fields), ISO times
    assert payload(AlertNotice.from_json({**OLD_ADMIN_ROW, "key": "source-stale:drops:1"}))["type"] == "admin"
    doc = (ROOT / "docs" / "webhook.md").read_text()
    for name in [*body, *body["alert"]]:
        assert f"`{name}`" in doc, f"docs/webhook.md does not document the payload field {name!r}"
    for header in ("Idempotency-Key", "X-Usagebot-Timestamp", "X-Usagebot-Signature"):
        assert header in doc
    assert body_of(notice) == body_of(AlertNotice.from_json(notice.to_json()))  # the same bytes on every retry


def test_a_wrong_secret_is_refused_by_the_receiver_and_the_row_is_dead(engine: Engine, receiver: FakeWebhook) -> None:
    _queue(engine)
    report = deliver_outbox(engine, _notifier(receiver, secret="not-the-receivers-secret"), NOW)
    assert report.dead == 1 and receiver.accepted == []
    (row,) = list_outbox(engine)
    assert row.status == "dead" and "HTTP 401" in row.last_error and "not retried" in row.last_error
    assert SECRET not in row.last_error and "not-the-receivers-secret" not in row.last_error


def test_a_wrong_secret_costs_one_request_not_one_per_queued_notice(engine: Engine, receiver: FakeWebhook) -> None:
    """A 401 is about the webhook (its secret), not the notice: the run stops sending to it, and the other
    queued rows are dead with the same error without a request each; a 422 is about one notice only."""
    for i in range(4):
        _queue(engine, row={**OLD_ROW, "account": f"acct-{i}"})
    report = deliver_outbox(engine, _notifier(receiver, secret="not-the-receivers-secret"), NOW)
    assert len(receiver.requests) == 1 and (report.dead, report.halted) == (4, 3)
    assert all("HTTP 401" in r.last_error and "check its url and secret" in r.last_error for r in list_outbox(engine))
    assert retry_dead(engine, NOW) == 4
    assert deliver_outbox(engine, _notifier(receiver), NOW).sent == 4 and len(receiver.accepted) == 4
    for status in (422, 403):  # about one notification (a receiver may forbid one payload): the rest are sent
        for i in range(2):
            _queue(engine, row={**OLD_ROW, "account": f"other-{status}-{i}"})
        receiver.fail(status, times=1)
        report = deliver_outbox(engine, _notifier(receiver), NOW)
        assert (report.dead, report.halted, report.sent) == (1, 0, 1), status


def test_5xx_is_retried_with_backoff_and_the_same_body(engine: Engine, receiver: FakeWebhook) -> None:
    notice = _queue(engine)
    receiver.fail(503, times=2)
    n = _notifier(receiver)
    r1 = deliver_outbox(engine, n, NOW)
    assert r1.failed == 1 and r1.dead == 0 and r1.deferred == 0 and "HTTP 503" in r1.errors[0]
    (row,) = list_outbox(engine)
    assert row.status == "failed" and row.next_attempt_at > NOW
    assert deliver_outbox(engine, n, NOW + 1).sent == 0  # not due yet: the backoff
    assert deliver_outbox(engine, n, row.next_attempt_at).failed == 1
    assert deliver_outbox(engine, n, list_outbox(engine)[0].next_attempt_at).sent == 1
    assert [r.status for r in receiver.requests] == [503, 503, 200]
    assert {r.body for r in receiver.requests} == {body_of(notice)}
    assert {r.headers["idempotency-key"] for r in receiver.requests} == {notice.idempotency_key}
    assert receiver.accepted == [payload(notice)]


def test_429_defers_the_row_by_exactly_its_retry_after(engine: Engine, receiver: FakeWebhook) -> None:
    _queue(engine)
    receiver.fail(429, times=1, retry_after="120")
    n = _notifier(receiver)
    r = deliver_outbox(engine, n, NOW)
    assert r.deferred == 1 and r.dead == 0
    assert list_outbox(engine)[0].next_attempt_at == NOW + 120
    assert deliver_outbox(engine, n, NOW + 119).sent == 0
    assert deliver_outbox(engine, n, NOW + 120).sent == 1 and len(receiver.accepted) == 1


def test_a_4xx_is_dead_at_once_and_an_operator_can_send_it_again(engine: Engine, receiver: FakeWebhook) -> None:
    _queue(engine)
    receiver.fail(422, times=1)
    n = _notifier(receiver)
    assert deliver_outbox(engine, n, NOW).dead == 1
    assert deliver_outbox(engine, n, NOW + 86_400).sent == 0  # dead rows are not retried
    assert retry_dead(engine, NOW + 86_400) == 1
    assert deliver_outbox(engine, n, NOW + 86_400).sent == 1 and len(receiver.accepted) == 1


def test_a_receiver_down_for_good_is_dead_lettered_after_the_attempt_limit(engine: Engine,
                                                                          receiver: FakeWebhook) -> None:
    _queue(engine)
    receiver.fail(500, times=1000)
    n = _notifier(receiver)
    now = NOW
    for _ in range(20):
        deliver_outbox(engine, n, now)
        row = list_outbox(engine)[0]
        if row.status == "dead":
            break
        now = row.next_attempt_at
    assert row.status == "dead" and row.attempts == 10 and len(receiver.requests) == 10
    assert "HTTP 500" in row.last_error


def test_a_lost_answer_is_sent_again_and_the_receiver_keeps_one(engine: Engine, receiver: FakeWebhook) -> None:
    """At least once on the wire, once at a receiver that dedupes by Idempotency-Key (docs/webhook.md)."""
    notice = _queue(engine)
    receiver.drop_after_accept = 1  # accepted, then the connection drops before the answer
    n = _notifier(receiver)
    r1 = deliver_outbox(engine, n, NOW)
    assert r1.failed == 1 and r1.dead == 0
    r2 = deliver_outbox(engine, n, list_outbox(engine)[0].next_attempt_at)
    assert r2.sent == 1
    assert len(receiver.requests) == 2 and receiver.accepted == [payload(notice)]


def test_a_receiver_that_is_not_there_is_retried(engine: Engine) -> None:
    _queue(engine)
    n = WebhookNotifier(WebhookConfig("ops", Secret("http://127.0.0.1:9/none"), Secret(SECRET), timeout=2))
    r = deliver_outbox(engine, n, NOW)
    assert r.failed == 1 and r.dead == 0 and "will retry" in r.errors[0]


def test_redirects_are_not_followed() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler

    from tests.fakes.http import FakeServer

    class Moved(BaseHTTPRequestHandler):
        def log_message(self, *a):  # noqa: ANN002
            return

        def do_POST(self):  # noqa: N802, ANN201
            self.send_response(301)
            self.send_header("Location", "http://example.com/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = FakeServer(("127.0.0.1", 0), Moved)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        n = WebhookNotifier(WebhookConfig("ops", Secret(f"http://127.0.0.1:{server.server_address[1]}/"),
                                          Secret(SECRET)))
        with pytest.raises(Exception) as exc:
            n.deliver(AlertNotice.from_json(OLD_ROW))
        assert exc.value.permanent and "redirects are not followed" in str(exc.value)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_retry_after_as_seconds_or_an_http_date() -> None:
    now = time.time()
    assert retry_after("30", now) == 30 and retry_after("999999", now) == 86_400
    assert 55 <= retry_after(formatdate(now + 60, usegmt=True), now) <= 60  # type: ignore[operator]
    assert retry_after("soon", now) is None and retry_after(None, now) is None


def test_signature_is_hmac_sha256_over_version_timestamp_and_body() -> None:
    import hashlib
    import hmac

    want = hmac.new(SECRET.encode(), b"v1:1700000000:{}", hashlib.sha256).hexdigest()
    assert signature(SECRET, 1_700_000_000, b"{}") == f"v1={want}"


def _problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    doc = document_from_text(text, "usagebot.toml", env=env)
    parse_notifiers(doc.sections("notifiers"))
    return [str(p) for p in doc.problems]


def test_config_problems_name_the_line_and_field() -> None:
    ok = f'[[notifiers]]\ntype = "webhook"\nname = "ops"\nurl = "https://hooks.example.com/x"\nsecret = "{SECRET}"\n'
    assert _problems(ok) == []
    specs = parse_notifiers(document_from_text(ok, "usagebot.toml").sections("notifiers"))
    assert [(s.type, s.name) for s in specs] == [("webhook", "ops")] and specs[0].settings.timeout == 10
    assert _problems(ok + ok) == [
        "usagebot.toml:8: notifiers[1].name: notifier name 'ops' is taken (also at line 3): give each "
        "[[notifiers]] entry its own name"]
    assert _problems('[[notifiers]]\ntype = "webhok"\n') == [
        "usagebot.toml:2: notifiers[0].type: must be one of console, webhook, slack (got 'webhok'); did you mean "
        "'webhook'?"]
    assert _problems('[[notifiers]]\ntype = "webhook"\nurl = "ftp://x"\nsecret = "s"\nsecrets = 1\n') == [
        "usagebot.toml:5: notifiers[0].secrets: unknown key; did you mean 'secret'?",
        "usagebot.toml:3: notifiers[0].url: must start with https:// (or http://)"]
    assert _problems('[[notifiers]]\ntype = "webhook"\nurl = "https://x"\nsecret = "short"\n') == [
        "usagebot.toml:4: notifiers[0].secret: is too short to sign with: use at least 16 characters (e.g. "
        "`openssl rand -hex 32`)"]
    assert _problems('[[notifiers]]\ntype = "webhook"\nurl = "https://x"\nsecret = "${HOOK_SECRET}"\n') == [
        "usagebot.toml:4: notifiers[0].secret: environment variable HOOK_SECRET is not set"]
    assert _problems('[[notifiers]]\ntype = "slack"\n') == [
        "usagebot.toml:2: notifiers[0].type: Slack is set up in the [slack] section (bot_token), not in "
        "[[notifiers]]"]
    assert _problems('[[notifiers]]\ntype = "console"\nname = "Console!"\n')[0].startswith(
        "usagebot.toml:3: notifiers[0].name: must be lower-case letters")
    disabled = '[[notifiers]]\ntype = "webhook"\nenabled = false\nurl = "${NOT_SET}"\nsecret = "${NOT_SET}"\n'
    assert _problems(disabled) == []
    assert parse_notifiers(document_from_text(disabled, "usagebot.toml").sections("notifiers")) == ()


@pytest.mark.parametrize(("status", "dead"), [(200, None), (503, False), (413, True)])
def test_a_receiver_trickling_its_answer_does_not_hold_the_deliver_job(engine: Engine, status: int,
                                                                      dead: bool | None) -> None:
    """The receiver sends its status line, then one byte of a long body at a time (each read within the
    timeout, so httpx never times out): a 2xx is taken at its status line, a refusal's body is read for
    at most `timeout` (before: the delivery lasted as long as the receiver dripped: 8 s with a 1 s
    timeout for 20 bytes). The receiver is still dripping when the row's outcome is stored."""
    _queue(engine)
    head = f"HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n".encode()
    with dripping(head, b"x" * 100, 0.1) as drip:
        n = WebhookNotifier(WebhookConfig("ops", Secret(drip.url), Secret(SECRET), timeout=1))
        r = deliver_outbox(engine, n, NOW)
        still_dripping = drip.sent[0] < 100
    assert still_dripping  # 100 bytes at 0.1 s each: 10 s, against a 1 s timeout
    if dead is None:
        assert r.sent == 1
    else:
        assert r.failed == 1 and r.dead == int(dead) and f"HTTP {status}: x" in r.errors[0]
        assert len(r.errors[0]) < 600


def test_a_receiver_dripping_its_status_line_and_headers_is_cut_off_at_the_timeout(engine: Engine) -> None:
    """httpx's timeouts are per read: a receiver sending its status line and headers one byte every
    0.1 s (each read within the 1 s timeout) held the deliver job until its last header byte (before:
    the delivery lasted as long as the drip). The whole call now ends within `timeout`, and the row
    is kept for a retry (the receiver may have taken it: the idempotency key says it is the same)."""
    _queue(engine)
    head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 100 + b"\r\nContent-Length: 0\r\n\r\n"
    with dripping(b"", head, 0.1) as drip:
        n = WebhookNotifier(WebhookConfig("ops", Secret(drip.url), Secret(SECRET), timeout=1))
        r = deliver_outbox(engine, n, NOW)
        still_dripping = drip.sent[0] < 100
    assert still_dripping  # ~140 bytes at 0.1 s each: 14 s, against a 1 s timeout
    assert r.failed == 1 and r.dead == 0 and "no answer within 1s; will retry" in r.errors[0]


def test_a_refusal_echoing_the_url_token_at_the_cut_shows_none_of_it(engine: Engine) -> None:
    """The refusal's body was cut to 200 characters before it was masked: a token echoed where the
    cut fell showed its first characters (fewer than a fragment's 8, which masking cannot tell from
    ordinary text). Now it is masked first, then cut (redaction.clip)."""
    token = "zq7Tk-Fq2Lm9Xc4Vb"
    _queue(engine)
    body = ("x" * 195 + token + " is not a known token").encode()
    head = f"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with dripping(head + body, b"", 0.1) as drip:
        n = WebhookNotifier(WebhookConfig("ops", Secret(f"{drip.url}?token={token}"), Secret(SECRET), timeout=1))
        r = deliver_outbox(engine, n, NOW)
    (row,) = list_outbox(engine)
    assert r.dead == 1 and "HTTP 400: xxxxx" in r.errors[0]
    for text in (r.errors[0], row.last_error or ""):
        assert token[:4] not in text, text

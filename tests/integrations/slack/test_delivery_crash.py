"""Crash safety and rate limits: an outage, a lost response, a process killed in the middle of a
delivery and 429s neither lose nor duplicate an alert."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from integrations.notifier import MAX_RETRY_AFTER
from integrations.slack.api import SlackApi, make_web_client
from integrations.slack.delivery import Poster
from integrations.slack.errors import RetryLater, SlackDeliveryError, SlackUnavailable
from integrations.slack.render import SlackMessageContent
from storage.db import make_engine
from storage.outbox import DEFAULT_LEASE, counts, list_outbox
from storage.slack import get_step
from tests.integrations.slack.scenario import FIRED, RENOTIFIED, RESOLVED, SPIKE_DAY, Scenario

ROOT = Path(__file__).resolve().parents[3]


def _one_thread_each(fake, replies: int) -> None:
    for ch in (fake.channel("#usage-alerts"), fake.dm_with("U0ALICE01")):
        top = [m for m in ch.messages if m.get("thread_ts") in (None, m["ts"])]
        assert len(top) == 1, f"duplicate parents in {ch.id}: {[m['text'] for m in top]}"
        assert len(ch.messages) == 1 + replies
        assert all(m["thread_ts"] == top[0]["ts"] for m in ch.messages if m is not top[0])


def test_outage_loses_nothing_and_duplicates_nothing(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    fake.outage = True
    first = sc.deliver(n)
    assert first.failed == 1 and "HTTP 503" in first.errors[0]
    for minutes in (1, 5, 30):  # the scheduler keeps trying while Slack is down
        sc.deliver(n, at=clock.now + minutes * 60)
    sc.cycle(RENOTIFIED)
    sc.deliver(n)
    assert all(not ch.messages for ch in fake.channels.values())
    assert counts(engine) == {"failed": 2}
    fake.outage = False
    for _ in range(3):  # the fired row first (the re-notification waits for it), then the rest
        sc.deliver(n, at=max(r.next_attempt_at for r in list_outbox(engine)))
    sc.cycle(RESOLVED)
    sc.deliver(n)
    assert counts(engine) == {"sent": 3}
    _one_thread_each(fake, replies=2)


def test_lost_response_is_found_by_metadata_not_posted_again(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    fake.fail("chat.postMessage", "drop")  # Slack posts the DM, the response never arrives
    r1 = sc.deliver(n)
    assert r1.failed == 1 and "network error" in r1.errors[0]
    dm = fake.dm_with("U0ALICE01")
    assert len(dm.messages) == 1
    step = get_step(engine, "notify:calls-spike:acme:api_calls::fired:1790899200|dm:alice@example.com")
    assert step is not None and step.ts is None  # outcome unknown
    r2 = sc.deliver(n, at=list_outbox(engine)[0].next_attempt_at)
    assert r2.sent == 1
    assert len(fake.calls_of("conversations.history")) == 1
    assert get_step(engine, step.step).ts == dm.messages[0]["ts"]

    sc.cycle(RENOTIFIED)
    fake.fail("chat.postMessage", "drop")  # the thread reply is posted, the response lost
    assert sc.deliver(n).failed == 1
    assert sc.deliver(n, at=list_outbox(engine)[0].next_attempt_at).sent == 1
    assert len(fake.calls_of("conversations.replies")) == 1
    _one_thread_each(fake, replies=1)


def test_process_killed_mid_delivery_loses_and_duplicates_nothing(engine, db_url, fake, config, clock):
    sc = Scenario(engine, clock)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    now = clock.now
    fake.fail("chat.postMessage", "hang")  # Slack posts the DM; the worker is killed before the answer
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lease = 2  # the dead worker's claims (on the database clock) lapse after 2 s
    proc = subprocess.Popen([sys.executable, "-m", "tests.integrations.slack.crash_worker", db_url, fake.api_url,
                             str(now), str(lease)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert fake.processed.wait(30), proc.stderr.read().decode() if proc.poll() is not None else "no post"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.release.set()
    assert proc.returncode == -signal.SIGKILL
    row = list_outbox(engine)[0]
    assert row.status == "pending" and row.attempts == 1  # claimed by the dead worker, never marked
    assert len(fake.dm_with("U0ALICE01").messages) == 1 and fake.channel("#usage-alerts").messages == []

    # Another run after the claim's lease has expired finishes the job.
    n = sc.notifier(config)
    assert sc.deliver(n, at=now + DEFAULT_LEASE + 1).sent == 0  # still leased to the dead worker, whatever our clock
    time.sleep(lease + 1.1)
    report = sc.deliver(n, at=now + 1)
    assert report.sent == 1 and report.failed == 0
    _one_thread_each(fake, replies=0)
    sc.cycle(RENOTIFIED)
    sc.deliver(n)
    _one_thread_each(fake, replies=1)
    assert counts(engine) == {"sent": 2}


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def _first_post_rate_limited(engine, fake, config, clock, retry_after):  # noqa: ANN001, ANN202
    """An alert fired, its first post answered 429 with this Retry-After: (scenario, fake time, notifier)."""
    sc = Scenario(engine, clock)
    ft = FakeTime()
    api = SlackApi(make_web_client(config), min_post_interval=0, max_inline_wait=5, sleep=ft.sleep,
                   monotonic=ft.monotonic)
    n = sc.notifier(config, api=api)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    fake.rate_limit("chat.postMessage", retry_after)
    r = sc.deliver(n)
    assert r.deferred == 1 and r.dead == 0
    return sc, ft, n


def test_429_defers_the_row_by_retry_after_and_stops_calling_slack(engine, fake, config, clock):
    sc, ft, n = _first_post_rate_limited(engine, fake, config, clock, 120)
    row = list_outbox(engine)[0]
    assert row.status == "failed" and row.next_attempt_at == clock.now + 120 and "rate limited" in row.last_error
    sc.deliver(n, at=clock.now + 60)  # not due: nothing is sent
    assert len(fake.calls_of("chat.postMessage")) == 1
    # a short Retry-After is waited out in place (no deferral), and the row goes out
    fake.rate_limit("chat.postMessage", 2)
    ft.t += 120
    r = sc.deliver(n, at=clock.now + 120)
    assert r.sent == 1 and ft.slept == [2.0]
    _one_thread_each(fake, replies=0)


def test_posts_to_one_channel_are_spaced(fake, config):
    ft = FakeTime()
    api = SlackApi(make_web_client(config), min_post_interval=1.0, sleep=ft.sleep, monotonic=ft.monotonic)
    for i in range(3):
        api.post_message("#usage-alerts", f"m{i}")
    api.post_message("#usage-critical", "other channel: no wait")
    assert ft.slept == [1.0, 1.0]
    assert [m["text"] for m in fake.channel("#usage-alerts").messages] == ["m0", "m1", "m2"]


def test_posts_are_spaced_in_real_time(fake, config):
    api = SlackApi(make_web_client(config), min_post_interval=0.15)
    for i in range(3):
        api.post_message("#usage-alerts", f"m{i}")
    at = [c.at for c in fake.calls_of("chat.postMessage")]
    assert at[1] - at[0] >= 0.14 and at[2] - at[1] >= 0.14


def test_steps_table_has_no_pending_rows_after_success(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    for d in (SPIKE_DAY, FIRED, RENOTIFIED, RESOLVED):
        sc.cycle(d)
        sc.deliver(n)
    with engine.connect() as c:
        rows = c.execute(sa.text("select step, ts from slack_delivery_steps order by step")).all()
    posts = [r for r in rows if not r.step.endswith("|chart")]  # the charts uploaded into the 2 threads
    assert len(posts) == 6 and len(rows) == 8 and all(r.ts for r in rows)


def test_two_deliverers_never_post_one_step_at_once(engine, db_url, fake, config, clock):
    """A second poster (e.g. `slack deliver` while the service sends the same digest) waits for the
    step's holder instead of racing it: one message."""
    fake.fail("chat.postMessage", "delay", 1.0)  # the first post takes a second to reach Slack
    content = SlackMessageContent("digest for alice", [])
    outcome: dict[str, object] = {}

    def post(name: str) -> None:
        eng = make_engine(db_url)
        try:
            poster = Poster(SlackApi(make_web_client(config), min_post_interval=0), eng, clock)
            outcome[name] = poster.post_once("digest:alice:2026-09-01|dm", "#usage-alerts", None, content)
        except RetryLater as exc:
            outcome[name] = exc
        finally:
            eng.dispose()

    first = threading.Thread(target=post, args=("first",))
    first.start()
    time.sleep(0.3)
    post("second")
    first.join(10)
    assert isinstance(outcome["second"], RetryLater) and "another deliverer" in str(outcome["second"])
    assert len(fake.channel("#usage-alerts").messages) == 1
    # once the first is done, the step is finished: a retry returns the same message, posts nothing
    post("again")
    assert outcome["again"] == outcome["first"] and len(fake.channel("#usage-alerts").messages) == 1


@pytest.mark.parametrize("fault", [("truncate",), ("html",), ("error_after", "fatal_error"),
                                   ("error_after", "internal_error")])
def test_an_answer_garbled_after_slack_posted_is_looked_up_not_posted_again(engine, fake, config, clock, fault):
    """Slack posts, then the answer is cut off mid-body, is an HTML page, or says fatal_error: the
    outcome is unknown, so the next try finds the message by its metadata (before: a cut-off body
    or an HTML page forgot the step and the retry posted a second message)."""
    poster = Poster(SlackApi(make_web_client(config), min_post_interval=0), engine, clock)
    content = SlackMessageContent("alert for acme", [])
    fake.fail("chat.postMessage", *fault)
    with pytest.raises(SlackUnavailable) as err:
        poster.post_once("notify:x|channel:#usage-alerts", "C0ALERTS1", None, content)
    assert "will retry" in str(err.value) and "Traceback" not in str(err.value)
    assert get_step(engine, "notify:x|channel:#usage-alerts").ts is None  # kept: outcome unknown
    clock.now += 60
    cid, ts = poster.post_once("notify:x|channel:#usage-alerts", "C0ALERTS1", None, content)
    messages = fake.channel("#usage-alerts").messages
    assert [m["ts"] for m in messages] == [ts] and cid == "C0ALERTS1"
    assert len(fake.calls_of("chat.postMessage")) == 1 and len(fake.calls_of("conversations.history")) == 1


@pytest.mark.parametrize(("header", "deferred"), [("1000000000", MAX_RETRY_AFTER), ("inf", 30), ("soon", 30),
                                                  ("9" * 5000, MAX_RETRY_AFTER), ("-5", 30)])
def test_a_huge_or_unreadable_retry_after_defers_the_row_a_bounded_time(engine, fake, config, clock, header,
                                                                          deferred):
    """A 429 whose Retry-After is years, infinite, thousands of digits or not a number: the row is
    deferred at most a day (before: 1e9 s deferred it 31 years, "inf" raised OverflowError), then sent."""
    sc, ft, n = _first_post_rate_limited(engine, fake, config, clock, header)
    row = list_outbox(engine)[0]
    assert row.next_attempt_at == clock.now + deferred and "rate limited" in row.last_error
    ft.t += deferred
    assert sc.deliver(n, at=row.next_attempt_at).sent == 1
    _one_thread_each(fake, replies=0)


def test_a_kill_between_the_reopened_dm_post_and_its_record_posts_once(engine, fake, config, clock, monkeypatch):
    """A DM post whose response was lost, then its DM id went stale in Slack, then the retry to the
    reopened DM is killed right after Slack posted: the claim names the new DM, so the next try finds
    the message there and does not post it again (the stale channel counts as 'not posted there')."""
    import integrations.slack.delivery as delivery_mod

    sc = Scenario(engine, clock)
    n = sc.notifier(config, lease=1)  # the dead run's claim (database clock) lapses after 1 s
    email, step = "alice@example.com", "stale-dm|dm:alice@example.com"
    content = SlackMessageContent("alert for acme", [])
    old = n.directory.dm_channel(email)
    fake.fail("chat.postMessage", "drop")
    with pytest.raises(SlackUnavailable):
        n.post_to_owner(email, step, old, content)
    fake.forget_dm("U0ALICE01")
    real = delivery_mod.store.finish_step

    def killed(*a, **k):  # the process dies right after Slack posted to the new DM
        raise SystemExit("killed")

    monkeypatch.setattr(delivery_mod.store, "finish_step", killed)
    with pytest.raises(SystemExit):
        n.post_to_owner(email, step, old, content)
    monkeypatch.setattr(delivery_mod.store, "finish_step", real)
    new = fake.dm_with("U0ALICE01")
    assert new is not None and new.id != old and len(new.messages) == 1
    time.sleep(2.1)
    cid, ts = n.post_to_owner(email, step, n.directory.dm_channel(email), content)
    assert (cid, ts) == (new.id, new.messages[0]["ts"]) and len(new.messages) == 1
    assert get_step(engine, step).done


@pytest.mark.parametrize("status", [403, 407])
def test_a_proxys_non_json_4xx_is_a_plain_retryable_error_and_the_post_is_not_looked_up(engine, fake, config, clock,
                                                                                         status):
    """A corporate proxy answers 403/407 with an HTML page: Slack never saw the post, so the error is a
    plain retryable SlackDeliveryError naming the status and the page (not unknown-outcome, not dead,
    not halting the run), and the next try posts without a history lookup (before: SlackUnavailable,
    and every retry searched the channel first)."""
    poster = Poster(SlackApi(make_web_client(config), min_post_interval=0), engine, clock)
    content = SlackMessageContent("alert for acme", [])
    fake.fail("chat.postMessage", "status", status)
    with pytest.raises(SlackDeliveryError) as err:
        poster.post_once("notify:y|channel:#usage-alerts", "C0ALERTS1", None, content)
    exc = err.value
    assert not isinstance(exc, SlackUnavailable) and not exc.permanent and not exc.halts
    assert f"HTTP {status}" in str(exc) and "upstream error" in str(exc) and "will retry" in str(exc)
    assert get_step(engine, "notify:y|channel:#usage-alerts") is None  # forgotten: Slack did not post
    clock.now += 60
    poster.post_once("notify:y|channel:#usage-alerts", "C0ALERTS1", None, content)
    assert len(fake.channel("#usage-alerts").messages) == 1
    assert len(fake.calls_of("chat.postMessage")) == 2 and not fake.calls_of("conversations.history")

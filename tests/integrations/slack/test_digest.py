"""Owner digests: DMs held back and sent once a day; channels still get every alert; critical
alerts still DM at once; a lost response does not send a digest twice."""

from __future__ import annotations

from dataclasses import replace

from integrations.slack.config import DigestConfig
from integrations.slack.digest import digest_time, send_due_digests
from rules.model import DAY
from storage.slack import digest_owners
from tests.integrations.slack.scenario import (
    FIRED,
    RENOTIFIED,
    SPIKE_DAY,
    SPIKE_RULE,
    T0,
    Scenario,
    assert_valid_message,
    usage_records,
)

NINE = 9 * 3600


def _cfg(config, **kw):
    return replace(config, digest=DigestConfig(enabled=True, hour=9, minute=0, timezone="UTC", **kw))


def test_owner_dms_go_to_a_daily_digest(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(_cfg(config))
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    assert sc.deliver(n).sent == 1
    assert len(fake.channel("#usage-alerts").messages) == 1  # the channel gets it at once
    assert fake.dm_with("U0ALICE01") is None
    assert send_due_digests(n, clock.now).sent == 0  # 00:00: not time yet
    report = send_due_digests(n, clock.set_day(FIRED, NINE))
    assert (report.sent, report.items) == (1, 1)
    dm = fake.dm_with("U0ALICE01").messages
    assert len(dm) == 1 and "1 alert(s)" in dm[0]["text"] and "Acme Corp" in str(dm[0]["blocks"])
    assert_valid_message(dm[0])
    assert send_due_digests(n, clock.now + 3600).sent == 0  # once a day
    assert digest_owners(engine) == []

    sc.cycle(RENOTIFIED)
    sc.deliver(n)
    assert send_due_digests(n, clock.set_day(RENOTIFIED, NINE - 60)).sent == 0
    assert send_due_digests(n, clock.set_day(RENOTIFIED, NINE)).sent == 1
    assert len(fake.dm_with("U0ALICE01").messages) == 2


def test_critical_alerts_still_dm_at_once(engine, fake, config, clock):
    sc = Scenario(engine, clock, rules=SPIKE_RULE.replace('severity = "warning"', 'severity = "critical"'))
    n = sc.notifier(_cfg(config))
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(n)
    assert len(fake.dm_with("U0ALICE01").messages) == 1 and digest_owners(engine) == []


def test_lost_digest_response_is_not_sent_twice(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(_cfg(config))
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(n)
    fake.fail("chat.postMessage", "drop")
    r1 = send_due_digests(n, clock.set_day(FIRED, NINE))
    assert r1.sent == 0 and "network error" in r1.errors[0]
    assert digest_owners(engine) == ["alice@example.com"]
    r2 = send_due_digests(n, clock.now + 60)
    assert r2.sent == 1
    assert len(fake.dm_with("U0ALICE01").messages) == 1 and digest_owners(engine) == []


def test_digest_time_in_the_owner_timezone():
    at, day = digest_time(1_790_899_200, 9, 30, "America/New_York")  # 2026-10-02T00:00Z = Oct 1, 20:00 EDT
    assert (at, day) == (1_790_861_400, "2026-10-01")  # 09:30 EDT = 13:30 UTC on the local day


def test_an_item_queued_after_a_digest_was_posted_is_not_lost(engine, fake, config, clock, monkeypatch):
    """A crash after the digest was posted but before its items were marked sent: the retry must not
    take newer items into the already-posted digest (they would be marked sent, never shown)."""
    import integrations.slack.digest as digest_mod

    sc = Scenario(engine, clock)
    n = sc.notifier(_cfg(config))
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(n)  # the fired alert waits for alice's digest
    real = digest_mod.store.mark_digest_sent

    def crash(*a, **k):  # the process dies right after the post
        raise SystemExit("killed")

    monkeypatch.setattr(digest_mod.store, "mark_digest_sent", crash)
    try:
        send_due_digests(n, clock.set_day(FIRED, NINE))
    except SystemExit:
        pass
    monkeypatch.setattr(digest_mod.store, "mark_digest_sent", real)
    assert len(fake.dm_with("U0ALICE01").messages) == 1
    sc.cycle(RENOTIFIED)
    sc.deliver(n)  # a new item for alice
    report = send_due_digests(n, clock.now + 60)  # the retry: the posted digest is recognised, once
    assert report.sent == 1 and report.items == 1 and len(fake.dm_with("U0ALICE01").messages) == 1
    assert digest_owners(engine) == ["alice@example.com"]  # the new item still waits for a digest
    report = send_due_digests(n, clock.set_day(RENOTIFIED, NINE))
    assert (report.sent, report.items) == (1, 1) and len(fake.dm_with("U0ALICE01").messages) == 2


def _first_digest_refused(engine, fake, config, clock, error: str, count: int):  # type: ignore[no-untyped-def]
    """alice's alert fired and delivered, then her morning digest run with conversations.open answering
    `error` (`count` times): (the notifier, the digest time, that run's report)."""
    sc = Scenario(engine, clock)
    n = sc.notifier(_cfg(config))
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(n)
    fake.fail("conversations.open", "error", error, count=count)
    t = clock.set_day(FIRED, NINE)
    return n, t, send_due_digests(n, t)


def test_a_digest_to_an_owner_who_left_slack_is_given_up_once_not_retried_forever(engine, fake, config, clock,
                                                                                   caplog):
    """The owner is deactivated between the alert and the digest (conversations.open answers
    user_disabled): the digest is given up with an error naming it and the owner, the owner is taken as
    not on Slack, and the digest job stops calling Slack for it (before: 7200 calls in 5 days, the
    digest open for ever)."""
    n, t, first = _first_digest_refused(engine, fake, config, clock, "user_disabled", 10_000)
    assert (first.sent, first.given_up) == (0, 1) and "user_disabled" in first.errors[0]
    for minute in range(1, 3 * 24 * 60, 7):  # the digest job over three days
        assert send_due_digests(n, t + 60 * minute).errors == []
    assert len(fake.calls_of("conversations.open")) == 1 and digest_owners(engine) == []
    gone = [r for r in caplog.records if r.levelname == "ERROR" and "given up" in r.getMessage()]
    assert len(gone) == 1 and "alice@example.com" in gone[0].getMessage()
    assert "digest:alice@example.com:" in gone[0].getMessage() and config.bot_token.reveal() not in caplog.text
    assert n.directory.user_id("alice@example.com") is None  # her next alerts go to the routed channels


def test_a_digest_refused_for_the_apps_set_up_is_kept_for_the_next_run_not_dropped(engine, fake, config, clock,
                                                                                     caplog):
    """A reviewer's find: every permanent Slack error gave the digest up, so one missing scope dropped
    every owner's digest in one run. An error about the app's set-up keeps the digest (logged as an
    error naming the digest); once the admin fixes it, the next run sends it, once."""
    n, t, first = _first_digest_refused(engine, fake, config, clock, "missing_scope", 1)
    assert (first.sent, first.given_up) == (0, 0) and "missing_scope" in first.errors[0]
    assert digest_owners(engine) == ["alice@example.com"]  # still waiting, nothing dropped
    refused = [r for r in caplog.records if r.levelname == "ERROR" and "tried again" in r.getMessage()]
    assert len(refused) == 1 and "alice@example.com" in refused[0].getMessage()
    again = send_due_digests(n, t + 60)
    assert (again.sent, again.errors) == (1, []) and len(fake.dm_with("U0ALICE01").messages) == 1
    assert n.directory.user_id("alice@example.com") is not None  # she is still on Slack


def test_a_digest_to_an_owner_whose_stored_dm_id_went_stale_goes_to_the_reopened_dm(engine, fake, config, clock):
    """The stored DM channel id of alice is gone in Slack (channel_not_found: the app was reinstalled):
    the DM is reopened once and the digest posted there; alice is not taken as gone (before: her
    digests stopped and her alerts went to channels only)."""
    sc = Scenario(engine, clock)
    n = sc.notifier(_cfg(config))
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(n)
    old = n.directory.dm_channel("alice@example.com")
    assert fake.forget_dm("U0ALICE01") == old
    report = send_due_digests(n, clock.set_day(FIRED, NINE))
    assert (report.sent, report.given_up, report.errors) == (1, 0, [])
    new = fake.dm_with("U0ALICE01")
    assert new is not None and new.id != old and len(new.messages) == 1
    assert len(fake.calls_of("conversations.open")) == 2
    assert n.directory.user_id("alice@example.com") == "U0ALICE01"
    assert n.directory.dm_channel("alice@example.com") == new.id  # the new id is the stored one


def test_a_digest_whose_fresh_dm_is_not_found_is_a_plain_failure_the_owner_not_gone(engine, fake, config, clock,
                                                                                    caplog):
    """channel_not_found for a DM opened just now is about that channel, not the person: the digest
    is given up (named in the log) but alice stays on Slack."""
    sc = Scenario(engine, clock)
    n = sc.notifier(_cfg(config))
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(n)
    fake.fail("chat.postMessage", "error", "channel_not_found", count=2)
    report = send_due_digests(n, clock.set_day(FIRED, NINE))
    assert (report.sent, report.given_up) == (0, 1) and "channel_not_found" in report.errors[0]
    assert len(fake.calls_of("chat.postMessage")) == 2  # the DM reopened and tried once more, no more
    assert any("even looked up anew" in r.getMessage() and "alice@example.com" in r.getMessage()
               for r in caplog.records)
    assert n.directory.user_id("alice@example.com") == "U0ALICE01"


def test_a_rejected_token_ends_the_digest_run_after_one_call_and_keeps_every_digest(engine, fake, config, clock):
    """Every account spikes: digests for 2 owners. Slack rejects the token at the first: no call for the
    second (before: one refused call per owner), and both digests are sent at the next run."""
    records = [replace(r, value=600.0) if r.ts >= T0 + SPIKE_DAY * DAY else r
               for r in usage_records(days=SPIKE_DAY + 2)]
    sc = Scenario(engine, clock, records=records)
    n = sc.notifier(_cfg(config))
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(n)
    owners = digest_owners(engine)
    assert len(owners) >= 2
    before = len(fake.calls)
    for method in ("chat.postMessage", "conversations.open", "users.lookupByEmail", "users.info"):
        fake.fail(method, "error", "token_revoked", count=100)
    report = send_due_digests(n, clock.set_day(FIRED, NINE))
    assert report.sent == 0 and len(report.errors) == 1 and "token_revoked" in report.errors[0]
    assert len(fake.calls) - before == 1
    assert digest_owners(engine) == owners  # nothing dropped
    fake.faults.clear()
    assert send_due_digests(n, clock.now + 60).sent == len(owners)

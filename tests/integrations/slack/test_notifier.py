"""Alerts through the outbox to a fake Slack: one thread per episode, follow-ups in the thread,
the parent updated to show the state, routing and its failure modes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import sqlalchemy as sa

from integrations.slack.notifier import SlackNotifier
from rules.model import DAY
from storage.episodes import find_episode
from storage.outbox import counts, list_outbox, retry_dead
from storage.slack import episode_messages, snooze_account
from tests.integrations.slack.scenario import (
    FIRED,
    RENOTIFIED,
    RESOLVED,
    SPIKE_DAY,
    SPIKE_RULE,
    T0,
    TOKEN,
    Scenario,
    assert_valid_message,
    usage_records,
)


def _run(sc: Scenario, notifier: SlackNotifier, days: range | tuple[int, ...]) -> None:
    for d in days:
        sc.cycle(d)
        report = sc.deliver(notifier)
        assert report.failed == 0, report.errors


def test_one_thread_per_episode_with_followups_and_parent_updates(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    _run(sc, n, (SPIKE_DAY, FIRED))

    channel = fake.channel("#usage-alerts")
    dm = fake.dm_with("U0ALICE01")
    assert dm is not None, "the owner gets a DM"
    for ch in (channel, dm):
        assert len(ch.messages) == 1
        parent = ch.messages[0]
        assert_valid_message(parent)
        assert "Acme Corp" in parent["text"] and parent["metadata"]["event_type"] == "usagebot_delivery"
        flat = str(parent["blocks"])
        assert "<@U0ALICE01>" in flat  # owner resolved to a Slack mention
        assert "usagebot_ack" in flat and "usagebot_snooze" in flat and "usagebot_not_useful" in flat
        assert "https://crm.example.com/r/Account/001ACME/view" in flat
        assert "https://app.example.com/accounts/acme?metric=api_calls" in flat
        assert "Firing since" in flat
    ep = find_episode(engine, ("calls-spike", "acme", "api_calls", ""))
    assert ep is not None and ep["slack_ts"] in {channel.messages[0]["ts"], dm.messages[0]["ts"]}
    assert {m.destination for m in episode_messages(engine, ep["id"])} == {"dm:alice@example.com",
                                                                           "channel:#usage-alerts"}

    _run(sc, n, (RENOTIFIED, RESOLVED))
    for ch in (channel, dm):
        top = [m for m in ch.messages if m.get("thread_ts") in (None, m["ts"])]
        assert len(top) == 1, "follow-ups never start a new thread"
        parent = top[0]
        replies = [m for m in ch.messages if m is not parent]
        assert [r["thread_ts"] for r in replies] == [parent["ts"]] * 2
        assert replies[0]["text"].startswith("🔁 Still firing") and replies[1]["text"].startswith("✅ Resolved")
        for r in replies:
            assert_valid_message(r)
        assert parent["edits"] == 2  # chat.update after the re-notification and after the resolution
        flat = str(parent["blocks"])
        assert "Resolved" in flat and "usagebot_ack" not in flat  # no Acknowledge on a resolved alert
        assert_valid_message(parent)
    assert counts(engine) == {"sent": 3}


def test_owner_not_on_slack_gets_channel_only_and_no_route_is_dead(engine, fake, config, clock):
    rules = SPIKE_RULE.replace('channels = ["#usage-alerts"]', "channels = []")
    records = [r if r.account != "initech" or r.ts < T0 + SPIKE_DAY * 86_400 or r.ts >= T0 + (SPIKE_DAY + 2) * 86_400
               else replace(r, value=700.0) for r in _records()]
    sc = Scenario(engine, clock, rules=rules, records=records)
    # no default channel: initech's owner is not on Slack, so its alert has nowhere to go
    n = sc.notifier(replace(config, default_channel=None))
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    report = sc.deliver(n)
    assert report.sent == 1 and report.dead == 1  # acme -> alice's DM; initech -> nowhere
    dead = list_outbox(engine, status="dead")[0]
    assert "initech" in dead.idempotency_key and "peter@initech.example is not on Slack" in dead.last_error
    assert "default_channel" in dead.last_error

    # with a default channel configured, the same alert is posted there
    retry_dead(engine, clock.now)
    report = sc.deliver(sc.notifier(config))
    assert report.sent == 1
    posted = fake.channel("#usage-alerts").messages
    assert len(posted) == 1 and "Initech" in posted[0]["text"]


def _records():
    from tests.integrations.slack.scenario import usage_records

    return usage_records()


def test_unknown_channel_is_dead_naming_it_and_others_still_get_the_alert(engine, fake, config, clock):
    rules = SPIKE_RULE.replace('channels = ["#usage-alerts"]', 'channels = ["#usage-alerts", "#cs-team"]')
    sc = Scenario(engine, clock, rules=rules)
    n = sc.notifier(config)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    report = sc.deliver(n)
    assert report.dead == 1
    err = list_outbox(engine, status="dead")[0].last_error
    assert "#cs-team not found" in err and "/invite" in err
    assert len(fake.channel("#usage-alerts").messages) == 1 and len(fake.dm_with("U0ALICE01").messages) == 1

    # the admin creates the channel and retries: only the missing destination is posted
    fake.add_channel("cs-team", "C0CSTEAM1")
    retry_dead(engine, clock.now)
    n2 = sc.notifier(config)  # a fresh process: channel list not cached
    assert sc.deliver(n2).sent == 1
    assert len(fake.channel("#usage-alerts").messages) == 1 and len(fake.dm_with("U0ALICE01").messages) == 1
    assert len(fake.channel("#cs-team").messages) == 1


def test_followup_waits_for_the_first_message_of_its_episode(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    for d in (SPIKE_DAY, FIRED, RENOTIFIED):  # the service was down for a day: both rows queued
        sc.cycle(d)
    fake.fail("users.lookupByEmail", "status", 503)  # the first row fails ...
    report = sc.deliver(n)
    # ... so the re-notification must not start the thread: it waits for the fired row
    assert report.failed == 2 and report.deferred == 1 and report.sent == 0
    assert fake.channel("#usage-alerts").messages == []
    rows = {r.idempotency_key.split(":")[-2]: r for r in list_outbox(engine)}
    assert "waiting for the episode's first message" in rows["renotified"].last_error
    assert rows["renotified"].next_attempt_at > rows["fired"].next_attempt_at
    assert sc.deliver(n, at=rows["fired"].next_attempt_at).sent == 1
    assert sc.deliver(n, at=rows["renotified"].next_attempt_at).sent == 1
    msgs = fake.channel("#usage-alerts").messages
    assert len(msgs) == 2 and msgs[1]["thread_ts"] == msgs[0]["ts"]


def test_snoozed_account_gets_no_new_alerts(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    snooze_account(engine, "acme", T0 + 40 * 86_400, "U0BOBBY01", T0)
    _run(sc, n, (SPIKE_DAY, FIRED, RENOTIFIED))
    assert fake.channel("#usage-alerts").messages == [] and fake.dm_with("U0ALICE01") is None
    # The lifecycle already knows the account is snoozed: nothing is queued, and the audit trail
    # records the firing as not notified and why.
    assert counts(engine) == {}
    with engine.connect() as c:
        fired = c.execute(sa.text("SELECT notify, reason FROM alert_events WHERE event = 'fired'")).all()
    assert fired and all((bool(n), r) == (False, "account snoozed") for n, r in fired)


def test_rejected_blocks_fall_back_to_text(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    fake.reject_blocks = 2
    assert sc.deliver(n).sent == 1
    for ch in (fake.channel("#usage-alerts"), fake.dm_with("U0ALICE01")):
        assert len(ch.messages) == 1
        assert ch.messages[0]["blocks"] == [] and "Acme Corp" in ch.messages[0]["text"]


def test_deleted_thread_parent_gets_a_new_parent(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(replace(config, owner_dm=False))
    _run(sc, n, (SPIKE_DAY, FIRED))
    ch = fake.channel("#usage-alerts")
    ch.messages.clear()  # someone deleted the alert in Slack
    _run(sc, n, (RENOTIFIED,))
    assert len(ch.messages) == 1 and "thread_ts" not in ch.messages[0]
    ep = find_episode(engine, ("calls-spike", "acme", "api_calls", ""))
    assert [m.ts for m in episode_messages(engine, ep["id"])] == [ch.messages[0]["ts"]]
    _run(sc, n, (RESOLVED,))
    assert ch.messages[1]["thread_ts"] == ch.messages[0]["ts"]


def test_severity_channel_and_no_owner_dm(engine, fake, config, clock):
    rules = SPIKE_RULE.replace('severity = "warning"', 'severity = "critical"').replace(
        'channels = ["#usage-alerts"]', "channels = []")
    sc = Scenario(engine, clock, rules=rules)
    cfg = replace(config, severity_channels={"critical": "#usage-critical"}, owner_dm=False)
    _run(sc, sc.notifier(cfg), (SPIKE_DAY, FIRED))
    assert len(fake.channel("#usage-critical").messages) == 1
    assert fake.channel("#usage-alerts").messages == []  # a routed channel replaces the default
    assert fake.dm_with("U0ALICE01") is None


def test_owner_lookup_is_cached_across_deliveries(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    n = sc.notifier(replace(config, user_cache_ttl=7 * 86_400))
    _run(sc, n, (SPIKE_DAY, FIRED, RENOTIFIED, RESOLVED))
    assert len(fake.calls_of("users.lookupByEmail")) == 1
    assert len(fake.calls_of("conversations.open")) == 1
    with engine.connect() as c:
        row = c.execute(sa.text("select user_id, dm_channel from slack_users where email = 'alice@example.com'")).one()
    assert row.user_id == "U0ALICE01" and row.dm_channel.startswith("D")


QUOTA_RULE = """
[[rule]]
id = "calls-quota"
kind = "quota"
metric = "api_calls"
bucket = "1d"
[rule.threshold]
fractions = [0.25]
[rule.routing]
channels = ["#usage-alerts"]
"""


def test_a_billing_period_that_ends_only_updates_the_parent(engine, fake, config, clock):
    """A quota level crossed in September closes quietly when October begins: the parent message shows
    it resolved, nobody gets a reply or a ping (issue 11: resolutions are news only when they are)."""
    sc = Scenario(engine, clock, rules=QUOTA_RULE)
    n = sc.notifier(config)
    _run(sc, n, range(20, 33))  # 25% of acme's 10,000 calls is reached in the last days of September
    channel = fake.channel("#usage-alerts")
    assert len(channel.messages) == 1 and channel.messages[0].get("thread_ts") in (None, channel.messages[0]["ts"])
    parent = channel.messages[0]
    assert "25% of the monthly quota" in parent["text"] or "reached" in parent["text"]
    assert parent["edits"] == 1 and "Resolved" in str(parent["blocks"])  # updated once, at the period's end
    assert "usagebot_snooze" not in str(parent["blocks"])
    ep = find_episode(engine, ("calls-quota", "acme", "api_calls", "2026-09-01:0.25"))
    assert ep is not None and ep["status"] == "resolved"


def test_admin_notices_reach_the_admin_channel_once(engine, fake, config, clock):
    """The first-run summary (and every admin notice: stale sources, cohort events...) is one post in the
    admin channel; nobody's DM gets the conditions that were already true. (Before, the notifier dropped
    every admin notice with a warning: only the console ever showed them.)"""
    from bot.service.freshness import Watch, check_freshness
    from bot.service.notices import Notices
    from bot.service.pipeline import run_cycle
    from storage.sources import register_source

    fake.add_channel("usagebot-admin", "C0ADMIN01")
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    clock.set_day(FIRED)
    run_cycle(engine, sc.ruleset, T0 + FIRED * DAY, notices=Notices(("slack",), "#usagebot-admin", "digest"))
    register_source(engine, "drops", "csv", T0)
    check_freshness(engine, [Watch("drops", DAY)], T0 + FIRED * DAY, "#usagebot-admin", notifiers=("slack",))
    for _ in range(2):  # delivering again posts nothing twice
        report = sc.deliver(n)
        assert report.failed == 0, report.errors
    admin = fake.channel("#usagebot-admin")
    assert [m["text"].split(":")[0] for m in admin.messages] == ["🗂️ first evaluation", "🟠 source drops"]
    for m in admin.messages:
        assert_valid_message(m)
    assert fake.dm_with("U0ALICE01") is None or not fake.dm_with("U0ALICE01").messages
    assert not fake.channel("#usage-alerts").messages



@pytest.mark.parametrize("code", ["invalid_auth", "account_inactive", "token_revoked"])
def test_rejected_token_is_dead_at_once_with_the_fix_and_retry_delivers(engine, fake, config, clock, code):
    # a token Slack refuses: the row is dead after ONE call (before: retried with backoff up to the limit)
    sc = Scenario(engine, clock)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    fake.fail("chat.postMessage", "error", code, count=100)
    report = sc.deliver(sc.notifier(config))
    assert report.dead == 1 and report.sent == 0, report.errors
    assert len(fake.calls_of("chat.postMessage")) == 1  # no fallback, no second destination tried
    dead = list_outbox(engine, status="dead")[0]
    assert code in dead.last_error and "slack.bot_token" in dead.last_error
    assert "usagebot outbox retry" in dead.last_error and TOKEN not in dead.last_error
    # the admin fixes the token and queues the row again: delivered, nothing lost
    fake.faults.clear()
    assert retry_dead(engine, clock.now) == 1
    assert sc.deliver(sc.notifier(config)).sent == 1
    assert counts(engine) == {"sent": 1}


def _every_account_alerting(engine, clock) -> tuple[Scenario, int]:
    """Every account spikes: one alert row queued per account (the scenario, the rows queued)."""
    records = [replace(r, value=600.0) if r.ts >= T0 + SPIKE_DAY * DAY else r
               for r in usage_records(days=SPIKE_DAY + 2)]
    sc = Scenario(engine, clock, records=records)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    return sc, len(list_outbox(engine, status="pending"))


def test_a_rejected_token_costs_one_call_not_one_per_queued_alert(engine, fake, config, clock):
    # every account spikes: 4 alerts queued. The first post's invalid_auth ends the run's Slack calls:
    # the other rows are dead with the same error and fix without a call each (before: 4 calls)
    sc, queued = _every_account_alerting(engine, clock)
    assert queued >= 3
    fake.fail("chat.postMessage", "error", "token_revoked", count=100)
    report = sc.deliver(sc.notifier(config))
    assert len(fake.calls_of("chat.postMessage")) == 1
    assert (report.dead, report.halted, report.sent) == (queued, queued - 1, 0)
    assert "not tried" in report.not_sent() and len(report.errors) == 1
    for row in list_outbox(engine, status="dead"):
        assert "token_revoked" in row.last_error and "slack.bot_token" in row.last_error
        assert TOKEN not in row.last_error
    fake.faults.clear()  # the admin fixes the token: every row queued again and delivered
    assert retry_dead(engine, clock.now) == queued
    assert sc.deliver(sc.notifier(config)).sent == queued


def test_no_permission_in_one_conversation_does_not_stop_the_other_alerts(engine, fake, config, clock):
    # a reviewer's find: no_permission was taken as a rejected token, so since the run stops at a rejected
    # token, one conversation the app may not post in marked every queued alert dead without a call
    sc, queued = _every_account_alerting(engine, clock)
    fake.fail("chat.postMessage", "error", "no_permission", count=1)
    report = sc.deliver(sc.notifier(config))
    assert (report.halted, report.dead, report.sent) == (0, 1, queued - 1), report.errors
    [dead] = list_outbox(engine, status="dead")
    assert "no_permission" in dead.last_error and "may not post in this conversation" in dead.last_error
    assert "bot token was rejected" not in dead.last_error


def test_missing_scope_is_dead_at_once_naming_the_scope(engine, fake, config, clock):
    sc = Scenario(engine, clock)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    fake.fail("chat.postMessage", "error", "missing_scope", count=100)
    report = sc.deliver(sc.notifier(config))
    assert report.dead == 1 and report.sent == 0
    assert len(fake.calls_of("chat.postMessage")) == 2  # each destination (the DM, the channel) once
    err = list_outbox(engine, status="dead")[0].last_error
    assert "missing_scope" in err and "reinstall" in err and "usagebot outbox retry" in err


def test_an_alert_dm_whose_stored_dm_id_went_stale_goes_to_the_reopened_dm_not_a_channel(engine, fake, config,
                                                                                         clock):
    """alice's stored DM channel id is gone in Slack (channel_not_found): the DM is reopened once and
    the alert posted there, in no channel (before: the row was dead, "no Slack destination")."""
    rules = SPIKE_RULE.replace('channels = ["#usage-alerts"]', "channels = []")
    sc = Scenario(engine, clock, rules=rules)
    n = sc.notifier(replace(config, default_channel=None))
    old = n.directory.dm_channel("alice@example.com")
    assert fake.forget_dm("U0ALICE01") == old
    _run(sc, n, (SPIKE_DAY, FIRED))
    new = fake.dm_with("U0ALICE01")
    assert new is not None and new.id != old and len(new.messages) == 1
    assert all(not ch.messages for ch in fake.channels.values() if not ch.is_im)
    assert counts(engine) == {"sent": 1}
    fake.forget_dm("U0ALICE01")  # gone again before the follow-up: a new parent in the new DM, no channel
    _run(sc, n, (RENOTIFIED,))
    newer = fake.dm_with("U0ALICE01")
    assert newer is not None and len(newer.messages) == 1 and "thread_ts" not in newer.messages[0]
    assert all(not ch.messages for ch in fake.channels.values() if not ch.is_im)


def test_a_parent_update_in_a_dm_slack_no_longer_finds_forgets_the_stored_dm(engine, fake, config, clock):
    """alice's DM channel is gone (channel_not_found) when her alert's parent message is refreshed (a
    button click, a follow-up): the update is skipped, the channel's copy still updated, and the stale
    stored DM id forgotten, so her next DM opens the channel anew instead of posting to the dead id."""
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    _run(sc, n, (SPIKE_DAY, FIRED))
    ep = find_episode(engine, ("calls-spike", "acme", "api_calls", ""))
    old = fake.dm_with("U0ALICE01").id
    assert fake.forget_dm("U0ALICE01") == old
    assert n.refresh_episode(int(ep["id"])) == 1  # the channel's message; the DM's is gone
    updates = [c.params.get("channel") for c in fake.calls_of("chat.update")]
    assert old in updates and fake.channel("#usage-alerts").id in updates
    opened = len(fake.calls_of("conversations.open"))
    new = n.directory.dm_channel("alice@example.com")
    assert new is not None and new != old and new == fake.dm_with("U0ALICE01").id
    assert len(fake.calls_of("conversations.open")) == opened + 1


def test_a_parent_update_in_a_missing_channel_leaves_the_stored_dm_alone(engine, fake, config, clock):
    """channel_not_found for a channel's copy says nothing about the owner's DM: it is kept."""
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    _run(sc, n, (SPIKE_DAY, FIRED))
    ep = find_episode(engine, ("calls-spike", "acme", "api_calls", ""))
    dm = fake.dm_with("U0ALICE01").id
    fake.remake_channel("#usage-alerts")
    assert n.refresh_episode(int(ep["id"])) == 1  # the DM's message
    opened = len(fake.calls_of("conversations.open"))
    assert n.directory.dm_channel("alice@example.com") == dm
    assert len(fake.calls_of("conversations.open")) == opened

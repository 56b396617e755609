"""The attention budget ([slack.attention], issue 17): at most N new alert DMs per recipient and local
day (the rest in their digest, never lost), quiet hours in the recipient's own Slack timezone (held
DMs go out when they end), a morning digest of the open alerts of the accounts an AE owns ranked
most important first, and escalation of an unacknowledged alert to a manager exactly once."""

from __future__ import annotations

import json
from dataclasses import replace

from bot.service.pipeline import deliver_rows
from integrations.slack.api import SlackApi
from integrations.slack.assign import ESCALATE_KIND, SlackAssignments, queue_escalations
from integrations.slack.attention import quiet_until, ranked
from integrations.slack.config import AttentionConfig, DigestConfig, parse_slack_config
from integrations.slack.digest import send_due_digests
from integrations.slack.lookups import SlackDirectory
from rules.config import ConfigError, document_from_text
from rules.model import DAY
from storage.episodes import episode_history
from storage.outbox import list_outbox
from storage.slack import OpenAlert, digest_owners
from tests.integrations.slack.scenario import (
    FIRED,
    SPIKE_DAY,
    T0,
    Scenario,
    UsageRecord,
    assert_valid_message,
)

NINE = 9 * 3600
SPIKED = ("acme", "globex", "acme-labs")  # owners: alice, bob, bob


def _records() -> list[UsageRecord]:
    out = []
    for d in range(SPIKE_DAY + 10):
        for a in ("acme", "globex", "initech", "acme-labs"):
            v = (600.0 if d == SPIKE_DAY else 650.0 if d == SPIKE_DAY + 1 else 100.0) if a in SPIKED else 100.0
            out.append(UsageRecord(a, "api_calls", T0 + d * DAY + 3600, v))
    return out


def _cfg(config, **kw):
    return replace(config, attention=AttentionConfig(**kw), digest=DigestConfig(hour=9, minute=0))


def _fire(engine, clock, config):
    sc = Scenario(engine, clock, records=_records())
    n = sc.notifier(config)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    return sc, n


def test_over_the_daily_limit_alerts_go_to_the_recipients_digest(engine, fake, config, clock):
    sc, n = _fire(engine, clock, _cfg(config, max_dms_per_day=1))
    report = sc.deliver(n)
    assert report.sent == 3 and report.failed == 0
    assert len(fake.channel("#usage-alerts").messages) == 3  # channels are no one's DMs: every alert
    assert len(fake.dm_with("U0BOBBY01").messages) == 1 and len(fake.dm_with("U0ALICE01").messages) == 1
    assert digest_owners(engine) == ["bob@example.com"]  # bob's second alert waits for his digest
    assert send_due_digests(n, clock.now).sent == 0  # not 09:00 yet
    d = send_due_digests(n, clock.set_day(FIRED, NINE))
    assert (d.sent, d.items) == (1, 1)
    bob = fake.dm_with("U0BOBBY01").messages
    assert len(bob) == 2 and "1 alert(s)" in bob[1]["text"]  # one DM + the digest: nothing lost
    assert_valid_message(bob[1])


def test_the_limit_is_per_local_day_and_exempts_critical(engine, fake, config, clock):
    cfg = _cfg(config, max_dms_per_day=1, exempt_severities=("warning",))
    sc, n = _fire(engine, clock, cfg)
    sc.deliver(n)
    assert len(fake.dm_with("U0BOBBY01").messages) == 2 and digest_owners(engine) == []


def test_quiet_hours_hold_dms_until_they_end_in_the_recipients_timezone(engine, fake, config, clock):
    fake.users["U0ALICE01"].update(tz="America/New_York", tz_offset=-4 * 3600)
    fake.users["U0BOBBY01"].update(tz="Asia/Tokyo", tz_offset=9 * 3600)
    cfg = _cfg(config, quiet_start=20 * 60, quiet_end=8 * 60)
    sc, n = _fire(engine, clock, cfg)
    # 2026-10-02 00:00 UTC: 20:00 in New York (quiet), 09:00 in Tokyo (not)
    report = sc.deliver(n)
    assert report.sent == 2 and report.deferred == 1
    assert fake.dm_with("U0ALICE01") is None and len(fake.dm_with("U0BOBBY01").messages) == 2
    assert len(fake.channel("#usage-alerts").messages) == 3  # the channel copy is not held
    (held,) = [r for r in list_outbox(engine, limit=100) if r.status == "failed"]
    ends = clock.now + 12 * 3600  # 08:00 EDT = 12:00 UTC
    assert held.next_attempt_at == ends and "quiet hours of alice@example.com" in (held.last_error or "")
    assert sc.deliver(n, at=ends - 60).sent == 0
    assert sc.deliver(n, at=ends).sent == 1
    assert len(fake.dm_with("U0ALICE01").messages) == 1 and len(fake.channel("#usage-alerts").messages) == 3
    assert not fake.calls_of("users.info")  # the tz came with users.lookupByEmail and is cached


def test_quiet_until_wraps_midnight_and_follows_dst():
    cfg = AttentionConfig(quiet_start=20 * 60, quiet_end=8 * 60)
    ny = "America/New_York"
    at_23 = 1_790_913_600  # 2026-10-02T04:00Z = 00:00 EDT
    assert quiet_until(cfg, ny, at_23) == at_23 + 8 * 3600
    assert quiet_until(cfg, ny, at_23 + 8 * 3600) is None
    day = AttentionConfig(quiet_start=12 * 60, quiet_end=13 * 60)
    assert quiet_until(day, "UTC", 1_790_899_200 + 12 * 3600 + 60) == 1_790_899_200 + 13 * 3600
    # the night the clocks go back (2026-11-01 in New York): 08:00 EST is 13:00 UTC
    assert quiet_until(cfg, ny, 1_793_505_600) == 1_793_538_000  # 2026-11-01T02:00Z (22:00 EDT) -> 13:00Z


def test_user_timezone_is_cached_and_asked_with_users_info_when_missing(engine, fake, config, clock):
    d = SlackDirectory(SlackApi.from_config(config), engine, config, clock)
    assert d.user_tz("alice@example.com", "Europe/Berlin") == "Europe/Berlin"  # Slack has none for alice
    assert len(fake.calls_of("users.info")) == 1
    assert d.user_tz("alice@example.com", "Europe/Berlin") == "Europe/Berlin"
    assert len(fake.calls_of("users.info")) == 1  # "no tz" is cached too
    fake.users["U0BOBBY01"].update(tz="Asia/Tokyo")
    assert d.user_tz("bob@example.com") == "Asia/Tokyo" and len(fake.calls_of("users.info")) == 1


def test_morning_digest_lists_each_owners_open_alerts_most_important_first(engine, fake, config, clock):
    cfg = _cfg(config, morning_digest=True)
    sc, n = _fire(engine, clock, cfg)
    sc.deliver(n)
    assert send_due_digests(n, clock.now).sent == 0
    report = send_due_digests(n, clock.set_day(FIRED, NINE))
    assert report.sent == 2 and report.open_alerts == 3
    bob = fake.dm_with("U0BOBBY01").messages[-1]
    text = json.dumps(bob["blocks"], ensure_ascii=False)
    assert "Open alerts on your accounts · 2" in text and "Globex" in text and "Acme Labs" in text
    assert_valid_message(bob)
    assert send_due_digests(n, clock.now + 600).sent == 0  # once a day
    assert send_due_digests(n, clock.set_day(FIRED + 1, NINE)).sent == 2  # the next morning again


def test_a_digest_missed_at_its_time_is_not_sent_in_quiet_hours(engine, fake, config, clock):
    """The service was down at 09:00: the late digest waits out the recipient's quiet hours and its
    held alert goes in the next digest, nothing lost (bench_attention found one at 20:00 local)."""
    cfg = _cfg(config, max_dms_per_day=1, quiet_start=20 * 60, quiet_end=8 * 60)
    sc, n = _fire(engine, clock, cfg)
    sc.deliver(n, at=clock.set_day(FIRED, 10 * 3600))  # after 09:00 (UTC): today's digest was missed
    assert digest_owners(engine) == ["bob@example.com"]  # bob's second alert waits for his digest
    assert send_due_digests(n, clock.set_day(FIRED, 21 * 3600)).sent == 0  # 21:00: quiet
    assert send_due_digests(n, clock.set_day(FIRED + 1, 7 * 3600)).sent == 0  # still quiet
    assert send_due_digests(n, clock.set_day(FIRED + 1, 8 * 3600)).sent == 0  # today's is due at 09:00
    d = send_due_digests(n, clock.set_day(FIRED + 1, NINE))
    assert (d.sent, d.items) == (1, 1) and digest_owners(engine) == []
    bob = fake.dm_with("U0BOBBY01").messages
    assert len(bob) == 2 and "1 alert(s)" in bob[1]["text"]
    assert all(8 <= (float(m["ts"]) % DAY) // 3600 < 20 for m in bob)  # nothing posted in quiet hours


def test_a_digest_time_inside_quiet_hours_goes_when_they_end(engine, fake, config, clock):
    cfg = replace(_cfg(config, max_dms_per_day=1, quiet_start=20 * 60, quiet_end=8 * 60),
                  digest=DigestConfig(hour=7, minute=0))
    sc, n = _fire(engine, clock, cfg)
    sc.deliver(n, at=clock.set_day(FIRED, 10 * 3600))
    assert send_due_digests(n, clock.set_day(FIRED + 1, 7 * 3600)).sent == 0
    assert send_due_digests(n, clock.set_day(FIRED + 1, 8 * 3600)).items == 1


def test_ranking_by_severity_then_utilisation():
    def a(i, sev, util):  # noqa: ANN001, ANN202
        return OpenAlert(i, f"a{i}", f"A{i}", "r", "m", sev, "msg", 100 + i, util, False)

    got = ranked([a(1, "info", 0.99), a(2, "warning", 0.5), a(3, "critical", 0.1), a(4, "warning", 0.9)])
    assert [x.episode_id for x in got] == [3, 4, 2, 1]


def test_ranking_puts_the_largest_revenue_first():
    def a(i, sev, arr):  # noqa: ANN001, ANN202
        return OpenAlert(i, f"a{i}", f"A{i}", "r", "m", sev, "msg", 100 + i, 0.0, False, arr)

    got = ranked([a(1, "critical", 5_000.0), a(2, "info", 130_000.0), a(3, "warning", 0.0), a(4, "warning", 5_000.0)])
    assert [x.episode_id for x in got] == [2, 1, 4, 3]


def test_unacknowledged_alert_is_escalated_to_the_manager_exactly_once(engine, fake, config, clock):
    fake.add_user("U0CAROL01", "carol@example.com", "carol")
    cfg = _cfg(config, escalate_after=2 * DAY, escalate_severities=("warning",),
               managers={"bob@example.com": "carol@example.com"}, escalate_to="#usage-alerts")
    sc, n = _fire(engine, clock, cfg)
    sc.deliver(n)
    fired = clock.now
    assert queue_escalations(engine, cfg.attention, fired + DAY) == 0
    assert queue_escalations(engine, cfg.attention, fired + 2 * DAY) == 3  # 2 of bob's to carol, alice's to the channel
    for _ in range(3):
        assert queue_escalations(engine, cfg.attention, fired + 3 * DAY) == 0
    rows = [r for r in list_outbox(engine, limit=100) if r.kind == ESCALATE_KIND]
    assert len(rows) == 3
    assert deliver_rows(engine, SlackAssignments(n), fired + 2 * DAY).sent == 3
    carol = fake.dm_with("U0CAROL01").messages
    assert len(carol) == 2 and "has not been acknowledged for 2 day(s) (owner bob@example.com)" in carol[0]["text"]
    assert len(fake.channel("#usage-alerts").messages) == 4  # 3 alerts + alice's escalation
    events = [e["event"] for h in episode_history(engine) for e in h["events"]]
    assert events.count("escalated") == 3


def test_escalation_is_off_by_default_and_skips_acknowledged(engine, fake, config, clock):
    sc, n = _fire(engine, clock, config)
    sc.deliver(n)
    assert queue_escalations(engine, config.attention, clock.now + 30 * DAY) == 0
    from integrations.slack.actions import EpisodeActions

    cfg = _cfg(config, escalate_after=DAY, escalate_severities=("warning",), escalate_to="#usage-alerts")
    for h in episode_history(engine):
        EpisodeActions(engine, clock).acknowledge(int(h["id"]), "U0BOBBY01 (bob)")
    assert queue_escalations(engine, cfg.attention, clock.now + 30 * DAY) == 0


def _parse(text: str):  # noqa: ANN202
    doc = document_from_text(text, "config.toml")
    cfg = parse_slack_config(doc.section("slack"))
    doc.raise_if_problems()
    return cfg


def test_attention_config_and_its_errors():
    cfg = _parse('[slack]\n[slack.attention]\nmax_dms_per_day = 5\nquiet_hours = "21:30-07:00"\n'
                 'escalate_after = "3d"\nescalate_to = "#sales-leads"\n'
                 '[slack.attention.managers]\n"Bob@Example.com" = "carol@example.com"\n')
    a = cfg.attention
    assert (a.max_dms_per_day, a.quiet_start, a.quiet_end, a.escalate_after) == (5, 21 * 60 + 30, 7 * 60, 3 * DAY)
    assert a.managers == {"bob@example.com": "carol@example.com"} and a.active
    assert _parse("[slack]\n").attention.escalate_after is None and not _parse("[slack]\n").attention.active
    for bad, where in [('quiet_hours = "9pm-7am"', "quiet_hours"), ("max_dms_per_day = -1", "max_dms_per_day"),
                       ('escalate_to = "nobody"', "escalate_to"), ('exempt_severities = ["huge"]', "exempt_severities"),
                       ('nope = 1', "nope")]:
        try:
            _parse(f"[slack]\n[slack.attention]\n{bad}\n")
        except ConfigError as exc:
            assert f"slack.attention.{where}" in str(exc) and "config.toml" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")

"""Per-rule precision from "Not useful" clicks (issue 17): `usagebot slack feedback` and the weekly admin
summary (one admin notice a week through the outbox, whatever how often the job runs)."""

from __future__ import annotations

import io

from bot.cli.main import main
from bot.service.weekly_summary import queue_weekly_summary, week_start, weekly_summary
from rules.model import DAY
from storage.db import make_engine, migrate
from storage.outbox import list_outbox
from storage.slack import add_feedback, rule_precision
from tests.integrations.salesforce.helpers import fire_episode, seed_accounts

MONDAY = 1_795_392_000  # 2026-11-23T00:00:00Z


def _book(engine) -> list[int]:  # noqa: ANN001
    """Last week: rule "noisy" 4 alerts (3 marked not useful, one twice), rule "good" 2 alerts (none)."""
    seed_accounts(engine, 6, days=2)
    ids = []
    for i in range(4):
        ids.append(fire_episode(engine, f"a{i:04d}", rule_id="noisy", fired_at=MONDAY - 7 * DAY + i * DAY))
    for i in range(4, 6):
        ids.append(fire_episode(engine, f"a{i:04d}", rule_id="good", fired_at=MONDAY - 3 * DAY))
    with engine.begin() as conn:  # notified (fire_episode stores the state only)
        conn.exec_driver_sql("UPDATE alert_episodes SET last_notified_at = fired_at")
    for eid, user in [(ids[0], "U1"), (ids[0], "U2"), (ids[1], "U1"), (ids[2], "U1")]:
        add_feedback(engine, "noisy", eid, user, "not_useful", MONDAY - DAY)
    return ids


def test_precision_per_rule_counts_each_episode_once(engine):
    _book(engine)
    rows = {r.rule_id: r for r in rule_precision(engine)}
    assert (rows["noisy"].alerts, rows["noisy"].not_useful, rows["noisy"].precision) == (4, 3, 0.25)
    assert (rows["good"].alerts, rows["good"].not_useful, rows["good"].precision) == (2, 0, 1.0)
    assert [r.rule_id for r in rule_precision(engine)] == ["noisy", "good"]  # worst first
    later = {r.rule_id: r for r in rule_precision(engine, since=MONDAY - 4 * DAY)}
    assert (later["noisy"].alerts, later["noisy"].not_useful) == (1, 0)


def test_feedback_command_shows_precision(tmp_path):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    engine = make_engine(db)
    migrate(engine)
    _book(engine)
    engine.dispose()
    out, err = io.StringIO(), io.StringIO()
    assert main(["slack", "feedback", "--db", db], out=out, err=err) == 0
    lines = out.getvalue().splitlines()
    assert "precision" in lines[0]
    assert lines[1].split() == ["noisy", "4", "25%", "3"] and lines[2].split() == ["good", "2", "100%", "0"]


def test_weekly_summary_is_queued_once_a_week_with_precision(engine):
    _book(engine)
    assert week_start(MONDAY + 3 * DAY + 5) == MONDAY and week_start(MONDAY) == MONDAY
    text = weekly_summary(engine, MONDAY + 3600, "#usage-admin").message
    assert "Week of 2026-11-16: 6 alert(s) from 2 rule(s); 3 marked \"Not useful\" (precision 50%)" in text
    assert "• noisy: 4 alert(s), 3 not useful, precision 25%" in text
    assert "• good: 2 alert(s), 0 not useful, precision 100%" in text
    assert "Alerts per owner and day:" in text
    assert queue_weekly_summary(engine, MONDAY + 3600, "#usage-admin", ("slack",)) == 1
    for hour in range(2, 30):  # the hourly job, a restart, a second replica: the same week's key
        assert queue_weekly_summary(engine, MONDAY + hour * 3600, "#usage-admin", ("slack",)) == 0
    rows = [r for r in list_outbox(engine, limit=100) if r.idempotency_key.startswith("weekly-summary:")]
    assert len(rows) == 1 and rows[0].payload["routing"]["channels"] == ["#usage-admin"]
    assert queue_weekly_summary(engine, MONDAY + 7 * DAY + 60, "#usage-admin", ("slack",)) == 0  # no alert that week
    fire_episode(engine, "a0000", rule_id="good", fired_at=MONDAY + DAY)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alert_episodes SET last_notified_at = fired_at")
    assert queue_weekly_summary(engine, MONDAY + 7 * DAY + 60, "#usage-admin", ("slack",)) == 1  # next week

"""storage.slack: the 0002_slack tables and their queries (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from storage.db import alembic_config, migrate
from storage.models import SLACK_TABLES
from storage.slack import (
    add_feedback,
    claim_step,
    digest_owners,
    feedback_by_rule,
    finish_step,
    get_step,
    mark_digest_sent,
    open_digest_key,
    queue_digest_item,
    release_step,
    take_digest,
)
from tests.integrations.slack.scenario import FIRED, SPIKE_DAY, Scenario, TestClock


def test_slack_migration_up_and_down(engine):
    names = set(sa.inspect(engine).get_table_names())
    assert {t.name for t in SLACK_TABLES} <= names
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001_initial")
    names = set(sa.inspect(engine).get_table_names())
    assert not {t.name for t in SLACK_TABLES} & names and "alert_episodes" in names
    migrate(engine)
    assert {t.name for t in SLACK_TABLES} <= set(sa.inspect(engine).get_table_names())


def test_steps_keep_the_first_attempt_time(engine):
    assert claim_step(engine, "s1", "C1", None, 100, "t1", lease=60) == (None, True)
    prev, mine = claim_step(engine, "s1", "C1", None, 200, "t2", lease=60)
    assert not mine and prev.claim_token == "t1"  # held by the first claim: not posted twice at once
    release_step(engine, "s1", "t1")
    prev, mine = claim_step(engine, "s1", "C1", None, 200, "t2", lease=60)
    assert mine and prev is not None and prev.ts is None  # taken over: an earlier attempt may have posted
    s = get_step(engine, "s1")
    assert (s.attempted_at, s.ts, s.done, s.claim_token) == (100, None, False, "t2")
    finish_step(engine, "s1", "C1", "1.000001", 210)
    s = get_step(engine, "s1")
    assert (s.ts, s.done_at, s.done, s.claim_token) == ("1.000001", 210, True, None)
    prev, mine = claim_step(engine, "s1", "C1", None, 300, "t3", lease=60)
    assert not mine and prev.ts == "1.000001"  # a finished step is never claimed again


def test_feedback_counts_episodes_per_rule(engine):
    sc = Scenario(engine, TestClock())
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    with engine.connect() as c:
        eid = c.execute(sa.text("select id from alert_episodes")).scalar_one()
    assert add_feedback(engine, "calls-spike", eid, "U1", "not_useful", 10)
    assert not add_feedback(engine, "calls-spike", eid, "U1", "not_useful", 11)  # once per person
    assert add_feedback(engine, "calls-spike", eid, "U2", "not_useful", 12)
    assert feedback_by_rule(engine) == {"calls-spike": 1}
    assert feedback_by_rule(engine, since=13) == {}


def test_digest_queue_is_idempotent_and_retakes_after_a_failure(engine):
    assert queue_digest_item(engine, "k1", "Alice@Example.com", {"x": float("nan")}, 10)
    assert not queue_digest_item(engine, "k1", "alice@example.com", {}, 11)
    assert digest_owners(engine) == ["alice@example.com"]
    first = take_digest(engine, "alice@example.com", "d1")
    assert [i.item_key for i in first] == ["k1"] and first[0].alert == {"x": None}
    queue_digest_item(engine, "k2", "alice@example.com", {}, 12)
    assert open_digest_key(engine, "alice@example.com") == "d1"  # the send failed: retry the same digest
    again = take_digest(engine, "alice@example.com", "d1")
    assert [i.item_key for i in again] == ["k1", "k2"]
    assert mark_digest_sent(engine, "d1", 20) == 2
    assert digest_owners(engine) == [] and open_digest_key(engine, "alice@example.com") is None

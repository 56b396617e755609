from __future__ import annotations

import numpy as np
import pytest

from rules.engine import due, evaluate, evaluate_rule, history_needed
from rules.loader import load_rules_text
from rules.model import DAY, AccountFacts, MetricBlock
from rules.replay import evaluation_times, replay

RULES = """
[[rule]]
id = "spike-all"
kind = "spike"
metric = "api_calls"
bucket = "1d"
[rule.baseline]
window = "14d"
min_points = 5
[rule.threshold]
ratio = 3.0

[[rule]]
id = "spike-enterprise"
kind = "spike"
metric = "api_calls"
bucket = "1d"
[rule.baseline]
window = "14d"
min_points = 5
[rule.threshold]
ratio = 3.0
[rule.segment]
plans = ["enterprise"]
exclude_accounts = ["c"]

[[rule]]
id = "hourly-drop"
kind = "drop"
metric = "api_calls"
bucket = "1h"
for = 2
[rule.baseline]
window = "1d"
min_points = 12
[rule.threshold]
ratio = 0.2
"""

START = 1_790_000_000 - 1_790_000_000 % DAY


def accounts():
    return {
        "a": AccountFacts("a", "A", plan="enterprise"),
        "b": AccountFacts("b", "B", plan="starter"),
        "c": AccountFacts("c", "C", plan="enterprise"),
    }


def daily_block(days: int = 30, spike_day: int = 20) -> MetricBlock:
    v = np.full((3, days), 100.0)
    v[:, spike_day] = 1000.0
    return MetricBlock("api_calls", START, DAY, ["a", "b", "c"], v)


def test_segments_restrict_accounts():
    rs = load_rules_text(RULES)
    blk = daily_block()
    at = START + 21 * DAY
    rule_all, rule_ent = rs.rules[0], rs.rules[1]
    f_all, d_all = evaluate_rule(rule_all, blk, accounts(), at)
    f_ent, d_ent = evaluate_rule(rule_ent, blk, accounts(), at)
    assert sorted(f.account_id for f in f_all) == ["a", "b", "c"]
    assert [f.account_id for f in f_ent] == ["a"] and d_ent == ["a"]


def test_block_is_truncated_to_buckets_ended_by_now():
    rs = load_rules_text(RULES)
    blk = daily_block()
    rule = rs.rules[0]
    # mid-way through the spike day the spike bucket has not ended: nothing fires yet
    f_mid, _ = evaluate_rule(rule, blk, accounts(), START + 20 * DAY + 12 * 3600)
    f_end, _ = evaluate_rule(rule, blk, accounts(), START + 21 * DAY)
    assert f_mid == [] and len(f_end) == 3
    assert all(f.at == START + 21 * DAY and f.bucket_start == START + 20 * DAY for f in f_end)


def test_unknown_accounts_get_neutral_facts_and_wrong_block_is_an_error():
    rs = load_rules_text(RULES)
    blk = daily_block()
    f, _ = evaluate_rule(rs.rules[0], blk, {}, START + 21 * DAY)
    assert len(f) == 3
    with pytest.raises(ValueError, match="hourly-drop"):
        evaluate_rule(rs.rules[2], blk, accounts(), START + 21 * DAY)


def test_due_and_evaluation_times():
    rs = load_rules_text(RULES)
    daily, hourly = rs.rules[0], rs.rules[2]
    assert due(daily, START + DAY) and not due(daily, START + 3600)
    assert due(hourly, START + 3600)
    times = evaluation_times(rs.rules, START, START + DAY)
    assert len(times) == 24 and times[0] == START + 3600 and times[-1] == START + DAY
    assert history_needed(rs.rules)[("api_calls", DAY)] >= 14 * DAY


def test_evaluate_only_due_rules_and_missing_block_is_named():
    rs = load_rules_text(RULES)
    blocks = {("api_calls", DAY): daily_block()}
    res = evaluate(rs.rules[:2], blocks, accounts(), START + 21 * DAY)
    assert res.evaluated_rules == {"spike-all", "spike-enterprise"}
    assert ("spike-all", "b") in res.decided
    with pytest.raises(KeyError, match="hourly-drop"):
        evaluate(rs.rules, blocks, accounts(), START + 21 * DAY)


def test_replay_equals_stepwise_evaluation_and_fires_once():
    rs = load_rules_text(RULES)
    rules = rs.rules[:2]
    blocks = {("api_calls", DAY): daily_block()}
    steps = list(replay(rules, blocks, accounts(), START, START + 30 * DAY))
    assert [s.at for s in steps] == [START + d * DAY for d in range(1, 31)]
    fired = [(t.at, t.state.rule_id, t.state.account_id) for s in steps for t in s.transitions
             if t.event == "fired"]
    assert sorted(fired) == sorted([(START + 21 * DAY, "spike-all", a) for a in "abc"]
                                   + [(START + 21 * DAY, "spike-enterprise", "a")])
    resolved = {t.at for s in steps for t in s.transitions if t.event == "resolved"}
    assert resolved == {START + 24 * DAY}  # after 3 quiet days in a row (a spike's resolve_after default)
    # replay on a prefix of the timeline is a prefix of the full replay (no look-ahead)
    short = list(replay(rules, blocks, accounts(), START, START + 21 * DAY))
    assert [[(t.event, t.key) for t in s.transitions] for s in short] == \
        [[(t.event, t.key) for t in s.transitions] for s in steps[:21]]


def test_hourly_drop_needs_two_buckets_with_for():
    rs = load_rules_text(RULES)
    rule = rs.rules[2]
    hours = 24 * 3
    v = np.full((1, hours), 50.0)
    v[0, 60:] = 1.0
    blocks = {("api_calls", 3600): MetricBlock("api_calls", START, 3600, ["a"], v)}
    events = [(t.event, (t.at - START) // 3600) for s in replay([rule], blocks, accounts(), START,
                                                                 START + hours * 3600) for t in s.transitions]
    assert events[:2] == [("pending", 61), ("fired", 62)]

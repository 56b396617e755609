"""`usagebot check` finds rules that are valid but cannot work, or work twice (rules.lint, issue 11 item 9).

Seen: three shipped rules sat idle on a book without their metrics and the backtest said nothing; a quota
rule on a metric no account had a quota for; two identical rules; a drop rule with zscore above 20;
a window of 100000000w that passed `check` and then died in `evaluate` allocating 313 GiB.
"""

from __future__ import annotations

import textwrap

import pytest

from rules.lint import DataFacts, MetricFacts, lint
from rules.loader import RuleFileError, load_rules_text

DAY = 86_400


def rules(text: str):
    return load_rules_text(textwrap.dedent(text), "r.toml")


FACTS = DataFacts(
    source="the data", accounts=1000,
    metrics={"api_calls": MetricFacts(900, 0, 100 * DAY, DAY), "events": MetricFacts(800, 0, 100 * DAY, DAY)},
    quota_metrics={"api_calls": 500}, plans={"starter": 600, "growth": 400},
    account_ids=frozenset({"acme", "globex"}))


def messages(found) -> list[str]:
    return [f"{p.level}: {p.rule_id}: {p.field}: {p.message}" for p in found]


def test_a_metric_without_data_and_a_quota_rule_without_quotas_are_warned_about() -> None:
    rs = rules("""
        [[rule]]
        id = "seats"
        kind = "spike"
        metric = "seats"
        [[rule]]
        id = "events-quota"
        kind = "quota"
        metric = "events"
        [[rule]]
        id = "events-util"
        kind = "expansion"
        metric = "events"
        [rule.threshold]
        mode = "utilization"
    """)
    got = messages(lint(rs, FACTS))
    assert any(m.startswith("warning: seats: metric: the data has no data for metric 'seats'") for m in got)
    assert any(m.startswith("warning: events-quota: metric: no account in the data has a quota for 'events'")
               for m in got)
    assert any(m.startswith("warning: events-util: metric: no account") for m in got)
    assert all(p.level == "warning" for p in lint(rs, FACTS))


def test_duplicate_and_overlapping_rules_are_warned_about_without_data() -> None:
    rs = rules("""
        [[rule]]
        id = "a"
        kind = "drop"
        metric = "api_calls"
        [[rule]]
        id = "b"
        kind = "drop"
        metric = "api_calls"
        [[rule]]
        id = "c"
        kind = "drop"
        metric = "api_calls"
        [rule.threshold]
        ratio = 0.3
        [[rule]]
        id = "d"
        kind = "drop"
        metric = "api_calls"
        [rule.threshold]
        ratio = 0.3
        [rule.segment]
        plans = ["enterprise"]
        [[rule]]
        id = "e"
        kind = "drop"
        metric = "api_calls"
        [rule.threshold]
        ratio = 0.2
        [rule.segment]
        plans = ["starter"]
    """)
    found = lint(rs)
    by_rule = {(p.rule_id, p.message.split(":")[0]) for p in found}
    assert ("b", "detects exactly what rule 'a' (r.toml") in by_rule
    assert ("c", "overlaps rule 'a' (r.toml") in by_rule
    assert not [p for p in found if p.rule_id == "e" and "'d'" in p.message]  # enterprise vs starter: apart
    problem = next(p for p in found if p.rule_id == "b")
    assert str(problem).startswith("r.toml:6: warning: rule 'b': detects exactly what rule 'a' (r.toml:2)")


def test_segments_naming_plans_or_accounts_the_data_lacks_and_coarse_data() -> None:
    rs = rules("""
        [[rule]]
        id = "hourly"
        kind = "spike"
        metric = "api_calls"
        bucket = "1h"
        [rule.segment]
        plans = ["platinum"]
        accounts = ["acme", "initech"]
    """)
    got = messages(lint(rs, FACTS))
    assert any("segment.plans: no account in the data is on plan(s) platinum" in m for m in got)
    assert any("segment.accounts: the data has no account(s) initech" in m for m in got)
    assert any("bucket: api_calls arrives every 1d" in m for m in got)


def test_an_evaluation_past_the_memory_bound_is_an_error_with_the_estimate() -> None:
    rs = rules("""
        [[rule]]
        id = "minutes"
        kind = "drop"
        metric = "api_calls"
        bucket = "1m"
        [rule.baseline]
        window = "28d"
    """)
    big = DataFacts("the data", 100_000, {"api_calls": MetricFacts(100_000, 0, DAY, 60)})
    (p,) = [p for p in lint(rs, big) if p.level == "error"]
    assert "needs about 60.1 GiB of memory (100,000 accounts x 40,321 buckets of history)" in p.message
    assert not [p for p in lint(rs, big, max_memory=2**40) if p.level == "error"]


def test_rules_that_can_never_be_evaluated_are_refused_by_the_loader() -> None:
    with pytest.raises(RuleFileError) as info:
        rules("""
            [[rule]]
            id = "huge"
            kind = "drop"
            metric = "api_calls"
            [rule.baseline]
            window = "100000000w"
            seasonality = "weekly"
            [[rule]]
            id = "long"
            kind = "drop"
            metric = "api_calls"
            bucket = "1m"
            [rule.baseline]
            window = "5000w"
            [[rule]]
            id = "z"
            kind = "drop"
            metric = "api_calls"
            [rule.threshold]
            zscore = 25
        """)
    text = "\n".join(map(str, info.value.problems))
    assert "r.toml:7: rule 'huge': baseline.window: duration '100000000w' is longer than 100 years" in text
    assert "rule 'long': needs 35000d1m of history (50,400,001 buckets of 1m" in text
    assert "rule 'z': threshold.zscore: a drop can never reach a z-score of 25" in text

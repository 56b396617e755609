"""rules.levels: the usual level and threshold per bucket are the detector's own numbers."""

from __future__ import annotations

import numpy as np
import pytest

from rules.detectors import detect
from rules.levels import EpisodeSpan, period_to_date, rule_levels
from rules.loader import load_rules_text
from rules.model import DAY, AccountFacts, MetricBlock, Reference

RULES = """
[[rule]]
id = "spike"
kind = "spike"
metric = "calls"
bucket = "1d"
[rule.baseline]
window = "28d"
seasonality = "{season}"
method = "{method}"
min_points = 3
[rule.threshold]
ratio = 2.0

[[rule]]
id = "drop"
kind = "drop"
metric = "calls"
bucket = "1d"
[rule.baseline]
window = "21d"
seasonality = "{season}"
[rule.threshold]
ratio = 0.5
"""

START = 1_790_000_000 // DAY * DAY


def _series(n: int = 60, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weekly = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.4, 0.3])
    v = 200 * weekly[np.arange(n) % 7] * rng.lognormal(0, 0.1, n)
    v[40] = np.nan  # a missing day
    v[45] = 2000.0
    return v


@pytest.mark.parametrize(("season", "method"), [("none", "median"), ("weekly", "upper"), ("weekly", "mean")])
def test_levels_are_what_the_detector_compared_each_bucket_with(season: str, method: str) -> None:
    rules = load_rules_text(RULES.format(season=season, method=method), "r.toml").rules
    values = _series()
    acct = AccountFacts("a", "A")
    for rule in rules:
        lv = rule_levels(rule, values, START, DAY)
        checked = 0
        for j in range(len(values)):
            block = MetricBlock("calls", START, DAY, ["a"], values[None, : j + 1].copy())
            res = detect(rule, block, [acct])
            for f in res.findings:
                assert f.baseline == pytest.approx(lv.baseline[j]) and f.threshold == pytest.approx(lv.threshold[j])
                checked += 1
            if not res.decided[0] and not np.isnan(values[j]):
                assert np.isnan(lv.baseline[j]) or np.isnan(values[j])
        if rule.kind == "spike":
            assert checked >= 1  # the spike on day 45 fired and its numbers matched
    assert np.isnan(rule_levels(rules[0], values, START, DAY).baseline[:3]).all()  # not enough history yet


def test_an_open_episode_shows_its_frozen_level_and_the_limit_that_ends_it() -> None:
    rule = load_rules_text(RULES.format(season="none", method="median"), "r.toml").rules[1]  # drop
    values = _series()
    ref = Reference(START + 30 * DAY, DAY, (150.0,))
    lv = rule_levels(rule, values, START, DAY, [EpisodeSpan(START + 30 * DAY, START + 35 * DAY, ref)])
    assert (lv.baseline[30:35] == 150.0).all()
    assert lv.threshold[30:35] == pytest.approx([rule.params.recovery_ratio * 150.0] * 5)
    assert lv.baseline[35] != 150.0


def test_period_to_date_restarts_each_period_and_skips_missing_buckets() -> None:
    vals = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    ptd = period_to_date(vals, 0, 1, [0, 0, 0, 0, 4, 4])
    assert ptd[:2].tolist() == [1.0, 3.0] and np.isnan(ptd[2]) and ptd[3] == 7.0
    assert ptd[4:].tolist() == [5.0, 11.0]

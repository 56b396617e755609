"""Expansion detector (rules.detectors.expansion): growth and utilization modes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from rules.detectors import detect
from rules.detectors.expansion import ExpansionParams
from rules.impact import Pricing, assess
from rules.model import DAY, AccountFacts, DetectorResult, MetricBlock, Rule

H = 3600


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def block(values: object, start: int, step: int = DAY) -> MetricBlock:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    return MetricBlock("api_calls", start, step, [f"acct-{i}" for i in range(arr.shape[0])], arr)


def account(i: int, quota: float | None = 1_000.0, tz: str = "UTC", billing_day: int = 1) -> AccountFacts:
    quotas = {} if quota is None else {"api_calls": quota}
    return AccountFacts(f"acct-{i}", f"Account {i}", quotas=quotas, timezone=tz, billing_day=billing_day)


def rule(step: int = DAY, **params: Any) -> Rule:
    return Rule("expand", "expansion", "api_calls", step, ExpansionParams(**params), rule_hash="e1")


def run(r: Rule, b: MetricBlock, facts: list[AccountFacts] | None = None) -> DetectorResult:
    return detect(r, b, facts if facts is not None else [account(i) for i in range(len(b.account_ids))])


# ------------------------------------------------------------------------ growth

GROWTH_END = ts("2026-11-29T00:00")
GROWTH_START = GROWTH_END - 28 * DAY


def weeks(*daily: float) -> np.ndarray:
    return np.repeat(np.asarray(daily, dtype=np.float64), 7)


def test_growth_fires_with_every_field() -> None:
    b = block(weeks(100.0, 120.0, 144.0, 172.8), GROWTH_START)
    res = run(rule(growth=0.1), b)
    assert res.decided.tolist() == [True]
    (f,) = res.findings
    assert (f.kind, f.account_id, f.rule_hash, f.discriminator, f.once) == (
        "expansion",
        "acct-0",
        "e1",
        "",
        False,
    )
    assert f.value == pytest.approx(1_209.6) and f.baseline == 700.0
    assert f.threshold == pytest.approx(1.1 * 1_008.0)
    assert (f.at, f.bucket_start, f.window_start, f.window_end) == (
        GROWTH_END,
        GROWTH_END - DAY,
        GROWTH_START,
        GROWTH_END,
    )
    assert f.details["window_sums"] == pytest.approx([1_209.6, 1_008.0, 840.0, 700.0])
    assert f.details["growth_rates"] == pytest.approx([0.2, 0.2, 0.2])
    assert f.details["period"] == 7 * DAY
    assert f.message == (
        "api_calls grew at least 10% in each of the last 3 windows of 7d: 1,210 in the 7d from 2026-11-22"
        " vs 700 in the 7d from 2026-11-01 (+20%, +20%, +20%, latest first)."
    )


def test_growth_needs_every_window_to_grow() -> None:
    b = block(weeks(100.0, 130.0, 130.0, 170.0), GROWTH_START)  # flat in the middle
    res = run(rule(growth=0.1), b)
    assert res.findings == [] and res.decided.tolist() == [True]
    b = block(weeks(100.0, 105.0, 150.0, 200.0), GROWTH_START)  # +5% is not +10%
    assert run(rule(growth=0.1), b).findings == []
    assert len(run(rule(growth=0.05), b).findings) == 1


def test_growth_short_block_and_empty_are_undecided() -> None:
    short = block(weeks(100.0, 120.0, 144.0)[1:], GROWTH_START)
    assert run(rule(), short).decided.tolist() == [False]
    empty = block(np.empty((1, 0)), GROWTH_END)
    assert run(rule(), empty).decided.tolist() == [False]
    nan = block(np.full(28, np.nan), GROWTH_START)
    res = run(rule(), nan)
    assert res.findings == [] and res.decided.tolist() == [False]


def test_growth_missing_buckets() -> None:
    values = weeks(100.0, 120.0, 144.0, 172.8)
    values[[0, 1]] = np.nan  # 2 of 7 (29%) of the oldest window missing
    assert run(rule(), block(values, GROWTH_START)).decided.tolist() == [False]
    values[1] = 100.0  # 1 of 7 (14%) missing: decided; the window sum is of observed buckets only
    (f,) = run(rule(), block(values, GROWTH_START)).findings
    assert f.baseline == 600.0
    values = weeks(100.0, 120.0, 144.0, 172.8)
    values[-1] = np.nan  # the latest window loses a day and no longer grew 10%
    res = run(rule(), block(values, GROWTH_START))
    assert res.findings == [] and res.decided.tolist() == [True]


def test_growth_from_zero_does_not_fire() -> None:
    b = block(weeks(0.0, 10.0, 20.0, 40.0), GROWTH_START)
    res = run(rule(), b)
    assert res.findings == [] and res.decided.tolist() == [True]
    zeros = block(np.zeros(28), GROWTH_START)
    assert run(rule(), zeros).findings == []


def test_growth_min_value_guard() -> None:
    b = block(weeks(1.0, 2.0, 4.0, 8.0), GROWTH_START)  # doubling every week, but tiny
    assert len(run(rule(), b).findings) == 1
    res = run(rule(min_value=100.0), b)
    assert res.findings == [] and res.decided.tolist() == [True]


def test_growth_hourly_buckets_and_several_rows() -> None:
    end = ts("2026-11-03T00:00")
    rows = np.stack(
        [
            np.repeat([10.0, 12.0, 15.0], 24),  # grows 20% then 25% per day
            np.repeat([10.0, 12.0, 12.0], 24),  # stalls
            np.repeat([10.0, 12.0, np.nan], 24),  # latest day missing
        ]
    )
    b = block(rows, end - 72 * H, step=H)
    res = run(rule(step=H, period=DAY, periods=2), b)
    assert [f.account_id for f in res.findings] == ["acct-0"]
    assert res.decided.tolist() == [True, True, False]
    assert res.findings[0].details["growth_rates"] == pytest.approx([0.25, 0.2])


# ------------------------------------------------------------------- utilization

UTIL_START = ts("2026-07-25T00:00")
UTIL_AT = ts("2026-11-10T00:00")
LEVEL = {7: 1.0, 8: 30.0, 9: 30.0, 10: 32.0, 11: 1.0}


def by_month(start: int, end: int, level: dict[int, float], step: int = DAY) -> np.ndarray:
    starts = np.arange(start, end, step)
    return np.array([level[datetime.fromtimestamp(int(t), UTC).month] for t in starts], dtype=np.float64)


def util_rule(**params: Any) -> Rule:
    return rule(**{"mode": "utilization", "utilization": 0.9, "periods": 3, **params})


def test_utilization_fires_with_every_field() -> None:
    b = block(by_month(UTIL_START, UTIL_AT, LEVEL), UTIL_START)
    res = run(util_rule(), b)
    assert res.decided.tolist() == [True]
    (f,) = res.findings
    assert (f.value, f.baseline, f.threshold) == (992.0, None, 900.0)
    assert (f.at, f.bucket_start) == (UTIL_AT, UTIL_AT - DAY)
    assert (f.window_start, f.window_end) == (ts("2026-08-01T00:00"), ts("2026-11-01T00:00"))
    assert (f.discriminator, f.once) == ("", False)
    assert f.details == {
        "quota": 1_000.0,
        "utilization": 0.992,  # the actual use of the latest completed period (what a quota bar shows)
        "target": 0.9,
        "periods": [
            {"period": "2026-10-01", "usage": 992.0, "utilization": 0.992},
            {"period": "2026-09-01", "usage": 900.0, "utilization": 0.9},
            {"period": "2026-08-01", "usage": 930.0, "utilization": 0.93},
        ],
    }
    assert f.message == (
        "api_calls used at least 90% of the monthly quota (1,000) in each of the last 3 billing periods"
        " (2026-10-01: 99%, 2026-09-01: 90%, 2026-08-01: 93%)."
    )


def test_utilization_needs_every_period() -> None:
    level = {**LEVEL, 9: 25.0}
    b = block(by_month(UTIL_START, UTIL_AT, level), UTIL_START)
    res = run(util_rule(), b)
    assert res.findings == [] and res.decided.tolist() == [True]
    assert len(run(util_rule(periods=1), b).findings) == 1


def test_utilization_period_ending_at_evaluation_counts_as_completed() -> None:
    at = ts("2026-11-01T00:00")
    b = block(by_month(UTIL_START, at, LEVEL), UTIL_START)
    (f,) = run(util_rule(), b).findings
    assert f.details["periods"][0]["period"] == "2026-10-01" and f.window_end == at
    # One bucket earlier, October is still running: the oldest period needed (July) is not covered.
    res = run(util_rule(), b.truncated(b.n_buckets - 1))
    assert res.findings == [] and res.decided.tolist() == [False]


def test_utilization_missing_quota_or_data_is_undecided() -> None:
    b = block(by_month(UTIL_START, UTIL_AT, LEVEL), UTIL_START)
    assert run(util_rule(), b, [account(0, quota=None)]).decided.tolist() == [False]
    values = by_month(UTIL_START, UTIL_AT, LEVEL)
    sept = (ts("2026-09-01T00:00") - UTIL_START) // DAY
    values[sept : sept + 7] = np.nan  # 7 of 30 days missing (23%)
    assert run(util_rule(), block(values, UTIL_START)).decided.tolist() == [False]
    values[sept : sept + 1] = 30.0  # 6 of 30 (20%) missing is tolerated; September sums 720 only
    res = run(util_rule(), block(values, UTIL_START))
    assert res.findings == [] and res.decided.tolist() == [True]
    empty = block(np.empty((1, 0)), UTIL_AT)
    assert run(util_rule(), empty).decided.tolist() == [False]


def test_utilization_timezones_in_one_block() -> None:
    start, at = ts("2026-07-01T00:00"), ts("2026-11-01T02:00")  # 2026-10-31 22:00 in New York
    b = block(np.ones((3, (at - start) // H)), start, step=H)
    facts = [
        account(0, quota=700.0),
        account(1, quota=700.0, tz="America/New_York"),
        account(2, quota=810.0),
    ]
    res = run(rule(step=H, mode="utilization", utilization=0.9, periods=2), b, facts)
    assert res.decided.tolist() == [True, True, True]
    by_id = {f.account_id: f for f in res.findings}
    assert sorted(by_id) == ["acct-0", "acct-1"]
    utc, ny = by_id["acct-0"], by_id["acct-1"]
    assert [p["period"] for p in utc.details["periods"]] == ["2026-10-01", "2026-09-01"]
    assert [p["usage"] for p in utc.details["periods"]] == [744.0, 720.0]
    # New York's October is not over yet: its completed periods are September and August.
    assert [p["period"] for p in ny.details["periods"]] == ["2026-09-01", "2026-08-01"]
    assert [p["usage"] for p in ny.details["periods"]] == [720.0, 744.0]
    assert ny.window_start == ts("2026-08-01T04:00") and ny.window_end == ts("2026-10-01T04:00")


def test_unknown_mode_names_the_rule() -> None:
    r = Rule(
        "x", "expansion", "api_calls", DAY, ExpansionParams(mode="bogus"), source_file="r.toml", source_line=3
    )
    with pytest.raises(ValueError, match=r"rule 'x' \(r.toml:3\): unknown expansion mode 'bogus'"):
        run(r, block(np.ones(28), GROWTH_START))


def test_one_period_or_window_is_said_in_the_singular() -> None:
    """periods = 1 said "in each of the last 1 billing periods" (and "1 billing periods running")."""
    b = block(by_month(UTIL_START, UTIL_AT, LEVEL), UTIL_START)
    (f,) = run(util_rule(periods=1), b).findings
    assert f.message == ("api_calls used at least 90% of the monthly quota (1,000) in the last billing period"
                         " (2026-10-01: 99%).")
    assert assess("expansion", "api_calls", "info", f.value, f.baseline, f.details, account(0), Pricing(),
                  f.at).headline == "api calls at 99% of the quota, 1 billing period running"
    g = block(weeks(100.0, 100.0, 100.0, 150.0), GROWTH_START)
    (f,) = run(rule(growth=0.1, periods=1), g).findings
    assert f.message.startswith("api_calls grew at least 10% in the last window of 7d: 1,050 in the 7d from")
    assert assess("expansion", "api_calls", "info", f.value, f.baseline, f.details, account(0), Pricing(),
                  f.at).headline == "api calls up 50% in 7 days"
    (f,) = run(rule(growth=0.1, periods=1, period=DAY), block([100.0] * 6 + [150.0], GROWTH_END - 7 * DAY)).findings
    assert assess("expansion", "api_calls", "info", f.value, f.baseline, f.details, account(0), Pricing(),
                  f.at).headline == "api calls up 50% in 1 day"

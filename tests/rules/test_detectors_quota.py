"""Quota detector (rules.detectors.quota): billing periods, DST, timezones, forecasts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from rules.detectors import detect
from rules.detectors.quota import QuotaParams
from rules.model import DAY, AccountFacts, MetricBlock, Rule

H = 3600


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def block(values: object, start: int, step: int = DAY, ids: list[str] | None = None) -> MetricBlock:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    ids = ids or [f"acct-{i}" for i in range(arr.shape[0])]
    return MetricBlock("api_calls", start, step, ids, arr)


def ramp(start: int, end: int, step: int, level: Callable[[int], float]) -> np.ndarray:
    """One row from start to end; level(bucket_start) -> value."""
    starts = np.arange(start, end, step)
    return np.array([level(int(t)) for t in starts], dtype=np.float64)


def account(i: int, quota: float | None = 10_000.0, billing_day: int = 1, tz: str = "UTC") -> AccountFacts:
    quotas = {} if quota is None else {"api_calls": quota}
    return AccountFacts(f"acct-{i}", f"Account {i}", quotas=quotas, billing_day=billing_day, timezone=tz)


def threshold_rule(*fractions: float, step: int = DAY) -> Rule:
    return Rule("quota", "quota", "api_calls", step, QuotaParams(fractions=fractions), rule_hash="q1")


def forecast_rule(fraction: float = 1.0, step: int = DAY, **kw: Any) -> Rule:
    params = QuotaParams(mode="forecast", fraction=fraction, **kw)
    return Rule("quota-forecast", "quota", "api_calls", step, params, severity="info", rule_hash="q2")


def usage_of(b: MetricBlock, facts: list[AccountFacts]) -> list[float | None]:
    """Period-to-date usage per row as the detector sees it (value of a tiny-threshold finding)."""
    tiny = [
        AccountFacts(
            a.id,
            a.name,
            quotas={"api_calls": 1e12} if "api_calls" in a.quotas else {},
            billing_day=a.billing_day,
            timezone=a.timezone,
        )
        for a in facts
    ]
    res = detect(threshold_rule(1e-15, step=b.step), b, tiny)
    got: dict[str, float] = {f.account_id: f.value for f in res.findings}
    return [got.get(a) for a in b.account_ids]


# --------------------------------------------------------------------- threshold


def test_threshold_fires_once_per_fraction_with_every_field() -> None:
    start, at = ts("2026-10-20T00:00"), ts("2026-11-11T00:00")
    values = ramp(start, at, DAY, lambda t: 820.0 if t >= ts("2026-11-01T00:00") else 999.0)
    b = block(values, start)
    res = detect(threshold_rule(0.8, 1.0), b, [account(0)])
    assert res.decided.tolist() == [True]
    (f,) = res.findings
    assert (f.rule_id, f.kind, f.account_id, f.severity, f.rule_hash) == (
        "quota",
        "quota",
        "acct-0",
        "warning",
        "q1",
    )
    assert (f.value, f.baseline, f.threshold) == (8_200.0, None, 8_000.0)
    assert (f.at, f.bucket_start, f.window_start, f.window_end) == (
        at,
        at - DAY,
        ts("2026-11-01T00:00"),
        at,
    )
    assert (f.discriminator, f.once) == ("2026-11-01:0.8", True)
    assert f.details == {
        "quota": 10_000.0,
        "fraction": 0.8,
        "utilization": 0.82,
        "period": "2026-11-01",
        "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z",
    }
    assert f.message == (
        "api_calls reached 82% of the monthly quota (8,200 of 10,000) in the period starting 2026-11-01."
    )


def test_threshold_all_crossed_fractions_and_exact_boundary() -> None:
    start, at = ts("2026-11-01T00:00"), ts("2026-11-11T00:00")
    b = block(np.full(10, 1_000.0), start)
    res = detect(threshold_rule(1.0, 0.5, 0.8), b, [account(0)])
    assert [f.discriminator for f in res.findings] == ["2026-11-01:0.5", "2026-11-01:0.8", "2026-11-01:1"]
    assert res.findings[-1].threshold == 10_000.0 and res.findings[-1].at == at


def test_below_threshold_is_decided_without_finding() -> None:
    b = block(np.full(10, 100.0), ts("2026-11-01T00:00"))
    res = detect(threshold_rule(0.8), b, [account(0)])
    assert res.findings == [] and res.decided.tolist() == [True]


@pytest.mark.parametrize("quota", [None, 0.0, -5.0, float("nan")])
def test_missing_or_nonpositive_quota_is_undecided(quota: float | None) -> None:
    b = block(np.full(10, 1e9), ts("2026-11-01T00:00"))
    res = detect(threshold_rule(0.8), b, [account(0, quota=quota)])
    assert res.findings == [] and res.decided.tolist() == [False]


def test_block_starting_after_period_start_is_undecided() -> None:
    b = block(np.full(10, 1e9), ts("2026-11-02T00:00"))
    res = detect(threshold_rule(0.8), b, [account(0)])
    assert res.findings == [] and res.decided.tolist() == [False]


def test_empty_block_and_all_nan_are_undecided() -> None:
    empty = block(np.empty((1, 0)), ts("2026-11-01T00:00"))
    assert detect(threshold_rule(0.8), empty, [account(0)]).decided.tolist() == [False]
    nan = block(np.full(10, np.nan), ts("2026-11-01T00:00"))
    for rule in (threshold_rule(0.8), forecast_rule()):
        res = detect(rule, nan, [account(0)])
        assert res.findings == [] and res.decided.tolist() == [False]


def test_gaps_add_nothing_but_do_not_block() -> None:
    values = np.full(10, 1_000.0)
    values[[2, 5]] = np.nan
    b = block(values, ts("2026-11-01T00:00"))
    res = detect(threshold_rule(0.8, 1.0), b, [account(0)])
    assert [f.value for f in res.findings] == [8_000.0]


def test_zero_usage_is_decided() -> None:
    b = block(np.zeros(10), ts("2026-11-01T00:00"))
    res = detect(threshold_rule(0.8), b, [account(0)])
    assert res.findings == [] and res.decided.tolist() == [True]


# ---------------------------------------------------------- periods and buckets


def test_month_boundary() -> None:
    start = ts("2026-09-25T00:00")

    def level(t: int) -> float:
        return 100.0 if t >= ts("2026-11-01T00:00") else 10.0 if t >= ts("2026-10-01T00:00") else 1.0

    full = block(ramp(start, ts("2026-11-03T00:00"), DAY, level), start)
    assert usage_of(full, [account(0)]) == [200.0]
    at_boundary = full.truncated(full.n_buckets - 2)  # at = 2026-11-01T00:00: the October period, complete
    assert usage_of(at_boundary, [account(0)]) == [310.0]
    (f,) = detect(threshold_rule(1.0), at_boundary, [account(0, quota=310.0)]).findings
    assert f.discriminator == "2026-10-01:1"
    assert (f.details["period_start"], f.details["period_end"]) == (
        "2026-10-01T00:00:00Z",
        "2026-11-01T00:00:00Z",
    )


def test_billing_day_15() -> None:
    start = ts("2026-10-01T00:00")
    b = block(np.full(50, 100.0), start)  # up to 2026-11-20
    facts = [account(0, billing_day=15)]
    assert usage_of(b, facts) == [500.0]  # Nov 15..19
    (f,) = detect(threshold_rule(0.05), b, facts).findings
    assert f.discriminator == "2026-11-15:0.05" and f.window_start == ts("2026-11-15T00:00")
    assert f.details["period_end"] == "2026-12-15T00:00:00Z"
    earlier = b.truncated(40)  # at = 2026-11-10: the period that began on 2026-10-15
    assert usage_of(earlier, facts) == [2_600.0]


def test_dst_march_period_new_york_hourly_buckets() -> None:
    tz = "America/New_York"
    start = ts("2026-01-25T00:00")
    end = ts("2026-04-02T00:00")
    b = block(np.ones((end - start) // H), start, step=H)
    facts = [account(0, quota=743.0, tz=tz)]

    def at(text: str) -> MetricBlock:
        return b.truncated((ts(text) - start) // H)

    # March in New York: 2026-03-01 05:00Z (EST) .. 2026-04-01 04:00Z (EDT), 31 days less an hour.
    march_end = at("2026-04-01T04:00")
    assert usage_of(march_end, facts) == [743.0]
    (f,) = detect(threshold_rule(1.0, step=H), march_end, facts).findings
    assert f.discriminator == "2026-03-01:1" and f.value == 743.0
    assert (f.details["period_start"], f.details["period_end"]) == (
        "2026-03-01T05:00:00Z",
        "2026-04-01T04:00:00Z",
    )
    assert usage_of(at("2026-04-01T05:00"), facts) == [1.0]  # the April period has one bucket
    assert usage_of(at("2026-03-01T05:00"), facts) == [672.0]  # all of February (no DST change)
    assert usage_of(at("2026-03-01T06:00"), facts) == [1.0]


def test_dst_daily_buckets_count_by_bucket_start() -> None:
    start = ts("2026-02-20T00:00")
    b = block(np.ones(40), start)  # up to 2026-04-01T00:00Z (= Mar 31 20:00 EDT)
    facts = [account(0, tz="America/New_York")]
    # Period starts 2026-03-01T05:00Z: the bucket starting 2026-03-01T00:00Z is not in it.
    assert usage_of(b, facts) == [30.0]


def test_accounts_with_different_timezones_in_one_block() -> None:
    start, end = ts("2026-10-10T00:00"), ts("2026-11-02T00:00")
    n = (end - start) // H
    b = block(np.ones((6, n)), start, step=H)
    facts = [
        account(0, quota=40.0),
        account(1, quota=40.0, tz="America/New_York"),
        account(2, quota=40.0, tz="Asia/Tokyo"),
        account(3, quota=40.0, tz="Europe/Berlin", billing_day=15),
        account(4, quota=None),
        account(5, quota=48.0),
    ]
    # UTC: since Nov 1 00:00Z = 24; New York (EDT): since 04:00Z = 20; Tokyo: since Oct 31 15:00Z = 33;
    # Berlin, billing day 15: since Oct 14 22:00Z = 434.
    assert usage_of(b, facts) == [24.0, 20.0, 33.0, 434.0, None, 24.0]
    res = detect(threshold_rule(0.5, 0.8, step=H), b, facts)
    assert res.decided.tolist() == [True, True, True, True, False, True]
    got = sorted((f.account_id, f.discriminator) for f in res.findings)
    assert got == [
        ("acct-0", "2026-11-01:0.5"),
        ("acct-1", "2026-11-01:0.5"),
        ("acct-2", "2026-11-01:0.5"),
        ("acct-2", "2026-11-01:0.8"),
        ("acct-3", "2026-10-15:0.5"),
        ("acct-3", "2026-10-15:0.8"),
        ("acct-5", "2026-11-01:0.5"),
    ]


# ---------------------------------------------------------------------- forecast


def test_forecast_fires_with_projected_date_and_message() -> None:
    start, at = ts("2026-10-25T00:00"), ts("2026-11-11T00:00")
    b = block(np.full((at - start) // DAY, 500.0), start)
    res = detect(forecast_rule(1.0), b, [account(0)])
    assert res.decided.tolist() == [True]
    (f,) = res.findings
    assert (f.kind, f.severity, f.value, f.baseline, f.threshold) == (
        "quota",
        "info",
        5_000.0,
        None,
        10_000.0,
    )
    assert (f.discriminator, f.once) == ("2026-11-01:forecast1", True)
    assert (f.window_start, f.window_end) == (ts("2026-11-01T00:00"), at)
    assert f.details["projected_total"] == pytest.approx(15_000.0)
    assert f.details["projected_date"] == "2026-11-21" and f.details["days_left"] == 10.0
    assert f.details["rate_per_day"] == pytest.approx(500.0)
    assert f.message == (
        "api_calls is projected to reach 100% of the monthly quota (10,000) on 2026-11-21, in 10 days:"
        " 5,000 used so far (50%) in the period starting 2026-11-01 at a recent 500/day,"
        " 15,000 projected by the period end on 2026-12-01."
    )


def test_forecast_uses_only_the_recent_rate() -> None:
    start, at = ts("2026-11-01T00:00"), ts("2026-11-11T00:00")
    values = np.array([2_000.0] * 3 + [100.0] * 7)  # 6,700 so far, but only 100/day lately
    b = block(values, start)
    assert detect(forecast_rule(1.0), b, [account(0)]).findings == []
    (f,) = detect(forecast_rule(1.0, forecast_window=10 * DAY), b, [account(0)]).findings
    assert f.details["rate_per_day"] == pytest.approx(670.0)
    assert f.details["projected_total"] == pytest.approx(6_700.0 + 670.0 * 20)
    assert f.at == at


def test_forecast_does_not_fire_once_reached_or_too_early() -> None:
    start = ts("2026-11-01T00:00")
    reached = block(np.full(10, 1_000.0), start)
    res = detect(forecast_rule(1.0), reached, [account(0)])
    assert res.findings == [] and res.decided.tolist() == [True]
    early = block(np.full(2, 3_000.0), start)  # 2 days elapsed < min_elapsed 3d
    res = detect(forecast_rule(1.0), early, [account(0)])
    assert res.findings == [] and res.decided.tolist() == [True]
    assert detect(forecast_rule(1.0, min_elapsed=DAY), early, [account(0)]).findings == []  # 2 observed days < min_observed 3d
    assert len(detect(forecast_rule(1.0, min_elapsed=DAY, min_observed=DAY), early, [account(0)]).findings) == 1


def test_forecast_without_recent_data_is_undecided() -> None:
    values = np.full(17, 300.0)
    values[-7:] = np.nan
    b = block(values, ts("2026-10-25T00:00"))
    res = detect(forecast_rule(1.0), b, [account(0)])
    assert res.findings == [] and res.decided.tolist() == [False]


def test_forecast_projected_date_is_local() -> None:
    tz = "America/New_York"
    start, at = ts("2026-10-25T00:00"), ts("2026-11-11T05:00")  # Nov 11 00:00 EST
    b = block(np.ones((at - start) // H), start, step=H)
    (f,) = detect(forecast_rule(1.0, step=H), b, [account(0, quota=405.0, tz=tz)]).findings
    # Period since 2026-11-01T04:00Z: 241 so far at 24/day; 405 reached 164h later, at
    # 2026-11-18T01:00Z, which is still November 17 in New York.
    assert f.value == 241.0 and f.details["projected_date"] == "2026-11-17"
    assert f.details["days_left"] == 6.8
    assert f.details["projected_total"] == pytest.approx(241.0 + 480.0)
    assert f.discriminator == "2026-11-01:forecast1"


def test_forecast_fraction_in_discriminator() -> None:
    b = block(np.full(10, 500.0), ts("2026-11-01T00:00"))
    (f,) = detect(forecast_rule(0.9), b, [account(0)]).findings
    assert f.discriminator == "2026-11-01:forecast0.9" and f.threshold == 9_000.0
    assert f.details["projected_date"] == "2026-11-19"


def test_forecast_with_no_observed_period_usage_is_undecided() -> None:
    values = np.concatenate([np.full(7, 5_000.0), np.full(4, np.nan)])  # Oct 25..31 observed, Nov missing
    b = block(values, ts("2026-10-25T00:00"))
    res = detect(forecast_rule(1.0), b, [account(0)])
    assert res.findings == [] and res.decided.tolist() == [False]

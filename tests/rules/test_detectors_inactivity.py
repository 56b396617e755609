"""Inactivity detector (rules.detectors.inactivity) on hand-built blocks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from rules.detectors import detect
from rules.detectors.inactivity import InactivityParams
from rules.model import DAY, AccountFacts, DetectorResult, MetricBlock, Rule

H = 3600


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


END = ts("2026-11-15T00:00")


def block(values: object, end: int = END, step: int = DAY) -> MetricBlock:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    ids = [f"acct-{i}" for i in range(arr.shape[0])]
    return MetricBlock("seats_active", end - arr.shape[1] * step, step, ids, arr)


def rule(step: int = DAY, **params: Any) -> Rule:
    return Rule(
        "went-quiet", "inactivity", "seats_active", step, InactivityParams(**params), rule_hash="f00d"
    )


def run(r: Rule, b: MetricBlock) -> DetectorResult:
    return detect(r, b, [AccountFacts(a, a) for a in b.account_ids])


def series(prior: float, prior_days: int = 30, quiet_days: int = 7) -> np.ndarray:
    return np.concatenate([np.full(prior_days, prior), np.zeros(quiet_days)])


def test_fires_with_every_field_filled() -> None:
    b = block(series(10.0))
    res = run(rule(), b)
    assert res.decided.tolist() == [True]
    (f,) = res.findings
    assert (f.rule_id, f.account_id, f.kind, f.metric) == (
        "went-quiet",
        "acct-0",
        "inactivity",
        "seats_active",
    )
    assert (f.value, f.baseline, f.threshold) == (0.0, 10.0, None)
    assert (f.at, f.bucket_start) == (END, END - DAY)
    assert (f.window_start, f.window_end) == (END - 37 * DAY, END)
    assert (f.discriminator, f.once, f.rule_hash) == ("", False, "f00d")
    assert f.details == {
        "last_active": "2026-11-07T00:00:00Z",  # the START of the last bucket with usage
        "prior_usage": 300.0,
        "inactive_since": "2026-11-08T00:00:00Z",
        "missing_buckets": 0,
    }
    assert f.message == (
        "seats_active had no usage in the 7d since 2026-11-08 (last active 2026-11-07),"
        " after 300 in the previous 30d."
    )


def test_any_usage_in_the_window_stops_it() -> None:
    values = series(10.0)
    values[-3] = 0.5
    res = run(rule(), block(values))
    assert res.findings == [] and res.decided.tolist() == [True]


def test_block_shorter_than_window_is_undecided() -> None:
    res = run(rule(), block(np.zeros(6)))
    assert res.findings == [] and res.decided.tolist() == [False]


def test_empty_series_is_undecided() -> None:
    b = MetricBlock("seats_active", END, DAY, ["a"], np.empty((1, 0)))
    res = run(rule(), b)
    assert res.findings == [] and res.decided.tolist() == [False]


def test_all_nan_is_undecided_even_when_missing_is_tolerated() -> None:
    for max_missing in (0.0, 1.0):
        res = run(rule(max_missing=max_missing), block(np.full(37, np.nan)))
        assert res.findings == [] and res.decided.tolist() == [False]


def test_missing_buckets_are_not_zero() -> None:
    values = series(10.0)
    values[-7:] = np.nan  # no data at all is not inactivity
    assert run(rule(), block(values)).decided.tolist() == [False]
    values = series(10.0)
    values[-2] = np.nan
    res = run(rule(), block(values))  # max_missing 0: one gap is enough to abstain
    assert res.findings == [] and res.decided.tolist() == [False]


def test_tolerated_gaps_fire_and_are_reported() -> None:
    values = series(10.0)
    values[-2] = values[-5] = np.nan  # 2 of 7 missing = 0.29
    assert run(rule(max_missing=0.25), block(values)).decided.tolist() == [False]
    (f,) = run(rule(max_missing=0.3), block(values)).findings
    assert f.details["missing_buckets"] == 2
    assert "(5 of 7 buckets observed; last active 2026-11-07)" in f.message  # the day last used


def test_never_active_accounts_do_not_alert() -> None:
    res = run(rule(), block(np.zeros(37)))
    assert res.findings == [] and res.decided.tolist() == [True]


def test_min_prior_usage() -> None:
    b = block(series(1.0))  # 30 in the prior window
    assert len(run(rule(min_prior_usage=30.0), b).findings) == 1
    assert run(rule(min_prior_usage=31.0), b).findings == []


def test_prior_window_limits_what_counts_as_prior_usage() -> None:
    values = np.concatenate([np.full(10, 100.0), np.zeros(30 + 7)])  # active long ago, then 37 quiet days
    res = run(rule(prior_window=30 * DAY), block(values))
    assert res.findings == [] and res.decided.tolist() == [True]
    (f,) = run(rule(prior_window=40 * DAY), block(values)).findings
    assert f.details["prior_usage"] == 1_000.0
    assert f.details["last_active"] == "2026-10-08T00:00:00Z"
    assert f.baseline == pytest.approx(1_000.0 / 40)


def test_baseline_is_mean_per_observed_prior_bucket() -> None:
    values = series(12.0)
    values[:15] = np.nan
    (f,) = run(rule(), block(values)).findings
    assert f.baseline == 12.0 and f.details["prior_usage"] == 180.0


def test_fires_without_usage_history_when_min_prior_usage_is_zero() -> None:
    values = np.concatenate([np.full(30, np.nan), np.zeros(7)])
    (f,) = run(rule(min_prior_usage=0.0), block(values)).findings
    assert f.baseline is None and f.details["last_active"] is None
    assert "no usage anywhere in the loaded history" in f.message


def test_hourly_buckets() -> None:
    values = np.concatenate([np.full(48, 3.0), np.zeros(24)])
    values[30] = 0.0
    r = rule(step=H, duration=DAY, prior_window=2 * DAY)
    (f,) = run(r, block(values, step=H)).findings
    assert f.details["last_active"] == "2026-11-13T23:00:00Z"  # the last hour with usage
    assert f.details["prior_usage"] == 141.0
    assert f.message == (
        "seats_active had no usage in the 1d since 2026-11-14 00:00 UTC"
        " (last active 2026-11-13 23:00 UTC), after 141 in the previous 2d."
    )
    values[-1] = 1.0
    assert run(r, block(values, step=H)).findings == []


def test_many_rows() -> None:
    rows = [series(10.0), series(0.0), np.full(37, np.nan), series(5.0)]
    rows[3][-1] = 2.0
    res = run(rule(), block(rows))
    assert [f.account_id for f in res.findings] == ["acct-0"]
    assert res.decided.tolist() == [True, True, False, True]


def test_without_a_prior_window_the_message_claims_none() -> None:
    """Seen: prior_window = "0" (min_prior_usage = 0) said "..., after 0 in the previous 0." of an account
    that had used 15 before it went quiet."""
    (f,) = run(rule(prior_window=0, min_prior_usage=0.0), block(series(5.0, prior_days=3, quiet_days=7))).findings
    assert f.message == "seats_active had no usage in the 7d since 2026-11-08 (last active 2026-11-07)."

"""Spike and drop detectors (rules.detectors.spike_drop) on hand-built blocks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from rules.detectors import detect
from rules.detectors.spike_drop import DropParams, SpikeParams
from rules.model import DAY, WEEK, AccountFacts, Baseline, DetectorResult, Guards, MetricBlock, Rule

H = 3600
M = 60


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


MONDAY = ts("2026-11-02T00:00")  # a Monday


def block(values: object, end: int = MONDAY, step: int = H, metric: str = "api_calls") -> MetricBlock:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    ids = [f"acct-{i}" for i in range(arr.shape[0])]
    return MetricBlock(metric, end - arr.shape[1] * step, step, ids, arr)


def facts(b: MetricBlock) -> list[AccountFacts]:
    return [AccountFacts(a, a.upper()) for a in b.account_ids]


def spike(step: int = H, **kw: Any) -> Rule:
    params = {k: kw.pop(k) for k in ("ratio", "zscore", "smooth") if k in kw}
    return Rule("api-spike", "spike", "api_calls", step, SpikeParams(**params), rule_hash="abc123", **kw)


def drop(step: int = H, **kw: Any) -> Rule:
    params = {k: kw.pop(k) for k in ("ratio", "zscore", "smooth") if k in kw}
    return Rule("api-drop", "drop", "api_calls", step, DropParams(**params), rule_hash="abc123", **kw)


def run(rule: Rule, b: MetricBlock) -> DetectorResult:
    return detect(rule, b, facts(b))


def flat(n: int, level: float, last: float | None = None) -> np.ndarray:
    arr = np.full(n, level, dtype=np.float64)
    if last is not None:
        arr[-1] = last
    return arr


N = 28 * 24 + 1  # 4 weeks of hourly baseline plus the current bucket


# ------------------------------------------------------------------ obvious cases


def test_spike_fires_with_every_field_filled() -> None:
    b = block(flat(N, 100.0, 300.0))
    res = run(spike(ratio=2.0, severity="critical"), b)
    assert res.decided.tolist() == [True]
    (f,) = res.findings
    assert (f.rule_id, f.account_id, f.metric, f.kind, f.severity) == (
        "api-spike",
        "acct-0",
        "api_calls",
        "spike",
        "critical",
    )
    assert f.at == MONDAY and f.bucket_start == MONDAY - H
    assert (f.value, f.baseline, f.threshold) == (300.0, 100.0, 200.0)
    assert f.window_start == MONDAY - N * H and f.window_end == MONDAY
    assert f.discriminator == "" and f.once is False and f.rule_hash == "abc123"
    assert f.details == {"ratio": 3.0, "points": 672, "seasonality": "none", "method": "median", "smooth": 1}
    assert f.message == (
        "api_calls spiked to 300 in the 1h bucket starting 2026-11-01 23:00 UTC: 3x the baseline of 100"
        " (median of 672 points over the previous 28d; threshold 200)."
    )


def test_spike_does_not_fire_below_ratio() -> None:
    res = run(spike(ratio=2.0), block(flat(N, 100.0, 199.0)))
    assert res.findings == [] and res.decided.tolist() == [True]


def test_spike_fires_exactly_at_threshold() -> None:
    res = run(spike(ratio=2.0), block(flat(N, 100.0, 200.0)))
    assert [f.value for f in res.findings] == [200.0]


def test_drop_fires_and_message() -> None:
    b = block(flat(N, 12_345.0, 3_086.25))
    (f,) = run(drop(ratio=0.5), b).findings
    assert (f.kind, f.value, f.baseline, f.threshold) == ("drop", 3086.25, 12345.0, 6172.5)
    assert f.details["ratio"] == pytest.approx(0.25)
    assert f.message == (
        "api_calls dropped to 3,086 in the 1h bucket starting 2026-11-01 23:00 UTC: 0.25x the baseline of"
        " 12,345 (median of 672 points over the previous 28d; threshold 6,172)."
    )


def test_drop_does_not_fire_above_ratio_nor_on_spike() -> None:
    res = run(drop(ratio=0.5), block([flat(N, 100.0, 60.0), flat(N, 100.0, 500.0)]))
    assert res.findings == [] and res.decided.tolist() == [True, True]


# ------------------------------------------------------------- empty and missing


def test_empty_series_is_undecided() -> None:
    b = MetricBlock("api_calls", MONDAY, H, ["a", "b"], np.empty((2, 0)))
    for rule in (spike(), drop()):
        res = run(rule, b)
        assert res.findings == [] and res.decided.tolist() == [False, False]


def test_no_rows() -> None:
    b = MetricBlock("api_calls", MONDAY - N * H, H, [], np.empty((0, N)))
    res = run(spike(), b)
    assert res.findings == [] and res.decided.shape == (0,)


def test_all_nan_is_undecided() -> None:
    res = run(drop(), block(np.full(N, np.nan)))
    assert res.findings == [] and res.decided.tolist() == [False]


def test_missing_current_bucket_is_undecided_not_a_drop() -> None:
    res = run(drop(), block(flat(N, 100.0, np.nan)))
    assert res.findings == [] and res.decided.tolist() == [False]


def test_gaps_in_baseline_are_not_zero() -> None:
    values = flat(N, 100.0, 40.0)
    values[: N - 1 : 2] = np.nan  # every other baseline bucket missing
    (f,) = run(drop(), block(values)).findings
    assert f.baseline == 100.0  # NaN as zero would have pulled the median to 50 (and 40 > 25)
    assert f.details["points"] == 336


def test_too_few_observed_points_is_undecided() -> None:
    values = np.full(N, np.nan)
    values[5] = values[9] = 100.0
    values[-1] = 500.0
    rule = spike(baseline=Baseline(min_points=3))
    assert run(rule, block(values)).decided.tolist() == [False]
    values[12] = 100.0
    res = run(rule, block(values))
    assert res.decided.tolist() == [True] and len(res.findings) == 1


def test_zeros_are_neither_spike_nor_drop() -> None:
    b = block(np.zeros(N))
    for rule in (spike(), drop()):
        res = run(rule, b)
        assert res.findings == [] and res.decided.tolist() == [True]


def test_spike_from_zero_baseline_has_no_ratio() -> None:
    (f,) = run(spike(), block(flat(N, 0.0, 5.0))).findings
    assert f.details["ratio"] is None and f.baseline == 0.0
    assert "up from a baseline of 0" in f.message


def test_short_block_uses_the_points_it_has() -> None:
    res = run(spike(), block(flat(10, 100.0, 300.0)))
    (f,) = res.findings
    assert f.details["points"] == 9 and f.window_start == MONDAY - 10 * H


# ------------------------------------------------------------------------ guards


@pytest.mark.parametrize(
    "guards",
    [Guards(min_baseline=10.0), Guards(min_value=50.0), Guards(min_delta=20.0)],
)
def test_tiny_volumes_are_blocked_by_guards(guards: Guards) -> None:
    b = block(flat(N, 2.0, 10.0))  # 5x, but tiny
    assert len(run(spike(), b).findings) == 1
    res = run(spike(guards=guards), b)
    assert res.findings == [] and res.decided.tolist() == [True]


def test_drop_guards_ignore_min_value() -> None:
    b = block(flat(N, 100.0, 10.0))
    assert len(run(drop(guards=Guards(min_value=1_000.0)), b).findings) == 1
    assert run(drop(guards=Guards(min_baseline=500.0)), b).findings == []
    assert run(drop(guards=Guards(min_delta=95.0)), b).findings == []


# ------------------------------------------------------------ weekly seasonality


def weekday_series(n_days: int, end: int, level: dict[int, float]) -> np.ndarray:
    """Daily series ending at `end`; level per weekday (0 = Monday), default 100."""
    days = end - DAY * np.arange(n_days, 0, -1)
    weekday = (days // DAY + 3) % 7  # 1970-01-01 was a Thursday
    return np.array([level.get(int(w), 100.0) for w in weekday])


def test_weekend_dip_is_not_a_drop_with_weekly_seasonality() -> None:
    saturday_end = ts("2026-11-08T00:00")  # the last daily bucket is Saturday 2026-11-07
    values = weekday_series(35, saturday_end, {5: 10.0, 6: 10.0})
    b = block(values, end=saturday_end, step=DAY)
    plain = drop(step=DAY, baseline=Baseline(window=28 * DAY))
    assert len(run(plain, b).findings) == 1  # against all days, the weekend looks like a drop
    weekly = drop(step=DAY, baseline=Baseline(window=28 * DAY, seasonality="weekly"))
    res = run(weekly, b)
    assert res.findings == [] and res.decided.tolist() == [True]
    # ...but a Saturday far below previous Saturdays still is.
    values[-1] = 2.0
    (f,) = run(weekly, block(values, end=saturday_end, step=DAY)).findings
    assert f.baseline == 10.0 and f.details == {
        "ratio": 0.2,
        "points": 4,
        "seasonality": "weekly",
        "method": "median",
        "smooth": 1,
    }
    assert "median of 4 points at the same time in previous weeks" in f.message


def test_monday_spike_is_judged_against_previous_mondays() -> None:
    end = ts("2026-11-03T00:00")  # the last daily bucket is Monday 2026-11-02
    values = weekday_series(36, end, {0: 500.0})
    values[-1] = 600.0
    weekly = spike(step=DAY, ratio=2.0, baseline=Baseline(window=28 * DAY, seasonality="weekly"))
    assert len(run(spike(step=DAY, ratio=2.0), block(values, end=end, step=DAY)).findings) == 1
    assert run(weekly, block(values, end=end, step=DAY)).findings == []
    values[-1] = 1_200.0
    (f,) = run(weekly, block(values, end=end, step=DAY)).findings
    assert (f.baseline, f.threshold) == (500.0, 1000.0)
    assert f.window_start == end - 4 * WEEK - DAY


def test_weekly_hourly_uses_same_hour_of_previous_weeks() -> None:
    n = 5 * 7 * 24
    hours = np.arange(n) % 24
    values = np.where(hours == 23, 1_000.0, 10.0)  # every day's 23:00 bucket is busy
    values[-1] = 900.0  # the evaluated bucket is Sunday 23:00
    weekly = drop(baseline=Baseline(window=4 * WEEK, seasonality="weekly"))
    res = run(weekly, block(values))
    assert res.findings == [] and res.decided.tolist() == [True]
    values[-1] = 300.0
    (f,) = run(weekly, block(values)).findings
    assert f.baseline == 1_000.0 and f.details["points"] == 4


def test_weekly_counts_only_observed_weeks() -> None:
    end = ts("2026-11-03T00:00")
    values = weekday_series(36, end, {})
    values[-8] = np.nan  # last week's Monday missing
    values[-1] = 500.0
    rule = spike(step=DAY, baseline=Baseline(window=4 * WEEK, seasonality="weekly", min_points=4))
    assert run(rule, block(values, end=end, step=DAY)).decided.tolist() == [False]
    rule3 = spike(step=DAY, baseline=Baseline(window=4 * WEEK, seasonality="weekly", min_points=3))
    (f,) = run(rule3, block(values, end=end, step=DAY)).findings
    assert f.details["points"] == 3


def test_weekly_needs_a_window_of_a_week() -> None:
    rule = spike(baseline=Baseline(window=3 * DAY, seasonality="weekly"), source_file="r.toml", source_line=7)
    with pytest.raises(ValueError, match=r"rule 'api-spike' \(r.toml:7\).*at least 1w"):
        run(rule, block(flat(N, 1.0)))


# --------------------------------------------------------------------- smoothing


def test_smoothing_averages_the_last_buckets() -> None:
    values = flat(N, 100.0, 400.0)
    assert len(run(spike(ratio=2.5), block(values)).findings) == 1
    assert run(spike(ratio=2.5, smooth=3), block(values)).findings == []  # (100+100+400)/3 = 200
    values[-3:] = [300.0, 300.0, 330.0]
    (f,) = run(spike(ratio=2.5, smooth=3), block(values)).findings
    assert f.value == pytest.approx(310.0)
    assert f.details["smooth"] == 3 and f.details["points"] == N - 3
    assert "(mean of the 3 1h buckets ending 2026-11-02 00:00 UTC)" in f.message


def test_smoothing_with_a_missing_bucket_is_undecided() -> None:
    values = flat(N, 100.0, 400.0)
    values[-2] = np.nan
    res = run(spike(smooth=3), block(values))
    assert res.findings == [] and res.decided.tolist() == [False]


def test_weekly_points_are_smoothed_too() -> None:
    end = ts("2026-11-03T00:00")
    values = weekday_series(37, end, {})
    values[-8] = 400.0  # a busy day a week ago: that week's smoothed point is (100 + 400) / 2
    values[-2:] = 250.0
    rule = spike(step=DAY, ratio=2.0, smooth=2, baseline=Baseline(window=4 * WEEK, seasonality="weekly"))
    (f,) = run(rule, block(values, end=end, step=DAY)).findings
    assert f.value == 250.0 and f.baseline == 100.0  # points: 250, 100, 100, 100 -> median 100


# ------------------------------------------------------------------------ zscore


def test_zscore_must_also_hold() -> None:
    base = np.tile([50.0, 150.0], N // 2 + 1)[:N]  # median 100, MAD 50
    base[-1] = 250.0  # ratio 2.5, z = 150 / (1.4826 * 50) = 2.02
    b = block(base)
    assert len(run(spike(ratio=2.0), b).findings) == 1
    assert run(spike(ratio=2.0, zscore=3.0), b).findings == []
    (f,) = run(spike(ratio=2.0, zscore=2.0), b).findings
    assert f.details["zscore"] == pytest.approx(150.0 / (1.4826 * 50.0))
    assert "z-score 2.0" in f.message


def test_zscore_scale_floor_on_flat_baseline() -> None:
    # MAD is 0, so the scale is 5% of the baseline: z = (130 - 100) / 5 = 6.
    (f,) = run(spike(ratio=1.2, zscore=5.0), block(flat(N, 100.0, 130.0))).findings
    assert f.details["zscore"] == pytest.approx(6.0)
    assert run(spike(ratio=1.2, zscore=7.0), block(flat(N, 100.0, 130.0))).findings == []


def test_drop_zscore() -> None:
    base = np.tile([80.0, 120.0], N // 2 + 1)[:N]  # median 100, MAD 20 -> scale 29.65
    base[-1] = 30.0  # z = 70 / 29.65 = 2.36
    assert len(run(drop(ratio=0.5, zscore=2.0), block(base)).findings) == 1
    assert run(drop(ratio=0.5, zscore=2.5), block(base)).findings == []


# ------------------------------------------------------- methods, buckets, rows


def test_mean_method() -> None:
    values = flat(N, 100.0, 500.0)
    values[:10] = 1_000.0
    rule = spike(baseline=Baseline(method="mean"))
    (f,) = run(rule, block(values)).findings
    assert f.baseline == pytest.approx((662 * 100.0 + 10 * 1_000.0) / 672)
    assert "mean of 672 points" in f.message


def test_minute_buckets() -> None:
    values = flat(61, 20.0, 90.0)
    rule = spike(step=M, baseline=Baseline(window=H))
    (f,) = run(rule, block(values, step=M)).findings
    assert f.details["points"] == 60 and f.bucket_start == MONDAY - M
    assert f.message.startswith("api_calls spiked to 90 in the 1m bucket starting 2026-11-01 23:59 UTC")


def test_many_rows_are_independent() -> None:
    rows = [
        flat(N, 100.0, 300.0),  # spike
        flat(N, 100.0, 120.0),  # normal
        flat(N, 100.0, np.nan),  # undecided
        np.full(N, np.nan),  # undecided
        flat(N, 1.0, 9.0),  # spike blocked by guard
    ]
    res = run(spike(guards=Guards(min_value=10.0)), block(rows))
    assert [f.account_id for f in res.findings] == ["acct-0"]
    assert res.decided.tolist() == [True, True, False, False, True]


def test_spike_ignores_a_later_recovery() -> None:
    values = flat(N + 5, 100.0)
    values[N - 1] = 400.0
    b = block(values)
    assert len(run(spike(), b.truncated(N)).findings) == 1
    assert run(spike(), b).findings == []


def test_findings_are_frozen_and_serialisable() -> None:
    (f,) = run(spike(), block(flat(N, 100.0, 300.0))).findings
    assert f.explanation()["details"]["points"] == 672
    with pytest.raises(AttributeError):
        f.value = 1.0  # type: ignore[misc]
    assert replace(f, value=1.0).value == 1.0


def test_open_episodes_still_holding_come_columnar_with_their_frozen_level() -> None:
    """The open spikes/drops whose condition still holds are one FindingRows (in the open episodes'
    order, no Finding built until read): each row's Finding is judged against the episode's level
    (no reference: the ordinary baseline), as the lifecycle's continuation reads it."""
    from rules.model import FindingRows, OpenEpisode

    b = block(np.array([flat(N, 100.0, 10.0), flat(N, 100.0, 95.0), flat(N, 200.0, 20.0)]))
    opened = [OpenEpisode("acct-2", "", MONDAY - 5 * H, firing=False),
              OpenEpisode("acct-0", "", MONDAY - 3 * H, firing=False),
              OpenEpisode("acct-1", "", MONDAY - 3 * H, firing=False)]
    rule = drop()
    res = detect(rule, b, facts(b), opened)
    held = [x for x in res.found if isinstance(x, FindingRows)]
    assert len(held) == 1 and [held[0].account_id(k) for k in range(len(held[0]))] == ["acct-2", "acct-0"]
    assert held[0]._built == {}  # nothing built while deciding
    assert ("acct-1", "") in res.recoveries  # back near its usual level: not continued
    f = held[0][1]
    assert (f.account_id, f.value, f.baseline, f.threshold) == ("acct-0", 10.0, 100.0, 100.0 * rule.params.ratio)
    assert f.details["frozen_baseline"] and f.window_start == MONDAY - 3 * H - H
    assert held[0].baseline_of(0) == 200.0 and "dropped to" in f.message

"""The anomaly kind (rules.detectors.anomaly): the learnt model, the noise scale, warm-up, episodes
through the replay, no look-ahead, loader errors (file:line) and the shipped preset."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest

from rules.detectors import detect, required_history
from rules.detectors import format as fmt
from rules.detectors.anomaly import (
    CHUNK_CELLS,
    MODEL_NAMES,
    AnomalyParams,
    _median_of,
    _tail_scale,
    cohort_level,
    fit,
    history_buckets,
    learn_buckets,
    sorting_network,
    tail_probability,
)
from rules.engine import history_needed
from rules.impact import Pricing, assess
from rules.loader import RuleFileError, load_rules, load_rules_text
from rules.model import DAY, WEEK, AccountFacts, MetricBlock, OpenEpisode, Rule
from rules.replay import replay

H = 3600
M5 = 300
END = 1_792_800_000 - 1_792_800_000 % WEEK  # a fixed week boundary
PRESET = Path(__file__).resolve().parents[2] / "rules" / "examples" / "anomaly.toml"


def block(values: Any, step: int = H, end: int = END) -> MetricBlock:
    arr = np.atleast_2d(np.asarray(values, dtype=np.float64))
    return MetricBlock("value", end - arr.shape[1] * step, step, [f"a{i}" for i in range(arr.shape[0])], arr)


def rule(step: int = H, **params: Any) -> Rule:
    return Rule("anom", "anomaly", "value", step, AnomalyParams(**params), rule_hash="beef")


def facts(b: MetricBlock) -> list[AccountFacts]:
    return [AccountFacts(a, a) for a in b.account_ids]


def daily_pattern(n: int, step: int = H, seed: int = 0, noise: float = 2.0) -> np.ndarray:
    """A daily cycle (100 by day, 20 by night) with Gaussian noise, ending at END."""
    rng = np.random.default_rng(seed)
    t = END - (n - np.arange(n)) * step
    hour = (t % DAY) / H
    return np.where((hour >= 8) & (hour < 20), 100.0, 20.0) + rng.normal(0, noise, n)


def test_the_daily_pattern_is_learnt_and_a_break_of_it_fires() -> None:
    n = history_buckets(AnomalyParams(), H)
    series = daily_pattern(n)
    quiet = detect(rule(), block(series), facts(block(series)))
    assert quiet.decided.tolist() == [True] and quiet.findings == []
    f = fit(block(series).values, H, AnomalyParams())
    assert f.model.tolist() in ([1], [2])  # a seasonal model (a daily cycle is weekly too): the wave is learnt
    night = series.copy()
    assert (END - H) % DAY // H == 23  # the evaluated bucket is at night (usually 20)
    night[-1] = 100.0  # a day-time level at night: normal for a level model, an anomaly for this series
    (finding,) = detect(rule(), block(night), facts(block(night))).findings
    assert finding.kind == "anomaly" and finding.value == 100.0
    assert finding.baseline == pytest.approx(20, abs=5) and finding.details["model"] in ("daily", "weekly")
    assert finding.details["score"] > 4 and finding.details["probability"] < 1e-4
    assert "expected about " in finding.message and f"({finding.details['model']} model)" in finding.message


def test_direction_up_down_both() -> None:
    n = history_buckets(AnomalyParams(), H)
    up, down = daily_pattern(n, seed=1), daily_pattern(n, seed=1)
    up[-1], down[-1] = 80.0, -40.0 + 40  # night: 80 is far above 20; 0 is far below it
    b = block([up, down])
    assert [f.account_id for f in detect(rule(direction="both"), b, facts(b)).findings] == ["a0", "a1"]
    assert [f.account_id for f in detect(rule(direction="up"), b, facts(b)).findings] == ["a0"]
    assert [f.account_id for f in detect(rule(direction="down"), b, facts(b)).findings] == ["a1"]


def test_probability_is_the_normal_tail_of_the_score() -> None:
    both, up = AnomalyParams(probability=1e-4), AnomalyParams(probability=1e-4, direction="up")
    assert both.threshold == pytest.approx(3.8906, abs=1e-3) and up.threshold == pytest.approx(3.719, abs=1e-3)
    assert tail_probability(both, -both.threshold) == pytest.approx(1e-4)
    assert tail_probability(up, up.threshold) == pytest.approx(1e-4)
    assert AnomalyParams().threshold == 4.0 and AnomalyParams().hold == 2.0


def test_counts_with_many_zeros_have_a_scale_of_at_least_one_count() -> None:
    """A series of zeros with rare 1s: the MAD and MAE are 0 but the scale is not; a 1 or a 2 does
    not fire, a burst of 20 does."""
    n = history_buckets(AnomalyParams(), M5)
    rng = np.random.default_rng(3)
    series = (rng.random(n) < 0.03).astype(float)
    for last, fires in ((1.0, False), (2.0, False), (20.0, True)):
        series[-1] = last
        f = fit(block(series, M5).values, M5, AnomalyParams())
        assert f.scale[0] >= 1.0
        assert bool(detect(rule(M5), block(series, M5), facts(block(series, M5))).findings) is fires


def test_a_flat_series_fires_on_a_real_change_only() -> None:
    n = history_buckets(AnomalyParams(), M5)
    flat = np.full(n, 45.5)
    flat[-1] = 45.6  # a wobble below min_change (1% of the level)
    assert not detect(rule(M5), block(flat, M5), facts(block(flat, M5))).findings
    flat[-1] = 50.0
    assert detect(rule(M5), block(flat, M5), facts(block(flat, M5))).findings


def test_a_spiky_series_is_judged_by_its_own_spikes() -> None:
    """Heavy tails: spikes of ~10 units every few hours are normal; a spike of 40 is not."""
    n = history_buckets(AnomalyParams(), M5)
    rng = np.random.default_rng(5)
    series = rng.normal(10, 0.5, n)
    series[rng.random(n) < 0.02] += 10
    series[-1] = 20.5
    assert not detect(rule(M5), block(series, M5), facts(block(series, M5))).findings
    series[-1] = 50.0
    assert detect(rule(M5), block(series, M5), facts(block(series, M5))).findings


def test_a_subtle_lasting_step_fires_as_a_shift_once() -> None:
    """A step of 3.5 noise units: no single bucket reaches the score (4) before the level model has
    followed it (within `adapt` buckets), but the median of the last `adapt` buckets is further from the usual level
    than any window of the learning window: the shift signal fires, says so, and holds one episode."""
    n = history_buckets(AnomalyParams(), M5)
    rng = np.random.default_rng(22)
    series = rng.normal(50, 1, n)
    step_at = n - 40
    series[step_at:] += 3.5
    events = replay_events(series, HEAD)
    fired = [i for e, i in events if e == "fired"]
    assert len(fired) == 1 and step_at < fired[0] <= step_at + 6, fired
    f = fit(series[None, : fired[0] + 1], M5, AnomalyParams())
    assert f.signal[0] == 1 and abs(f.score[0]) >= 4  # the shift signal
    b = block(series[: fired[0] + 1], M5)
    (finding,) = detect(rule(M5), b, facts(b)).findings
    assert finding.details["signal"] == "shift" and "sustained shift" in finding.message
    # a median, said as one (a surge in the window would make "it ran at" false of an average), and the
    # number is the median of the last `adapt` buckets against the usual level
    assert "over the last 30m its median ran" in finding.message and "above its usual level" in finding.message
    last = series[fired[0] + 1 - 6: fired[0] + 1]
    shift = finding.details["shift"]
    assert finding.details["span"] == 6 * M5 and shift > 0
    assert f"ran {fmt.number(shift)} above" in finding.message
    assert np.median(last) == pytest.approx(finding.baseline + shift)  # level model: no seasonal base
    i = assess("anomaly", "value", "warning", finding.value, finding.baseline, finding.details, None, Pricing(),
               finding.at, finding.bucket_start)
    assert i.headline == f"value {fmt.whole_percent(shift / finding.baseline)}% above the usual level over the last 30m"


def test_one_spike_does_not_make_a_shift() -> None:
    """The shift signal reads a median of the last `adapt` buckets: a single spike leaves it where it
    was, so it is one short episode of the bucket signal only."""
    n = history_buckets(AnomalyParams(), M5)
    rng = np.random.default_rng(22)
    series = rng.normal(50, 1, n)
    series[-3] = 80.0
    for end in (n - 2, n - 1, n):
        f = fit(series[None, :end], M5, AnomalyParams())
        assert f.signal[0] == 0 or abs(f.score[0]) < 2  # never a shift
    assert detect(rule(M5), block(series[: n - 2], M5), facts(block(series[: n - 2], M5))).findings
    assert not detect(rule(M5), block(series[: n - 1], M5), facts(block(series[: n - 1], M5))).findings


def test_the_fit_reports_both_signals_and_scores_the_stronger() -> None:
    """Fit.point (the bucket's own score) and Fit.sustained (the shift score) are both reported, signed,
    whichever is chosen; the verdict is the stronger in the rule's direction (a spike: the bucket's; a
    subtle lasting step: the shift's)."""
    n = history_buckets(AnomalyParams(), M5)
    rng = np.random.default_rng(22)
    spike = rng.normal(50, 1, n)
    spike[-1] = 80.0
    step = rng.normal(50, 1, n)
    step[n - 5:] += 3.5
    f = fit(np.stack([spike, step]), M5, AnomalyParams())
    assert f.signal.tolist() == [0, 1]
    assert f.point[0] > 4 and abs(f.sustained[0]) < 2 and f.score[0] == f.point[0]
    assert f.sustained[1] > abs(f.point[1]) and f.score[1] == f.sustained[1]
    down = fit(np.stack([spike, step]), M5, AnomalyParams(direction="down"))
    assert down.point.tolist() == f.point.tolist() and down.sustained.tolist() == f.sustained.tolist()


def test_the_median_network_is_the_median_of_the_observed_values() -> None:
    """Every size the network serves (1..12) and one past it (a row sort), every `minimum`, with and
    without gaps, and the complete path (`complete=True`) where nothing is missing: the median of
    the observed values, the pruned plan included; ties (integers) as well as distinct values."""
    rng = np.random.default_rng(4)
    for k in (*range(1, 13), 13):
        for missing in (0.0, 0.3, 0.8):
            parts = [rng.normal(size=(20, 30)) if k % 2 else rng.poisson(2.0, (20, 30)).astype(float)
                     for _ in range(k)]
            for a in parts:
                a[rng.random(a.shape) < missing] = np.nan
            stacked = np.stack(parts, axis=-1)
            count = np.count_nonzero(~np.isnan(stacked), axis=-1)
            with np.errstate(all="ignore"), pytest.warns(RuntimeWarning) if (count == 0).any() else _nothing():
                want = np.nanmedian(stacked, axis=-1)
            for minimum in range(0, k + 2):
                expect = np.where(count >= max(minimum, 1), want, np.nan)
                np.testing.assert_allclose(_median_of(parts, minimum), expect, equal_nan=True)
                if missing == 0.0:
                    np.testing.assert_allclose(_median_of(parts, minimum, complete=True), expect, equal_nan=True)
                assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(parts, np.moveaxis(stacked, -1, 0),
                                                                                 strict=True))  # inputs untouched


@pytest.mark.parametrize("k", range(1, 13))
def test_the_sorting_network_sorts_every_input(k: int) -> None:
    """The 0-1 principle: a comparator network sorts every input iff it sorts every 0/1 input."""
    for bits in itertools.product((0, 1), repeat=k):
        v = list(bits)
        for i, j in sorting_network(k):
            if v[i] > v[j]:
                v[i], v[j] = v[j], v[i]
        assert v == sorted(bits), (k, bits)


def test_the_median_network_reads_overlapping_views_of_one_history_without_writing_them() -> None:
    """fit hands the network overlapping slices of one array (the `adapt` buckets before each tau):
    they are read, never written, and the medians are those of copies of them."""
    rng = np.random.default_rng(5)
    for k in (2, 3, 6, 7):
        history = np.round(rng.normal(100, 20, size=(15, 40)))
        history[rng.random(history.shape) < (0.1 if k == 7 else 0.0)] = np.nan
        kept = history.copy()
        n = history.shape[1] - k + 1
        views = [history[:, j: j + n] for j in range(k)]
        for complete in (None, True) if k != 7 else (None,):
            got = _median_of(views, complete=complete)
            assert np.array_equal(history, kept, equal_nan=True)
            with np.errstate(all="ignore"):
                want = np.nanmedian(np.stack([v.copy() for v in views], axis=-1), axis=-1)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("step", [300, 3600])
def test_a_block_fitted_in_chunks_of_rows_is_fitted_as_each_row_alone(step: int) -> None:
    """fit learns the rows in chunks (CHUNK_CELLS): every field of every row is the one a fit of that
    row alone gives, with gaps, open episodes and counts."""
    params = AnomalyParams()
    h = history_buckets(params, step)
    per = CHUNK_CELLS // (learn_buckets(params, step) + 2 * params.adapt + 1)
    rows = 2 * per + 3  # three chunks, the last a short one
    rng = np.random.default_rng(11)
    values = rng.poisson(20, size=(rows, h)).astype(float)
    values[rng.random(values.shape) < 0.03] = np.nan
    values[::7, -4:] *= 6  # some rows move
    since = rng.integers(-1, 6, size=rows)
    whole = fit(values, step, params, since)
    for r in (0, per - 1, per, rows - 1):
        alone = fit(values[r:r + 1], step, params, since[r:r + 1])
        for name in whole.__dataclass_fields__:
            assert np.array_equal(getattr(whole, name)[r:r + 1], getattr(alone, name), equal_nan=True), (r, name)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_warm_up_is_half_adapt_plus_half_the_learning_window() -> None:
    p = AnomalyParams()
    assert learn_buckets(p, M5) == 576 and learn_buckets(p, H) == 48 and learn_buckets(p, DAY) == 48
    warm = p.adapt // 2 + learn_buckets(p, H) // 2 + 1  # 28 hourly buckets
    series = daily_pattern(200)
    assert not fit(series[None, -(warm - 1):], H, p).decided[0]
    assert fit(series[None, -warm:], H, p).decided[0]
    assert required_history(rule()) == history_buckets(p, H) * H == (48 + 6 + 3 + 1 + 3 * 168) * H
    assert required_history(rule(DAY)) == (48 + 6 + 3 + 1 + 3 * 7) * DAY  # daily buckets: weekly seasonality


def test_only_the_required_history_is_read() -> None:
    """The verdict depends on the trailing required_history only (what the scheduler loads): older
    data changes nothing, so backtest and scheduler agree."""
    n = history_buckets(AnomalyParams(), H)
    rng = np.random.default_rng(7)
    series = daily_pattern(n + 500, seed=7)
    series[-1] = 90
    older = series.copy()
    older[:500] = rng.normal(1000, 300, 500)
    a, b = block(series), block(older)
    fa, fb = detect(rule(), a, facts(a)).findings, detect(rule(), b, facts(b)).findings
    assert fa and [f.details for f in fa] == [f.details for f in fb]
    short = block(series[-n:])
    assert [f.details for f in detect(rule(), short, facts(short)).findings] == [f.details for f in fa]


def test_rows_are_independent_vectorised() -> None:
    n = history_buckets(AnomalyParams(), H)
    rows = np.stack([daily_pattern(n, seed=s) for s in range(6)])
    rows[2, -1] = 100.0
    rows[4, :-20] = np.nan  # in warm-up: undecided
    b = block(rows)
    res = detect(rule(), b, facts(b))
    alone = [detect(rule(), block(rows[i]), facts(block(rows[i]))) for i in range(6)]
    assert res.decided.tolist() == [bool(r.decided[0]) for r in alone] == [True, True, True, True, False, True]
    assert [f.account_id for f in res.findings] == ["a2"]
    assert res.findings[0].details == alone[2].findings[0].details


def test_open_episode_holds_above_recovery_and_recovers_below() -> None:
    n = history_buckets(AnomalyParams(), H)
    series = daily_pattern(n, seed=2)
    series[-1] = 60.0  # night: ~20 expected
    b = block(series)
    opened = (OpenEpisode("a0", "", END - H, True),)
    (held,) = detect(rule(), b, facts(b), opened).findings
    assert "it resolves once back within" in held.message
    series[-1] = 21.0
    res = detect(rule(), block(series), facts(b), opened)
    assert res.findings == [] and "back to 21" in res.recoveries[("a0", "")].message


def replay_events(values: np.ndarray, text: str, step: int = M5) -> list[tuple[str, int]]:
    ruleset = load_rules_text(text)
    b = block(values, step)
    start = b.start + (history_buckets(AnomalyParams(), step) - 300) * step
    return [(t.event, (t.at - b.start) // step - 1)
            for s in replay(list(ruleset.rules), {("value", step): b}, {}, start, END, quiet_first_run=False)
            for t in s.transitions]


HEAD = '[defaults]\nbucket = "5m"\n[[rule]]\nid = "a"\nkind = "anomaly"\nmetric = "value"\n'


def test_two_short_anomalies_are_two_episodes_and_a_level_shift_fires_once() -> None:
    """A lasting shift fires once and its alert stays open (the sustained-shift signal) until the new
    level is the usual one of the learning window, about half of `learn` later; then it resolves."""
    n = history_buckets(AnomalyParams(), M5) + 200  # the replay covers the last 500 buckets
    rng = np.random.default_rng(11)
    series = rng.normal(50, 1, n)
    first, second, shift = n - 450, n - 440, n - 400
    series[first] = series[second] = 70.0
    series[shift:] += 15  # a lasting new level
    events = replay_events(series, HEAD)
    (e0, i0), (e1, i1), (e2, i2), (e3, i3) = events[:4]
    assert (e0, i0, e1, e2, i2, e3) == ("fired", first, "resolved", "fired", second, "resolved")
    assert first < i1 < second < i3 < shift  # each resolved within a few buckets
    fired_after = [i for e, i in events if e == "fired" and i >= shift]
    assert fired_after == [shift]  # once: the level then adapts and the episode resolves
    (resolved,) = [i for e, i in events if e == "resolved" and i > shift]
    half = learn_buckets(AnomalyParams(), M5) // 2
    assert shift + 6 < resolved <= shift + half + 12 and events[-1] == ("resolved", resolved)


def test_for_and_cooldown_keep_their_meaning() -> None:
    n = history_buckets(AnomalyParams(), M5)
    rng = np.random.default_rng(12)
    series = rng.normal(50, 1, n)
    a, b = n - 250, n - 240
    series[a] = 70.0
    series[n - 100: n - 97] = 70.0  # three buckets in a row
    with_for = replay_events(series, HEAD.replace('metric = "value"\n', 'metric = "value"\nfor = 2\n'))
    assert [i for e, i in with_for if e == "fired"] == [n - 99]  # a single bucket never lasts two evaluations
    assert ("pending", a) in with_for and ("cleared", a + 1) in with_for
    series[b] = 70.0
    ruleset = load_rules_text(HEAD.replace('bucket = "5m"', 'bucket = "5m"\ncooldown = "2h"'))
    bl = block(series, M5)
    start = bl.start + (n - 300) * M5
    fired = [(t.notify, (t.at - bl.start) // M5 - 1)
             for s in replay(list(ruleset.rules), {("value", M5): bl}, {}, start, END)
             for t in s.transitions if t.event == "fired"]
    assert fired[:2] == [(True, a), (False, b)]  # b is 50 minutes after a: a new episode, in the cooldown


def test_loader_errors_name_file_line_and_field() -> None:
    with pytest.raises(RuleFileError) as info:
        load_rules_text(HEAD + '[rule.threshold]\nscore = 4\nprobability = 0.01\n', "a.toml")
    assert [str(p) for p in info.value.problems] == [
        "a.toml:9: rule 'a': threshold.probability: give either score or probability, not both"]
    with pytest.raises(RuleFileError) as info:
        load_rules_text(HEAD + '[rule.threshold]\nscore = 4\nrecovery = 5\ndirection = "sideways"\n'
                        'learn = "7m"\n', "a.toml")
    text = "\n".join(str(p) for p in info.value.problems)
    assert "a.toml:9: rule 'a': threshold.recovery: must be below the firing score (4)" in text
    assert "a.toml:10: rule 'a': threshold.direction:" in text and "sideways" in text
    assert "a.toml:11: rule 'a': threshold.learn:" in text


def test_the_preset_takes_its_bucket_from_defaults_and_loads_on_hourly_and_5_minute_data() -> None:
    preset = PRESET.read_text()
    (r,) = load_rules([PRESET]).rules
    assert (r.kind, r.metric, r.bucket) == ("anomaly", "value", H)
    five = load_rules_text(preset.replace('bucket = "1h"', 'bucket = "5m"'))
    assert five.rules[0].bucket == M5 and five.rules[0].params == r.params
    assert history_needed(five.rules) == {("value", M5): history_buckets(r.params, M5) * M5}



def test_a_bursty_series_fires_only_past_its_learnt_tail() -> None:
    """The peaks-over-threshold unit: Gaussian noise with bursts in one bucket of ten has a tail far
    heavier than a Gaussian's; the exponential tail learnt from its largest 5% of errors puts the
    firing point (the tail probability of a Gaussian score of 4) past a burst the 3rd largest error
    alone would fire on (about 13 here), while a break of the learnt tail still fires."""
    n = history_buckets(AnomalyParams(), M5)
    rng = np.random.default_rng(2)
    series = 100.0 + rng.normal(0, 1, n) + (rng.random(n) < 0.1) * rng.normal(0, 4, n)
    for jump, fires in ((15.0, False), (25.0, True)):
        s = series.copy()
        s[-1] = 100.0 + jump
        assert bool(detect(rule(M5), block(s, M5), facts(block(s, M5))).findings) is fires, jump


def test_two_past_anomalies_do_not_widen_the_tail_for_a_third() -> None:
    """The mean excess leaves out the two largest errors: two huge past outages in the learning
    window do not move the firing point to a share of their size."""
    n = history_buckets(AnomalyParams(), M5)
    series = 100.0 + np.random.default_rng(5).normal(0.0, 1.0, n)
    series[-300] = series[-200] = 200.0  # two past outages of 100 noise units
    series[-1] = 112.0
    assert detect(rule(M5), block(series, M5), facts(block(series, M5))).findings


def test_a_tail_learnt_from_few_errors_is_not_trusted_to_be_short() -> None:
    """The tail's firing point is the predictive (Lomax) one: the exponential's mean excess b is
    estimated from m excesses, so x* = u + m b (((k / n) / p)^(1 / m) - 1), further out than the
    plug-in u + b ln((k / n) / p) the fewer errors it is learnt from, and the same for many."""
    p = 2.0 * (1.0 - NormalDist().cdf(4.0))
    ratios = []
    for n in (48, 576, 20_000):
        sized = np.sort(np.random.default_rng(n).exponential(1.0, n))[None, :]
        k = max(10, math.ceil(0.05 * n))
        top = np.sort(sized[0])[::-1][:k + 1][::-1]  # the k + 1 largest, ascending
        u, m = top[0], k - 2
        b = float(np.mean(top[1:k + 1 - 2]) - u)  # the two largest left out
        lomax = u + m * b * ((k / n / p) ** (1 / m) - 1)
        plug_in = u + b * math.log(k / n / p)
        assert _tail_scale(sized, 4.0)[0] == pytest.approx(lomax / 4.0)
        ratios.append((lomax - u) / (plug_in - u))
    assert ratios[0] > 1.6 and 1.1 < ratios[1] < 1.2 and ratios[2] < 1.02



def _holiday_book(ways: dict[int, float], accounts: int = 40) -> tuple[MetricBlock, np.ndarray]:
    """`accounts` hourly daily-pattern series whose last bucket is set to k noise units from what
    the detector expects (ways: row -> k, negative = below; the other rows as they are), and the
    detector's own score of each row after the change (to check what the case is)."""
    values = np.stack([daily_pattern(history_buckets(AnomalyParams(), H), seed=s) for s in range(accounts)])
    point = fit(values, H, AnomalyParams()).point  # the bucket's own score, linear in its value:
    nudged = values.copy()
    nudged[:, -1] += 1.0
    unit = 1.0 / (fit(nudged, H, AnomalyParams()).point - point)  # its noise unit
    for row, k in ways.items():
        values[row, -1] += (k - point[row]) * unit[row]
    return block(values), fit(values, H, AnomalyParams()).score


def _evaluated(b: MetricBlock, **params: Any) -> Any:
    from rules.engine import evaluate
    from rules.model import Cohort

    r = Rule("anom", "anomaly", "value", H, AnomalyParams(**params), rule_hash="beef", cohort=Cohort())
    return evaluate([r], {("value", H): b}, {a: AccountFacts(a, a) for a in b.account_ids}, END, only_due=False)


def test_a_holiday_moving_most_accounts_is_one_cohort_event_though_few_pass_the_firing_score() -> None:
    """24 of 40 accounts (60%) fall by at least the recovery score, 10 (25%) of them past the
    firing score: under the cohort share (30%) by firing accounts, an event by the share test (every
    account moving the same way, by the recovery score), so none of the 10 is notified."""
    ways = {i: -5.0 for i in range(10)} | {i: -3.0 for i in range(10, 24)}
    b, score = _holiday_book(ways)
    assert np.count_nonzero(score <= -4) == 10 and np.count_nonzero(score <= -2) == 24  # the case
    out = _evaluated(b)
    assert out.findings == []
    assert [(e.accounts, e.decided, e.direction, e.firing) for e in out.cohort_events] == [(24, 40, -1, 10)]
    assert set(out.cohort_events[0].examples) <= {f"a{i}" for i in range(10)}  # examples: the firing ones
    assert {a for _, a in out.interrupted} == {f"a{i}" for i in range(24)}  # the movers, not the rest


def test_a_real_spike_the_other_way_in_a_holiday_bucket_is_notified() -> None:
    """The same holiday and one account surging 10 noise units: the event mutes the accounts that
    fell, not the one that rose; the others are still decided."""
    ways = {i: -5.0 for i in range(10)} | {i: -3.0 for i in range(10, 24)} | {30: 10.0}
    b, score = _holiday_book(ways)
    assert score[30] >= 4
    out = _evaluated(b)
    assert [f.account_id for f in out.findings] == ["a30"]
    assert len(out.cohort_events) == 1 and ("anom", "a30") in out.decided and ("anom", "a35") in out.decided
    up_only = _evaluated(b, direction="up")  # a rule watching surges only sees no event at all
    assert [f.account_id for f in up_only.findings] == ["a30"] and up_only.cohort_events == []


@pytest.mark.parametrize("recovery", [0.0, 0.5, 1.0])
def test_a_low_recovery_score_does_not_make_a_quiet_book_a_cohort_event(recovery: float) -> None:
    """Noise alone moves half a book past 0 and 31% past 0.5 noise units: counted at a low
    `recovery`, every quiet bucket would be a cohort event muting real anomalies. The share counts
    moves of at least cohort_level(share) (1.88 units at 0.3), so a quiet book has no event and one
    account's surge is notified."""
    b, score = _holiday_book({7: 10.0}, accounts=200)
    assert np.count_nonzero(np.abs(score) >= 0.5) >= 0.3 * 200  # noise past the low level: the case
    out = _evaluated(b, recovery=recovery)
    assert out.cohort_events == [] and [f.account_id for f in out.findings] == ["a7"]
    assert cohort_level(0.3) == pytest.approx(1.881, abs=1e-3) and cohort_level(1.0) == pytest.approx(1.2816, abs=1e-4)


def test_a_few_accounts_moving_are_not_a_cohort_event() -> None:
    """8 of 40 accounts (20%) fall past the firing score, 2 more half-way: under the share, all 8
    are notified (the share test does not mute what is not a cohort)."""
    ways = {i: -6.0 for i in range(8)} | {8: -3.0, 9: -3.0}
    b, _ = _holiday_book(ways)
    out = _evaluated(b)
    assert sorted(f.account_id for f in out.findings) == sorted(f"a{i}" for i in range(8))
    assert out.cohort_events == []


def test_the_expected_range_said_is_never_below_zero() -> None:
    """Seen: after a 1,000 burst in a steady 100/h series, a 10-hour outage resolved as "events back to 0:
    within -30.8 .. 231 of the expected 100": usage is never negative, the range starts at 0."""
    v = np.array([100.0] * 150 + [1000.0] + [100.0] * 20 + [0.0] * 10 + [100.0] * 5)
    b = block(v)
    r = rule()
    texts = []
    for step in replay([r], {(r.metric, r.bucket): b}, {a.id: a for a in facts(b)}, b.start + 2 * DAY, b.end):
        for t in step.transitions:
            texts.append(t.recovery.message if t.recovery is not None else t.finding.message if t.finding else "")
            for d in (t.finding.details if t.finding else {}, t.recovery.details if t.recovery else {}):
                assert d.get("low", 0.0) >= 0.0, t
    assert any("within 0 .. " in x for x in texts), texts
    assert not any("-" in x.split("within", 1)[-1] for x in texts if "within" in x), texts


def _replayed(v: np.ndarray) -> list[tuple[str, int, str, dict[str, Any]]]:
    """(event, bucket index evaluated, message, details) of the default hourly rule replayed over v."""
    b = block(v)
    r = rule()
    out = []
    for step in replay([r], {(r.metric, r.bucket): b}, {a.id: a for a in facts(b)}, b.start + 2 * DAY, b.end):
        for t in step.transitions:
            said = t.recovery if t.recovery is not None else t.finding
            out.append((t.event, (t.at - b.start) // H - 1, said.message if said else "", dict(said.details) if said else {}))
    return out


def test_an_outage_does_not_resolve_as_back_while_it_lasts() -> None:
    """Seen by QA: a steady 100/h series, a 1,000 burst, then an outage at 0: the outage's episode
    resolved 10 hours in as "back to 0: within 0 .. 231 of the expected 100", because the outage's own
    windows became the largest departure of the shift's unit (65 instead of 5.4). The open episode's
    windows are no longer learnt from: it holds until the outage is the usual level of the learning
    window (about learn / 2 = 24 h), and then says the model adapted, not that the series is back."""
    out_at = 180
    v = np.array([100.0] * out_at + [0.0] * 72)
    v[out_at - 20] = 1000.0
    events = _replayed(v)
    outage = [e for e in events if e[1] >= out_at]
    assert [e[0] for e in outage] == ["fired", "resolved"], outage
    (_, fired, _, _), (_, resolved, message, details) = outage
    assert fired <= out_at + 3
    assert resolved - out_at >= 20  # not ~10 hours in
    assert details["adapted"] is True and details["before"] == pytest.approx(100.0) and details["level"] == 0.0
    assert "back to" not in message and "has not come back" in message and "adapted to this new level" in message
    assert "against about 100 before this alert opened on" in message
    # the mechanism: 10 hours in, the shift's unit is the series' own (about 5), not the outage's
    f_open = fit(v[None, : out_at + 11], H, AnomalyParams(), np.array([out_at + 10 - fired]))
    f_blind = fit(v[None, : out_at + 11], H, AnomalyParams())
    assert f_open.scale[0] < 10 and f_blind.scale[0] > 60
    assert -f_open.score[0] >= 4 and -f_blind.score[0] < 2


def test_an_outage_that_ends_resolves_as_back() -> None:
    """The same outage for 12 hours: the episode holds through it and resolves when the series is
    back, saying so (not "adapted")."""
    out_at = 180
    v = np.array([100.0] * out_at + [0.0] * 12 + [100.0] * 10)
    v[out_at - 20] = 1000.0
    outage = [e for e in _replayed(v) if e[1] >= out_at]
    assert [e[0] for e in outage] == ["fired", "resolved"], outage
    (_, _, message, details) = outage[1]
    assert outage[1][1] >= out_at + 12 and details["adapted"] is False and message.startswith("value back to 100")


def test_a_stationary_series_is_scored_as_before_and_a_spike_resolves_as_back() -> None:
    """Rows without an open episode are scored exactly as without `since`; an open one-bucket spike on
    a stationary series resolves at the next bucket as "back", not "adapted"."""
    n = history_buckets(AnomalyParams(), M5)
    rng = np.random.default_rng(31)
    rows = rng.normal(50, 2, (3, n))
    plain = fit(rows, M5, AnomalyParams())
    told = fit(rows, M5, AnomalyParams(), np.array([-1, -1, -1]))
    for name in ("expected", "scale", "score", "point", "sustained"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(told, name))
    assert np.isnan(told.before).all()
    series = rows[0].copy()
    series[-2] = 90.0
    b = block(series, M5)
    res = detect(rule(M5), b, facts(b), (OpenEpisode("a0", "", END - M5, True),))
    recovery = res.recoveries[("a0", "")]
    assert recovery.details["adapted"] is False and "back to" in recovery.message


@pytest.mark.parametrize("hours", [30, 60])
def test_a_long_decline_never_resolves_as_back_to_a_value_outside_the_range_it_states(hours: int) -> None:
    """A reviewer's find: 180 h at 100, then a ramp to 0 over 30 or 60 h. Once the episode had outlived
    the pre-episode windows of the learning window, every window was learnt again and it resolved as
    "value back to 30.5: within 34.1 .. 127 of the expected 80.5" while the series still fell. A
    resolution says "back to" only of a value inside the range it gives, and an episode older than the
    learning window says that whether the series is back is not known."""
    v = np.concatenate([np.full(180, 100.0), np.linspace(100.0, 0.0, hours), np.zeros(60)])
    resolved = [e for e in _replayed(v) if e[0] == "resolved" and e[1] >= 180]
    assert resolved
    for _, _, message, details in resolved:
        said = re.match(r"value back to (?:about )?([\d,.]+)", message)
        if said:
            shown = float(said.group(1).replace(",", ""))
            tol = 0.01 * max(1.0, details["high"])  # (the message's numbers have 3 significant figures)
            assert details["low"] - tol <= shown <= details["high"] + tol, message
            assert details["adapted"] is False
        else:
            assert "has not come back" in message or "is not known" in message or "outside" in message, message


@pytest.mark.parametrize(("season", "surge", "model"), [(0.0, 1500.0, "level"), (0.6, 600.0, "daily")])
def test_a_surge_resolves_saying_the_median_it_judged(season: float, surge: float, model: str) -> None:
    """Seen by QA: a 2-hour surge of 1,500 on a ~100/h series resolved as "value back to about 82.5
    over the last 6h", and an open shift said "its 6h average is back within": the average of those 6
    hours was ~540. The shift signal reads the median of the last `adapt` buckets (seasonality put
    back for a seasonal model), and a resolution judged on it says so; with the level model its number
    is the median of the raw buckets."""
    rng = np.random.default_rng(4)
    hours = np.arange(24 * 12)
    v = np.round(100 * (1 + season * np.sin(2 * np.pi * (hours % 24) / 24)) + rng.normal(0, 3, hours.size))
    at = 24 * 10 + 3
    v[at: at + 2] = surge
    events = [e for e in _replayed(v) if e[1] >= at]
    assert [e[0] for e in events][:2] == ["fired", "resolved"], events
    _, resolved, message, details = events[1]
    assert details["adapted"] is False and message.startswith("value back to") and "average" not in message
    f = fit(v[None, : resolved + 1], H, AnomalyParams())
    assert MODEL_NAMES[int(f.model[0])] == model and f.signal[0] == 1  # the case this test is about
    # judged on the shift signal: the median is named, with its adjustment for a seasonal model
    said = {"level": "(its median)", "daily": "(its median, adjusted for the time of day)"}[model]
    assert f"over the last 6h {said}" in message
    number = re.search(r"back to about ([\d,.]+) over the last 6h", message)
    assert number is not None and float(number.group(1).replace(",", "")) == pytest.approx(f.level[0], rel=0.01)
    if model == "level":  # no seasonal base: the median of the raw buckets
        assert f.level[0] == np.median(v[resolved - 5: resolved + 1])


@pytest.mark.parametrize(("model", "offset"), [("daily", -40.0), ("level", -40.0)])
def test_a_shift_says_how_far_it_ran_in_terms_true_of_every_bucket(model: str, offset: float) -> None:
    """A reviewer's find: with a seasonal model the shift's headline was a share of the current
    hour's usual value ("api calls at zero over the last 6h (usually about 178)" of 6 buckets at 10
    across a daily cycle of 0 .. 205). Each of the last 6 buckets is now `offset` from its own time of
    day: the headline and the message say that offset, in units, as the median it is; with the
    level model the median of the buckets themselves, as a share of the usual level."""
    h = history_buckets(AnomalyParams(), H)
    t = np.arange(h)
    rng = np.random.default_rng(2)
    pattern = 60 * np.sin(2 * np.pi * (t % 24) / 24) if model == "daily" else 0.0
    v = np.round(100 + pattern + rng.normal(0, 2, h))
    v[-6:] += offset
    b = block(v)
    (finding,) = detect(rule(), b, facts(b)).findings
    d = finding.details
    assert d["signal"] == "shift" and d["model"] == model and d["span"] == 6 * H
    assert d["shift"] == pytest.approx(offset, abs=2.5)  # the injected offset, up to the noise's median
    i = assess("anomaly", "value", "warning", finding.value, finding.baseline, d, None, Pricing(), finding.at,
               finding.bucket_start)
    if model == "daily":
        assert i.headline == f"value ran {fmt.number(-d['shift'])} below what is usual for the time of day over the last 6h (median)"
        assert f"it ran a median of {fmt.number(-d['shift'])} below what the daily model expects for each bucket" in finding.message
    else:
        share = 1 - np.median(v[-6:]) / finding.baseline  # the buckets' own median against the usual level
        assert i.headline == f"value {fmt.whole_percent(share)}% below the usual level over the last 6h"
        assert f"its median ran {fmt.number(-d['shift'])} below its usual level" in finding.message


@pytest.mark.parametrize(("threshold", "field"), [('adapt = 12\nlearn = "11h"', "learn"), ("adapt = 100", "adapt")])
def test_a_learning_window_shorter_than_adapt_is_refused_at_load(threshold: str, field: str) -> None:
    """A reviewer's find: `adapt = 12` with `learn = "6h"` (or `adapt = 100` with the default 48
    buckets) loaded, then every evaluation raised ValueError (the shift signal had no window before
    the last `adapt` buckets to compare with). Refused at load, naming the line and field."""
    text = f'[[rule]]\nid = "a"\nkind = "anomaly"\nmetric = "value"\nbucket = "1h"\n[rule.threshold]\n{threshold}\n'
    with pytest.raises(RuleFileError) as err:
        load_rules_text(text)
    said = str(err.value)
    assert f"rule 'a': threshold.{field}:" in said and "must hold at least `adapt`" in said
    assert f":{7 if field == 'adapt' else 8}:" in said
    if field == "learn":  # a window of exactly `adapt` buckets is enough (one earlier window to compare with)
        (r,) = load_rules_text(text.replace('"11h"', '"12h"')).rules
        v = np.random.default_rng(0).poisson(10, history_buckets(r.params, H)).astype(float)
        b = block(v)
        assert detect(r, b, facts(b)).decided.all()

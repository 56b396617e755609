"""Spike and drop detectors: the current value against a baseline of past buckets.

Evaluated for the LAST column of the block only (at = block.end); NaN means
"not observed", never zero.

Current value v
    Mean of the last `smooth` buckets. If any of them is missing, or the block
    has fewer than `smooth` columns, the row is undecided.

Baseline b (see rules.detectors.baseline)
    seasonality "none":   the raw buckets in `baseline.window` before the
                          current smoothed window;
    seasonality "weekly": the smoothed values exactly k weeks earlier,
                          k = 1 .. window // 1w (same weekday and time of day).
    b = median (or mean, `baseline.method`) of the observed points. Fewer than
    max(1, baseline.min_points) observed points -> undecided.

Guards (decided, but no finding when any fails)
    b >= guards.min_baseline; |v - b| >= guards.min_delta; spike only:
    v >= guards.min_value.

Condition
    spike: v >= ratio * b and v > b      (threshold = ratio * b)
    drop:  v <= ratio * b and v < b
    The strict "v > b" / "v < b" only matters when b == 0 (or ratio == 1): a
    flat series of zeros is neither a spike nor a drop.
    If `zscore` is set it must also hold: z = (v - b) / scale for a spike,
    (b - v) / scale for a drop, scale = max(1.4826 * MAD(points),
    0.05 * |b|, 1e-9); z >= zscore.

Finding
    value v, baseline b, threshold ratio * b, window_start = start of the
    oldest baseline point (clipped to the block), window_end = at;
    discriminator "" and once False. details: ratio (v / b, None if b == 0),
    zscore (only when the rule sets one), points (observed count),
    seasonality, method, smooth. `reference` carries the usual level frozen for
    the new episode (baseline.reference_profile: one value per position in the
    week with weekly seasonality), taken from data before the current window;
    for a drop the upper quartile of each position's points (a holiday among
    them cannot make a still-dropped account look recovered).

Open episodes (given by the caller; rows of accounts with a pending or firing
episode of this rule)
    Judged against their frozen level r (the episode's reference at the current
    bucket's position in the week), never against today's baseline, so the
    anomaly never becomes its own baseline and a dead account stays dead. Guards
    do not apply. Decided when v is observed.
    pending: holds while the firing condition holds against r.
    firing:  holds until usage is back within `recovery` x r (spike: v <= recovery
             x r; drop: the usage of the latest buckets that add up to 200 usual
             counts and span 3 buckets at least (at most a week of daily buckets or
             a day of sub-daily ones, never before the drop began) >= recovery x r
             over the same buckets: one noisy bucket neither ends a drop nor holds
             a recovered one open); recovery defaults to halfway between
             ratio and 1, so a value hovering at the threshold does not flap. A spike
             also ends when the ordinary baseline b has caught up with a lasting
             new level (v <= recovery x b: a level shift, the new usual level);
             a drop never does: a dead account stays firing until usage returns.
    Holding -> a finding (baseline r, threshold = the limit that ends it);
    not holding -> a Recovery stating the current value against r.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from rules.config import values as v
from rules.detectors import format as fmt
from rules.detectors.baseline import (
    METHODS,
    baseline_points,
    center,
    observed_count,
    reference_profile,
    robust_scale,
    smoothed,
)
from rules.detectors.finding import make_finding
from rules.detectors.opened import open_rows
from rules.detectors.scan import Scanned, at_least, trailing_count, trailing_max, trailing_mean, trailing_min
from rules.kind_spec import Ending, Field, Kind, Threshold
from rules.model import (
    DAY,
    WEEK,
    AccountFacts,
    DetectorResult,
    Finding,
    FindingRows,
    MetricBlock,
    OpenEpisode,
    Recovery,
    Reference,
    Rule,
)
from rules.periods import iso


@dataclass(frozen=True)
class SpikeParams:
    """Fires when value >= ratio * baseline (and robust z-score >= zscore if set).

    recovery: an open episode resolves only once value <= recovery * the usual level frozen
    when it opened (default halfway between 1 and ratio), so a value hovering at the
    threshold does not flap.
    """

    ratio: float = 2.0
    zscore: float | None = None
    smooth: int = 1  # value = mean of the last `smooth` buckets
    recovery: float | None = None

    @property
    def recovery_ratio(self) -> float:
        return (1.0 + self.ratio) / 2.0 if self.recovery is None else self.recovery


@dataclass(frozen=True)
class DropParams:
    """Fires when value <= ratio * baseline (ratio 0.5 = dropped to half or less).

    recovery: an open episode resolves only once value >= recovery * the usual level frozen
    when it opened (default halfway between ratio and 1, and at least 0.8).
    """

    ratio: float = 0.5
    zscore: float | None = None
    smooth: int = 1
    recovery: float | None = None

    @property
    def recovery_ratio(self) -> float:
        # at least 80% of the usual level: an account growing while it stays down (its "usual" would
        # have grown too) must not read as recovered at 76% of the frozen level (bench/quality.py).
        return max(0.8, (1.0 + self.ratio) / 2.0) if self.recovery is None else self.recovery


def required_history(rule: Rule) -> int:
    """Seconds before the evaluated bucket's end that spike/drop needs."""
    params = rule.params
    if not isinstance(params, SpikeParams | DropParams):
        raise TypeError(f"{fmt.rule_location(rule)}: spike/drop rule has {type(params).__name__} params")
    smooth = max(1, params.smooth) * rule.bucket
    if rule.baseline.seasonality == "weekly":
        return smooth + (rule.baseline.window // WEEK) * WEEK
    return smooth + (rule.baseline.window // rule.bucket) * rule.bucket


def detect_spike_drop(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts] = (),
                      open_episodes: Sequence[OpenEpisode] = ()) -> DetectorResult:
    params = rule.params
    if not isinstance(params, SpikeParams | DropParams):
        raise TypeError(f"{fmt.rule_location(rule)}: spike/drop detector got {type(params).__name__}")
    spike = rule.kind == "spike"
    smooth = max(1, params.smooth)
    seasonality = rule.baseline.seasonality
    if seasonality not in ("none", "weekly"):
        raise ValueError(
            f"{fmt.rule_location(rule)}: unknown baseline seasonality {seasonality!r}; use 'none' or 'weekly'"
        )
    if rule.baseline.method not in METHODS:
        raise ValueError(
            f"{fmt.rule_location(rule)}: unknown baseline method {rule.baseline.method!r};"
            f" use one of {', '.join(METHODS)}"
        )
    if seasonality == "weekly" and rule.baseline.window < WEEK:
        raise ValueError(
            f"{fmt.rule_location(rule)}: weekly seasonality needs a baseline window of at least 1w,"
            f" got {fmt.duration(rule.baseline.window)}"
        )
    values = block.values
    rows, n = values.shape
    if n == 0 or rows == 0:
        return DetectorResult([], np.zeros(rows, dtype=bool))
    try:
        points, span = baseline_points(values, block.step, smooth, rule.baseline)
    except ValueError as exc:
        raise ValueError(f"{fmt.rule_location(rule)}: {exc}") from exc

    v = smoothed(values, n, smooth)
    count = observed_count(points)
    b = center(points, rule.baseline.method)
    decided = ~np.isnan(v) & ~np.isnan(b) & (count >= max(1, rule.baseline.min_points))

    guards = rule.guards
    threshold = params.ratio * b
    with np.errstate(invalid="ignore"):
        fire = decided & (b >= guards.min_baseline) & (np.abs(v - b) >= guards.min_delta)
        if spike:
            fire &= (v >= guards.min_value) & (v >= threshold) & (v > b)
        else:
            fire &= (v <= threshold) & (v < b)
        opened = open_rows(block, open_episodes)
        if opened:
            fire[list(opened)] = False  # an open episode is judged against its frozen level below
        z: np.ndarray | None = None
        if params.zscore is not None:
            # Only rows that pass everything else need the (sort-heavy) robust scale.
            z = np.full(rows, np.nan)
            cand = np.flatnonzero(fire)
            scale = robust_scale(points[cand], b[cand])
            z[cand] = (v[cand] - b[cand]) / scale if spike else (b[cand] - v[cand]) / scale
            fire[cand] = z[cand] >= params.zscore

    at = block.end
    window_start = at - span
    new_rows = np.flatnonzero(fire)
    # A drop's frozen level is the upper quartile of its points whatever the rule's method: a holiday or
    # a dip among them must not make a still-dropped account look recovered (on the labelled books a
    # 4-point median dragged to 210 by one holiday "resolved" a drop at 294 of a usual 800).
    how = "upper" if rule.kind == "drop" else None
    result = DetectorResult([], decided)
    if new_rows.size:
        profiles = reference_profile(values[new_rows], block.step, smooth, rule.baseline, how)
        result.found.append(_new_rows(rule, block.stub(), new_rows, v[new_rows], b[new_rows], threshold[new_rows],
                                      None if z is None else z[new_rows], count[new_rows], smooth, window_start,
                                      profiles))
    if opened:
        _judge_open(rule, params, block, opened, v, b, decided, result)
    return result


def _new_rows(rule: Rule, block: MetricBlock, rows: np.ndarray, v: np.ndarray, b: np.ndarray, threshold: np.ndarray,
              z: np.ndarray | None, count: np.ndarray, smooth: int, window_start: int,
              profiles: np.ndarray) -> FindingRows:
    """The new spikes/drops of a block, columnar (FindingRows): row k's Finding built when read."""
    at = block.end

    def build(k: int) -> Finding:
        return _finding(rule, block, int(rows[k]), float(v[k]), float(b[k]), float(threshold[k]),
                        None if z is None else float(z[k]), int(count[k]), smooth, window_start,
                        reference=Reference(at - block.step, block.step, tuple(float(x) for x in profiles[k])))

    return FindingRows(rule.id, block.metric, rule.severity, at, block.account_ids, rows, "", build, (v, b, threshold),
                       b)


def scan_spike_drop(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts] = ()) -> Scanned | None:
    """Rows that may have a new spike/drop at each bucket close (rules.detectors.scan).

    With weekly seasonality the baseline itself is computed for every bucket close at once (the
    smoothed series taken k weeks back, k = 1 .. weeks, and the rule's centre of them); without it
    the centre lies between the smallest (lo) and the largest (hi) point of its window. Then the
    detector's tests up to rounding: decided (enough points, v observed), b >= min_baseline,
    |v - b| >= min_delta, and v >= ratio x b, v >= min_value (spike) or v <= ratio x b (drop). The
    z-score test is left to the detector."""
    params = rule.params
    if not isinstance(params, SpikeParams | DropParams) or params.ratio <= 0 or \
            rule.baseline.seasonality not in ("none", "weekly") or rule.baseline.method not in METHODS:
        return None
    step, smooth = block.step, max(1, params.smooth)
    values = block.values
    rows, n = values.shape
    v = trailing_mean(values, smooth)
    if rule.baseline.seasonality == "weekly":
        if WEEK % step:
            return None
        lo, hi, count = _weekly_baseline(v, WEEK // step, rule.baseline.window // WEEK, rule.baseline.method)
    else:
        width = rule.baseline.window // step
        lo, hi = np.full((rows, n + 1), np.inf), np.full((rows, n + 1), -np.inf)
        count = np.zeros((rows, n + 1), dtype=np.int64)
        # the points of column j are the buckets [j - smooth - width, j - smooth)
        lo[:, smooth:] = trailing_min(values, width)[:, : n + 1 - smooth]
        hi[:, smooth:] = trailing_max(values, width)[:, : n + 1 - smooth]
        count[:, smooth:] = trailing_count(~np.isnan(values), width)[:, : n + 1 - smooth]
    guards = rule.guards
    decided = ~np.isnan(v) & (count >= max(1, rule.baseline.min_points))  # the detector's, exactly
    with np.errstate(invalid="ignore", over="ignore"):
        out = decided & at_least(hi, guards.min_baseline)
        if rule.kind == "spike":  # v >= ratio * b >= ratio * lo, v - lo >= v - b >= min_delta
            out &= at_least(v, params.ratio * lo) & at_least(v, guards.min_value) & at_least(v - lo, guards.min_delta)
        else:
            out &= at_least(params.ratio * hi, v) & at_least(hi - v, guards.min_delta)
    return Scanned(out, decided)


SCAN_ROWS = 2048  # rows per chunk of the weekly baseline scan (weeks x buckets floats each)


def _weekly_baseline(smooth_series: np.ndarray, per_week: int, weeks: int, method: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(b, b, observed points) per row and bucket close: column j's points are the smoothed series
    at j - k weeks (baseline_points), combined by `method` (center)."""
    rows, cols = smooth_series.shape
    b = np.full((rows, cols), np.nan)
    count = np.zeros((rows, cols), dtype=np.int64)
    for r0 in range(0, rows, SCAN_ROWS):
        part = smooth_series[r0 : r0 + SCAN_ROWS]
        points = np.full((part.shape[0], cols, weeks), np.nan)
        for k in range(1, weeks + 1):
            shift = k * per_week
            if shift < cols:
                points[:, shift:, k - 1] = part[:, : cols - shift]
        flat = points.reshape(-1, weeks)
        b[r0 : r0 + SCAN_ROWS] = center(flat, method).reshape(part.shape[0], cols)
        count[r0 : r0 + SCAN_ROWS] = observed_count(flat).reshape(part.shape[0], cols)
    return b, b, count


def _judge_open(
    rule: Rule,
    params: SpikeParams | DropParams,
    block: MetricBlock,
    opened: dict[int, OpenEpisode],
    v: np.ndarray,
    b: np.ndarray,
    decided: np.ndarray,
    result: DetectorResult,
) -> None:
    """Open episodes against the usual level frozen when they opened (hysteresis).

    A pending episode keeps its condition while v is beyond ratio x the frozen level; a firing
    one until v is back within recovery x it. Guards are not applied: they decide which
    accounts may fire, not whether an anomaly is over. Decided when v is observed.
    """
    spike = rule.kind == "spike"
    bucket_start = block.end - block.step
    held: list[tuple[int, float, float, float, OpenEpisode]] = []  # (row, value, ref, limit, episode)
    for i, episode in opened.items():
        ref = episode.reference.level_at(bucket_start) if episode.reference is not None else float(b[i])
        value = float(v[i])
        if math.isnan(value) or math.isnan(ref):
            decided[i] = False
            continue
        decided[i] = True
        limit = (params.recovery_ratio if episode.firing else params.ratio) * ref
        if spike:
            holds = value > limit if episode.firing else (value >= limit and value > ref)
            # A spike that lasts is a level shift: once the ordinary baseline has caught up with the
            # new level the episode ends ("the new usual level"), instead of staying open for ever.
            shifted = episode.firing and holds and value <= params.recovery_ratio * float(b[i])
            holds = holds and not shifted
        else:
            if episode.firing:  # judged over its latest buckets together: one noisy bucket decides nothing
                holds = not _recovered_over_window(block, i, episode, params.recovery_ratio)
            else:
                holds = value <= limit and value < ref
            shifted = False
        if holds:
            held.append((i, value, ref, limit, episode))
        elif shifted:
            result.recoveries[(block.account_ids[i], "")] = _level_shift(rule, block, value, float(b[i]), ref, episode)
        else:
            result.recoveries[(block.account_ids[i], "")] = _recovery(rule, block, value, ref, episode)
    if held:
        result.found.append(_continuing_rows(rule, block.stub(), held))


def _continuing_rows(rule: Rule, block: MetricBlock,
                     held: list[tuple[int, float, float, float, OpenEpisode]]) -> FindingRows:
    """The open episodes whose condition still holds, columnar (FindingRows, in `held`'s order): row k's
    Finding (_continuing) built only when read, a transition's (a replay carries each open drop from
    step to step without one: at 10k x 180 ~53k Findings built for nothing)."""
    rows = np.fromiter((h[0] for h in held), dtype=np.intp, count=len(held))
    value, ref, limit = (np.fromiter((h[j] for h in held), dtype=np.float64, count=len(held)) for j in (1, 2, 3))

    def build(k: int) -> Finding:
        i, v, r, lim, episode = held[k]
        return _continuing(rule, block, i, v, r, lim, episode)

    return FindingRows(rule.id, block.metric, rule.severity, block.end, block.account_ids, rows, "", build,
                       (value, ref, limit), ref)


# A drop's recovery is judged over the latest buckets that add up to at least RECOVERY_COUNTS of usual
# usage and span at least RECOVERY_BUCKETS (at most a week of daily buckets, a day of sub-daily ones,
# and never before the drop began): noise must not end an alert. On the labelled books a weekend day
# of a small account at 63% of its usual level read as 93% (Poisson noise on 30 calls), and two noisy
# days of a big account at 53% read as 83-90%: each "resolved" a drop that lasted another month. With
# 200 usual counts the Poisson noise is about 7%; three buckets together average out a lognormal day.
RECOVERY_COUNTS = 200.0
RECOVERY_BUCKETS = 3


def recovery_window(step: int) -> int:
    """The most buckets a drop's recovery looks back over."""
    return 7 if step >= DAY else max(1, DAY // step)


def _recovered_over_window(block: MetricBlock, i: int, episode: OpenEpisode, recovery: float) -> bool:
    """Usage over the latest buckets (see RECOVERY_COUNTS, RECOVERY_BUCKETS) is back to `recovery` x the
    frozen level summed over the same buckets (observed buckets only)."""
    if episode.reference is None:
        return True
    step, n = block.step, block.n_buckets
    first = max(0, (episode.reference.anchor - block.start) // step, n - recovery_window(step))
    used = expected = 0.0
    for c in range(n - 1, first - 1, -1):
        value = block.values[i, c]
        if math.isnan(value):
            continue
        used += value
        expected += episode.reference.level_at(block.start + c * step)
        if expected >= RECOVERY_COUNTS and n - c >= RECOVERY_BUCKETS:
            break
    return used >= recovery * expected


def _level_shift(rule: Rule, block: MetricBlock, value: float, baseline: float, ref: float,
                 episode: OpenEpisode) -> Recovery:
    step = block.step
    message = (
        f"{block.metric} has stayed up since the spike that began on {_since_text(rule, episode, step)}:"
        f" {fmt.number(value)} {fmt.when(block.end, step, _smooth(rule))},"
        f" {fmt.ratio(value / ref if ref else None)} the level before it ({fmt.number(ref)}) but in line with its"
        f" usual level now ({fmt.number(baseline)}): a level shift, no longer a spike."
    )
    return Recovery(block.end, value, baseline, message, {"level_shift": True, "before": ref})


def _smooth(rule: Rule) -> int:
    return max(1, getattr(rule.params, "smooth", 1))


def _since_text(rule: Rule, episode: OpenEpisode, step: int) -> str:
    return fmt.moment(episode.started_at - _smooth(rule) * step, step)


def _continuing(
    rule: Rule, block: MetricBlock, i: int, value: float, ref: float, limit: float, episode: OpenEpisode
) -> Finding:
    step = block.step
    verb = "spiked to" if rule.kind == "spike" else "dropped to"
    r = value / ref if ref else None

    def message() -> str:
        against = f"{fmt.ratio(r)} the usual {fmt.number(ref)}" if r is not None else f"usual level {fmt.number(ref)}"
        if episode.firing:
            until = f"it resolves {'at or below' if rule.kind == 'spike' else 'at or above'} {fmt.number(limit)}"
        else:
            until = f"threshold {fmt.number(limit)}"
        return (f"{block.metric} {verb} {fmt.number(value)} {fmt.when(block.end, step, _smooth(rule))}:"
                f" {against} (the usual level before the {rule.kind} began"
                f" on {_since_text(rule, episode, step)}; {until}).")

    return make_finding(
        rule, block, i, value=value, baseline=ref, threshold=limit,
        window_start=episode.started_at - step, message=message,
        details={"ratio": r, "frozen_baseline": True, "since": iso(episode.started_at - step)},
    )


def _recovery(rule: Rule, block: MetricBlock, value: float, ref: float, episode: OpenEpisode) -> Recovery:
    step = block.step
    at = block.end
    share = value / ref if ref else None
    level = f"{fmt.percent(share)} of" if share is not None else "against"
    message = (
        f"{block.metric} back to {fmt.number(value)} {fmt.when(at, step, _smooth(rule))}: {level} the usual {fmt.number(ref)}"
        f" (the level before the {rule.kind} that began on {_since_text(rule, episode, step)})."
    )
    return Recovery(at, value, ref, message, {"ratio": share})


def _finding(
    rule: Rule,
    block: MetricBlock,
    i: int,
    v: float,
    b: float,
    threshold: float,
    z: float | None,
    points: int,
    smooth: int,
    window_start: int,
    reference: Reference | None = None,
) -> Finding:
    at = block.end
    step = block.step
    r = v / b if b != 0 else None
    details: dict[str, object] = {
        "ratio": r,
        "points": points,
        "seasonality": rule.baseline.seasonality,
        "method": rule.baseline.method,
        "smooth": smooth,
    }
    if z is not None:
        details["zscore"] = z
    return make_finding(
        rule,
        block,
        i,
        value=v,
        baseline=b,
        threshold=threshold,
        window_start=window_start,
        message=partial(_message, rule, block.metric, v, b, threshold, r, z, points, smooth, step, at),
        details=details,
        reference=reference,
    )


def _message(
    rule: Rule,
    metric: str,
    v: float,
    b: float,
    threshold: float,
    r: float | None,
    z: float | None,
    points: int,
    smooth: int,
    step: int,
    at: int,
) -> str:
    verb = "spiked to" if rule.kind == "spike" else "dropped to"
    when = fmt.when(at, step, smooth)
    against = (
        f"{fmt.ratio(r)} the baseline of {fmt.number(b)}"
        if r is not None
        else f"up from a baseline of {fmt.number(b)}"
    )
    plural = "point" if points == 1 else "points"
    method = {"upper": "upper quartile"}.get(rule.baseline.method, rule.baseline.method)
    if rule.baseline.seasonality == "weekly":
        source = f"{method} of {points} {plural} at the same time in previous weeks"
    else:
        source = f"{method} of {points} {plural} over the previous {fmt.duration(rule.baseline.window)}"
    extra = f", z-score {z:.1f}" if z is not None else ""
    return f"{metric} {verb} {fmt.number(v)} {when}: {against} ({source}; threshold {fmt.number(threshold)}{extra})."


# ------------------------------------------------------------------------------ the kinds


# rules.detectors.baseline: scale >= MIN_RELATIVE_SCALE x baseline and usage >= 0, so a drop's z-score
# (b - v) / scale is at most b / (0.05 b) = 20.
MAX_DROP_Z = 1 / 0.05


def _check(t: Threshold) -> None:
    """Ratio, z-score and recovery ranges of a spike or drop rule."""
    spike = t.kind == "spike"
    ratio = t.got.get("ratio")
    if ratio is not None:
        if spike and ratio <= 1:
            t.error("ratio", f"must be > 1 for a spike rule (got {t.shown('ratio')})")
        if not spike and not 0 < ratio < 1:
            t.error("ratio", f"must be between 0 and 1 for a drop rule, e.g. 0.5 = fell to half or less "
                             f"(got {t.shown('ratio')})")
    zscore = t.got.get("zscore")
    if zscore is not None and zscore <= 0:
        t.error("zscore", f"must be > 0 (got {t.shown('zscore')})")
    if not spike and zscore is not None and zscore > MAX_DROP_Z:
        t.error("zscore", f"a drop can never reach a z-score of {t.shown('zscore')}: usage cannot fall below 0 and"
                          f" the scale is at least 5% of the baseline, so the drop z-score is at most {MAX_DROP_Z:g}")
    recovery = t.got.get("recovery")
    if recovery is not None:
        r = t.params.ratio
        if not spike and not r < recovery <= 1:
            t.error("recovery", f"must be above ratio ({r:g}) and at most 1: an open drop resolves once usage is"
                                f" back to recovery x its usual level (got {t.shown('recovery')})")
        if spike and not 1 <= recovery < r:
            t.error("recovery", f"must be at least 1 and below ratio ({r:g}): an open spike resolves once usage"
                                f" is back under recovery x its usual level (got {t.shown('recovery')})")


_SMOOTH = "The current value is the mean of the last `smooth` buckets (all must be observed). With weekly " \
          "seasonality the baseline points are smoothed the same way."

SPIKE = Kind(
    name="spike",
    title="Usage spike",
    summary="the current value is at least `ratio` times the account's baseline",
    params=SpikeParams,
    fields=(
        Field("ratio", v.number(), "number > 1", "`2.0`", "Fires when value ≥ `ratio` × baseline. `2.5` = 150% above"
              " normal."),
        Field("zscore", v.number(), "number > 0", "none", "If set, the value must also be at least this many robust"
              " standard deviations (from the median absolute deviation of the points) above the baseline. Filters"
              " out accounts that are always noisy."),
        Field("smooth", v.integer(1), "integer ≥ 1", "`1`", _SMOOTH),
        Field("recovery", v.number(), "number, 1 ≤ x < `ratio`", "halfway between 1 and `ratio`", "An open spike"
              " resolves once the value is back at or below `recovery` × the usual level frozen when it began (see"
              " [how alerts end](#how-alerts-end-recovery))."),
    ),
    detect=detect_spike_drop,
    scan=scan_spike_drop,
    required_history=required_history,
    endings=(Ending("spike", "value > `recovery` × the frozen level", "the value is back at or below it, or a"
                    " lasting new level has become the usual level (a *level shift*: the ordinary baseline has"
                    " caught up; said as such)"),),
    check=_check,
    resolve_buckets=3,  # on the labelled books (bench/quality.py) 1 bucket made 31% more spike episodes than 3
    cohort="optional",
    baseline=True,
    calendar=True,
)

DROP = Kind(
    name="drop",
    title="Usage drop",
    summary="the current value is at most `ratio` times the account's baseline",
    params=DropParams,
    fields=(
        Field("ratio", v.number(), "number, 0 < ratio < 1", "`0.5`", "Fires when value ≤ `ratio` × baseline. `0.5` ="
              " dropped to half or less."),
        Field("zscore", v.number(), "number, 0 < x ≤ 20", "none", "As for spike, measured downwards. A drop cannot"
              " exceed 20 (usage cannot fall below 0 and the scale is at least 5% of the baseline), so a larger value"
              " is refused."),
        Field("smooth", v.integer(1), "integer ≥ 1", "`1`", "As for spike."),
        Field("recovery", v.number(), "number, `ratio` < x ≤ 1", "halfway between `ratio` and 1, at least 0.8", "An"
              " open drop resolves once usage of the latest few buckets together is back at or above `recovery` ×"
              " the usual level frozen when it began (see [how alerts end](#how-alerts-end-recovery))."),
    ),
    detect=detect_spike_drop,
    scan=scan_spike_drop,
    required_history=required_history,
    endings=(Ending("drop", "the usage of the latest buckets together (3 at least, and at least 200 usual counts; at"
                    " most a week of daily buckets or a day of sub-daily ones; never before the drop began) is below"
                    " `recovery` × the frozen level over the same buckets", "it is back at or above it: one noisy"
                    " bucket neither ends a drop nor holds a recovered one open; a dead account stays firing until"
                    " it has usage again"),),
    check=_check,
    resolve_buckets=2,  # a recovery must last a second day before "resolved" is said
    cohort="default",
    baseline=True,
    calendar=True,
)

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
    seasonality, method, smooth.
"""

from __future__ import annotations

import numpy as np

from rules.detectors import format as fmt
from rules.detectors.baseline import (
    baseline_points,
    center,
    observed_count,
    robust_scale,
    smoothed,
)
from rules.detectors.finding import make_finding
from rules.model import WEEK, DetectorResult, DropParams, Finding, MetricBlock, Rule, SpikeParams


def required_history(rule: Rule) -> int:
    """Seconds before the evaluated bucket's end that spike/drop needs."""
    params = rule.params
    if not isinstance(params, SpikeParams | DropParams):
        raise TypeError(f"{fmt.rule_location(rule)}: spike/drop rule has {type(params).__name__} params")
    smooth = max(1, params.smooth) * rule.bucket
    if rule.baseline.seasonality == "weekly":
        return smooth + (rule.baseline.window // WEEK) * WEEK
    return smooth + (rule.baseline.window // rule.bucket) * rule.bucket


def detect_spike_drop(rule: Rule, block: MetricBlock) -> DetectorResult:
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
    if rule.baseline.method not in ("median", "mean"):
        raise ValueError(
            f"{fmt.rule_location(rule)}: unknown baseline method {rule.baseline.method!r}; use 'median' or 'mean'"
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
    findings = [
        _finding(
            rule,
            block,
            int(i),
            float(v[i]),
            float(b[i]),
            float(threshold[i]),
            None if z is None else float(z[i]),
            int(count[i]),
            smooth,
            window_start,
        )
        for i in np.flatnonzero(fire)
    ]
    return DetectorResult(findings, decided)


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
        message=_message(rule, block.metric, v, b, threshold, r, z, points, smooth, step, at),
        details=details,
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
    bucket = fmt.duration(step)
    if smooth == 1:
        when = f"in the {bucket} bucket starting {fmt.moment(at - step, step)}"
    else:
        when = f"(mean of the {smooth} {bucket} buckets ending {fmt.moment(at, step)})"
    against = (
        f"{fmt.ratio(r)} the baseline of {fmt.number(b)}"
        if r is not None
        else f"up from a baseline of {fmt.number(b)}"
    )
    plural = "point" if points == 1 else "points"
    if rule.baseline.seasonality == "weekly":
        source = f"{rule.baseline.method} of {points} {plural} at the same time in previous weeks"
    else:
        source = f"{rule.baseline.method} of {points} {plural} over the previous {fmt.duration(rule.baseline.window)}"
    extra = f", z-score {z:.1f}" if z is not None else ""
    return f"{metric} {verb} {fmt.number(v)} {when}: {against} ({source}; threshold {fmt.number(threshold)}{extra})."

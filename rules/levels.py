"""The levels a rule compared each bucket with, over a stretch of history (pure; for charts).

A chart of an account's usage shows, beside the usage itself, the usual level (baseline) and the
threshold of each spike or drop rule at every bucket: the values the rule's detector computed (or
would have computed) when that bucket closed, from the buckets before it only, with the same
functions (rules.detectors.baseline). While an episode is open the detector judges it against the
level frozen when it opened (rules.model.Reference), not today's baseline: `rule_levels` shows
that frozen level (and the limit that ends the episode) over the episode's buckets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from rules.detectors.baseline import baseline_points, center, observed_count
from rules.detectors.spike_drop import DropParams, SpikeParams
from rules.model import Reference, Rule


@dataclass(frozen=True)
class EpisodeSpan:
    """An episode of the rule over the series: buckets from `first` (the first anomalous bucket's
    start) until `end` (exclusive; the resolution time, or None while open), judged against `reference`."""

    first: int
    end: int | None
    reference: Reference | None
    firing: bool = True


@dataclass(frozen=True)
class RuleLevels:
    """Per bucket of the series: the usual level and the threshold (NaN where the rule could not tell)."""

    rule_id: str
    baseline: np.ndarray
    threshold: np.ndarray


def has_levels(rule: Rule) -> bool:
    """Rules whose detector compares a bucket with a usual level (spike and drop)."""
    return isinstance(rule.params, SpikeParams | DropParams)


def rule_levels(rule: Rule, values: np.ndarray, start: int, step: int,
                episodes: Sequence[EpisodeSpan] = ()) -> RuleLevels:
    """The usual level and threshold of a spike/drop `rule` at each bucket of `values` (one account,
    buckets of `step` seconds from `start`; NaN = not observed). Bucket j's level uses buckets < j
    only (as when the bucket closed), so the first buckets (before enough history) are NaN."""
    if not has_levels(rule):
        raise ValueError(f"rule {rule.id!r} ({rule.kind}) has no usual level")
    if step != rule.bucket:
        raise ValueError(f"rule {rule.id!r} needs {rule.bucket}s buckets, got {step}s")
    params = rule.params
    assert isinstance(params, SpikeParams | DropParams)
    row = np.asarray(values, dtype=np.float64)
    n = row.shape[0]
    if n == 0:
        return RuleLevels(rule.id, np.zeros(0), np.zeros(0))
    smooth = max(1, params.smooth)
    # Row j of `windows` is the series ending at bucket j (NaN-padded on the left): the block the
    # detector saw when bucket j closed, so one vectorised call computes every bucket's baseline.
    windows = sliding_window_view(np.concatenate([np.full(n - 1, np.nan), row]), n)
    points, _ = baseline_points(windows, step, smooth, rule.baseline)
    baseline = center(points, rule.baseline.method)
    baseline[observed_count(points) < max(1, rule.baseline.min_points)] = np.nan
    threshold = params.ratio * baseline
    for ep in episodes:
        if ep.reference is None:
            continue
        lo = max(0, (ep.first - start) // step)
        hi = n if ep.end is None else min(n, max(0, -(-(ep.end - start) // step)))
        for j in range(lo, hi):
            ref = ep.reference.level_at(start + j * step)
            baseline[j] = ref
            threshold[j] = (params.recovery_ratio if ep.firing else params.ratio) * ref
    return RuleLevels(rule.id, baseline, threshold)


def period_to_date(values: np.ndarray, start: int, step: int, period_starts: Sequence[int]) -> np.ndarray:
    """Cumulative usage within billing periods: bucket j holds the sum of the observed buckets from
    its period's start through j (the period-to-date use a quota rule compares with the quota).
    `period_starts`: the start of each bucket's period (rules.periods.billing_period), one per bucket.
    A bucket that is not observed keeps NaN (the sum so far continues after it)."""
    row = np.asarray(values, dtype=np.float64)
    out = np.full(row.shape[0], np.nan)
    total, current = 0.0, None
    for j, p in enumerate(period_starts):
        if p != current:
            total, current = 0.0, p
        v = row[j]
        if not np.isnan(v):
            total += float(v)
            out[j] = total
    return out

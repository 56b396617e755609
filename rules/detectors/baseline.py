"""Baseline estimation for spike and drop rules, vectorised over accounts (rows).

All functions take a 2-D float array `values` (rows = accounts, columns =
consecutive buckets) where NaN means "not observed". Nothing here treats NaN
as zero.

- smoothed(values, stop, smooth): mean of the `smooth` columns ending before
  column `stop`; NaN when any of them is missing or lies before column 0.
- baseline_points(...): the points a baseline is estimated from, as a
  (rows, points) array, plus the first epoch second those points cover:
    seasonality "none":   the raw buckets of `baseline.window` immediately
                          before the current (smoothed) window;
    seasonality "weekly": for k = 1 .. window // 1w, the smoothed value
                          exactly k weeks before the current one (same
                          weekday and time of day). The bucket must divide a
                          week.
- nan_median / center / mad: row-wise statistics over observed points only.
  nan_median sorts once per call (no per-row Python work), which is much
  faster than numpy.nanmedian on wide arrays.
- robust_scale: max(1.4826 * MAD(points), 0.05 * |b|, 1e-9), the scale of the
  robust z-score z = (v - b) / scale. MAD is taken around the median of the
  points whatever the baseline method.
"""

from __future__ import annotations

import numpy as np

from rules.model import WEEK, Baseline

MAD_TO_SIGMA = 1.4826
MIN_RELATIVE_SCALE = 0.05
MIN_SCALE = 1e-9


def smoothed(values: np.ndarray, stop: int, smooth: int) -> np.ndarray:
    """Per row, the mean of columns [stop - smooth, stop); NaN if any is missing or out of range."""
    rows, n = values.shape
    if smooth < 1 or stop - smooth < 0 or stop > n:
        return np.full(rows, np.nan)
    if smooth == 1:
        return values[:, stop - 1].astype(np.float64, copy=True)
    return values[:, stop - smooth : stop].mean(axis=1)


def baseline_points(values: np.ndarray, step: int, smooth: int, baseline: Baseline) -> tuple[np.ndarray, int]:
    """(points, first_offset): baseline points per row and how many seconds before the
    block end the earliest point starts (clipped to the block)."""
    rows, n = values.shape
    current = n - smooth  # first column of the current smoothed window
    if baseline.seasonality == "weekly":
        if WEEK % step:
            raise ValueError(f"bucket of {step}s does not divide a week; weekly seasonality needs it to")
        per_week = WEEK // step
        weeks = baseline.window // WEEK
        cols = [smoothed(values, n - k * per_week, smooth) for k in range(1, weeks + 1)]
        points = np.stack(cols, axis=1) if cols else np.empty((rows, 0))
        first = min(n, weeks * per_week + smooth)
        return points, first * step
    width = baseline.window // step
    lo = max(0, current - width)
    hi = max(0, current)
    return values[:, lo:hi], (n - lo) * step


def reference_profile(values: np.ndarray, step: int, smooth: int, baseline: Baseline,
                      method: str | None = None) -> np.ndarray:
    """The usual level frozen for a new episode, per row: shape (rows, positions).

    Built from data before the current smoothed window only, so the anomaly can never become
    its own baseline. Without seasonality one position: the baseline itself. With weekly
    seasonality one position per bucket of the week, position d being the bucket d buckets
    after the current one: the baseline that bucket would have from the same-weekday points
    that lie wholly before the current window (points beyond the block are left out, so the
    block of `required_history` is enough). A position with no observed point takes the
    current bucket's level. method: how the points of a position combine (default: the rule's).
    """
    how = method or baseline.method
    rows, n = values.shape
    if baseline.seasonality != "weekly":
        points, _ = baseline_points(values, step, smooth, baseline)
        return center(points, how)[:, None]
    per_week = WEEK // step
    weeks = baseline.window // WEEK
    out = np.empty((rows, per_week))
    for d in range(per_week):
        c = n - 1 + d  # column of the bucket d after the current one
        m0 = -(-(d + smooth) // per_week)  # first week whose point ends before the current window
        cols = [smoothed(values, c - m * per_week + 1, smooth) for m in range(m0, m0 + weeks)]
        out[:, d] = center(np.stack(cols, axis=1), how)
    missing = np.isnan(out)
    if missing.any():
        out = np.where(missing, out[:, :1], out)
    return out


def observed_count(points: np.ndarray) -> np.ndarray:
    return np.count_nonzero(~np.isnan(points), axis=1)


def nan_median(points: np.ndarray) -> np.ndarray:
    """Row-wise median of the observed (non-NaN) entries; NaN for rows with none."""
    rows, m = points.shape
    if m == 0:
        return np.full(rows, np.nan)
    ordered = np.sort(points, axis=1)  # NaN sorts last
    count = observed_count(points)
    lo = np.maximum((count - 1) // 2, 0)
    hi = np.minimum(count // 2, m - 1)
    idx = np.arange(rows)
    med = (ordered[idx, lo] + ordered[idx, hi]) / 2.0
    med[count == 0] = np.nan
    return med


def nan_mean(points: np.ndarray) -> np.ndarray:
    """Row-wise mean of the observed entries; NaN for rows with none."""
    count = observed_count(points)
    total = np.where(np.isnan(points), 0.0, points).sum(axis=1)
    out = np.full(points.shape[0], np.nan)
    has = count > 0
    out[has] = total[has] / count[has]
    return out


METHODS = ("median", "mean", "upper")


def nan_quantile(points: np.ndarray, q: float) -> np.ndarray:
    """Row-wise quantile (linear interpolation) of the observed entries; NaN for rows with none."""
    rows, m = points.shape
    if m == 0:
        return np.full(rows, np.nan)
    ordered = np.sort(points, axis=1)  # NaN sorts last
    count = observed_count(points)
    pos = np.maximum(count - 1, 0) * q
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    idx = np.arange(rows)
    frac = pos - lo
    out = ordered[idx, lo] * (1.0 - frac) + ordered[idx, hi] * frac
    out[count == 0] = np.nan
    return out


def center(points: np.ndarray, method: str) -> np.ndarray:
    """The baseline b per row: "median" (default), "mean" or "upper" (the upper quartile: a drop,
    a stop or a holiday among the points does not lower it) of the observed points."""
    if method == "mean":
        return nan_mean(points)
    if method == "median":
        return nan_median(points)
    if method == "upper":
        return nan_quantile(points, 0.75)
    raise ValueError(f"unknown baseline method {method!r}: use one of {', '.join(METHODS)}")


def mad(points: np.ndarray) -> np.ndarray:
    """Median absolute deviation from the median, over observed points."""
    med = nan_median(points)
    return nan_median(np.abs(points - med[:, None]))


def robust_scale(points: np.ndarray, b: np.ndarray) -> np.ndarray:
    scale = MAD_TO_SIGMA * mad(points)
    scale = np.fmax(scale, MIN_RELATIVE_SCALE * np.abs(b))
    return np.fmax(scale, MIN_SCALE)

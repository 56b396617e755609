"""One-pass scans: which rows of a block can possibly have a finding at each bucket close (pure numpy).

A kind's optional ``scan(rule, block, accounts) -> Candidates | None`` (rules.kinds.Kind.scan) looks at
the whole account x bucket block once, with rolling (trailing) windows, and returns a bool array of
shape (rows, n_buckets + 1): ``out[i, j]`` is False only when the kind's detector, run on
``block.truncated(j)`` (the evaluation at ``block.start + j * step``: only buckets ended by then, no
look-ahead) for any set of rows holding row i with no open episode, gives row i no finding. It is a
conservative superset: bounds stand in for the exact statistic (a baseline lies between the smallest and
the largest point of its window; a billing period's usage is at most the sum of the longest period
before t), with a relative slack of SLACK for rounding. None: the scan cannot bound this rule or block
(e.g. negative values where a bound needs them non-negative); the replay then runs the detector on
every row, as without a scan. A scan may return a Scanned instead, adding the exact `decided`.

The replay (rules.replay) runs the exact detector at each step only on the candidate rows, the rows
with open episodes and the rows whose exact verdict something else needs (first-run, cohorts), so its
events stay identical; tests/rules/test_scan.py checks the superset on random books for every kind
with a scan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SLACK = 1e-9  # relative: the detectors' means and sums may round differently from these (a few ulps)


@dataclass(frozen=True)
class Scanned:
    """A scan that also knows, exactly, which rows the detector decides at each bucket close when they
    have no open episode (the same NaN patterns and counts as the detector: no rounding involved).
    Cohort events need every row's verdict (rules.engine.settle_cohorts): with `decided` the rows not
    run are tallied from it instead of being run."""

    candidates: np.ndarray  # bool (rows, n_buckets + 1), as a plain scan returns
    decided: np.ndarray  # bool (rows, n_buckets + 1)


def loose(x: np.ndarray) -> np.ndarray:
    """The allowance for rounding in a comparison with x."""
    return SLACK * np.abs(x) + 1e-12


def at_least(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """a >= b up to rounding (False where either is NaN or b is +inf)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return a >= b - loose(a) - loose(np.asarray(b))  # type: ignore[no-any-return]


def trailing_mean(values: np.ndarray, width: int) -> np.ndarray:
    """(rows, n + 1): column j the mean of columns [j - width, j) (NaN if any is missing or before 0),
    as rules.detectors.baseline.smoothed computes it at block.truncated(j) up to rounding."""
    rows, n = values.shape
    out = np.full((rows, n + 1), np.nan)
    width = max(1, width)
    if n < width:
        return out
    total = values[:, 0 : n - width + 1].copy()
    for k in range(1, width):
        total += values[:, k : n - width + 1 + k]
    out[:, width:] = total / width
    return out


def cumulative_sum(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cs, slack), each (rows, n + 1): column j the sum of the observed values of columns [0, j) (NaN
    read as 0 as the detectors' interval sums do), and how far the difference of cs at j and at any
    earlier column may differ from the same interval's sum taken in another order (a bound on the
    cumulative sum's rounding)."""
    rows, n = values.shape
    cs = np.zeros((rows, n + 1))
    np.cumsum(np.where(np.isnan(values), 0.0, values), axis=1, out=cs[:, 1:])
    return cs, (n + 2) * 4e-16 * np.maximum.accumulate(np.abs(cs), axis=1) + 1e-12


def trailing_sum(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums, slack), each (rows, n + 1): column j the sum of the observed values of columns
    [max(0, j - width), j) (NaN read as 0 as the detectors' interval sums do), and how far a sum taken
    in another order may differ from it (cumulative_sum's rounding bound)."""
    cs, slack = cumulative_sum(values)
    lo = np.maximum(np.arange(values.shape[1] + 1) - max(1, width), 0)
    return cs - cs[:, lo], slack


def trailing_count(flags: np.ndarray, width: int) -> np.ndarray:
    """(rows, n + 1) int: column j the number of True flags in columns [max(0, j - width), j)."""
    rows, n = flags.shape
    cs = np.zeros((rows, n + 1), dtype=np.int64)
    np.cumsum(flags, axis=1, out=cs[:, 1:])
    lo = np.maximum(np.arange(n + 1) - max(1, width), 0)
    return cs - cs[:, lo]  # type: ignore[no-any-return]


def _trailing_extreme(values: np.ndarray, width: int, fn: Callable[..., np.ndarray], fill: float) -> np.ndarray:
    """(rows, n + 1): column j = fn over the observed values of columns [max(0, j - width), j); `fill`
    where there is none. A sparse table over powers of two (O(rows x n x log width), no window copy)."""
    rows, n = values.shape
    width = max(1, width)
    y = np.full((rows, n + width), fill)
    y[:, width:] = np.where(np.isnan(values), fill, values)
    # y column s + width is values column s: the window of column j is y[:, j : j + width]
    level, p = y, 1
    while 2 * p <= width:
        level = fn(level[:, :-p], level[:, p:])  # level[:, s] = fn(y[:, s : s + 2p])
        p *= 2
    return fn(level[:, : n + 1], level[:, width - p : width - p + n + 1])


def trailing_min(values: np.ndarray, width: int) -> np.ndarray:
    """Smallest observed value of columns [j - width, j) per column j (+inf when none)."""
    return _trailing_extreme(values, width, np.minimum, np.inf)


def trailing_max(values: np.ndarray, width: int) -> np.ndarray:
    """Largest observed value of columns [j - width, j) per column j (-inf when none)."""
    return _trailing_extreme(values, width, np.maximum, -np.inf)

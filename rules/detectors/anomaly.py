"""Anomaly detector: each account's series is learnt from its own recent history (no per-series tuning).

Evaluated at at = block.end on the last bucket t; NaN means "not observed", never zero. Every
estimate is a pure function of the trailing `required_history` buckets, so the scheduler (which
reads that much from storage every cycle) and the backtest (which replays the same engine bucket by
bucket) compute the same numbers, and nothing after t is read. Vectorised over rows (accounts) and
over the learning window; no Python loop over time.

Models (candidates), each a forecast for every bucket tau of the learning window:
    level     pred = median of the last `adapt` buckets + damped trend
    daily     (sub-daily buckets) base = median of the same time of day in the last `cycles` days;
              pred = base + median of (value - base) over the last `adapt` buckets + damped trend
    weekly    (buckets dividing a week) the same with the same time of the week
    The trend is half the slope between the means of the two halves of the `adapt` buckets,
    projected to tau (damped: a short-lived slope is not extrapolated in full).

Learning window: the `learn` buckets before t (default max(2 days, 48 buckets)). A candidate is
usable once it has at least learn / 2 errors there; a seasonal one replaces a simpler one only when
its mean squared error is below 0.9 x that one's (parsimony: a series without seasonality keeps the
level model).

Noise scale s of the chosen model (never 0):
    s^2 = max(1.2533 x MAE, e3 / z3, tail)^2 + floor^2 [+ lambda for counts]
    MAE: mean absolute error over the learning window (1.2533 x MAE = sigma for Gaussian errors);
    e3 / z3: the 3rd largest recent |error| over the normal quantile 1 - 3/(2 learn), i.e. scaled
    to what a Gaussian series would show in `learn` buckets, so a heavy-tailed (spiky) series is
    judged by its own spikes, while one or two past anomalies do not hide the next;
    tail: the peaks-over-threshold unit (`_tail_scale`): an exponential tail fitted to the largest
    5% of the errors (its predictive, Lomax form: the tail's own estimation error widens it), read
    at the firing score's Gaussian tail probability, over that score, so a
    bursty series (heavier-tailed than Gaussian) fires only past its own learnt tail; floor = `min_change` x max(mean |value - mean|, |mean|) of the
    window, so a flat or perfectly periodic series does not fire on a rounding wobble;
    counts (every observed value a non-negative integer): + max(pred, mean, 1), the Poisson
    variance, so a series of zeros and small integers has a scale of at least one count.

Score z = (value - pred) / s; direction up: z, down: -z, both: |z|. Beside it the sustained-shift
score (`_shift`): the median of the last `adapt` deseasonalised buckets against the medians of the
earlier `adapt`-bucket windows of the learning window, in units of their own spread and largest
departure, so a change the level has already followed (a step, a subtle lasting rise; a slow steady drift is not: each window is judged against the windows just before it) is
still seen; a single spike does not move a median. The stronger of the two in the rule's direction
is the bucket's score (Fit.signal says which). Tail probability: the normal tail of the score
(one-sided; two-sided for both). Fires when the directional score >= `score` (or the tail
probability <= `probability`).

Open episodes (given by the caller): a firing one holds while the directional score >= `recovery`
(default score / 2), a pending one (`for`) while it is >= `score`; otherwise a Recovery states the value against the expected range. The model keeps
learning while an episode is open: after a level shift the level model catches up within about
`adapt` buckets and the shift score holds the episode until the new level is the usual one of the
learning window (about learn / 2 later), so the shift fires once and the episode then resolves.
The episode's own windows are not learnt as noise while it is open (the shift's unit comes from the
windows before it), so an outage is not "within the noise" of itself; and a Recovery whose last
`adapt` buckets are still `recovery` units from the level before the episode says the model adapted
to a new level (details.adapted), not that the series is back.

Warm-up: a row is undecided until the level model has learn / 2 errors: max(1, adapt // 2) +
learn / 2 + 1 observed buckets (defaults: 5-minute buckets 292, 24h20m; hourly 28 hours; daily 28 days). Daily
seasonality can be chosen one day later, weekly one week later.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from statistics import NormalDist

import numpy as np

from rules.config import values as v
from rules.detectors import format as fmt
from rules.detectors.baseline import nan_median
from rules.detectors.finding import make_finding
from rules.detectors.opened import open_rows
from rules.kind_spec import Ending, Field, Kind, Threshold
from rules.model import AccountFacts, DetectorResult, Finding, MetricBlock, OpenEpisode, Recovery, Rule

DAY = 86_400
WEEK = 7 * DAY
MAE_TO_SIGMA = math.sqrt(math.pi / 2)  # 1.2533: sigma / mean |error| for Gaussian errors
PARSIMONY = 0.9  # a seasonal model must cut the mean squared error by 10% to be chosen
TREND_DAMPING = 0.5  # half of the recent slope is projected
TAIL_RANK = 3  # the tail scale reads the 3rd largest recent error: two past anomalies do not mask a third
MIN_LEARN = 48  # the learning window is at least 48 buckets (a day of 30-minute buckets)
LEARN_DEFAULT = 2 * DAY  # two days: a burst that recurs every day or two is part of the noise, not news
DIRECTIONS = ("both", "up", "down")
MODEL_NAMES = ("level", "daily", "weekly")
_NORMAL = NormalDist()


@dataclass(frozen=True)
class AnomalyParams:
    """Fires when the bucket's anomaly score (in learnt noise units) reaches `score` in `direction`."""

    direction: str = "both"
    score: float | None = None  # default DEFAULT_SCORE unless probability is given
    probability: float | None = None  # alternative: fire when the tail probability is at most this
    recovery: float | None = None  # an open alert holds while the score is at least this (default score / 2)
    adapt: int = 6  # buckets over which the level (and its trend) follows the series
    learn: int | None = None  # seconds of errors the scale and the model choice are learnt from (None: auto)
    cycles: int = 3  # past days (weeks) whose same time of day (week) make the seasonal base
    min_change: float = 0.01  # the scale is at least this share of the series' typical level or spread

    @property
    def threshold(self) -> float:
        """The score at which it fires (from `probability` when that is given)."""
        if self.probability is not None:
            tail = self.probability / 2 if self.direction == "both" else self.probability
            return _NORMAL.inv_cdf(1.0 - tail)
        return self.score if self.score is not None else DEFAULT_SCORE

    @property
    def hold(self) -> float:
        return self.recovery if self.recovery is not None else self.threshold / 2


DEFAULT_SCORE = 4.0


def _params(rule: Rule) -> AnomalyParams:
    if not isinstance(rule.params, AnomalyParams):
        raise TypeError(f"{fmt.rule_location(rule)}: anomaly rule has {type(rule.params).__name__} params")
    return rule.params


def learn_buckets(params: AnomalyParams, step: int) -> int:
    if params.learn is not None:
        return max(2, params.learn // step)
    return max(LEARN_DEFAULT // step, MIN_LEARN)


def seasonal_periods(step: int) -> list[tuple[str, int]]:
    """(name, buckets per cycle): daily for sub-daily buckets dividing a day, weekly for buckets
    shorter than a week that divide it."""
    out = []
    if step < DAY and DAY % step == 0:
        out.append(("daily", DAY // step))
    if step < WEEK and WEEK % step == 0:
        out.append(("weekly", WEEK // step))
    return out


def history_buckets(params: AnomalyParams, step: int) -> int:
    """Buckets of history the evaluation reads, the evaluated one included."""
    longest = max((p for _, p in seasonal_periods(step)), default=0)
    return learn_buckets(params, step) + params.adapt + params.adapt // 2 + 1 + params.cycles * longest


def required_history(rule: Rule) -> int:
    return history_buckets(_params(rule), rule.bucket) * rule.bucket


SORTING_NETWORK_MAX = 12  # up to this many values a median is a sorting network, beyond it a row sort


@cache
def sorting_network(k: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for k values, as comparators (i, j), i < j: after each, position
    i holds the smaller value and j the larger. Built for the next power of two; the comparators that
    touch the padding (values past k, taken as +inf, which never move) are dropped. For 6 values 12
    comparators (the odd-even transposition network: 15), for 3 values 3."""
    n = 1
    while n < k:
        n *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < n:
        d = p
        while d >= 1:
            for j in range(d % p, n - d, 2 * d):
                for i in range(min(d, n - j - d)):
                    if (i + j) // (2 * p) == (i + j + d) // (2 * p) and i + j + d < k:
                        pairs.append((i + j, i + j + d))
            d //= 2
        p *= 2
    return tuple(pairs)


@cache
def _median_plan(k: int, wanted: frozenset[int]) -> tuple[tuple[int, int, bool, bool], ...]:
    """The comparators of `sorting_network(k)` that the sorted positions `wanted` depend on, each
    with whether its minimum and its maximum are read later: (i, j, min needed, max needed). Walked
    back from the wanted positions, so a median of 6 values computes 10 minima and 10 maxima, not 12
    of each (the minima and maxima it does compute are those of the full network: the same values)."""
    need = set(wanted)
    plan = []
    for i, j in reversed(sorting_network(k)):
        low, high = i in need, j in need
        if low or high:
            plan.append((i, j, low, high))
            need |= {i, j}
    return tuple(reversed(plan))


def _median_of(parts: Sequence[np.ndarray], minimum: int = 1, complete: bool | None = None) -> np.ndarray:
    """Elementwise median of the observed (non-NaN) entries of same-shape arrays; NaN where fewer
    than `minimum` are observed. `complete`: True when the caller knows no entry is NaN (None: checked).

    The few values (3 past days, 6 past buckets) are ordered by a sorting network of elementwise
    minimum/maximum over whole arrays rather than by sorting millions of tiny rows: the same result at
    a fraction of the cost (bench/anomaly_speed.py). Only the comparators the median's positions
    depend on are run (`_median_plan`), and the caller's arrays (views of its history) are read,
    never written: each comparator makes new arrays."""
    k = len(parts)
    if k > SORTING_NETWORK_MAX:
        return _row_median(np.stack(parts, axis=-1), minimum)
    nan: list[np.ndarray] = []
    if not complete:  # None (unknown) or False: look, and keep the masks for the gap-aware path
        nan = [np.isnan(a) for a in parts]
        complete = not any(x.any() for x in nan)  # the usual case: every value observed
    if complete and k < minimum:
        return np.full(parts[0].shape, np.nan)
    if complete:
        s = [np.asarray(a, dtype=np.float64) for a in parts]
        wanted = frozenset({(k - 1) // 2, k // 2})
    else:  # "not observed" (inf) sorts last; with c observed, the median is that of the c smallest
        s = [np.where(x, np.inf, a) for a, x in zip(parts, nan, strict=True)]
        wanted = frozenset(p for c in range(max(1, minimum), k + 1) for p in ((c - 1) // 2, c // 2))
    for i, j, low, high in _median_plan(k, wanted):
        a, b = s[i], s[j]  # new arrays, never written in place: the first ones are the caller's
        if low:
            s[i] = np.minimum(a, b)
        if high:
            s[j] = np.maximum(a, b)
    if complete:
        return (s[(k - 1) // 2] + s[k // 2]) / 2.0
    count = k - np.sum(nan, axis=0, dtype=np.int16)
    med = np.full(count.shape, np.nan)
    for c in range(max(1, minimum), k + 1):
        med = np.where(count == c, (s[(c - 1) // 2] + s[c // 2]) / 2.0, med)
    return med


def _row_median(points: np.ndarray, minimum: int) -> np.ndarray:
    """Median over the last axis of the observed entries; NaN with fewer than `minimum`."""
    flat = points.reshape(-1, points.shape[-1])
    out = nan_median(flat)
    out[np.count_nonzero(~np.isnan(flat), axis=1) < max(1, minimum)] = np.nan
    return out.reshape(points.shape[:-1])


SIGNALS = ("bucket", "shift")


@dataclass
class Fit:
    """The verdict on the evaluated bucket, per row: the stronger (in the rule's direction) of the
    bucket's own score and the sustained-shift score of the last `adapt` buckets."""

    value: np.ndarray
    expected: np.ndarray  # bucket: the model's forecast; shift: the usual level for this bucket
    scale: np.ndarray  # the noise unit of the signal
    score: np.ndarray  # signed, in noise units
    model: np.ndarray  # index into MODEL_NAMES
    decided: np.ndarray
    signal: np.ndarray  # index into SIGNALS
    shift: np.ndarray  # the median departure of the last `adapt` buckets from the usual level
    point: np.ndarray  # signed: the bucket's own score (the signal "bucket"), whichever was chosen
    sustained: np.ndarray  # signed: the sustained-shift score (the signal "shift"), whichever was chosen
    level: np.ndarray  # the series' current level: the median of the last `adapt` buckets (seasonality put back)
    before: np.ndarray  # rows with an open episode: the usual level before it (NaN: not in the learning window)
    before_score: np.ndarray  # signed: the current level against `before`, in the pre-episode shift unit


CHUNK_CELLS = 16_384  # fit learns this many (row x bucket) cells of its window at a time: see fit


def fit(values: np.ndarray, step: int, params: AnomalyParams, since: np.ndarray | None = None) -> Fit:
    """Learn every row's series from the trailing history and score its last bucket.

    `since`: per row, how many buckets before the evaluated one the row's open episode was first
    judged (0: the evaluated bucket; negative or None: no open episode). The windows of the open
    episode are not used to learn the sustained shift's noise unit (see `_shift`).

    Every row is learnt on its own, so the rows are fitted in chunks of about CHUNK_CELLS cells of
    the learning window (128 KB per temporary array): the ~100 temporaries of a whole 1000-account
    block are each past the allocator's reuse size, and their fresh pages cost as much as the
    arithmetic (bench/anomaly_speed.py). The result is the same row for row."""
    width = learn_buckets(params, step) + 2 * max(1, params.adapt) + 1  # the columns a model's arrays span
    per = max(1, CHUNK_CELLS // width)
    rows = values.shape[0]
    if rows <= per:
        return _fit(values, step, params, since)
    parts = [_fit(values[lo:lo + per], step, params, None if since is None else since[lo:lo + per])
             for lo in range(0, rows, per)]
    return Fit(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Fit)))


def _fit(values: np.ndarray, step: int, params: AnomalyParams, since: np.ndarray | None = None) -> Fit:
    """fit of one chunk of rows."""
    rows = values.shape[0]
    h = history_buckets(params, step)
    y = values[:, -h:].astype(np.float64, copy=False)
    if y.shape[1] < h:  # fewer buckets than the history: pad with "not observed"
        y = np.concatenate([np.full((rows, h - y.shape[1]), np.nan), y], axis=1)
    learn, m = learn_buckets(params, step), max(1, params.adapt)
    first = h - learn - 1  # column of the first tau of the learning window (tau = t - learn)
    extra = m // 2  # levels from `extra` buckets before `first`, for the trend
    start = first - m - extra  # earliest deseasonalised column a level reads
    width = h - start
    errors, preds, names, recent, bases = [], [], [], [], []
    # every bucket finite (the usual case): the seasonal bases and the deseasonalised buckets have no
    # NaN either (a difference of finite numbers is never NaN), so the medians need not look for one
    finite = True if np.isfinite(y).all() else None
    for name, period in [("level", 0), *seasonal_periods(step)]:
        if period == 0:
            base = np.zeros((rows, width))
        else:  # history_buckets keeps start >= cycles x period: every slice is inside y
            base = _median_of([y[:, start - c * period: h - c * period] for c in range(1, params.cycles + 1)],
                              complete=finite)
        d = y[:, start:] - base
        n_levels = width - m + 1  # levels (medians of the m buckets before) of taus start + m .. t + 1
        medians = _median_of([d[:, j: j + n_levels] for j in range(m)], max(1, m // 2), complete=finite)
        level = medians[:, :-1]  # the forecasts: taus start + m .. t
        pred = base[:, m + extra:] + level[:, extra:]
        if m >= 2:  # the level's change over the last half of `adapt`, projected halfway ahead
            half = m // 2
            slope = (level[:, extra:] - level[:, extra - half: level.shape[1] - half]) / half
            pred = pred + TREND_DAMPING * np.nan_to_num(slope) * (m + 1) / 2
        errors.append(y[:, first:] - pred)
        preds.append(pred[:, -1])
        names.append(MODEL_NAMES.index(name))
        recent.append(medians[:, extra + 1:])  # medians of the m-bucket windows ending at taus first .. t
        bases.append(base[:, -1])
    err = np.stack(errors)  # (models, rows, learn + 1): the last column is the evaluated bucket
    past = err[:, :, :-1]
    observed = np.count_nonzero(~np.isnan(past), axis=2)
    usable = observed >= max(1, learn // 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = np.where(usable, np.nansum(past**2, axis=2) / np.maximum(observed, 1), np.inf)
        mae = np.nansum(np.abs(past), axis=2) / np.maximum(observed, 1)
    best = np.zeros(rows, dtype=np.intp)
    r = np.arange(rows)
    for c in range(1, len(names)):
        best = np.where(mse[c] < PARSIMONY * mse[best, r], c, best)
    chosen = err[best, r]
    k = min(TAIL_RANK, learn)
    sized = np.where(np.isnan(chosen[:, :-1]), -np.inf, np.abs(chosen[:, :-1]))
    large = -np.partition(-sized, k - 1, axis=1)[:, k - 1]  # the k-th largest error
    z_learn = _NORMAL.inv_cdf(1.0 - k / (2 * learn))
    scale = np.fmax(MAE_TO_SIGMA * mae[best, r], np.fmax(large, 0.0) / z_learn)
    scale = np.fmax(scale, _tail_scale(sized, params.threshold))
    window = y[:, first - m: -1]
    ok = ~np.isnan(window)
    n_obs = np.maximum(ok.sum(axis=1), 1)
    mean = np.where(ok, window, 0.0).sum(axis=1) / n_obs
    spread = np.where(ok, np.abs(window - mean[:, None]), 0.0).sum(axis=1) / n_obs
    floor = params.min_change * np.fmax(spread, np.abs(mean))
    var = scale**2 + floor**2
    expected = np.stack(preds)[best, r]
    counts = np.all(~ok | ((window == np.round(window)) & (window >= 0)), axis=1)
    poisson = np.fmax(np.fmax(np.nan_to_num(expected), mean), 1.0)
    var = np.where(counts, var + poisson, var)
    scale = np.sqrt(np.fmax(var, 1e-18))
    value = y[:, -1]
    decided = usable[best, r] & ~np.isnan(value) & ~np.isnan(expected)
    with np.errstate(invalid="ignore"):
        score = (value - expected) / scale
    back = np.full(rows, -1, dtype=np.int64) if since is None else np.asarray(since, dtype=np.int64)
    windows = np.stack(recent)[best, r]
    usual, shift, shift_scale, shift_score, before, before_score = _shift(
        windows, m, learn, floor, np.where(counts, poisson, 0.0), back)
    use = directional(params, np.nan_to_num(shift_score)) > directional(params, np.nan_to_num(score, nan=0.0))
    base_now = np.stack(bases)[best, r]
    before = base_now + before
    lost = np.flatnonzero((back >= 0) & np.isnan(before))  # the chosen model does not see before the episode
    for c in range(len(names)):  # (a seasonal model chosen later): the simplest model that does says it
        if lost.size == 0:
            break
        *_, b, bs = _shift(recent[c][lost], m, learn, floor[lost], np.where(counts, poisson, 0.0)[lost], back[lost])
        before[lost], before_score[lost] = bases[c][lost] + b, bs
        lost = lost[np.isnan(before[lost])]
    usual = base_now + usual
    return Fit(value, np.where(use, usual, expected), np.where(use, shift_scale, scale),
               np.where(use, shift_score, score), np.asarray(names)[best], decided, use.astype(np.intp), shift,
               score, shift_score, base_now + windows[:, -1], before, before_score)


TAIL_SHARE = 0.05  # the tail model is fitted to the largest 5% of the learning window's errors
TAIL_MIN = 10  # and at least 10 of them (a mean of 10 excesses is within about 30% of the tail's)


def _tail_scale(sized: np.ndarray, threshold: float) -> np.ndarray:
    """The noise unit at which `threshold` is the learnt tail's firing point (peaks over threshold).

    `sized`: per row the |errors| of the learning window (-inf where not observed). The k largest
    (k = max(TAIL_MIN, TAIL_SHARE x window)) are the tail; u, the (k+1)-th largest, its start. Above
    u the errors are modelled as exponential (the generalised Pareto tail with shape 0, as in the
    SPOT detector of Siffer et al., KDD 2017) whose mean excess b over u is only known from the m
    excesses it is estimated from. The predictive tail (the exponential mixed over b's posterior
    under the scale prior 1 / b) is the Lomax tail P(|e| > x) = (k / n) (1 + (x - u) / (m b))^-m,
    not the plug-in (k / n) exp(-(x - u) / b). The tail probability at which a Gaussian score fires
    (two-sided at `threshold`: 6.3e-5 at 4) is reached at x* = u + m b (((k / n) / p)^(1 / m) - 1);
    it tends to the plug-in u + b ln((k / n) / p) for large m and is 13% further out for the m = 27
    of 2 days of 5-minute buckets, 73% for the m = 8 of 48 buckets: a tail learnt from few errors is
    not trusted to be short. The unit is x* / threshold, so a series whose errors are heavier-tailed
    than Gaussian (bursts) fires only past its own learnt tail. The mean excess leaves out the
    TAIL_RANK - 1 largest errors (two past anomalies do not hide a third, as for the rank scale).
    0 where the window has no more than k observed errors."""
    n = np.count_nonzero(np.isfinite(sized), axis=1)
    k = min(max(TAIL_MIN, math.ceil(TAIL_SHARE * sized.shape[1])), sized.shape[1] - 1)
    trim = min(TAIL_RANK - 1, k - 1)
    top = np.sort(-np.partition(-sized, k, axis=1)[:, :k + 1], axis=1)  # the k + 1 largest, ascending
    u = top[:, 0]
    p = 2.0 * (1.0 - _NORMAL.cdf(threshold))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        excess = np.mean(top[:, 1:k + 1 - trim], axis=1) - u
        m = k - trim  # the excesses b is estimated from
        x = u + m * excess * ((k / np.maximum(n, 1) / p) ** (1.0 / m) - 1.0)
    return np.where((n > k) & np.isfinite(x), np.fmax(x, 0.0) / threshold, 0.0)


def _shift(medians: np.ndarray, w: int, learn: int, floor: np.ndarray, poisson: np.ndarray,
           back: np.ndarray) -> tuple[np.ndarray, ...]:
    """The sustained-shift signal: the median of the last `w` deseasonalised buckets against the
    medians of the earlier `w`-bucket windows of the learning window (`medians`: the windows ending at
    every tau of it, the evaluated bucket last; their median is the usual level).

    A median, so a single spike moves it not at all: only a change that holds for about half of the
    `w` buckets does (short anomalies stay the point score's, `for` keeps its meaning). Its noise unit
    is the larger of the windows' spread (1.2533 x mean absolute departure from their median) and their
    largest departure over the normal quantile 1 - 1 / (2 x independent windows in `learn`), i.e. a shift
    must be larger than any the learning window showed; plus the floor and, for counts, the
    variance of a median of `w` Poisson counts (pi/2 x lambda / w). It sees subtle lasting changes
    that no single bucket shows (a lasting step the level model has already followed, a rise in the spikes' rate),
    which the point score misses because its level follows the series within `adapt` buckets.

    An open episode's own windows (`back`: per row, buckets since its first judged bucket; < 0: none)
    are not learnt from: the unit comes from the windows that end before the `w` buckets its first
    finding was judged on, or an outage's zeros, once older than `w` buckets, would be the "largest
    departure" and the outage would soon be "within" the noise. The usual level is still the median of
    every window, so a lasting shift becomes the usual level after about learn / 2 and the episode ends;
    `before` (the median of the pre-episode windows) and `before_score` (the current window against it,
    in the same unit) tell whether it ended because the series came back or because it stayed at a new
    level. With fewer than `w` pre-episode windows left (an episode older than the learning window)
    every window is used and `before` is NaN.
    Returns (usual level, shift, unit, score, before, before score)."""
    ref = medians[:, :-w]  # the windows that end before the current one begins
    usual = nan_median(ref)
    if (back >= 0).any():
        cut = np.where(back >= 0, learn - back - w + 1, ref.shape[1])  # windows j < cut do not overlap the episode
        kept = np.arange(ref.shape[1])[None, :] < cut[:, None]
        enough = np.count_nonzero(kept & ~np.isnan(ref), axis=1) >= w
        learnt = np.where(kept & enough[:, None], ref, np.where(enough[:, None], np.nan, ref))
        centre = nan_median(learnt)
    else:  # no open episode: every window is learnt from
        learnt, centre, enough = ref, usual, np.zeros(len(ref), dtype=bool)
    away = np.abs(learnt - centre[:, None])
    seen = np.count_nonzero(~np.isnan(away), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = MAE_TO_SIGMA * np.nansum(away, axis=1) / seen
        largest = np.max(np.where(np.isnan(away), -np.inf, away), axis=1)
    z_windows = _NORMAL.inv_cdf(1.0 - 1.0 / (2 * max(2.0, learn / w)))
    unit = np.sqrt(np.fmax(spread, largest / z_windows) ** 2 + floor**2 + MAE_TO_SIGMA**2 * poisson / w)
    shift = medians[:, -1] - usual
    before = np.where(enough & (back >= 0), centre, np.nan)
    with np.errstate(invalid="ignore"):
        return usual, shift, unit, shift / unit, before, (medians[:, -1] - before) / unit


def directional(params: AnomalyParams, score: np.ndarray) -> np.ndarray:
    if params.direction == "up":
        return score
    if params.direction == "down":
        return -score
    return np.abs(score)


def tail_probability(params: AnomalyParams, score: float) -> float:
    """The normal tail probability of a score this far out in the rule's direction."""
    x = abs(score) if params.direction == "both" else (score if params.direction == "up" else -score)
    p = 1.0 - _NORMAL.cdf(x)
    return 2 * p if params.direction == "both" else p


def detect_anomaly(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts],
                   open_episodes: Sequence[OpenEpisode] = ()) -> DetectorResult:
    params = _params(rule)
    rows, n = block.values.shape
    if rows == 0 or n == 0:
        return DetectorResult([], np.zeros(rows, dtype=bool), moved=np.zeros(rows, dtype=np.int8))
    opened = open_rows(block, open_episodes)
    since = np.full(rows, -1, dtype=np.int64)
    for i, episode in opened.items():  # buckets since the one its first finding was about
        # (started_at is the evaluation time: `usagebot evaluate` without --at is not on a bucket edge)
        since[i] = max(0, (block.end - episode.started_at // block.step * block.step) // block.step)
    f = fit(block.values, block.step, params, since)
    s = directional(params, f.score)
    with np.errstate(invalid="ignore"):
        fire = f.decided & (s >= params.threshold)
    if opened:
        fire[list(opened)] = False  # judged with hysteresis below
    share = rule.cohort.share if rule.cohort is not None else 1.0
    result = DetectorResult([], f.decided.copy(), moved=moved(params, f, share))
    for i in np.flatnonzero(fire):
        result.findings.append(_finding(rule, params, block, f, int(i)))
    for i, episode in opened.items():
        if not f.decided[i]:
            continue
        if s[i] >= (params.hold if episode.firing else params.threshold):  # pending: the firing condition
            result.findings.append(_finding(rule, params, block, f, i, holding=episode.firing))
        else:
            result.recoveries[(block.account_ids[i], "")] = _recovery(params, block, f, i, episode)
    return result


def moved(params: AnomalyParams, f: Fit, share: float = 0.3) -> np.ndarray:
    """Per row +1 / -1 where the score reached the cohort level up / down (in the rule's
    direction), else 0: what cohort suppression's share test counts (rules.model.Cohort). The
    level is the recovery score, not the firing one: a holiday moves every account by about as
    much, and which of them pass 4 noise units is noise; at the recovery score the share of the
    book it moves is stable, and it is the level at which an open episode already counts as still
    anomalous. But never under cohort_level(share): a low `recovery` (0.5) would let noise alone
    move 31% of a quiet book one way, a cohort event at every bucket muting real anomalies."""
    level = max(params.hold, cohort_level(share))
    out = np.zeros(len(f.decided), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        if params.direction in ("up", "both"):
            out[f.decided & (f.score >= level)] = 1
        if params.direction in ("down", "both"):
            out[f.decided & (-f.score >= level)] = -1
    return out


def cohort_level(share: float) -> float:
    """The fewest noise units a move must have to count in a cohort's share: the level that noise
    alone (scores in noise units, Gaussian in the body) passes one way in a tenth of `share` of the
    accounts, so a quiet book never reaches the share (share 0.3: 1.88 units, under the default
    recovery of 2, which it leaves as it is; share 1: 1.28)."""
    return _NORMAL.inv_cdf(1.0 - share / 10.0)


def _range(params: AnomalyParams, f: Fit, i: int, k: float) -> tuple[float, float]:
    """The expected range at `k` noise units, never below 0: usage is never negative (every source refuses a
    negative value), so "within -30.8 .. 231" is said "within 0 .. 231" (the same values)."""
    return max(0.0, float(f.expected[i] - k * f.scale[i])), float(f.expected[i] + k * f.scale[i])


def _finding(rule: Rule, params: AnomalyParams, block: MetricBlock, f: Fit, i: int, holding: bool = False) -> Finding:
    value, expected, score = float(f.value[i]), float(f.expected[i]), float(f.score[i])
    k = params.hold if holding else params.threshold
    low, high = _range(params, f, i, k)
    side = "above" if score > 0 else "below"
    edge = high if score > 0 else low
    model = MODEL_NAMES[int(f.model[i])]
    signal = SIGNALS[int(f.signal[i])]
    when = f"in the {fmt.duration(block.step)} bucket starting {fmt.moment(block.end - block.step, block.step)}"
    span_seconds = max(1, params.adapt) * block.step  # the shift signal's window
    if signal == "shift":
        span = fmt.duration(span_seconds)
        away = fmt.number(abs(float(f.shift[i])))
        if model == "level":  # the median of the buckets themselves
            ran = f"its median ran {away} {side} its usual level (about {fmt.number(expected)}, level model)"
        else:  # the median of each bucket's departure from its own time of day (week): not one level
            ran = (f"it ran a median of {away} {side} what the {model} model expects for each bucket (about"
                   f" {fmt.number(expected)} for this one)")
        message = (f"{block.metric} is {fmt.number(value)} {when}: over the last {span} {ran},"
                   f" a sustained shift of {abs(score):.1f} noise units")
        back = f"its median over the last {span} is back within"
    else:
        message = (f"{block.metric} is {fmt.number(value)} {when}: expected about {fmt.number(expected)}"
                   f" ({model} model), {abs(score):.1f} noise units {side} it")
        back = "back within"
    if holding:
        message += f"; it resolves once {back} {fmt.number(low)} .. {fmt.number(high)}"
    details = {"score": score, "probability": tail_probability(params, score), "expected": expected,
               "scale": float(f.scale[i]), "model": model, "signal": signal, "direction": params.direction,
               "low": low, "high": high}
    if signal == "shift":  # what the median of the last `adapt` buckets ran from the usual level, over how long
        details.update(shift=float(f.shift[i]), span=span_seconds)
    return make_finding(rule, block, i, value=value, baseline=expected, threshold=edge,
                        window_start=block.end - block.step, message=message + ".", details=details)


def adapted(params: AnomalyParams, f: Fit, i: int) -> bool:
    """Whether row i's open episode ends because the model adapted to a new level, not because the
    series came back: its last `adapt` buckets are still at least `recovery` shift units (learnt before
    the episode) from the usual level before it, in the rule's direction."""
    return bool(np.isfinite(f.before_score[i]) and directional(params, f.before_score[i]) >= params.hold)


_ADJUSTED = {"daily": ", adjusted for the time of day", "weekly": ", adjusted for the time of the week"}


def _recovery(params: AnomalyParams, block: MetricBlock, f: Fit, i: int, episode: OpenEpisode) -> Recovery:
    """Why row i's open episode ends, in words true to the numbers: the model adapted to a new level
    (`adapted`); or the episode outlived what the learning window keeps from before it (its level is
    now learnt as the usual one: whether the series is back is not known, and the message says so);
    or the series is back inside the expected range, said of what the signal measures (the bucket, or
    the median of the last `adapt` buckets for the shift signal); else the score fell under `recovery`
    though the value is outside the range shown (never "back to" a value outside it)."""
    low, high = _range(params, f, i, params.hold)
    value, expected = float(f.value[i]), float(f.expected[i])
    details = {"score": float(f.score[i]), "low": low, "high": high, "adapted": False}
    opened = fmt.moment(episode.started_at // block.step * block.step - block.step, block.step)
    span = fmt.duration(max(1, params.adapt) * block.step)
    shift = SIGNALS[int(f.signal[i])] == "shift"
    shown = float(f.level[i]) if shift else value
    adjusted = _ADJUSTED.get(MODEL_NAMES[int(f.model[i])], "")
    median = f"its median{adjusted}"  # the level: the seasonality put back
    if adapted(params, f, i):
        level, before = float(f.level[i]), float(f.before[i])
        message = (f"{block.metric} is {fmt.number(value)} and has not come back: over the last {span} {median}{',' if adjusted else ''} was about"
                   f" {fmt.number(level)}, against about {fmt.number(before)} before this alert opened on"
                   f" {opened}; the model has adapted to this new level as the usual one, so the alert ends.")
        details.update(adapted=True, level=level, before=before)
    elif not np.isfinite(f.before[i]):
        message = (f"{block.metric} is {fmt.number(value)}: this alert, open since {opened}, has outlasted what the"
                   f" learning window keeps from before it, so the model now learns its level as the usual one"
                   f" and the alert ends; whether {block.metric} is back to its earlier level is not known here.")
        details.update(adapted=None)
    elif low <= shown <= high:
        what = f"about {fmt.number(shown)} over the last {span} ({median})" if shift else fmt.number(value)
        message = (f"{block.metric} back to {what}: within {fmt.number(low)} .. {fmt.number(high)}"
                   f" of the expected {fmt.number(expected)}.")
    else:  # said of what the score measured: the bucket, or the median of the last `adapt` buckets
        what = f"at about {fmt.number(shown)} over the last {span} ({median})" if shift else f"is {fmt.number(value)}"
        message = (f"{block.metric} {what}, outside {fmt.number(low)} .. {fmt.number(high)} of the"
                   f" expected {fmt.number(expected)}, but its anomaly score fell to {float(f.score[i]):.1f}, under"
                   f" the {params.hold:g} an open alert holds at (the model has been learning this level), so the"
                   f" alert ends.")
    return Recovery(block.end, value, expected, message, details)


# ------------------------------------------------------------------------------- the kind


def _check(t: Threshold) -> None:
    """score or probability, not both; a recovery below the firing score; learn a bucket multiple."""
    if t.given("score") and t.given("probability"):
        t.error("probability", "give either score or probability, not both")
        return
    recovery = t.got.get("recovery")
    if recovery is not None and recovery >= t.params.threshold:
        t.error("recovery", f"must be below the firing score ({t.params.threshold:g}): an open alert holds while the"
                            f" score is at least recovery (got {t.shown('recovery')})")
    if t.given("learn"):
        t.multiple_of_bucket("learn")
    if t.bucket:  # the shift signal compares the last `adapt` buckets with the windows before them in `learn`
        p = t.params
        learn, adapt = learn_buckets(p, t.bucket), max(1, p.adapt)
        if learn < adapt:
            t.error("learn" if t.given("learn") else "adapt",
                    f"the learning window ({fmt.count(learn, 'bucket')} = {fmt.duration(learn * t.bucket)}) must hold"
                    f" at least `adapt` ({adapt}) buckets: raise learn or lower adapt")


KIND = Kind(
    name="anomaly",
    title="Usage anomaly",
    summary="the bucket is far from what the account's own learnt level, trend and seasonality predict",
    params=AnomalyParams,
    fields=(
        Field("direction", v.choice(DIRECTIONS), '`"both"`, `"up"`, `"down"`', '`"both"`', "Which deviations fire:"
              " above the expected value, below it, or both."),
        Field("score", v.number(0.5), "number ≥ 0.5", f"`{DEFAULT_SCORE:g}`", "Fires when the bucket is at least this"
              " many noise units from the expected value (the anomaly score). Give `score` or `probability`."),
        Field("probability", v.in_range(v.number(), 0.0, 0.5, "must be between 0 and 0.5 (a tail probability)"),
              "number, 0 < p ≤ 0.5", "none", "Fires when the normal tail probability of the score (two-sided for"
              " `both`) is at most this: `1e-4` = score 3.9 (`both`) or 3.7 (`up`/`down`)."),
        Field("recovery", v.number(0), "number < the firing score", "half the firing score", "An open alert holds"
              " while the score is at least this (see [how alerts end](#how-alerts-end-recovery))."),
        Field("adapt", v.integer(1, 1000), "integer, 1 ≤ n ≤ 1000", "`6`", "Buckets over which the learnt level and"
              " trend follow the series (a level shift is absorbed in about this many buckets), and the window"
              " whose median the sustained-shift score compares with the learning window's (at most `learn` in"
              " buckets)."),
        Field("learn", v.positive_duration, "duration, a multiple of `bucket`", "2 days, at least 48 buckets",
              "How much recent history the noise scale and the choice of seasonal model are learnt from."),
        Field("cycles", v.integer(1, 8), "integer, 1 ≤ n ≤ 8", "`3`", "Past days (weeks) whose same time of day"
              " (week) make the seasonal expectation (their median)."),
        Field("min_change", v.number(0), "number ≥ 0", "`0.01`", "The noise scale is at least this share of the"
              " series' typical level (or spread): a flat or perfectly regular series does not fire on tiny"
              " wobbles."),
    ),
    detect=detect_anomaly,
    required_history=required_history,
    endings=(Ending("anomaly", "the score (of the bucket or of the sustained shift) is at least `recovery` in the"
                    " rule's direction", "both scores are below `recovery`; the model keeps learning while an alert"
                    " is open (but not the noise from the alert's own buckets), so a level shift is reported once"
                    " and resolves once it is the usual level (about half of `learn` later), saying the model"
                    " adapted to a new level rather than that the series is back"),),
    check=_check,
    resolve_buckets=1,  # one bucket back in range ends it: two short anomalies are two episodes
    cohort="default",  # a book-wide shift in one bucket (a holiday, a pipeline gap) is an event, not N anomalies
    calendar=True,
)

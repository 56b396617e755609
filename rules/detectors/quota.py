"""Quota detector: billing-period usage against the account's quota for the metric.

Evaluated at at = block.end; NaN means "not observed", never zero.

Quota and period
    q = account.quotas.get(metric); missing, NaN or <= 0 -> undecided.
    period = rules.periods.billing_period(at - 1, account.billing_day,
    account.timezone) (the period holding the evaluated bucket's last second).
    A bucket belongs to a period when its START lies inside it, so with 1h
    buckets a March America/New_York period (31 days less one hour) holds
    743 buckets. Accounts are grouped on (billing_day, timezone); periods and
    column ranges are computed once per group, sums are vectorised.
    If the block starts after period.start -> undecided (not enough history).
    Period-to-date usage u = nansum of the buckets starting in
    [period.start, at); when there are such buckets but none of them is
    observed -> undecided (no bucket has started in the period yet, as with
    daily UTC buckets and a period starting at 15:00Z: u = 0, decided).

mode "threshold"
    One Finding per fraction f of `fractions` with u >= f * q:
    discriminator f"{period.label}:{f:g}", once True, value u, baseline None,
    threshold f * q, window = [period.start, at). details: quota, fraction,
    utilization (u / q), period (label), period_start, period_end (ISO).

mode "forecast"
    The current bucket must be observed, else undecided: a missing day neither
    fires nor resolves a forecast.
    elapsed = at - period.start; elapsed < min_elapsed, or fewer observed
    buckets in the period than min_observed covers -> decided, no finding.
    rate = sum of observed buckets in the last forecast_window / (observed
    buckets * bucket seconds), per second (no observed bucket -> undecided).
    projected = u + rate * (period.end - at). Fires when
    u < fraction * q <= projected: discriminator
    f"{period.label}:forecast{fraction:g}", once True, value u, baseline None,
    threshold fraction * q, window = [min(period.start, rate window start), at).
    details: quota, fraction, utilization, projected_total, projected_date
    (local ISO date, account timezone, on which u + rate * t reaches
    fraction * q), days_left (days from at to that moment, 1 decimal),
    rate_per_day, period, period_start, period_end.
    An open forecast of the current period holds while projected >= recovery *
    q (recovery defaults to 0.9 x fraction: hysteresis) or once usage has
    reached fraction * q (it came true; it closes with the period), and is
    otherwise a Recovery stating the new projection.

Open episodes of an earlier billing period (both modes) close quietly when
the account is decided: a Recovery "the billing period ... ended" (quiet,
immediate), not a message to the account owner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter
from typing import Any

import numpy as np

from rules.config import values as v
from rules.config.toml_lines import PathKey
from rules.detectors import format as fmt
from rules.detectors.finding import make_finding
from rules.detectors.scan import at_least, cumulative_sum, loose
from rules.durations import format_duration
from rules.kind_spec import Ending, Field, Kind, Threshold
from rules.memo import by_identity
from rules.model import (
    DAY,
    AccountFacts,
    DetectorResult,
    Finding,
    FindingRows,
    MetricBlock,
    OpenEpisode,
    PickedFacts,
    Recovery,
    Rule,
)
from rules.periods import Period, billing_period, iso

# billing_period(at - 1, day, timezone) of a detector's evaluation time: a replay asks it per billing
# group at every bucket close (15,438 calls, 1.3 s of a 2k x 180 backtest under cProfile), the same
# answer for every close in one period. Period is frozen: one object may be shared.
period_at = lru_cache(maxsize=1 << 16)(billing_period)


@dataclass(frozen=True)
class QuotaParams:
    """Billing-period usage against the account's quota for the metric.

    mode "threshold": one finding per fraction crossed, once per period.
    mode "forecast":  fires when usage projected to period end (current
                      period-to-date plus the recent rate) reaches
                      `fraction` of quota before usage actually has; carries
                      the projected date.
    """

    mode: str = "threshold"
    fractions: tuple[float, ...] = (0.8, 1.0)
    fraction: float = 1.0
    forecast_window: int = 7 * DAY
    min_elapsed: int = 3 * DAY
    min_observed: int = 3 * DAY  # forecast: observed data (bucket count x bucket) in the period first
    recovery: float | None = None  # forecast: an open forecast resolves once projected < recovery * quota

    @property
    def recovery_fraction(self) -> float:
        return 0.9 * self.fraction if self.recovery is None else self.recovery

# Longest billing period: 31 days plus the hour a DST change can add.
MAX_PERIOD = 31 * DAY + 3600


def _params(rule: Rule) -> QuotaParams:
    if not isinstance(rule.params, QuotaParams):
        raise TypeError(f"{fmt.rule_location(rule)}: quota rule has {type(rule.params).__name__} params")
    return rule.params


def round_up(seconds: int, step: int) -> int:
    return -(-seconds // step) * step


def required_history(rule: Rule) -> int:
    params = _params(rule)
    need = MAX_PERIOD
    if params.mode == "forecast":
        need = max(need, max(1, params.forecast_window // rule.bucket) * rule.bucket)
    return round_up(need, rule.bucket)


# ------------------------------------------------------------- shared helpers


@by_identity()
def account_groups(accounts: Sequence[AccountFacts]) -> list[tuple[int, str, np.ndarray]]:
    """Row indices grouped by (billing_day, timezone), in first-seen order (read-only arrays: a tuple of
    facts is grouped once per replay, rules.memo; some rows of one, PickedFacts, from its groups)."""
    if isinstance(accounts, PickedFacts):
        return _picked_groups(accounts)
    n = len(accounts)
    if not n:
        return []
    # as columns (one key per row: timezone code x day span + day), grouped by one unique and a stable
    # sort: 2x faster at 10k accounts than a dict of lists walked row by row
    days = np.fromiter(map(attrgetter("billing_day"), accounts), dtype=np.int64, count=n)
    zones = list(map(attrgetter("timezone"), accounts))
    code = {z: i for i, z in enumerate(dict.fromkeys(zones))}
    zone = np.zeros(n, dtype=np.int64) if len(code) == 1 else \
        np.fromiter(map(code.__getitem__, zones), dtype=np.int64, count=n)
    low = int(days.min())
    _, first, group = np.unique(zone * (int(days.max()) - low + 1) + (days - low), return_index=True,
                                return_inverse=True)
    group = group.reshape(-1)
    parts = np.split(np.argsort(group, kind="stable"), np.cumsum(np.bincount(group))[:-1])
    out = []
    for g in np.argsort(first, kind="stable"):  # first-seen order
        rows = parts[g].astype(np.intp, copy=False)
        rows.flags.writeable = False
        row = int(first[g])
        out.append((accounts[row].billing_day, zones[row], rows))
    return out


def _picked_groups(picked: PickedFacts) -> list[tuple[int, str, np.ndarray]]:
    """account_groups of some rows of a facts tuple, from the tuple's groups (the same result)."""
    whole = account_groups(picked.parent)
    group_of = np.empty(len(picked.parent), dtype=np.intp)
    for g, (_, _, rows) in enumerate(whole):
        group_of[rows] = g
    mine = group_of[picked.idx]
    present, first = np.unique(mine, return_index=True)
    out = []
    for g in present[np.argsort(first)]:
        rows = np.flatnonzero(mine == g)
        rows.flags.writeable = False
        out.append((whole[g][0], whole[g][1], rows))
    return out


@by_identity()
def quota_array(accounts: Sequence[AccountFacts], metric: str) -> np.ndarray:
    """Quota per row; NaN where the account has none for `metric` (read-only, rules.memo)."""
    if isinstance(accounts, PickedFacts):
        out = quota_array(accounts.parent, metric)[accounts.idx]
        out.flags.writeable = False
        return out
    nan = math.nan
    out = np.fromiter((nan if (q := quotas.get(metric)) is None else float(q)
                       for quotas in map(attrgetter("quotas"), accounts)), dtype=np.float64, count=len(accounts))
    out.flags.writeable = False
    return out


def quota_groups(
    block: MetricBlock, accounts: Sequence[AccountFacts]
) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
    """(billing_day, timezone, rows, quotas) for each group of rows that have a quota for the
    block's metric; rows without one are left out (undecided)."""
    q_all = quota_array(accounts, block.metric)
    with np.errstate(invalid="ignore"):
        has_quota = q_all > 0
    for billing_day, timezone, group in account_groups(accounts):
        idx = group[has_quota[group]]
        if idx.size:
            yield billing_day, timezone, idx, q_all[idx]


def column_at(block: MetricBlock, t: int) -> int:
    """First column whose bucket starts at or after epoch second t, clipped to [0, n]."""
    return min(block.n_buckets, max(0, -((block.start - t) // block.step)))


def interval_sums(
    block: MetricBlock, rows: np.ndarray, t0: int, t1: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(nansum, observed count, bucket count) per row over buckets starting in [t0, t1)."""
    lo, hi = column_at(block, t0), column_at(block, t1)
    part = block.values[rows, lo:hi]  # a copy (fancy indexing): zeroing its NaN in place is safe
    if np.may_share_memory(part, block.values):  # (rows given as a slice: a view)
        part = part.copy()
    nan = np.isnan(part)
    observed = (hi - lo) - np.count_nonzero(nan, axis=1)
    part[nan] = 0.0  # the same numbers summed in the same order as np.where(nan, 0.0, part).sum(axis=1)
    return part.sum(axis=1), observed, hi - lo


# ------------------------------------------------------------------ detector


def detect_quota(
    rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts], open_episodes: Sequence[OpenEpisode] = ()
) -> DetectorResult:
    params = _params(rule)
    if params.mode not in ("threshold", "forecast"):
        raise ValueError(f"{fmt.rule_location(rule)}: unknown quota mode {params.mode!r}")
    rows, n = block.values.shape
    decided = np.zeros(rows, dtype=bool)
    result = DetectorResult([], decided)
    if n == 0 or rows == 0:
        return result
    at = block.end
    opened = _opened_by_row(block, open_episodes)
    for billing_day, timezone, idx, q in quota_groups(block, accounts):
        period = period_at(at - 1, billing_day, timezone)
        if block.start > period.start:
            continue
        if params.mode == "forecast":
            _forecast_group(rule, params, block, idx, q, period, timezone, opened, result)
        else:
            used, observed, buckets = interval_sums(block, idx, period.start, at)
            ok = (observed > 0) | (buckets == 0)
            decided[idx[ok]] = True
            for fraction in sorted(params.fractions):
                pos = np.flatnonzero(ok & (used >= fraction * q))
                if pos.size:
                    result.found.append(_threshold_rows(rule, block, idx[pos], used[pos], q[pos], fraction, period))
        if opened:
            _close_ended_periods(block, idx, decided, period, opened, result)
    return result


def scan_quota(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts]) -> np.ndarray | None:
    """Rows that may reach a level, or be forecast to, at each bucket close (rules.detectors.scan): each
    mode's own conditions, checked with bounds from cumulative sums over each row's billing period
    (_period_candidates). The first row of every billing group is always a candidate (it sets the order
    of the findings). None when a value is negative (a block with usage corrections runs on every row)."""
    params = _params(rule)
    values = block.values
    with np.errstate(invalid="ignore"):
        if (values < 0).any():
            return None
    out = _period_candidates(params, block, accounts, np.asarray(quota_array(accounts, block.metric)))
    # The findings come group by group, in the order of each group's first row: with those rows run
    # too, any set of rows lists its groups in the order of the whole block (the same events, in order).
    out[[int(rows[0]) for _, _, rows in account_groups(accounts)]] = True
    return out


def _period_candidates(params: QuotaParams, block: MetricBlock, accounts: Sequence[AccountFacts], q: np.ndarray
                       ) -> np.ndarray:
    """scan_quota's candidates: the detector's own conditions at every bucket close, each row's billing
    period usage (and recent rate) from cumulative sums over the block (columns, not a detector run per
    step), widened by the cumulative sums' rounding bound. A row is a candidate unless a necessary
    condition surely fails: its period inside the block and observed (or empty), usage reaching the
    smallest level (threshold mode); or the bucket just closed observed, a recent rate, `min_observed` of
    the period observed (exact counts), usage under the target and the projection reaching it (forecast
    mode). Far narrower than the longest period's sum (plus the largest recent bucket times the longest
    period): at 10k x 180 the forecast's candidates went from 61.7% to 8.0% of the row-steps."""
    values = block.values
    rows, n = values.shape
    out = np.zeros((rows, n + 1), dtype=bool)
    if not n:
        return out
    observed = ~np.isnan(values)
    cs, slack = cumulative_sum(values)
    slack = 2 * slack  # x2: two sums differ
    seen = np.zeros((rows, n + 1), dtype=np.int64)
    np.cumsum(observed, axis=1, out=seen[:, 1:])
    step, width = block.step, max(1, params.forecast_window // block.step)
    # per row and evaluation j (closing column j - 1): the first column of its billing period, the
    # seconds left in it, and whether the detector forecasts there at all (period inside the block,
    # min_elapsed elapsed in forecast mode, a quota)
    first = np.zeros((rows, n), dtype=np.intp)
    left = np.zeros((rows, n))
    live = np.zeros((rows, n), dtype=bool)
    with np.errstate(invalid="ignore"):
        has_quota = q > 0
    for day, timezone, group in account_groups(accounts):
        idx = group[has_quota[group]]
        if not idx.size:
            continue
        g_first, g_left, g_live = np.zeros(n, dtype=np.intp), np.zeros(n), np.zeros(n, dtype=bool)
        period = None
        for j in range(1, n + 1):
            at = block.start + j * step
            if period is None or not period.start <= at - 1 < period.end:  # a new period: ~monthly
                period = billing_period(at - 1, day, timezone)
            g_live[j - 1] = block.start <= period.start and (params.mode != "forecast"
                                                             or at - period.start >= params.min_elapsed)
            g_first[j - 1] = min(j, max(0, -((block.start - period.start) // step)))
            g_left[j - 1] = period.end - at
        first[idx], left[idx], live[idx] = g_first, g_left, g_live
    rate_first = np.maximum(np.arange(1, n + 1) - width, 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        used = cs[:, 1:] - np.take_along_axis(cs, first, axis=1)
        err = slack[:, 1:]
        n_obs = seen[:, 1:] - np.take_along_axis(seen, first, axis=1)
        if params.mode != "forecast":
            level = (min(params.fractions) * q)[:, None]
            ok = (n_obs > 0) | (first == np.arange(1, n + 1))  # observed, or no bucket of the period yet
            out[:, 1:] = live & ok & (~np.isfinite(used) | at_least(used + err, level))
            return out
        r_obs = seen[:, 1:] - seen[:, rate_first]
        projected = used + err + (cs[:, 1:] - cs[:, rate_first] + err) / (r_obs * step) * left
        target = (params.fraction * q)[:, None]
        unsure = ~np.isfinite(used) | ~np.isfinite(projected)  # +-inf or overflow: no bound, run it
        out[:, 1:] = (live & observed & (r_obs > 0)
                      & (n_obs * step >= params.min_observed)
                      & (unsure | ((used - err < target + loose(target) + loose(used)) & at_least(projected, target))))
    return out


class _Opened:
    """The open episodes of a block's rows: row -> episodes, and a bool per row."""

    def __init__(self, rows: int) -> None:
        self.by_row: dict[int, list[OpenEpisode]] = {}
        self.any = np.zeros(rows, dtype=bool)

    def __bool__(self) -> bool:
        return bool(self.by_row)


def _opened_by_row(block: MetricBlock, open_episodes: Sequence[OpenEpisode]) -> _Opened:
    out = _Opened(len(block.account_ids))
    if open_episodes:
        index = {a: i for i, a in enumerate(block.account_ids)}
        for e in open_episodes:
            i = index.get(e.account_id)
            if i is not None:
                out.by_row.setdefault(i, []).append(e)
        out.any[list(out.by_row)] = True
    return out


def _close_ended_periods(
    block: MetricBlock, idx: np.ndarray, decided: np.ndarray, period: Period, opened: _Opened,
    result: DetectorResult,
) -> None:
    """Open episodes of an earlier billing period close quietly once the account is decided."""
    current, prefix = period.label, period.label + ":"
    for i in idx[decided[idx] & opened.any[idx]].tolist():
        account = block.account_ids[i]
        for e in opened.by_row[i]:
            d = e.discriminator
            if not d.startswith(prefix) and d != current:  # its label (before the first ":") is not current
                label = d.split(":", 1)[0]
                result.recoveries[(account, e.discriminator)] = Recovery(
                    block.end, None, None,
                    f"the billing period starting {label} ended; {block.metric} is now counted in the period"
                    f" starting {period.label}.",
                    {"period": label}, quiet=True, immediate=True)


def _forecast_group(
    rule: Rule,
    params: QuotaParams,
    block: MetricBlock,
    idx: np.ndarray,
    q: np.ndarray,
    period: Period,
    timezone: str,
    opened: _Opened,
    result: DetectorResult,
) -> None:
    """Forecast one (billing_day, timezone) group: sets `decided`, appends findings and recoveries."""
    at = block.end
    current_observed = ~np.isnan(block.values[idx, -1])  # a missing day decides nothing
    if at - period.start < params.min_elapsed:
        result.decided[idx[current_observed]] = True
        return
    used, observed, buckets = interval_sums(block, idx, period.start, at)
    ok = ((observed > 0) | (buckets == 0)) & current_observed
    width = max(1, params.forecast_window // block.step)
    rate_start = max(block.start, at - width * block.step)
    recent, recent_observed, _ = interval_sums(block, idx, rate_start, at)
    has_rate = ok & (recent_observed > 0)
    result.decided[idx[has_rate]] = True
    rate = np.zeros(idx.size)
    rate[has_rate] = recent[has_rate] / (recent_observed[has_rate] * block.step)
    projected = used + rate * (period.end - at)
    target = params.fraction * q
    key = f"{period.label}:forecast{params.fraction:g}"
    is_open = np.zeros(idx.size, dtype=bool)
    for pos in np.flatnonzero(opened.any[idx]):
        is_open[pos] = any(e.discriminator == key for e in opened.by_row[int(idx[pos])])
    enough = observed * block.step >= params.min_observed
    window_start = min(period.start, rate_start)
    site = _Site(rule, block.stub(), period, timezone, window_start, key)
    new = has_rate & ~is_open & enough & (used < target) & (target <= projected)
    if new.any():
        result.found.append(site.rows(idx, new, used, q, rate, projected, np.zeros(idx.size, dtype=bool)))
    reached = used >= target
    holds = has_rate & is_open & (reached | ((projected >= params.recovery_fraction * q) & (rate > 0)))
    if holds.any():
        result.found.append(site.rows(idx, holds, used, q, rate, projected, reached))
    for pos in np.flatnonzero(has_rate & is_open & ~holds):
        i = int(idx[pos])
        u, quota, r, p = float(used[pos]), float(q[pos]), float(rate[pos]), float(projected[pos])
        result.recoveries[(block.account_ids[i], key)] = Recovery(
            at, u, None,
            f"{block.metric} is now projected to reach {fmt.percent(p / quota)} of the quota"
            f" ({fmt.number(p)} of {fmt.number(quota)}) by the period end on"
            f" {fmt.local_date(period.end, timezone)}, at a recent {fmt.number(r * DAY)}/day;"
            f" {fmt.number(u)} used so far ({fmt.percent(u / quota)}).",
            {"projected_total": p, "rate_per_day": r * DAY, "utilization": u / quota})


@dataclass(frozen=True)
class _Site:
    """What one forecast group's findings share: the rule, the evaluated block, the period and the key."""

    rule: Rule
    block: MetricBlock
    period: Period
    timezone: str
    window_start: int
    key: str

    def rows(self, idx: np.ndarray, keep: np.ndarray, used: np.ndarray, q: np.ndarray, rate: np.ndarray,
             projected: np.ndarray, reached: np.ndarray) -> FindingRows:
        """The group's findings at the positions `keep` marks, columnar: a forecast, or where usage has
        reached the target (`reached`) the forecast come true."""
        pos = np.flatnonzero(keep)
        u, quota, r, p, done = used[pos], q[pos], rate[pos], projected[pos], reached[pos]
        rule, block = self.rule, self.block

        def build(k: int) -> Finding:
            i = int(idx[pos[k]])
            if done[k]:
                return _reached_finding(rule, block, i, float(u[k]), float(quota[k]), self.period, self.timezone,
                                        self.window_start)
            return _forecast_finding(rule, block, i, float(u[k]), float(quota[k]), float(r[k]), float(p[k]),
                                     self.period, self.timezone, self.window_start)

        target = _params(rule).fraction * quota
        return FindingRows(rule.id, block.metric, rule.severity, block.end, block.account_ids, idx[pos], self.key,
                           build, (u, target))


def _threshold_rows(rule: Rule, block: MetricBlock, rows: np.ndarray, used: np.ndarray, q: np.ndarray,
                    fraction: float, period: Period) -> FindingRows:
    """The findings of one level reached by one billing group's rows, columnar (FindingRows)."""
    block = block.stub()

    def build(k: int) -> Finding:
        return _threshold_finding(rule, block, int(rows[k]), float(used[k]), float(q[k]), fraction, period)

    return FindingRows(rule.id, block.metric, rule.severity, block.end, block.account_ids, rows,
                       f"{period.label}:{fraction:g}", build, (used, fraction * q))


def _make(
    rule: Rule,
    block: MetricBlock,
    i: int,
    *,
    value: float,
    threshold: float,
    window_start: int,
    message: str | Callable[[], str],
    discriminator: str,
    details: dict[str, object],
) -> Finding:
    return make_finding(
        rule,
        block,
        i,
        value=value,
        baseline=None,
        threshold=threshold,
        window_start=window_start,
        message=message,
        discriminator=discriminator,
        once=True,
        details=details,
    )


def _period_details(period: Period) -> dict[str, object]:
    return {"period": period.label, "period_start": iso(period.start), "period_end": iso(period.end)}


def _threshold_finding(
    rule: Rule, block: MetricBlock, i: int, used: float, quota: float, fraction: float, period: Period
) -> Finding:
    utilization = used / quota

    def message() -> str:
        return (f"{block.metric} reached {fmt.percent(utilization)} of the monthly quota"
                f" ({fmt.number(used)} of {fmt.number(quota)}) in the period starting {period.label}.")

    return _make(
        rule,
        block,
        i,
        value=used,
        threshold=fraction * quota,
        window_start=period.start,
        message=message,
        discriminator=f"{period.label}:{fraction:g}",
        details={"quota": quota, "fraction": fraction, "utilization": utilization, **_period_details(period)},
    )


def _reached_finding(
    rule: Rule, block: MetricBlock, i: int, used: float, quota: float, period: Period, timezone: str,
    window_start: int,
) -> Finding:
    params = _params(rule)

    def message() -> str:
        return (f"{block.metric} reached {fmt.percent(used / quota)} of the monthly quota ({fmt.number(used)} of"
                f" {fmt.number(quota)}) in the period starting {period.label}, as forecast; the period ends on"
                f" {fmt.local_date(period.end, timezone)}.")

    return _make(
        rule, block, i, value=used, threshold=params.fraction * quota, window_start=window_start,
        message=message, discriminator=f"{period.label}:forecast{params.fraction:g}",
        details={"quota": quota, "fraction": params.fraction, "utilization": used / quota, "reached": True,
                 **_period_details(period)},
    )


def _forecast_finding(
    rule: Rule,
    block: MetricBlock,
    i: int,
    used: float,
    quota: float,
    rate: float,
    projected: float,
    period: Period,
    timezone: str,
    window_start: int,
) -> Finding:
    params = _params(rule)
    at = block.end
    target = params.fraction * quota
    crossing = at + (target - used) / rate
    projected_date = fmt.local_date(crossing, timezone)
    days_left = round((crossing - at) / DAY, 1)

    def message() -> str:
        return (f"{block.metric} is projected to reach {fmt.percent(params.fraction)} of the monthly quota"
                f" ({fmt.number(target)}) on {projected_date}, in {fmt.count(days_left, 'day')}:"
                f" {fmt.number(used)} used so far ({fmt.percent(used / quota)}) in the period starting"
                f" {period.label} at a recent {fmt.number(rate * DAY)}/day, {fmt.number(projected)} projected by"
                f" the period end on {fmt.local_date(period.end, timezone)}.")

    return _make(
        rule,
        block,
        i,
        value=used,
        threshold=target,
        window_start=window_start,
        message=message,
        discriminator=f"{period.label}:forecast{params.fraction:g}",
        details={
            "quota": quota,
            "fraction": params.fraction,
            "utilization": used / quota,
            "projected_total": projected,
            "projected_date": projected_date,
            "days_left": days_left,
            "rate_per_day": rate * DAY,
            **_period_details(period),
        },
    )


# ------------------------------------------------------------------------------- the kind

SHORTEST_PERIOD = 28 * DAY

fraction = v.in_range(v.number(), 0, 10, "must be > 0 and <= 10, as a fraction of quota (0.8 = 80%)")


def fractions(w: v.Reporter, path: PathKey, value: Any) -> tuple[float, ...] | None:
    """Fractions of quota, increasing and without repeats: [0.8, 1.0]."""
    if not isinstance(value, list):
        w.error(path, f"must be an array of fractions of quota like [0.8, 1.0], {w.notation.got(value)}")
        return None
    if not value:
        w.error(path, "must list at least one fraction, e.g. [0.8, 1.0]")
        return None
    before = w.count()
    out: list[float] = []
    for index, item in enumerate(value):
        number = fraction(w, path + (index,), item)
        if number is None:
            continue
        if out and number <= out[-1]:
            problem = "is listed twice" if number in out else "is out of order"
            w.error(path + (index,), f"{w.notation.show(item)} {problem}: list fractions in increasing order"
                                     " without repeats")
            continue
        out.append(number)
    return tuple(out) if w.count() == before else None


def _check(t: Threshold) -> None:
    t.multiple_of_bucket("forecast_window")
    for key in ("min_elapsed", "min_observed"):
        seconds = t.got.get(key)
        if seconds is not None and seconds >= SHORTEST_PERIOD:
            t.error(key, f"{format_duration(seconds)} is not shorter than the shortest billing period (28d), "
                         "so the forecast could never fire in February")
    if "recovery" in t.got and t.got["recovery"] > t.params.fraction:
        t.error("recovery", f"must be at most fraction ({t.params.fraction:g}): an open forecast resolves once the"
                            f" projection falls below recovery x quota (got {t.shown('recovery')})")


_FORECAST = ("forecast",)

KIND = Kind(
    name="quota",
    title="Quota",
    summary="billing-period usage against the account's quota: levels reached, or a forecast of reaching one",
    params=QuotaParams,
    modes=("threshold", "forecast"),
    fields=(
        Field("fractions", fractions, "array of numbers in (0, 10], increasing, no repeats", "`[0.8, 1.0]`", "One"
              " alert per level reached, at most once per billing period each (80% and 100% of quota here).",
              ("threshold",)),
        Field("fraction", fraction, "number in (0, 10]", "`1.0`", "Fires when usage projected to the end of the"
              " period reaches this fraction of quota while actual usage has not yet. The alert carries the"
              " projected date.", _FORECAST),
        Field("forecast_window", v.positive_duration, "duration > 0, multiple of `bucket`", '`"7d"`', "The recent"
              " period whose average rate is projected forward.", _FORECAST),
        Field("min_elapsed", v.any_duration, "duration, shorter than 28d", '`"3d"`', "No forecast during the first"
              " part of a period, when there is too little data.", _FORECAST),
        Field("min_observed", v.any_duration, "duration, shorter than 28d", '`"3d"`', "No forecast until the period"
              " holds this much observed data (buckets with data × bucket): days without data do not count.",
              _FORECAST),
        Field("recovery", fraction, "number in (0, `fraction`]", "0.9 × `fraction`", "An open forecast resolves once"
              " the projection falls below `recovery` × quota (hysteresis); once usage has reached the target it"
              " stays open until the period ends.", _FORECAST),
    ),
    detect=detect_quota,
    scan=scan_quota,
    required_history=required_history,
    endings=(Ending("quota threshold", "usage ≥ the level (it only grows in a period)",
                    "the billing period ends: closed quietly"),
             Ending("quota forecast", "projected ≥ `recovery` × quota, or usage has reached the target",
                    "the projection falls below it (a missing day decides nothing)")),
    check=_check,
    resolve_buckets=2,
    guards_hint="",
    needs_quota=lambda params: True,
)

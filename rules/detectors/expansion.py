"""Expansion detector: sustained growth, or sustained high quota utilization.

Evaluated at at = block.end; NaN means "not observed", never zero. Both modes
use discriminator "" and once False.

mode "growth"
    P = period // bucket (at least 1). Needs (periods + 1) * P columns, else
    undecided. Window sums S_0 (the latest P buckets) .. S_periods (oldest),
    each a nansum; any window with more than 20% of its buckets missing ->
    undecided. Fires when S_k >= (1 + growth) * S_{k+1} for every
    k < periods, S_0 >= min_value and S_periods > 0, and S_0 is above every
    one of the `periods` windows before S_periods that the block holds (a new
    high: usage climbing back after a dip is a recovery, not growth).
    An open episode holds while one of S_0 .. S_{periods-1} is >= (1 + growth)
    x the window before the growth (frozen when it fired): it closes once usage
    has been back near that level for `periods` windows (a holiday week does not
    close it).
    value S_0, baseline S_periods, threshold (1 + growth) * S_1,
    window = the (periods + 1) * P buckets. details: window_sums
    ([S_0, S_1, ...], latest first), growth_rates ([S_0/S_1 - 1, ...],
    latest first), period (seconds).

mode "utilization"
    The last `periods` COMPLETED billing periods in the account's timezone
    and billing_day (a period ending exactly at `at` counts as completed).
    Missing, NaN or <= 0 quota -> undecided; block starting after the oldest
    of them -> undecided; a period with more than 20% of its buckets missing
    -> undecided. A bucket belongs to the period its start lies in. Fires
    when every one of them has usage >= utilization * q. value = usage of
    the latest completed period, baseline None, threshold utilization * q,
    window = [oldest period start, latest period end). details: quota,
    utilization (actual use of the latest completed period, usage / q),
    target (the rule's fraction), periods: [{period, usage, utilization},
    ...] latest first.

Open episodes (given by the caller) that no longer meet the condition close
quietly (a Recovery with quiet=True): an opportunity that passed is not news.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rules.config import values as v
from rules.detectors import format as fmt
from rules.detectors.finding import make_finding
from rules.detectors.opened import open_rows
from rules.detectors.quota import (
    MAX_PERIOD,
    account_groups,
    fraction,
    interval_sums,
    period_at,
    quota_array,
    quota_groups,
    round_up,
)
from rules.detectors.scan import at_least, trailing_sum
from rules.kind_spec import Ending, Field, Kind, Threshold
from rules.model import (
    DAY,
    AccountFacts,
    DetectorResult,
    Finding,
    FindingRows,
    MetricBlock,
    OpenEpisode,
    Recovery,
    Reference,
    Rule,
    found_accounts,
)
from rules.periods import Period

MAX_MISSING = 0.2


@dataclass(frozen=True)
class ExpansionParams:
    """Expansion opportunity.

    mode "growth":      each of the last `periods` windows of length `period`
                        grew by at least `growth` (0.1 = 10%) over the window
                        before it.
    mode "utilization": usage was at least `utilization` of quota in each of
                        the last `periods` billing periods (completed periods).
    """

    mode: str = "growth"
    period: int = 7 * DAY
    periods: int = 3
    growth: float = 0.10
    utilization: float = 0.9
    min_value: float = 0.0  # growth mode: the latest window must sum to at least this


def _params(rule: Rule) -> ExpansionParams:
    if not isinstance(rule.params, ExpansionParams):
        raise TypeError(f"{fmt.rule_location(rule)}: expansion rule has {type(rule.params).__name__} params")
    return rule.params


def required_history(rule: Rule) -> int:
    params = _params(rule)
    if params.mode == "utilization":
        return round_up((params.periods + 1) * MAX_PERIOD, rule.bucket)
    return _growth_windows(params) * max(1, params.period // rule.bucket) * rule.bucket


def _growth_windows(params: ExpansionParams) -> int:
    """Windows a growth evaluation reads: the `periods` + 1 compared, and `periods` more before them."""
    return 2 * params.periods + 1


def detect_expansion(
    rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts], open_episodes: Sequence[OpenEpisode] = ()
) -> DetectorResult:
    params = _params(rule)
    if params.periods < 1:
        raise ValueError(
            f"{fmt.rule_location(rule)}: expansion periods must be at least 1, got {params.periods}"
        )
    if params.mode == "growth":
        result = _growth(rule, params, block, open_rows(block, open_episodes))
        passed = (f"{block.metric} fell back towards its level before the growth: the last"
                  f" {fmt.duration(params.period)} is less than {fmt.percent(params.growth)} above it.")
    elif params.mode == "utilization":
        result = _utilization(rule, params, block, accounts)
        passed = (f"{block.metric} was below {fmt.percent(params.utilization)} of the quota in"
                  f" {fmt.last(params.periods, 'billing period', each='one')}.")
    else:
        raise ValueError(f"{fmt.rule_location(rule)}: unknown expansion mode {params.mode!r}")
    # An opportunity that passes closes quietly: "no longer growing" is not news to act on.
    holding = {a for _, a in found_accounts(result.found)}
    for i, e in open_rows(block, open_episodes).items():
        if result.decided[i] and e.account_id not in holding:
            result.recoveries[(e.account_id, "")] = Recovery(block.end, None, None, passed, quiet=True)
    return result


def scan_expansion(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts]) -> np.ndarray | None:
    """Rows that may have a new opportunity at each bucket close (rules.detectors.scan), for usage
    that is never negative (None otherwise). growth: the window sums W_k (k windows back) up to their
    rounding must grow, W_k >= (1 + growth) x W_k+1 for k < periods, the latest reach min_value and the
    oldest be positive (the "new high" test is left to the detector). utilization: the latest
    completed billing period started at most two longest periods back, so its usage is at most the
    sum S of those buckets: S >= utilization x quota; each billing group's first row is always a
    candidate (it sets the order of the findings)."""
    params = _params(rule)
    values = block.values
    rows, n = values.shape
    with np.errstate(invalid="ignore"):
        if (values < 0).any() or params.periods < 1:
            return None
    if params.mode == "utilization":
        total, slack = trailing_sum(values, 2 * MAX_PERIOD // block.step + 2)
        q = np.asarray(quota_array(accounts, block.metric))[:, None]
        with np.errstate(invalid="ignore"):
            out = (q > 0) & at_least(total + slack, params.utilization * q)
        out[[int(g[0]) for _, _, g in account_groups(accounts)]] = True
        return out
    if params.mode != "growth":
        return None
    width = max(1, params.period // block.step)
    total, slack = trailing_sum(values, width)
    hi, lo = total + slack, total - slack

    def back(x: np.ndarray, k: int) -> np.ndarray:  # column j: x at j - k windows (NaN before the block)
        out = np.full_like(x, np.nan)
        out[:, k * width:] = x[:, : n + 1 - k * width] if k * width <= n else out[:, :0]
        return out

    out = at_least(hi, params.min_value) & (back(hi, params.periods) > 0)
    for k in range(params.periods):
        out &= at_least(back(hi, k), (1.0 + params.growth) * back(lo, k + 1))
    out[:, : min(n + 1, (params.periods + 1) * width)] = False  # too few columns: undecided
    return out


# -------------------------------------------------------------------- growth


def _growth(rule: Rule, params: ExpansionParams, block: MetricBlock,
            opened: dict[int, OpenEpisode] | None = None) -> DetectorResult:
    """Growth findings; an open episode holds while the latest window stays at least (1 + growth)
    x the window before the growth began (frozen when it fired), so noise in one week's growth
    neither ends nor re-opens an opportunity."""
    rows, n = block.values.shape
    width = max(1, params.period // block.step)
    need = (params.periods + 1) * width
    if n < need or rows == 0:
        return DetectorResult([], np.zeros(rows, dtype=bool))
    tail = block.values[:, n - need :].reshape(rows, params.periods + 1, width)[:, ::-1, :]  # latest first
    missing = np.isnan(tail)
    sums = np.where(missing, 0.0, tail).sum(axis=2)  # sums[:, k] = S_k
    decided = ~(missing.mean(axis=2) > MAX_MISSING).any(axis=1)
    grew = np.all(sums[:, :-1] >= (1.0 + params.growth) * sums[:, 1:], axis=1)
    fire = decided & grew & (sums[:, 0] >= params.min_value) & (sums[:, -1] > 0)
    # A new high, not a recovery: the latest window must also be above every one of the `periods`
    # windows before the growth began (after a dip, usage climbing back looks like growth).
    before_n = min(params.periods, (n - need) // width)
    if before_n:
        earlier = block.values[:, n - need - before_n * width : n - need].reshape(rows, before_n, width)
        fire &= sums[:, 0] > np.nanmax(np.where(np.isnan(earlier), 0.0, earlier).sum(axis=2), axis=1)
    for i, e in (opened or {}).items():
        before = e.reference.values[0] if e.reference is not None else float(sums[i, -1])
        # any of the last `periods` windows: one quiet week (a holiday) does not close an opportunity
        fire[i] = bool(decided[i]) and sums[i, : params.periods].max() >= (1.0 + params.growth) * before
    rows_fired = np.flatnonzero(fire)
    if not rows_fired.size:
        return DetectorResult([], decided)
    fired, site = sums[rows_fired], block.stub()

    def build(k: int) -> Finding:
        return _growth_finding(rule, params, site, int(rows_fired[k]), fired[k], width)

    numbers = (fired[:, 0], fired[:, -1], (1.0 + params.growth) * fired[:, 1])
    return DetectorResult([FindingRows(rule.id, block.metric, rule.severity, block.end, block.account_ids,
                                       rows_fired, "", build, numbers, fired[:, -1])], decided)


def _growth_finding(
    rule: Rule, params: ExpansionParams, block: MetricBlock, i: int, sums: np.ndarray, width: int
) -> Finding:
    at = block.end
    step = block.step
    window_sums = [float(s) for s in sums]
    rates = [
        window_sums[k] / window_sums[k + 1] - 1.0 if window_sums[k + 1] != 0 else None
        for k in range(params.periods)
    ]
    span = fmt.duration(width * step)
    window = width * step
    oldest_start = at - (params.periods + 1) * window

    def message() -> str:
        return (f"{block.metric} grew at least {fmt.percent(params.growth)} in"
                f" {fmt.last(params.periods, 'window')} of {span}: {fmt.number(window_sums[0])} in the {span} from"
                f" {fmt.moment(at - window, step)} vs {fmt.number(window_sums[-1])} in the {span} from"
                f" {fmt.moment(oldest_start, step)} ({', '.join(fmt.change(r) for r in rates)}, latest first).")

    return make_finding(
        rule,
        block,
        i,
        value=window_sums[0],
        baseline=window_sums[-1],
        threshold=(1.0 + params.growth) * window_sums[1],
        window_start=oldest_start,
        message=message,
        details={"window_sums": window_sums, "growth_rates": rates, "period": width * step},
        reference=Reference(oldest_start, width * step, (window_sums[-1],)),  # the window before the growth
    )


# --------------------------------------------------------------- utilization


def completed_periods(at: int, count: int, billing_day: int, timezone: str) -> list[Period]:
    """The last `count` billing periods that ended at or before `at`, latest first."""
    current = period_at(at - 1, billing_day, timezone)
    latest = current if current.end <= at else period_at(current.start - 1, billing_day, timezone)
    out = [latest]
    while len(out) < count:
        out.append(period_at(out[-1].start - 1, billing_day, timezone))  # previous_period, memoised
    return out


def _utilization(
    rule: Rule, params: ExpansionParams, block: MetricBlock, accounts: Sequence[AccountFacts]
) -> DetectorResult:
    rows, n = block.values.shape
    decided = np.zeros(rows, dtype=bool)
    findings: list[FindingRows] = []
    if n == 0 or rows == 0:
        return DetectorResult(findings, decided)
    at = block.end
    site = block.stub()
    for billing_day, timezone, idx, q in quota_groups(block, accounts):
        periods = completed_periods(at, params.periods, billing_day, timezone)
        if block.start > periods[-1].start:
            continue
        usage = np.empty((idx.size, len(periods)))
        ok = np.ones(idx.size, dtype=bool)
        for k, period in enumerate(periods):
            total, observed, buckets = interval_sums(block, idx, period.start, period.end)
            usage[:, k] = total
            ok &= (buckets > 0) & (buckets - observed <= MAX_MISSING * buckets)
        decided[idx[ok]] = True
        fire = ok & np.all(usage >= params.utilization * q[:, None], axis=1)
        if fire.any():
            findings.append(_utilization_rows(rule, params, site, idx[fire], usage[fire], q[fire], periods))
    return DetectorResult(findings, decided)


def _utilization_rows(rule: Rule, params: ExpansionParams, block: MetricBlock, rows: np.ndarray,
                      usage: np.ndarray, q: np.ndarray, periods: list[Period]) -> FindingRows:
    """One billing group's utilization findings, columnar (FindingRows)."""

    def build(k: int) -> Finding:
        return _utilization_finding(rule, params, block, int(rows[k]), usage[k], float(q[k]), periods)

    return FindingRows(rule.id, block.metric, rule.severity, block.end, block.account_ids, rows, "", build,
                       (usage[:, 0], params.utilization * q))


def _utilization_finding(
    rule: Rule,
    params: ExpansionParams,
    block: MetricBlock,
    i: int,
    usage: np.ndarray,
    quota: float,
    periods: list[Period],
) -> Finding:
    per_period = [
        {"period": p.label, "usage": float(u), "utilization": float(u) / quota}
        for p, u in zip(periods, usage, strict=True)
    ]

    def message() -> str:
        listing = ", ".join(
            f"{p.label}: {fmt.percent(float(u) / quota)}" for p, u in zip(periods, usage, strict=True)
        )
        return (f"{block.metric} used at least {fmt.percent(params.utilization)} of the monthly quota"
                f" ({fmt.number(quota)}) in {fmt.last(len(periods), 'billing period')} ({listing}).")

    return make_finding(
        rule,
        block,
        i,
        value=float(usage[0]),
        baseline=None,
        threshold=params.utilization * quota,
        window_start=periods[-1].start,
        window_end=periods[0].end,
        message=message,
        # utilization = the actual use of the latest completed period (what a quota bar shows);
        # the rule's fraction is the target.
        details={"quota": quota, "utilization": float(usage[0]) / quota, "target": params.utilization,
                 "periods": per_period},
    )


# ------------------------------------------------------------------------------- the kind


def _check(t: Threshold) -> None:
    growth = t.got.get("growth")
    if growth is not None and growth <= 0:
        t.error("growth", f"must be > 0, e.g. 0.1 = 10% growth per period (got {t.shown('growth')})")
    t.multiple_of_bucket("period")


KIND = Kind(
    name="expansion",
    title="Expansion opportunity",
    summary="accounts growing into a bigger plan: sustained growth, or sustained high quota use",
    params=ExpansionParams,
    modes=("growth", "utilization"),
    fields=(
        Field("period", v.positive_duration, "duration > 0, multiple of `bucket`", '`"7d"`', "Length of one"
              " comparison window.", ("growth",)),
        Field("periods", v.integer(1), "integer ≥ 1", "`3`", "growth: how many consecutive windows must each have"
              " grown over the one before. utilization: how many completed billing periods must each be above"
              " `utilization`.", ("growth", "utilization")),
        Field("growth", v.number(), "number > 0", "`0.10`", "Minimum growth per window: `0.10` = each window's total"
              " is at least 10% above the previous one's.", ("growth",)),
        Field("min_value", v.number(0), "number ≥ 0", "`0`", "The latest window's total must be at least this"
              " (ignores growth from tiny volumes).", ("growth",)),
        Field("utilization", fraction, "number in (0, 10]", "`0.9`", "Fraction of quota used in each of the last"
              " `periods` completed billing periods. Accounts without a quota are skipped.", ("utilization",)),
    ),
    detect=detect_expansion,
    scan=scan_expansion,
    required_history=required_history,
    endings=(Ending("expansion growth", "one of the last `periods` windows ≥ (1 + `growth`) × the window before the"
                    " growth began", "usage has been back near that level for `periods` windows: closed quietly"
                    " (an opportunity that passed is not news)"),
             Ending("expansion utilization", "as when it fired", "a period below `utilization`: closed quietly")),
    check=_check,
    resolve_buckets=1,
    guards_hint="; use threshold.min_value",
    needs_quota=lambda params: params.mode == "utilization",
)

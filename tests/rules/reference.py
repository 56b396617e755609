"""Deliberately simple per-series reference implementations of the detectors.

One account at a time, plain Python lists (None = missing) and the
`statistics` module: easy to read against docs/rules.md, slow on purpose.
The vectorised detectors in rules/detectors must agree with these on random
inputs (tests/rules/test_detectors_equivalence.py).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from rules.detectors.inactivity import InactivityParams
from rules.detectors.quota import QuotaParams
from rules.detectors.spike_drop import DropParams, SpikeParams
from rules.model import WEEK, AccountFacts, Rule
from rules.periods import billing_period


@dataclass(frozen=True)
class RefResult:
    decided: bool
    fired: tuple[tuple[str, float, float | None, float | None], ...] = ()  # (discriminator, value, baseline, threshold)


def _smooth_at(series: list[float | None], stop: int, smooth: int) -> float | None:
    if stop - smooth < 0 or stop > len(series):
        return None
    part = series[stop - smooth:stop]
    if any(x is None for x in part):
        return None
    return sum(part) / smooth  # type: ignore[arg-type]


def spike_drop(rule: Rule, series: list[float | None], step: int) -> RefResult:
    p = rule.params
    assert isinstance(p, SpikeParams | DropParams)
    n = len(series)
    if n == 0:
        return RefResult(False)
    smooth = max(1, p.smooth)
    v = _smooth_at(series, n, smooth)
    if rule.baseline.seasonality == "weekly":
        per_week = WEEK // step
        points = [_smooth_at(series, n - k * per_week, smooth) for k in range(1, rule.baseline.window // WEEK + 1)]
    else:
        current = n - smooth
        lo = max(0, current - rule.baseline.window // step)
        points = series[lo:max(0, current)]
    observed = [x for x in points if x is not None]
    if v is None or not observed or len(observed) < max(1, rule.baseline.min_points):
        return RefResult(False)
    b = statistics.median(observed) if rule.baseline.method == "median" else sum(observed) / len(observed)
    g = rule.guards
    threshold = p.ratio * b
    if b < g.min_baseline or abs(v - b) < g.min_delta:
        return RefResult(True)
    if rule.kind == "spike":
        ok = v >= g.min_value and v >= threshold and v > b
    else:
        ok = v <= threshold and v < b
    if ok and p.zscore is not None:
        med = statistics.median(observed)
        mad = statistics.median([abs(x - med) for x in observed])
        scale = max(1.4826 * mad, 0.05 * abs(b), 1e-9)
        z = (v - b) / scale if rule.kind == "spike" else (b - v) / scale
        ok = z >= p.zscore
    return RefResult(True, (("", v, b, threshold),) if ok else ())


def inactivity(rule: Rule, series: list[float | None], step: int) -> RefResult:
    p = rule.params
    assert isinstance(p, InactivityParams)
    n = len(series)
    width = max(1, p.duration // step)
    if n < width:
        return RefResult(False)
    window = series[n - width:]
    missing = sum(1 for x in window if x is None)
    if missing / width > p.max_missing or missing == width:
        return RefResult(False)
    prior = series[max(0, n - width - p.prior_window // step):n - width]
    prior_usage = sum(x for x in prior if x is not None)
    prior_obs = [x for x in prior if x is not None]
    if all(x == 0 for x in window if x is not None) and prior_usage >= p.min_prior_usage:
        baseline = sum(prior_obs) / len(prior_obs) if prior_obs else None
        return RefResult(True, (("", 0.0, baseline, None),))
    return RefResult(True)


def quota_threshold(rule: Rule, series: list[float | None], start: int, step: int,
                    account: AccountFacts) -> RefResult:
    p = rule.params
    assert isinstance(p, QuotaParams) and p.mode == "threshold"
    q = account.quotas.get(rule.metric)
    n = len(series)
    if n == 0 or not q or q <= 0:
        return RefResult(False)
    at = start + n * step
    period = billing_period(at - 1, account.billing_day, account.timezone)
    if start > period.start:
        return RefResult(False)
    in_period = [x for j, x in enumerate(series) if period.start <= start + j * step < at]
    observed = [x for x in in_period if x is not None]
    if in_period and not observed:
        return RefResult(False)
    used = sum(observed)
    fired = tuple((f"{period.label}:{f:g}", used, None, f * q) for f in sorted(p.fractions) if used >= f * q)
    return RefResult(True, fired)


def stepwise_replay(rules, blocks, accounts, start, end, inhibits=(), calendar=None, quiet_first_run=False,
                    pricing=None):
    """The replay as it was before issue 15 (the definition the fast replay must match): every step
    evaluates with every state, and the lifecycle is handed every state ever recorded."""
    from rules.engine import evaluate
    from rules.lifecycle import FirstRun, advance, open_episodes
    from rules.replay import evaluation_times

    by_id = {r.id: r for r in rules}
    current: dict = {}
    seen_rules: set[str] = set()
    seen_accounts: set[str] = set()
    for t in evaluation_times(rules, start, end):
        result = evaluate(rules, blocks, accounts, t, only_due=True, calendar=calendar,
                          open_episodes=open_episodes(current, by_id), pricing=pricing)
        first = None
        if quiet_first_run:
            decided_accounts = {a for _, a in result.decided}
            first = FirstRun(frozenset(result.evaluated_rules - seen_rules),
                             frozenset(decided_accounts - seen_accounts))
            seen_rules |= result.evaluated_rules
            seen_accounts |= decided_accounts
        step = advance(by_id, result.findings, result.decided, current, t,
                       evaluated_rules=result.evaluated_rules, recoveries=result.recoveries,
                       first_run=first, inhibits=inhibits, interrupted=result.interrupted)
        current = step.states
        yield t, step.transitions, current, result.cohort_events

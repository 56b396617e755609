"""A straightforward pandas implementation of the spike, drop and quota-threshold rules.

    .venv/bin/python -m bench.pandas_baseline --db-url sqlite:///usagebot-data/usagebot.db \\
        --rules rules/examples/default.toml --at 1795392000

This is the baseline the scale benchmark (bench/bench_scale.py) compares the
engine with: the code a competent analyst would write with pandas (read_sql
into a DataFrame, pivot to accounts x days, reindex, rolling / groupby), with
no hand-written numpy kernels. tests/bench/test_pandas_baseline.py checks that
it finds exactly what the engine finds, so the speed comparison is fair.

Scope
    Rules of kind "spike" and "drop", and "quota" rules in mode "threshold"
    (`supported_rules`); other kinds and quota forecasts are ignored. Only
    daily buckets (bucket = "1d") are supported: a supported rule with any
    other bucket is an error.

Data (the same tables and rows the engine reads)
    usage_points(account_id, metric, bucket_start int epoch s, value) and
    accounts(id, plan, billing_day, timezone, quotas JSON). Per metric, the
    rows in [end - history, end) where end = `now` floored to a UTC day and
    history is the longest any of the metric's rules needs (as the engine
    computes it; it decides which accounts are rows, see below).

Missing data (docs/rules.md, "Buckets, time and missing data")
    Rows are the accounts with at least one point of the metric in the range.
    A day in which no account has a point is NaN for everyone; days before an
    account's first-ever point of the metric are NaN; every other day without
    a point is 0.

Spike / drop (rules/detectors/spike_drop.py)
    v = mean of the last `smooth` days (NaN if any is missing). Baseline points:
    seasonality "weekly" -> the smoothed value k weeks earlier, k = 1 ..
    window // 7d; "none" -> the raw days of `window` before the current
    smoothed window. b = median (mean, upper quartile) of the observed points; decided
    when v and b exist and at least max(1, min_points) points are observed.
    Guards: b >= min_baseline, |v - b| >= min_delta, spike: v >= min_value.
    spike: v >= ratio * b and v > b; drop: v <= ratio * b and v < b; with
    `zscore`, also (v - b) / scale >= zscore (drop: (b - v) / scale), scale =
    max(1.4826 * MAD of the points around their median, 0.05 * |b|, 1e-9).

Quota thresholds (rules/detectors/quota.py)
    Accounts with a quota > 0 for the metric, grouped by (billing_day,
    timezone); period = rules.periods.billing_period(end - 1, day, tz);
    usage = sum of the observed days starting in [period.start, end);
    undecided when the range starts after the period does or when none of
    those days is observed. One finding per fraction f with usage >= f * quota,
    discriminator "<period label>:<f>".

Findings are (rule_id, account_id, discriminator, value, baseline, threshold)
tuples, sorted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rules.detectors.quota import QuotaParams
from rules.detectors.spike_drop import DropParams, SpikeParams
from rules.model import DAY, WEEK, Rule, RuleSet, Segment
from rules.periods import billing_period

BaselineFinding = tuple[str, str, str, float, float | None, float | None]

# The longest billing period (31 days plus a DST hour), as whole days: what quota rules read.
QUOTA_HISTORY_DAYS = 32
MAD_TO_SIGMA = 1.4826

_USAGE_SQL = sa.text(
    "SELECT account_id, bucket_start, value FROM usage_points "
    "WHERE metric = :metric AND bucket_start >= :start AND bucket_start < :end"
)
_FIRST_SQL = sa.text(
    "SELECT account_id, MIN(bucket_start) AS first_seen FROM usage_points "
    "WHERE metric = :metric AND bucket_start < :end GROUP BY account_id"
)
_ACCOUNTS_SQL = sa.text("SELECT id, plan, billing_day, timezone, quotas FROM accounts")


def _where(rule: Rule) -> str:
    line = f":{rule.source_line}" if rule.source_line else ""
    return f"{rule.source_file or '<rules>'}{line}: rule {rule.id!r}"


def supported_rules(rules: RuleSet | Sequence[Rule]) -> list[Rule]:
    """The spike, drop and threshold-mode quota rules (what this baseline implements), in order."""
    items = rules.rules if isinstance(rules, RuleSet) else tuple(rules)
    out = []
    for rule in items:
        is_quota = isinstance(rule.params, QuotaParams) and rule.params.mode == "threshold"
        if rule.kind not in ("spike", "drop") and not (rule.kind == "quota" and is_quota):
            continue
        if rule.bucket != DAY:
            raise ValueError(
                f"{_where(rule)}: bucket: the pandas baseline supports daily buckets only ('1d'),"
                f" got {rule.bucket}s; leave this rule out of the comparison"
            )
        out.append(rule)
    return out


def history_days(rule: Rule) -> int:
    """Days of data before the evaluation time the rule reads."""
    if isinstance(rule.params, SpikeParams | DropParams):
        smooth = max(1, rule.params.smooth)
        if rule.baseline.seasonality == "weekly":
            return smooth + (rule.baseline.window // WEEK) * 7
        return smooth + rule.baseline.window // DAY
    return QUOTA_HISTORY_DAYS


# ------------------------------------------------------------------------- reading


def read_accounts(engine: Engine) -> pd.DataFrame:
    """Account facts indexed by id: plan, billing_day, timezone, quotas (dict)."""
    with engine.connect() as conn:
        accounts = pd.read_sql(_ACCOUNTS_SQL, conn, index_col="id")
    accounts["quotas"] = accounts["quotas"].map(lambda q: json.loads(q) if isinstance(q, str) else (q or {}))
    return accounts


def read_usage(engine: Engine, metric: str, start: int, end: int) -> pd.DataFrame:
    """Accounts x days (columns: bucket start, epoch s) of `metric` in [start, end), missing-data rules applied."""
    params = {"metric": metric, "start": start, "end": end}
    with engine.connect() as conn:
        points = pd.read_sql(_USAGE_SQL, conn, params=params)
        first = pd.read_sql(_FIRST_SQL, conn, params=params, index_col="account_id")["first_seen"]
    days = pd.Index(range(start, end, DAY), dtype="int64")
    if points.empty:
        return pd.DataFrame(index=pd.Index([], name="account_id", dtype=object), columns=days, dtype=float)
    points["day"] = points["bucket_start"] // DAY * DAY
    wide = points.pivot_table(index="account_id", columns="day", values="value", aggfunc="sum")
    observed = wide.columns  # days in which at least one account has a point
    wide = wide.reindex(columns=days)
    wide[observed] = wide[observed].fillna(0.0)
    first_day = (first.reindex(wide.index) // DAY * DAY).to_numpy()
    return wide.where(days.to_numpy()[None, :] >= first_day[:, None])


def in_segment(wide: pd.DataFrame, accounts: pd.DataFrame, segment: Segment) -> pd.DataFrame:
    ids = wide.index.to_series()
    keep = pd.Series(True, index=wide.index)
    if segment.exclude_accounts:
        keep &= ~ids.isin(segment.exclude_accounts)
    if segment.accounts:
        keep &= ids.isin(segment.accounts)
    if segment.plans:
        keep &= accounts["plan"].reindex(wide.index).fillna("").isin(segment.plans)
    return wide[keep]


# ------------------------------------------------------------------------- rules


def spike_drop(rule: Rule, wide: pd.DataFrame, end: int) -> list[BaselineFinding]:
    params = rule.params
    assert isinstance(params, SpikeParams | DropParams)
    smooth = max(1, params.smooth)
    smoothed = wide.T.rolling(smooth).mean().T if smooth > 1 else wide
    last = end - DAY  # the evaluated day
    v = smoothed[last] if last in smoothed.columns else pd.Series(np.nan, index=wide.index)
    if rule.baseline.seasonality == "weekly":
        weeks = rule.baseline.window // WEEK
        points = smoothed.reindex(columns=[last - k * WEEK for k in range(1, weeks + 1)])
    else:
        current = last - (smooth - 1) * DAY  # first day of the current (smoothed) window
        points = wide.reindex(columns=range(current - rule.baseline.window, current, DAY))
    count = points.count(axis=1)
    b = {"median": lambda: points.median(axis=1), "mean": lambda: points.mean(axis=1),
         "upper": lambda: points.quantile(0.75, axis=1, interpolation="linear")}[rule.baseline.method]()
    decided = v.notna() & b.notna() & (count >= max(1, rule.baseline.min_points))

    guards = rule.guards
    threshold = params.ratio * b
    fire = decided & (b >= guards.min_baseline) & ((v - b).abs() >= guards.min_delta)
    if rule.kind == "spike":
        fire &= (v >= guards.min_value) & (v >= threshold) & (v > b)
    else:
        fire &= (v <= threshold) & (v < b)
    if params.zscore is not None:
        mad = points.sub(points.median(axis=1), axis=0).abs().median(axis=1)
        scale = pd.concat([MAD_TO_SIGMA * mad, 0.05 * b.abs(), pd.Series(1e-9, index=b.index)], axis=1).max(axis=1)
        z = (v - b) / scale if rule.kind == "spike" else (b - v) / scale
        fire &= z >= params.zscore
    hits = pd.DataFrame({"value": v, "baseline": b, "threshold": threshold})[fire]
    return [(rule.id, str(acc), "", float(r.value), float(r.baseline), float(r.threshold))
            for acc, r in hits.iterrows()]


def quota_thresholds(
    rule: Rule, wide: pd.DataFrame, accounts: pd.DataFrame, start: int, end: int
) -> list[BaselineFinding]:
    params = rule.params
    assert isinstance(params, QuotaParams)
    facts = accounts.reindex(wide.index)
    facts["quota"] = facts["quotas"].map(lambda q: q.get(rule.metric) if isinstance(q, dict) else None)
    facts["quota"] = pd.to_numeric(facts["quota"], errors="coerce")
    facts["billing_day"] = facts["billing_day"].fillna(1).astype(int)  # accounts not in the table: defaults
    facts["timezone"] = facts["timezone"].fillna("UTC")
    facts = facts[facts["quota"] > 0]
    out: list[BaselineFinding] = []
    for (billing_day, timezone), group in facts.groupby(["billing_day", "timezone"]):
        period = billing_period(end - 1, int(billing_day), str(timezone))
        if start > period.start:
            continue
        part = wide.loc[group.index, wide.columns[wide.columns >= period.start]]
        used = part.sum(axis=1)
        ok = (part.count(axis=1) > 0) | (part.shape[1] == 0)
        for fraction in sorted(params.fractions):
            limit = fraction * group["quota"]
            for acc in group.index[ok & (used >= limit)]:
                out.append((rule.id, str(acc), f"{period.label}:{fraction:g}", float(used[acc]), None,
                            float(limit[acc])))
    return out


# ------------------------------------------------------------------------- entry point


def pandas_findings(db: str | Engine, rules: RuleSet | Sequence[Rule], now: int) -> list[BaselineFinding]:
    """Findings of the supported rules at `now` (floored to a UTC day), read from database `db`."""
    from storage.db import make_engine

    chosen = supported_rules(rules)
    engine = make_engine(db) if isinstance(db, str) else db
    end = now // DAY * DAY
    try:
        accounts = read_accounts(engine)
        out: list[BaselineFinding] = []
        for metric in dict.fromkeys(r.metric for r in chosen):
            metric_rules = [r for r in chosen if r.metric == metric]
            start = end - max(history_days(r) for r in metric_rules) * DAY
            wide = read_usage(engine, metric, start, end)
            for rule in metric_rules:
                frame = in_segment(wide, accounts, rule.segment)
                if rule.kind == "quota":
                    out += quota_thresholds(rule, frame, accounts, start, end)
                else:
                    out += spike_drop(rule, frame, end)
            del wide
    finally:
        if isinstance(db, str):
            engine.dispose()
    return sorted(out, key=lambda f: f[:3])


def main(argv: list[str] | None = None) -> int:
    return baseline_cli(argv, "pandas baseline of the spike/drop/quota-threshold rules", pandas_findings)


def baseline_cli(argv: list[str] | None, description: str,
                 findings_of: Callable[[str, RuleSet, int], list[BaselineFinding]]) -> int:
    """The command line of a baseline: --db-url, --rules, --at; prints its findings, one per line."""
    from rules.loader import load_rules

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--db-url", required=True)
    p.add_argument("--rules", nargs="+", required=True, help="rule files or directories")
    p.add_argument("--at", type=int, required=True, help="evaluation time, epoch seconds (floored to a day)")
    args = p.parse_args(argv)
    findings = findings_of(args.db_url, load_rules(args.rules), args.at)
    for f in findings:
        print("\t".join("" if x is None else str(x) for x in f))
    print(f"{len(findings)} finding(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

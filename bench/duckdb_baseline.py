"""A tuned DuckDB implementation of the spike, drop and quota-threshold rules over DuckDB's own storage.

    .venv/bin/python -m bench.duckdb_baseline --db-url sqlite:///usagebot-data/usagebot.db \\
        --rules rules/examples/default.toml --at 1795392000

The second baseline of the benchmarks (bench/bench_daily.py; the first is bench/pandas_baseline.py):
what a competent engineer would build with DuckDB instead of usagebot. The usage lives in a DuckDB
file in DuckDB's native columnar format, sorted by (metric, bucket_start) so a day range of one metric
reads only its row groups (zone maps); quotas are a table (account_id, metric, quota). A daily cycle
is `deliver_day` (delete + insert of the new day's rows) and `duckdb_findings` (one dense cells table
per metric, then one GROUP BY per rule with window and list aggregates, all inside DuckDB).
tests/bench/test_duckdb_baseline.py checks that it finds exactly what the engine finds.

Scope and semantics: those of bench/pandas_baseline.py (its module docstring): daily buckets only,
rows = accounts with a point of the metric in the range, a day without any point is missing for
everyone, days before an account's first point are missing, other days without a point are 0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bench.pandas_baseline import BaselineFinding, baseline_cli, history_days, supported_rules
from rules.detectors.quota import QuotaParams
from rules.detectors.spike_drop import DropParams, SpikeParams
from rules.model import DAY, WEEK, AccountFacts, Rule, RuleSet, Segment
from rules.periods import billing_period

MAD_TO_SIGMA = 1.4826

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS usage (account_id VARCHAR NOT NULL, metric VARCHAR NOT NULL, "
    "bucket_start BIGINT NOT NULL, value DOUBLE NOT NULL)",
    "CREATE TABLE IF NOT EXISTS accounts (id VARCHAR PRIMARY KEY, plan VARCHAR, billing_day INTEGER, "
    "timezone VARCHAR)",
    "CREATE TABLE IF NOT EXISTS quotas (account_id VARCHAR, metric VARCHAR, quota DOUBLE)",
)


def connect(path: str = ":memory:") -> Any:
    """A DuckDB connection with the baseline's tables created."""
    import duckdb

    con = duckdb.connect(path)
    for sql in SCHEMA:
        con.execute(sql)
    return con


def load_accounts(con: Any, accounts: Iterable[AccountFacts]) -> None:
    """Replace the accounts and quotas tables with these accounts' facts."""
    import pyarrow as pa

    accounts = list(accounts)
    con.execute("DELETE FROM accounts")
    con.execute("DELETE FROM quotas")
    facts = pa.table({"id": [a.id for a in accounts], "plan": [a.plan for a in accounts],
                      "billing_day": [a.billing_day for a in accounts], "timezone": [a.timezone for a in accounts]})
    quotas = pa.table({"account_id": [a.id for a in accounts for _ in a.quotas],
                       "metric": [m for a in accounts for m in a.quotas],
                       "quota": pa.array([float(q) for a in accounts for q in a.quotas.values()], pa.float64())})
    con.register("facts_in", facts)
    con.register("quotas_in", quotas)
    con.execute("INSERT INTO accounts SELECT * FROM facts_in")
    con.execute("INSERT INTO quotas SELECT * FROM quotas_in")
    con.unregister("facts_in")
    con.unregister("quotas_in")


def load_usage_csv(con: Any, path: str) -> int:
    """Load a usage CSV (timestamp,account,metric,value; ISO timestamps) with DuckDB's own reader,
    floored to whole seconds and stored sorted by (metric, bucket_start). Returns the rows stored."""
    con.execute("DELETE FROM usage")
    con.execute(
        "INSERT INTO usage SELECT account, metric, CAST(floor(epoch(CAST(timestamp AS TIMESTAMPTZ))) AS BIGINT), "
        "value FROM read_csv(?, header = true, columns = {'timestamp': 'VARCHAR', 'account': 'VARCHAR', "
        "'metric': 'VARCHAR', 'value': 'DOUBLE'}) ORDER BY metric, 3", [str(path)])
    return int(con.execute("SELECT count(*) FROM usage").fetchone()[0])


def load_usage_rows(con: Any, rows: Iterable[tuple[str, str, int, float]]) -> int:
    """Replace the usage table with (account, metric, bucket_start, value) rows, sorted by (metric, bucket_start)."""
    import pyarrow as pa

    rows = list(rows)
    a, m, b, v = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [], [])
    con.execute("DELETE FROM usage")
    con.register("rows_in", pa.table({"account_id": a, "metric": m, "bucket_start": pa.array(b, pa.int64()),
                                      "value": pa.array(v, pa.float64())}))
    con.execute("INSERT INTO usage SELECT * FROM rows_in ORDER BY metric, bucket_start")
    con.unregister("rows_in")
    return len(b)


def deliver_day(con: Any, accounts: Any, metrics: Sequence[str], bucket: int, values: np.ndarray) -> None:
    """One daily delivery: the bucket `bucket` of every metric for `accounts` (a pyarrow string array),
    values[k] of shape (len(accounts),) for metrics[k]: the stored rows of those keys are deleted,
    then the new ones inserted (DuckDB has no cheaper upsert of a whole day)."""
    import pyarrow as pa

    n = len(accounts)
    table = pa.table({"account_id": pa.concat_arrays([accounts] * len(metrics)),
                      "metric": pa.array(np.repeat(np.asarray(metrics, dtype=object), n), pa.string()),
                      "bucket_start": pa.array(np.full(n * len(metrics), bucket, dtype=np.int64)),
                      "value": pa.array(np.concatenate(list(values)).astype(np.float64))})
    con.register("day_in", table)
    con.execute("BEGIN")
    con.execute("DELETE FROM usage WHERE bucket_start = ? AND metric IN (SELECT DISTINCT metric FROM day_in) "
                "AND account_id IN (SELECT account_id FROM day_in)", [bucket])
    con.execute("INSERT INTO usage SELECT * FROM day_in")
    con.execute("COMMIT")
    con.unregister("day_in")


# ------------------------------------------------------------------------- the rules


def _cells(con: Any, metric: str, start: int, end: int) -> None:
    """TEMP table cells(account_id, i, v): accounts x day index i (day start + i * DAY) of `metric`,
    v NULL where missing (no account has data that day, or before the account's first point)."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE cells AS "
        "WITH pts AS (SELECT account_id, CAST((bucket_start - $start) // 86400 AS INTEGER) AS i, sum(value) AS v "
        "  FROM usage WHERE metric = $metric AND bucket_start >= $start AND bucket_start < $end GROUP BY ALL), "
        "acc AS (SELECT DISTINCT account_id FROM pts), "
        "obs AS (SELECT DISTINCT i FROM pts), "
        "first AS (SELECT account_id, CAST((min(bucket_start) // 86400 * 86400 - $start) // 86400 AS INTEGER) AS fi "
        "  FROM usage WHERE metric = $metric AND bucket_start < $end AND account_id IN (SELECT account_id FROM acc) "
        "  GROUP BY ALL), "
        "grid AS (SELECT a.account_id, CAST(d.range AS INTEGER) AS i, f.fi FROM acc a JOIN first f USING (account_id) "
        "  CROSS JOIN range(0, ($end - $start) // 86400) d) "
        "SELECT g.account_id, g.i, CASE WHEN o.i IS NULL OR g.i < g.fi THEN NULL ELSE coalesce(p.v, 0.0) END AS v "
        "FROM grid g LEFT JOIN obs o ON o.i = g.i LEFT JOIN pts p ON p.account_id = g.account_id AND p.i = g.i",
        {"metric": metric, "start": start, "end": end})


def _segment_sql(segment: Segment, params: list[Any]) -> str:
    """A WHERE clause over account_id (and a.plan of the joined accounts) for the rule's segment."""
    parts = ["true"]
    if segment.exclude_accounts:
        parts.append("c.account_id NOT IN (SELECT unnest(?))")
        params.append(list(segment.exclude_accounts))
    if segment.accounts:
        parts.append("c.account_id IN (SELECT unnest(?))")
        params.append(list(segment.accounts))
    if segment.plans:
        parts.append("coalesce(a.plan, '') IN (SELECT unnest(?))")
        params.append(list(segment.plans))
    return " AND ".join(parts)


def _spike_drop(con: Any, rule: Rule, n_days: int) -> list[BaselineFinding]:
    p = rule.params
    assert isinstance(p, SpikeParams | DropParams)
    s = max(1, p.smooth)
    last = n_days - 1
    if s > 1:
        sv = f"CASE WHEN i >= {s - 1} AND count(v) OVER w = {s} THEN avg(v) OVER w END"
        window = f" WINDOW w AS (PARTITION BY account_id ORDER BY i ROWS BETWEEN {s - 1} PRECEDING AND CURRENT ROW)"
    else:
        sv, window = "v", ""
    if rule.baseline.seasonality == "weekly":
        days = [last - 7 * k for k in range(1, rule.baseline.window // WEEK + 1)]
        point = f"CASE WHEN i IN ({', '.join(map(str, days)) or 'NULL'}) THEN sv END"
    else:
        cur = last - (s - 1)
        point = f"CASE WHEN i >= {cur - rule.baseline.window // DAY} AND i < {cur} THEN v END"
    agg = {"median": "median(pt)", "mean": "avg(pt)", "upper": "quantile_cont(pt, 0.75)"}[rule.baseline.method]
    params: list[Any] = []
    where = _segment_sql(rule.segment, params)
    g = rule.guards
    cond = [f"b >= {g.min_baseline!r}", f"abs(val - b) >= {g.min_delta!r}"]
    if rule.kind == "spike":
        cond += [f"val >= {g.min_value!r}", f"val >= {p.ratio!r} * b", "val > b"]
    else:
        cond += [f"val <= {p.ratio!r} * b", "val < b"]
    if p.zscore is not None:
        scale = f"greatest({MAD_TO_SIGMA!r} * mad, 0.05 * abs(b), 1e-9)"
        z = f"(val - b) / {scale}" if rule.kind == "spike" else f"(b - val) / {scale}"
        cond.append(f"{z} >= {p.zscore!r}")
    mad = ("list_aggregate(list_transform(pts, lambda x: abs(x - med)), 'median')" if p.zscore is not None
           else "NULL")
    sql = (
        "WITH seg AS (SELECT c.account_id, c.i, c.v FROM cells c LEFT JOIN accounts a ON a.id = c.account_id "
        f"WHERE {where}), "
        f"sm AS (SELECT account_id, i, v, {sv} AS sv FROM seg{window}), "
        f"pt AS (SELECT account_id, i, sv, {point} AS pt FROM sm), "
        f"agg AS (SELECT account_id, max(sv) FILTER (WHERE i = {last}) AS val, {agg} AS b, count(pt) AS n, "
        "median(pt) AS med, list(pt) FILTER (WHERE pt IS NOT NULL) AS pts FROM pt GROUP BY account_id), "
        f"dec AS (SELECT account_id, val, b, {mad} AS mad FROM agg "
        f"WHERE val IS NOT NULL AND b IS NOT NULL AND n >= {max(1, rule.baseline.min_points)}) "
        f"SELECT account_id, val, b, {p.ratio!r} * b FROM dec WHERE {' AND '.join(cond)}"
    )
    return [(rule.id, a, "", float(v), float(b), float(t)) for a, v, b, t in con.execute(sql, params).fetchall()]


def _quota(con: Any, rule: Rule, start: int, end: int) -> list[BaselineFinding]:
    p = rule.params
    assert isinstance(p, QuotaParams)
    params: list[Any] = [rule.metric]
    where = _segment_sql(rule.segment, params)
    groups = con.execute(
        "SELECT DISTINCT coalesce(a.billing_day, 1), coalesce(a.timezone, 'UTC') FROM (SELECT DISTINCT account_id "
        "FROM cells) c JOIN accounts a ON a.id = c.account_id JOIN quotas q ON q.account_id = c.account_id "
        "AND q.metric = ? AND q.quota > 0 WHERE " + where, params).fetchall()
    periods = []
    for day, tz in groups:
        period = billing_period(end - 1, int(day), str(tz))
        if start <= period.start:
            periods.append((int(day), str(tz), -((start - period.start) // DAY), period.label))  # first UTC day >= period.start
    if not periods:
        return []
    import pyarrow as pa

    con.register("periods_in", pa.table({"billing_day": [x[0] for x in periods], "timezone": [x[1] for x in periods],
                                         "pi": [x[2] for x in periods], "label": [x[3] for x in periods]}))
    n_days = (end - start) // DAY
    rows = con.execute(
        "SELECT c.account_id, q.quota, pr.label, sum(c.v) FILTER (WHERE c.i >= pr.pi) AS used, "
        "count(c.v) FILTER (WHERE c.i >= pr.pi) AS n, max(pr.pi) AS pi FROM cells c "
        "JOIN accounts a ON a.id = c.account_id JOIN quotas q ON q.account_id = c.account_id AND q.metric = ? "
        "AND q.quota > 0 JOIN periods_in pr ON pr.billing_day = coalesce(a.billing_day, 1) "
        "AND pr.timezone = coalesce(a.timezone, 'UTC') WHERE " + where + " GROUP BY ALL", params).fetchall()
    con.unregister("periods_in")
    out: list[BaselineFinding] = []
    for acc, quota, label, used, n, pi in rows:
        if not (n > 0 or pi >= n_days):
            continue
        used = float(used or 0.0)
        for fraction in sorted(p.fractions):
            if used >= fraction * quota:
                out.append((rule.id, acc, f"{label}:{fraction:g}", used, None, float(fraction * quota)))
    return out


def duckdb_findings(con: Any, rules: RuleSet | Sequence[Rule], now: int) -> list[BaselineFinding]:
    """Findings of the supported rules at `now` (floored to a UTC day) over the DuckDB tables."""
    chosen = supported_rules(rules)
    end = now // DAY * DAY
    out: list[BaselineFinding] = []
    for metric in dict.fromkeys(r.metric for r in chosen):
        metric_rules = [r for r in chosen if r.metric == metric]
        start = end - max(history_days(r) for r in metric_rules) * DAY
        _cells(con, metric, start, end)
        for rule in metric_rules:
            if rule.kind == "quota":
                out += _quota(con, rule, start, end)
            else:
                out += _spike_drop(con, rule, (end - start) // DAY)
    con.execute("DROP TABLE IF EXISTS cells")
    return sorted(out, key=lambda f: f[:3])


def copy_from(con: Any, engine: Any) -> None:
    """Load the accounts and usage of a usagebot database (storage) into the DuckDB tables."""
    from storage.accounts import list_accounts

    load_accounts(con, list_accounts(engine))
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT account_id, metric, bucket_start, value FROM usage_points").all()
    load_usage_rows(con, [(a, m, int(b), float(v)) for a, m, b, v in rows])


def findings_from_db(db_url: str, rules: RuleSet | Sequence[Rule], now: int) -> list[BaselineFinding]:
    """duckdb_findings over a usagebot database copied into an in-memory DuckDB."""
    from storage.db import make_engine

    con = connect()
    engine = make_engine(db_url)
    try:
        copy_from(con, engine)
    finally:
        engine.dispose()
    return duckdb_findings(con, rules, now)


def main(argv: list[str] | None = None) -> int:
    return baseline_cli(argv, "DuckDB baseline of the spike/drop/quota-threshold rules (the database copied "
                        "into DuckDB in memory)", findings_from_db)


if __name__ == "__main__":
    sys.exit(main())

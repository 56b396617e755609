"""The daily loop at the speed of the data: CSV ingest, cold evaluation against a columnar read floor,
and one day's delivery + evaluation, usagebot against tuned DuckDB, side by side in one run.

    .venv/bin/python -m bench.bench_daily                                   # 100k accounts, SQLite (~15 min)
    .venv/bin/python -m bench.bench_daily --accounts 10000,30000,100000 --plot docs/img/scaling.svg
    .venv/bin/python -m bench.bench_daily --accounts 10000 --db-url postgresql+psycopg://u@127.0.0.1/empty_db

Per account count, in its own process (each on a fresh database: a new SQLite file, or a new schema
of --db-url's PostgreSQL database, dropped after), with the seeded demo book (4 metrics x --days):

  csv ingest      the book written as a usage CSV and an accounts CSV (untimed), then `usagebot ingest`
                  (bot.cli.main: columnar CSV parse with full validation + load_usage, one transaction:
                  storage/usage_load.py, sorted in numpy, staged by ADBC, one merge);
                  rows/s end to end, and of the parse + validation alone (iter_usage_csv_columns).
                  DuckDB: read_csv of the same file into its native table (sorted by metric and day).
  read floors     the rows the evaluation needs (bench/raw_floor.ranges_for: the shipped rules' metrics
                  and ranges) read by connectorx into Arrow columns: the columnar floor; and, for
                  reference, the old row floor (a plain SELECT through the driver cursor into numpy).
  cold evaluation a fresh engine's first evaluation of the whole book (load_blocks_for, which builds the
                  usage tiles, + rules.engine.evaluate + rules.lifecycle.advance), all 12 rules; x floor.
  daily loop      twice, each a new day (bucket `end`, then `end + 1d`) for every account and metric:
                  usagebot: upsert_usage of the day (columnar bulk write, storage/usage_load.py: the
                  records as columns, staged in bulk, one merge in key order) then the evaluation at the
                  next day (the 8 rules DuckDB implements, and all 12 rules on the second day's data
                  delivered again); DuckDB: deliver_day (delete + insert) then duckdb_findings of the
                  8 rules. The findings of usagebot and DuckDB on the 8 rules are compared (count and
                  digest) after each day.

Ratios are measured in the same process, one after the other, on the same machine state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "usagebot_bench_daily"


def _digest(keys: list[tuple[Any, ...]]) -> str:
    return hashlib.sha256(repr(sorted(keys)).encode()).hexdigest()[:12]


def _fresh_url(db_url: str | None, workdir: Path) -> tuple[str, str, Any]:
    """(SQLAlchemy URL of an empty database, the usage table as connectorx names it, cleanup)."""
    if not db_url:
        return f"sqlite:///{workdir / 'usagebot.db'}", "usage_points", lambda: None
    from sqlalchemy.engine import make_url

    from storage.db import make_engine

    admin = make_engine(db_url)

    def run(sql: str) -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(sql)

    run(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    run(f"CREATE SCHEMA {SCHEMA}")
    url = make_url(db_url).update_query_dict({"options": f"-csearch_path={SCHEMA}"})

    def cleanup() -> None:
        run(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        admin.dispose()

    return url.render_as_string(hide_password=False), f"{SCHEMA}.usage_points", cleanup


def _evaluate(engine: Any, rules: list[Any], now: int, states: dict[Any, Any]) -> tuple[Any, Any, float]:
    """load_blocks_for + evaluate + advance, as a daily cycle computes it; (result, step, seconds)."""
    from bot.service.pipeline import load_blocks_for
    from rules.engine import evaluate, history_needed
    from rules.lifecycle import advance
    from storage.accounts import list_accounts

    t0 = time.perf_counter()
    accounts = {a.id: a for a in list_accounts(engine)}
    blocks = load_blocks_for(engine, history_needed(rules), now)
    result = evaluate(rules, blocks, accounts, now, only_due=False)
    del blocks
    step = advance({r.id: r for r in rules}, result.findings, result.decided, states, now,
                   evaluated_rules=result.evaluated_rules)
    return result, step, time.perf_counter() - t0


def run_one(n_accounts: int, days: int, seed: int, db_url: str | None, workdir: Path) -> dict[str, Any]:
    """Every figure of one account count (see the module docstring)."""
    import pyarrow as pa

    from bench import duckdb_baseline as ddb
    from bench.bench_scale import METRICS4, SHIPPED, bench_rules
    from bench.pandas_baseline import supported_rules
    from bench.raw_floor import ranges_for, read_columnar_floor, read_floor
    from bot.cli.main import main as cli
    from integrations.sources.csv_rows import iter_usage_csv_columns, write_accounts_csv, write_usage_csv
    from integrations.sources.demo import generate_book
    from integrations.sources.records import UsageRecord
    from rules.model import DAY
    from storage.db import make_engine
    from storage.usage import upsert_usage

    out: dict[str, Any] = {"accounts": n_accounts, "days": days}
    book = generate_book(n_accounts=n_accounts, days=days, seed=seed, metrics=METRICS4)
    usage_csv, accounts_csv = workdir / "usage.csv", workdir / "accounts.csv"
    rows = write_usage_csv(usage_csv, book.records())
    write_accounts_csv(accounts_csv, book.accounts)
    out.update(rows=rows, csv_mb=round(usage_csv.stat().st_size / 2**20))
    end = book.end
    ids = list(book.account_ids)
    # the new days continue each account's own weekly pattern (its value a week before, +-15%), so the
    # engine's cohort suppression (a mass change in one bucket, which the baselines do not implement)
    # stays out of the comparison; 1 in 50 accounts spikes 10x
    week_ago = [np.nan_to_num(np.stack([book.values[m][:, -7 + k] for m in METRICS4])) for k in range(2)]
    accounts_pa = pa.array(ids, pa.string())
    rules = bench_rules(SHIPPED, METRICS4)
    subset = supported_rules(rules)
    url, table, cleanup = _fresh_url(db_url, workdir)
    try:
        # ---- CSV ingest
        t0 = time.perf_counter()
        parsed = sum(len(c.records) for c in iter_usage_csv_columns(usage_csv))
        out["parse_rows_per_s"] = parsed / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        code = cli(["ingest", "--db", url, "--accounts", str(accounts_csv), "--usage", str(usage_csv)],
                   out=open("/dev/null", "w"), err=sys.stderr)  # noqa: SIM115
        if code != 0:
            raise SystemExit(f"bench_daily: usagebot ingest exited {code}")
        out["ingest_s"] = time.perf_counter() - t0
        out["ingest_rows_per_s"] = rows / out["ingest_s"]
        con = ddb.connect(str(workdir / "duck.db"))
        t0 = time.perf_counter()
        ddb.load_accounts(con, book.accounts)
        ddb.load_usage_csv(con, str(usage_csv))
        con.execute("CHECKPOINT")
        out["duckdb_ingest_s"] = time.perf_counter() - t0
        out["duckdb_ingest_rows_per_s"] = rows / out["duckdb_ingest_s"]
        del book
        usage_csv.unlink()

        # ---- read floors and the cold evaluation
        ranges = ranges_for(rules, end)
        floor = read_columnar_floor(url, ranges, table=table)
        engine = make_engine(url)
        row_floor = read_floor(engine, ranges)
        out.update(floor_rows=floor.rows, floor_s=floor.seconds, row_floor_s=row_floor.seconds)
        result, step, out["cold_s"] = _evaluate(engine, rules, end, {})
        out["cold_findings"] = len(result.findings)
        engine.dispose()

        # ---- the daily loop, twice
        rng = np.random.default_rng(seed + 1)
        engine = make_engine(url)
        states = step.states
        for k, day in enumerate((end, end + DAY)):
            values = np.round(week_ago[k] * rng.uniform(0.85, 1.15, size=week_ago[k].shape))
            values[:, rng.choice(len(ids), size=max(1, len(ids) // 50), replace=False)] *= 10
            records = [UsageRecord(a, m, day, float(v)) for j, m in enumerate(METRICS4)
                       for a, v in zip(ids, values[j].tolist(), strict=True)]
            t0 = time.perf_counter()
            upsert_usage(engine, records)
            deliver_s = time.perf_counter() - t0
            del records
            res, _, eval_s = _evaluate(engine, subset, day + DAY, states)
            t0 = time.perf_counter()
            ddb.deliver_day(con, accounts_pa, METRICS4, day, values)
            duck_deliver_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            duck = ddb.duckdb_findings(con, subset, day + DAY)
            duck_eval_s = time.perf_counter() - t0
            mine = [(f.rule_id, f.account_id, f.discriminator) for f in res.findings]
            out[f"day{k + 1}"] = {
                "rows": int(values.size), "deliver_s": deliver_s, "evaluate_s": eval_s,
                "duckdb_deliver_s": duck_deliver_s, "duckdb_evaluate_s": duck_eval_s,
                "findings": len(mine), "duckdb_findings": len(duck),
                "same_findings": _digest(mine) == _digest([f[:3] for f in duck])}
        # all 12 rules on the last delivered day, after it is delivered again (the tiles refreshed as by a poll)
        t0 = time.perf_counter()
        upsert_usage(engine, [UsageRecord(a, m, end + DAY, float(v)) for j, m in enumerate(METRICS4)
                              for a, v in zip(ids, (values[j] + 1).tolist(), strict=True)])
        out["redeliver_s"] = time.perf_counter() - t0
        res, _, out["all_rules_evaluate_s"] = _evaluate(engine, rules, end + 2 * DAY, states)
        out["all_rules"], out["subset_rules"] = len(rules), len(subset)
        engine.dispose()
        con.close()
    finally:
        cleanup()
    return out


def render(info: dict[str, Any], results: list[dict[str, Any]], markdown: bool = False) -> str:
    def r(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    lines = [f"usagebot daily-loop benchmark on {info['database']}",
             f"machine: {info['cpu']}, {info['cpus']} CPUs, {info['memory_gib']} GiB; {info['os']}; "
             f"Python {info['python']}, numpy {info['numpy']}, duckdb {info['duckdb']}, pyarrow {info['pyarrow']}",
             ""]
    head = ["figure"] + [f"{x['accounts']:,} accounts" for x in results]
    body: list[list[str]] = []

    def row(label: str, fn: Any) -> None:
        body.append([label] + [fn(x) for x in results])

    row("usage rows (4 metrics x days)", lambda x: f"{x['rows']:,}")
    row("CSV parse + validation (columnar), rows/s", lambda x: f"{x['parse_rows_per_s']:,.0f}")
    row("usagebot ingest CSV end to end, rows/s", lambda x: f"{x['ingest_rows_per_s']:,.0f}")
    row("DuckDB read_csv into its table, rows/s", lambda x: f"{x['duckdb_ingest_rows_per_s']:,.0f}")
    row("columnar read floor (connectorx -> Arrow)", lambda x: f"{x['floor_s']:.2f} s ({x['floor_rows']:,} rows)")
    row("old row read floor (driver cursor) x columnar", lambda x: f"{x['row_floor_s']:.2f} s ({r(x['row_floor_s'], x['floor_s'])})")
    row("cold evaluation, 12 rules (x columnar floor)", lambda x: f"{x['cold_s']:.2f} s ({r(x['cold_s'], x['floor_s'])})")
    for k in ("day1", "day2"):
        row(f"{k}: upsert one day (usagebot, bulk)", lambda x, k=k: f"{x[k]['deliver_s']:.2f} s ({x[k]['rows']:,} rows)")
        row(f"{k}: DuckDB delete+insert of the day", lambda x, k=k: f"{x[k]['duckdb_deliver_s']:.2f} s")
        row(f"{k}: evaluate 8 rules: usagebot / DuckDB",
            lambda x, k=k: f"{x[k]['evaluate_s']:.2f} / {x[k]['duckdb_evaluate_s']:.2f} s")
        row(f"{k}: daily loop (deliver + evaluate): usagebot / DuckDB",
            lambda x, k=k: f"{x[k]['deliver_s'] + x[k]['evaluate_s']:.2f} / "
            f"{x[k]['duckdb_deliver_s'] + x[k]['duckdb_evaluate_s']:.2f} s")
        row(f"{k}: DuckDB loop / usagebot loop (target >= 2)",
            lambda x, k=k: r(x[k]['duckdb_deliver_s'] + x[k]['duckdb_evaluate_s'],
                             x[k]['deliver_s'] + x[k]['evaluate_s']))
        row(f"{k}: findings usagebot / DuckDB (same set?)",
            lambda x, k=k: f"{x[k]['findings']:,} / {x[k]['duckdb_findings']:,} "
            f"({'same' if x[k]['same_findings'] else 'DIFFERENT'})")
    row("all 12 rules after the day delivered again: evaluate", lambda x: f"{x['all_rules_evaluate_s']:.2f} s")
    if markdown:  # the table of docs/benchmarks.md
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(line) + " |" for line in body]
        return "\n".join(lines)
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    for line in [head, *body]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))))
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, database: str) -> None:
    """Accounts vs seconds (log-log): cold evaluation and its columnar floor, the daily loop of
    usagebot and of DuckDB (day 2), the day's upsert."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [x["accounts"] for x in results]
    series = {
        "usagebot cold evaluation (12 rules)": [x["cold_s"] for x in results],
        "columnar read floor (connectorx)": [x["floor_s"] for x in results],
        "usagebot daily loop (upsert + 8 rules)": [x["day2"]["deliver_s"] + x["day2"]["evaluate_s"] for x in results],
        "DuckDB daily loop (delete+insert + 8 rules)": [x["day2"]["duckdb_deliver_s"] + x["day2"]["duckdb_evaluate_s"]
                                                        for x in results],
        "usagebot upsert of one day": [x["day2"]["deliver_s"] for x in results],
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, ys in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("accounts (4 metrics x 90 daily buckets)")
    ax.set_ylabel("seconds")
    ax.set_title(f"usagebot scaling on {database}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="usagebot's daily loop against DuckDB and a columnar read floor")
    p.add_argument("--accounts", default="100000", help="account count(s), comma-separated (one process each)")
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--db-url", help="an empty PostgreSQL database (default: fresh SQLite files)")
    p.add_argument("--plot", help="write the scaling plot (accounts vs seconds) to this .svg/.png")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--from-json", help="render a saved --json report (and --plot it) instead of running")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory(prefix="usagebot-daily-") as tmp:
            print(json.dumps(run_one(args.one, args.days, args.seed, args.db_url, Path(tmp))))
        return 0
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        if args.plot:
            plot(report["results"], Path(args.plot), report["info"]["database"])
        print(render(report["info"], report["results"], markdown=args.markdown))
        return 0
    counts = [int(x) for x in args.accounts.split(",") if x.strip()]
    results = []
    for n in counts:
        print(f"  {n:,} accounts ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "bench.bench_daily", "--one", str(n), "--days", str(args.days),
               "--seed", str(args.seed)] + (["--db-url", args.db_url] if args.db_url else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"bench_daily: {n} accounts failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # each size's figures as soon as measured
    import duckdb
    import pyarrow

    from bench.bench_scale import machine_info

    with tempfile.TemporaryDirectory() as tmp:
        info = machine_info(args.db_url or f"sqlite:///{tmp}/info.db")
    info.update(duckdb=duckdb.__version__, pyarrow=pyarrow.__version__)
    if args.plot:
        plot(results, Path(args.plot), info["database"])
    print(json.dumps({"info": info, "results": results}, indent=2) if args.json
          else render(info, results, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One new day's upsert (bench_daily's "day1 / day2: upsert one day") at a large book, without the
40-minute full run, this checkout and another one side by side (issue 15: <= 1 s at 100k accounts).

    .venv/bin/python -m bench.bench_day_upsert --accounts 100000 --days 14 --before main --rounds 3
    .venv/bin/python -m bench.bench_day_upsert --accounts 100000 --days 14,60 --profile   # where it goes

The seeded demo book (4 metrics x --days, the seed and values of bench_daily) is loaded once per
--days into a SQLite file by load_usage (columns straight from the book's arrays: no CSV, which is
bench_daily's ingest figure, not this one's), and its usage tiles are built by one cold read
(load_blocks_for of the 12 bench rules, as bench_daily's cold evaluation leaves them). Then, per
round and side (after = this checkout, before = the --before git ref extracted by `git archive`),
one fresh process on a fresh copy of that file (copied and synced before the timer) does exactly
bench_daily's daily writes: `upsert_usage` of day 1 (one bucket per account and metric, each
account's value a week before +-15%, 1 in 50 spiking 10x: the process's first write, after
`pa.array(ids)` as in bench_daily), day 2, and day 2 delivered again (+1 on every value). Reported:
wall and CPU seconds of each, the median per side, the ratio after / before, and the rows stored
(which must be equal on both sides; the change log counted per account, a wide row of
migration 0017 as the accounts stored in its buckets). --profile adds each SQL statement's time (SQLAlchemy cursor
events) and the Python phases of storage.usage_load (this checkout only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.sides import ROOT, baseline_tree, run_json

SEED = 3  # bench_daily's default

# run in a child on the code of sys.argv[1]; prints one JSON line
_DAY = r"""
import contextlib, json, os, shutil, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import pyarrow as pa
from integrations.sources.records import UsageRecord
from rules.model import DAY
from storage.db import make_engine
from storage.usage import upsert_usage
import storage.usage_load as ul

book, db, profile = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
meta = json.loads(open(os.path.join(book, "meta.json")).read())
shutil.copyfile(os.path.join(book, "usagebot.db"), db)
os.sync()
arrays = np.load(os.path.join(book, "week_ago.npz"))
ids, metrics, end = meta["ids"], meta["metrics"], meta["end"]
accounts_pa = pa.array(ids, pa.string())  # as bench_daily: pyarrow (and pandas) imported before the days
engine = make_engine(f"sqlite:///{db}")
stmts, phases = [], {}
if profile:
    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, params, context, executemany):
        conn.info["t0"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, params, context, executemany):
        stmts.append((" ".join(statement.split())[:90], time.perf_counter() - conn.info["t0"]))

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    ul._run = timed("python: sum, sort, Arrow tables (_run)", ul._run)
    for name in ("_add_records", "records_as_columns"):  # the records' coding: now / the code before
        if hasattr(ul, name):
            setattr(ul, name, timed(f"python: records -> codes ({name})", getattr(ul, name)))
    ul._adbc_stage = timed("ADBC staging (incl. the Python phases it pulls)", ul._adbc_stage)
    _attached = ul._attached_transaction

    @contextlib.contextmanager
    def attached(engine, path):
        with _attached(engine, path) as conn:
            yield conn
            phases["_t_commit"] = time.perf_counter()
        phases["commit"] = phases.get("commit", 0.0) + time.perf_counter() - phases.pop("_t_commit")
    ul._attached_transaction = attached
rng = np.random.default_rng(meta["seed"] + 1)
out = {}
values = None
for k, day in enumerate((end, end + DAY)):
    values = np.round(arrays[f"d{k}"] * rng.uniform(0.85, 1.15, size=arrays[f"d{k}"].shape))
    values[:, rng.choice(len(ids), size=max(1, len(ids) // 50), replace=False)] *= 10
    records = [UsageRecord(a, m, day, float(v)) for j, m in enumerate(metrics)
               for a, v in zip(ids, values[j].tolist(), strict=True)]
    stmts.clear(), phases.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    upsert_usage(engine, records)
    out[f"day{k + 1}"] = {"s": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                          "stmts": list(stmts), "phases": dict(phases)}
records = [UsageRecord(a, m, end + DAY, float(v)) for j, m in enumerate(metrics)
           for a, v in zip(ids, (values[j] + 1).tolist(), strict=True)]
stmts.clear(), phases.clear()
t0, c0 = time.perf_counter(), time.process_time()
upsert_usage(engine, records)
out["again"] = {"s": time.perf_counter() - t0, "cpu": time.process_time() - c0, "stmts": list(stmts),
                "phases": dict(phases)}
with engine.connect() as c:
    out["stored"] = [int(x) for x in c.exec_driver_sql(
        "SELECT count(*), sum(value), (SELECT count(*) FROM usage_first_seen), "
        "(SELECT count(*) FROM usage_changes WHERE account_id IS NOT NULL) + (SELECT count(*) FROM usage_changes c "
        "JOIN usage_points p ON p.metric = c.metric AND p.bucket_start BETWEEN c.bucket_start AND c.last_bucket "
        "WHERE c.account_id IS NULL) FROM usage_points").one()]  # changes per account (0017: wide rows read out)
engine.dispose()
for suffix in ("", "-wal", "-shm"):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(db + suffix)
print(json.dumps(out))
"""


def build_book(n_accounts: int, days: int, folder: Path) -> None:
    """The demo book of bench_daily (seed 3, 4 metrics) loaded into folder/usagebot.db, its tiles
    built by one cold read; folder/meta.json and week_ago.npz hold what the day writers need."""
    import pyarrow as pa

    from bench.bench_scale import METRICS4, SHIPPED, bench_rules
    from bot.service.pipeline import load_blocks_for
    from integrations.sources.demo import generate_book
    from rules.engine import history_needed
    from storage.db import make_engine, migrate
    from storage.usage import load_usage
    from storage.usage_values import UsageColumns

    book = generate_book(n_accounts=n_accounts, days=days, seed=SEED, metrics=METRICS4)
    ids = list(book.account_ids)
    names = pa.array(ids, pa.string())
    engine = make_engine(f"sqlite:///{folder / 'usagebot.db'}")
    migrate(engine)

    def chunks() -> Any:
        for metric in METRICS4:
            vals = book.values[metric]
            acc, col = np.nonzero(~np.isnan(vals))
            yield UsageColumns(names.take(pa.array(acc)), pa.array([metric] * len(acc), pa.string()),
                               (book.start + col * book.step).astype(np.int64), vals[acc, col].astype(np.float64))

    load_usage(engine, chunks())
    load_blocks_for(engine, history_needed(bench_rules(SHIPPED, METRICS4)), book.end)  # builds the tiles
    engine.dispose()
    np.savez(folder / "week_ago.npz", **{f"d{k}": np.nan_to_num(np.stack([book.values[m][:, -7 + k] for m in METRICS4]))
                                         for k in range(2)})
    (folder / "meta.json").write_text(json.dumps({"ids": ids, "metrics": list(METRICS4), "end": int(book.end),
                                                  "seed": SEED, "accounts": n_accounts, "days": days}))


def _load() -> float:
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one new day's upsert at a large book, before and after")
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--days", default="14", help="history length(s) of the book, comma-separated")
    p.add_argument("--before", help="git ref of the 'before' side (omit: this checkout only)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="statement and phase times (this checkout)")
    p.add_argument("--keep", help="folder to keep (and reuse) the built books in")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="usagebot-day-upsert-"))
    keep = Path(args.keep) if args.keep else work
    report: dict[str, Any] = {"accounts": args.accounts, "books": {}}
    try:
        sides = {"after": ROOT}
        if args.before:
            sides = {"before": baseline_tree(args.before, work), "after": ROOT}
        for days in [int(d) for d in args.days.split(",")]:
            folder = keep / f"book-{args.accounts}-{days}"
            if not (folder / "meta.json").exists():
                folder.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                build_book(args.accounts, days, folder)
                print(f"book {args.accounts:,} x {days} days built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
            loads = []
            for r in range(args.rounds):
                for side, root in sides.items():
                    loads.append(_load())
                    got = run_json(root, _DAY, str(root), str(folder), str(work / "day.db"),
                                   "1" if args.profile and side == "after" else "0")
                    runs[side].append(got)
                    print(f"days={days} round {r + 1} {side}: " + ", ".join(
                        f"{k} {got[k]['s']:.2f} s ({got[k]['cpu']:.2f} cpu)" for k in ("day1", "day2", "again")),
                        file=sys.stderr, flush=True)
            report["books"][days] = {"runs": runs, "load": [min(loads), max(loads)]}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.before:
            shutil.rmtree(work / "before", ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(render(report))
    differ = [days for days, book in report["books"].items()
              if len({json.dumps(x["stored"]) for rs in book["runs"].values() for x in rs}) > 1]
    if differ:  # the sides (or rounds) stored different rows: their times compare nothing
        print(f"stored rows differ between runs ({', '.join(map(str, differ))} days of history)", file=sys.stderr)
        return 1
    return 0


def render(report: dict[str, Any]) -> str:
    lines = []
    for days, book in report["books"].items():
        runs = book["runs"]
        lines.append(f"\n{report['accounts']:,} accounts x {days} days, load {book['load'][0]:.1f}-{book['load'][1]:.1f}")
        lines.append("| figure | " + " | ".join(f"{s} (wall / cpu, each round)" for s in runs) + " | "
                     + ("after / before (median wall, cpu) |" if "before" in runs else ""))
        for k in ("day1", "day2", "again"):
            cells, med = [], {}
            for side, rs in runs.items():
                cells.append(", ".join(f"{x[k]['s']:.2f} / {x[k]['cpu']:.2f}" for x in rs))
                med[side] = (statistics.median(x[k]["s"] for x in rs), statistics.median(x[k]["cpu"] for x in rs))
            ratio = (f" {med['after'][0] / med['before'][0]:.2f}x, {med['after'][1] / med['before'][1]:.2f}x |"
                     if "before" in med else "")
            lines.append(f"| {k} | " + " | ".join(cells) + " |" + ratio)
        stored = {side: rs[0]["stored"] for side, rs in runs.items()}
        lines.append(f"stored (rows, sum of values, first_seen, changes): {stored}")
        prof = [x for x in runs["after"] if x["day1"]["stmts"]]
        for x in prof[:1]:
            for k in ("day1", "day2", "again"):
                lines.append(f"  profile {k}: {x[k]['s']:.3f} s")
                for name, s in sorted(x[k]["phases"].items(), key=lambda kv: -kv[1]):
                    lines.append(f"    {s:7.3f}  {name}")
                for sql, s in sorted(x[k]["stmts"], key=lambda kv: -kv[1])[:8]:
                    lines.append(f"    {s:7.3f}  SQL {sql}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

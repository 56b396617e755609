"""Benchmark: ingest rows/s and evaluation time for N accounts x M metrics x D daily buckets.

    .venv/bin/python -m bench.bench_eval                      # 10k accounts x 4 metrics x 90 days, SQLite
    .venv/bin/python -m bench.bench_eval --accounts 2000 --days 60
    .venv/bin/python -m bench.bench_eval --db-url postgresql+psycopg://user@host:5432/db

Each phase runs in its own Python process so its peak memory (max RSS) is its
own. Phases:
  generate   synthetic book (integrations.sources.demo) written as usage/accounts CSV
  csv        parse + validate the usage CSV (rows/s)
  ingest     CSV -> database: parse in chunks + idempotent bulk upsert (rows/s), then
             upsert the same rows again (re-ingest cost)
  evaluate   the shipped rules at the book's last day: load every needed block from the
             database (SQL aggregation into arrays), evaluate the rules, advance the lifecycle
Results are printed as a table (and --json); docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

METRICS4 = ("api_calls", "events", "exports", "reports")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phase_generate(args: argparse.Namespace) -> dict:
    from integrations.sources.csv_rows import write_accounts_csv, write_usage_csv
    from integrations.sources.demo import generate_book

    t0 = time.perf_counter()
    book = generate_book(n_accounts=args.accounts, days=args.days, seed=args.seed,
                         metrics=METRICS4[: args.metrics])
    t1 = time.perf_counter()
    rows = write_usage_csv(Path(args.workdir) / "usage.csv", book.records())
    write_accounts_csv(Path(args.workdir) / "accounts.csv", book.accounts)
    t2 = time.perf_counter()
    (Path(args.workdir) / "book.json").write_text(json.dumps({"end": book.end, "rows": rows}))
    return {"phase": "generate", "rows": rows, "generate_s": t1 - t0, "write_csv_s": t2 - t1,
            "peak_rss_mb": _rss_mb()}


def phase_csv(args: argparse.Namespace) -> dict:
    from integrations.sources.csv_rows import read_usage_csv

    t0 = time.perf_counter()
    res = read_usage_csv(Path(args.workdir) / "usage.csv")
    dt = time.perf_counter() - t0
    return {"phase": "csv", "rows": len(res.records), "seconds": dt, "rows_per_s": len(res.records) / dt,
            "peak_rss_mb": _rss_mb()}


def phase_ingest(args: argparse.Namespace) -> dict:
    from integrations.sources.csv_rows import iter_usage_csv_chunks, read_accounts_csv
    from storage.accounts import upsert_accounts
    from storage.db import make_engine, migrate
    from storage.usage import upsert_usage

    engine = make_engine(args.db_url)
    migrate(engine)
    upsert_accounts(engine, read_accounts_csv(Path(args.workdir) / "accounts.csv").records)
    rows = 0
    upsert_s = 0.0
    t0 = time.perf_counter()
    chunks = []
    for chunk in iter_usage_csv_chunks(Path(args.workdir) / "usage.csv", chunk_rows=100_000):
        u0 = time.perf_counter()
        upsert_usage(engine, chunk.records)
        upsert_s += time.perf_counter() - u0
        rows += len(chunk.records)
        if len(chunks) < 3:
            chunks.append(chunk.records)
    total = time.perf_counter() - t0
    r0 = time.perf_counter()
    again = sum(upsert_usage(engine, c) for c in chunks)  # idempotent re-ingest of the first chunks
    re_s = time.perf_counter() - r0
    engine.dispose()
    return {"phase": "ingest", "rows": rows, "seconds": total, "rows_per_s": rows / total,
            "upsert_rows_per_s": rows / upsert_s, "reingest_rows_per_s": again / re_s if re_s else None,
            "peak_rss_mb": _rss_mb()}


def phase_evaluate(args: argparse.Namespace) -> dict:
    from bot.service.pipeline import load_blocks_for
    from rules.engine import evaluate, history_needed
    from rules.lifecycle import advance
    from rules.loader import load_rules
    from storage.accounts import list_accounts
    from storage.db import make_engine

    end = json.loads((Path(args.workdir) / "book.json").read_text())["end"]
    ruleset = load_rules([args.rules])
    metrics = METRICS4[: args.metrics]
    rules = [r for r in ruleset.rules if r.metric in metrics]
    # every metric gets evaluated: metrics no shipped rule watches get copies of the api_calls
    # spike and drop rules
    templates = [r for r in ruleset.rules if r.id in ("api-calls-spike", "api-calls-drop")]
    for m in metrics:
        if not any(r.metric == m for r in rules):
            rules += [replace(r, id=f"{r.id}-{m}", metric=m) for r in templates]
    engine = make_engine(args.db_url)
    t0 = time.perf_counter()
    accounts = {a.id: a for a in list_accounts(engine)}
    blocks = load_blocks_for(engine, history_needed(rules), end)
    t1 = time.perf_counter()
    result = evaluate(rules, blocks, accounts, end, only_due=False)
    t2 = time.perf_counter()
    step = advance({r.id: r for r in rules}, result.findings, result.decided, {}, end,
                   evaluated_rules=result.evaluated_rules)
    t3 = time.perf_counter()
    cells = sum(b.values.size for b in blocks.values())
    engine.dispose()
    return {"phase": "evaluate", "rules": len(rules), "accounts": len(accounts), "cells": cells,
            "load_s": t1 - t0, "evaluate_s": t2 - t1, "lifecycle_s": t3 - t2, "total_s": t3 - t0,
            "findings": len(result.findings), "fired": sum(1 for t in step.transitions if t.event == "fired"),
            "peak_rss_mb": _rss_mb()}


PHASES = {"generate": phase_generate, "csv": phase_csv, "ingest": phase_ingest, "evaluate": phase_evaluate}


def _run_phase(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_eval", "--phase", name, "--workdir", args.workdir,
           "--accounts", str(args.accounts), "--metrics", str(args.metrics), "--days", str(args.days),
           "--seed", str(args.seed), "--db-url", args.db_url, "--rules", args.rules]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="usagebot ingest/evaluation benchmark")
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--metrics", type=int, default=4, choices=range(1, 5))
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--db-url", help="database URL (default: a fresh SQLite file in the work dir)")
    p.add_argument("--rules", default=str(Path(__file__).resolve().parent.parent / "rules" / "examples"
                                          / "default.toml"))
    p.add_argument("--workdir")
    p.add_argument("--phase", choices=sorted(PHASES))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    if args.phase:  # child process
        print(json.dumps(PHASES[args.phase](args)))
        return 0

    with tempfile.TemporaryDirectory(prefix="usagebot-bench-") as tmp:
        args.workdir = args.workdir or tmp
        args.db_url = args.db_url or f"sqlite:///{Path(args.workdir) / 'bench.db'}"
        results = [_run_phase(name, args) for name in ("generate", "csv", "ingest", "evaluate")]
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "db": args.db_url.split(":")[0], "shape": f"{args.accounts} x {args.metrics} x {args.days}d"}
    if args.json:
        print(json.dumps({"info": info, "results": results}, indent=2))
        return 0
    g, c, i, e = results
    print(f"usagebot benchmark {info['shape']} on {info['db']} ({info['cpus']} CPUs, Python {info['python']})")
    print(f"  rows                          {g['rows']:>12,}")
    print(f"  CSV parse+validate            {c['rows_per_s']:>12,.0f} rows/s   peak {c['peak_rss_mb']:,.0f} MB")
    print(f"  ingest CSV -> DB (end to end) {i['rows_per_s']:>12,.0f} rows/s   peak {i['peak_rss_mb']:,.0f} MB")
    print(f"    of which upsert only        {i['upsert_rows_per_s']:>12,.0f} rows/s")
    print(f"    re-ingest (idempotent)      {i['reingest_rows_per_s']:>12,.0f} rows/s")
    print(f"  evaluate {e['rules']} rules, {e['accounts']:,} accounts ({e['cells']:,} cells)")
    print(f"    load blocks (SQL -> arrays) {e['load_s']:>12.2f} s")
    print(f"    evaluate (detectors)        {e['evaluate_s']:>12.2f} s")
    print(f"    lifecycle                   {e['lifecycle_s']:>12.2f} s")
    print(f"    total                       {e['total_s']:>12.2f} s      peak {e['peak_rss_mb']:,.0f} MB")
    print(f"    findings {e['findings']:,}, fired {e['fired']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

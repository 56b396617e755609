"""Benchmark at scale: ingest, full and incremental evaluation against a raw floor and a pandas baseline.

    .venv/bin/python -m bench.bench_scale                                  # 100k accounts x 4 metrics x 90 days, SQLite
    .venv/bin/python -m bench.bench_scale --accounts 10000 --changed 0.001,0.01
    .venv/bin/python -m bench.bench_scale --db-url postgresql://user@127.0.0.1:5432/bench --json

The book is the seeded synthetic demo book (integrations.sources.demo) with the
metrics api_calls, events, exports, reports. Each phase runs in its own Python
process, so "peak" is that phase's own maximum resident memory. Phases, in order:

  ingest         generate the book, then stream book.records() in chunks straight into
                 storage.usage.load_usage (no CSV; the backfill path: one transaction, covering
                 index rebuilt once): rows/s end to end and of the load alone
  ingest_sample  a smaller book (--sample-accounts) written into a fresh database (SQLite: a new
                 file; PostgreSQL: a new schema, dropped afterwards): the engine's load_usage, the
                 same rows again through upsert_usage per chunk, the write floor (plain executemany
                 INSERT / COPY into a table shaped like usage_points) and pandas DataFrame.to_sql
  floor          the columnar read floor (bench/raw_floor.py): the rows the evaluation needs, same
                 metrics and time ranges, read with one plain SELECT per metric by connectorx into
                 Arrow columns; once for the ranges of all evaluated rules and once for those of the
                 pandas baseline's rules; and the old row floor (the same SELECT through the driver
                 cursor into numpy arrays) for reference
  evaluate       full evaluation of the shipped rules at the book's last day as a daily cycle does it:
                 bot.service.pipeline.load_blocks_for + rules.engine.evaluate + rules.lifecycle.advance,
                 advancing the episodes of the previous day's evaluation. That one runs first and is
                 timed apart: on a fresh book it is the cold read that builds the usage tiles
                 (storage/tiles.py). Then the last day is delivered again through upsert_usage
                 (untimed; it marks the day in the tiles as a real delivery does), so the timed
                 cycle pays for refreshing it. The alerts to notify in both cycles are counted, and
                 the tile read floor (the tiles covering the ranges, plainly SELECTed and decoded) is
                 measured after. The 4th
                 metric (reports), watched by no shipped rule, gets copies of the api_calls spike
                 and drop rules (as bench/bench_eval.py does). --chunk-accounts N evaluates in
                 chunks of N accounts (memory bounded by the chunk)
  evaluate_subset the engine on only the rules the pandas baseline implements (spike, drop,
                 quota threshold): the like-for-like comparison
  pandas         bench/pandas_baseline.py on those same rules; its findings are compared with the
                 engine's (count and digest)
  calls          bench/bench_calls.py: the real pipeline at the day before the end and at the end
                 (run_cycle, Slack delivery to a local fake Slack, CRM sync to a local fake
                 Salesforce), counting the API calls each cycle made over HTTP (--no-calls skips it)
  cycle_first, cycle_next  with --no-calls instead: the same two daily cycles persisted by
                 bot.service.pipeline.run_cycle (episodes, audit events, outbox), without delivery; the last
                 day is delivered again (untimed) before the second
  incremental    per --changed fraction: new data (a corrected last-day value of every metric) is
                 upserted for that share of accounts, then `incremental_evaluation` re-evaluates
                 only them, and the read floor of only those accounts' rows is measured (best of
                 3 runs each, these figures being small)
  incremental_cycle per --changed fraction, end to end as the service does on new data: upsert
                 it, then run_cycle(account_ids=...) (evaluate, advance, persist those accounts)
  ingest_daily   steady state: the next day's bucket for every account and metric upserted into
                 the full book (what a daily poll delivers)

Ratios: "x floor" is this figure's time over the matching raw floor's (1.0 = as fast as
reading the rows); "pandas x" is the pandas baseline's time over this figure's (10 = ten
times faster than pandas). Run with --json for machine-readable output.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from rules.engine import EvaluationResult
from rules.model import Rule, RuleSet

ROOT = Path(__file__).resolve().parent.parent
METRICS4 = ("api_calls", "events", "exports", "reports")
SHIPPED = ROOT / "rules" / "examples" / "default.toml"
SCRATCH_SCHEMA = "usagebot_bench_scratch"
INCREMENTAL_REPEAT = 3


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- rules


def bench_rules(rules_path: str | Path, metrics: Sequence[str]) -> list[Rule]:
    """The shipped rules on `metrics`; a metric no rule watches gets copies of the api_calls spike/drop rules."""
    from rules.loader import load_rules

    ruleset = load_rules([rules_path])
    rules = [r for r in ruleset.rules if r.metric in metrics]
    templates = [r for r in ruleset.rules if r.id in ("api-calls-spike", "api-calls-drop")]
    for m in metrics:
        if not any(r.metric == m for r in rules):
            rules += [replace(r, id=f"{r.id}-{m}", metric=m) for r in templates]
    return rules


def incremental_evaluation(
    engine: Engine, ruleset: RuleSet | Sequence[Rule], now: int, changed_ids: Sequence[str]
) -> EvaluationResult:
    """Evaluate every rule for the accounts in `changed_ids` only, with today's APIs.

    Loads each (metric, bucket) block restricted to those accounts
    (bot.service.pipeline.load_blocks_for(account_ids=...)), their facts, and runs
    rules.engine.evaluate. This is the one function to swap for a dedicated
    incremental API.
    """
    from bot.service.pipeline import load_blocks_for
    from rules.engine import evaluate, history_needed
    from storage.accounts import list_accounts

    rules = list(ruleset.rules if isinstance(ruleset, RuleSet) else ruleset)
    ids = sorted(changed_ids)
    accounts = {a.id: a for a in list_accounts(engine, ids=ids)}
    blocks = load_blocks_for(engine, history_needed(rules), now, account_ids=ids)
    return evaluate(rules, blocks, accounts, now, only_due=False)


def _digest(keys: Sequence[tuple[str, str, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted(keys)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- phases


def _book(args: argparse.Namespace, n_accounts: int) -> Any:
    from integrations.sources.demo import generate_book

    return generate_book(n_accounts=n_accounts, days=args.days, seed=args.seed, metrics=METRICS4[: args.metrics])


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    return json.loads((Path(args.workdir) / "book.json").read_text())


def phase_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import func, select

    from storage.accounts import upsert_accounts
    from storage.db import make_engine, migrate
    from storage.usage import load_usage, usage_points

    engine = make_engine(args.db_url)
    migrate(engine)
    with engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(usage_points)).scalar_one():
            raise SystemExit(f"bench_scale: usage_points in {engine.url.render_as_string()} is not empty;"
                             " give --db-url an empty database")
    t0 = time.perf_counter()
    book = _book(args, args.accounts)
    generate_s = time.perf_counter() - t0
    upsert_accounts(engine, book.accounts, now=book.end)
    records = book.records()
    produce_s = 0.0
    rows = 0

    def chunks() -> Any:  # the book's records, timed apart from the load itself
        nonlocal produce_s, rows
        while True:
            p0 = time.perf_counter()
            chunk = list(itertools.islice(records, args.chunk_rows))
            produce_s += time.perf_counter() - p0
            if not chunk:
                return
            rows += len(chunk)
            yield chunk

    t1 = time.perf_counter()
    stored = load_usage(engine, chunks())
    ingest_s = time.perf_counter() - t1
    (Path(args.workdir) / "book.json").write_text(json.dumps({"start": book.start, "end": book.end, "rows": rows}))
    engine.dispose()
    return {"phase": "ingest", "rows": rows, "stored": stored, "accounts": len(book.accounts),
            "generate_s": generate_s, "seconds": ingest_s, "rows_per_s": rows / ingest_s,
            "load_rows_per_s": rows / (ingest_s - produce_s), "peak_rss_mb": _rss_mb()}


def _scratch_url(args: argparse.Namespace) -> tuple[str, Any]:
    """A URL of an empty scratch database and a cleanup callable."""
    from sqlalchemy.engine import make_url

    from storage.db import make_engine

    if args.db_url.startswith("sqlite"):
        path = Path(args.workdir) / "ingest_sample.db"
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            p.unlink(missing_ok=True)
        return f"sqlite:///{path}", lambda: None
    admin = make_engine(args.db_url)

    def run(sql: str) -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(sql)

    run(f"DROP SCHEMA IF EXISTS {SCRATCH_SCHEMA} CASCADE")
    run(f"CREATE SCHEMA {SCRATCH_SCHEMA}")
    url = make_url(args.db_url).update_query_dict({"options": f"-csearch_path={SCRATCH_SCHEMA}"})

    def cleanup() -> None:
        run(f"DROP SCHEMA IF EXISTS {SCRATCH_SCHEMA} CASCADE")
        admin.dispose()

    return url.render_as_string(hide_password=False), cleanup


def phase_ingest_sample(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from bench.raw_floor import create_points_table, insert_plain
    from storage.accounts import upsert_accounts
    from storage.db import make_engine, migrate
    from storage.usage import UPSERT_CHUNK, in_chunks, load_usage, upsert_usage

    book = _book(args, min(args.sample_accounts, args.accounts))
    records = list(book.records())
    tuples = [(r.account, r.metric, r.ts, r.value) for r in records]
    url, cleanup = _scratch_url(args)
    engine = make_engine(url)
    try:
        migrate(engine)
        upsert_accounts(engine, book.accounts, now=book.end)
        t0 = time.perf_counter()
        load_usage(engine, in_chunks(records, args.chunk_rows))
        engine_s = time.perf_counter() - t0
        # the same rows again, one upsert_usage transaction per chunk into the now full table
        t0 = time.perf_counter()
        for i in range(0, len(records), args.chunk_rows):
            upsert_usage(engine, records[i : i + args.chunk_rows])
        again_s = time.perf_counter() - t0

        create_points_table(engine, "floor_points")
        floor_s = insert_plain(engine, "floor_points", tuples)

        create_points_table(engine, "pandas_points")
        t0 = time.perf_counter()
        frame = pd.DataFrame(tuples, columns=["account_id", "metric", "bucket_start", "value"])
        frame.to_sql("pandas_points", engine, if_exists="append", index=False, chunksize=UPSERT_CHUNK)
        pandas_s = time.perf_counter() - t0
    finally:
        engine.dispose()
        cleanup()
    n = len(tuples)
    return {"phase": "ingest_sample", "rows": n, "accounts": len(book.accounts),
            "engine_rows_per_s": n / engine_s, "floor_rows_per_s": n / floor_s, "pandas_rows_per_s": n / pandas_s,
            "reupsert_rows_per_s": n / again_s,
            "engine_s": engine_s, "floor_s": floor_s, "pandas_s": pandas_s, "peak_rss_mb": _rss_mb()}


def phase_floor(args: argparse.Namespace) -> dict[str, Any]:
    from bench.pandas_baseline import supported_rules
    from bench.raw_floor import ranges_for, read_columnar_floor, read_floor
    from storage.db import make_engine

    end = _meta(args)["end"]
    rules = bench_rules(args.rules, METRICS4[: args.metrics])
    full = read_columnar_floor(args.db_url, ranges_for(rules, end))
    subset = read_columnar_floor(args.db_url, ranges_for(supported_rules(rules), end))
    engine = make_engine(args.db_url)
    row = read_floor(engine, ranges_for(rules, end))
    engine.dispose()
    return {"phase": "floor", "rows": full.rows, "seconds": full.seconds, "per_metric": full.per_metric,
            "subset_rows": subset.rows, "subset_seconds": subset.seconds, "row_seconds": row.seconds,
            "peak_rss_mb": _rss_mb()}


def _run_rules(
    engine: Engine, rules: list[Rule], now: int, chunk_accounts: int
) -> tuple[EvaluationResult, float, int, int]:
    """Load blocks and evaluate, in one go or per chunk of accounts; (result, load seconds, cells, accounts)."""
    from bot.service.pipeline import account_chunks, load_blocks_for
    from rules.engine import evaluate, history_needed
    from storage.accounts import list_accounts

    t0 = time.perf_counter()
    accounts = {a.id: a for a in list_accounts(engine)}
    chunks: list[list[str] | None] = list(account_chunks(engine, chunk_accounts)) if chunk_accounts else [None]
    load_s = time.perf_counter() - t0
    out = EvaluationResult()
    cells = 0
    for chunk in chunks:
        t0 = time.perf_counter()
        blocks = load_blocks_for(engine, history_needed(rules), now, account_ids=chunk)
        load_s += time.perf_counter() - t0
        result = evaluate(rules, blocks, accounts, now, only_due=False)
        cells += sum(b.values.size for b in blocks.values())
        del blocks
        out.findings += result.findings
        out.decided |= result.decided
        out.evaluated_rules |= result.evaluated_rules
    return out, load_s, cells, len(accounts)


def _redeliver(engine: Engine, metrics: Sequence[str], bucket: int) -> float:
    """The day's delivery before a daily cycle: every stored point of `bucket` written again through
    storage.usage.upsert_usage (same values), which marks the day in the usage tiles as any write
    does, so the timed cycle pays for refreshing it. Returns its own seconds (not part of the cycle)."""
    from integrations.sources.records import UsageRecord
    from storage.usage import upsert_usage

    t0 = time.perf_counter()
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    with engine.connect() as conn:  # by (metric, bucket_start): the table's key, so a seek per metric
        rows = conn.exec_driver_sql(
            "SELECT account_id, metric, bucket_start, value FROM usage_points WHERE metric IN ("
            + ", ".join([mark] * len(metrics)) + f") AND bucket_start = {mark}", (*metrics, bucket)).all()
    upsert_usage(engine, [UsageRecord(a, m, int(b), float(v)) for a, m, b, v in rows])
    return time.perf_counter() - t0


def _evaluate(args: argparse.Namespace, rules: list[Rule], phase: str) -> dict[str, Any]:
    from bench.raw_floor import ranges_for, read_tile_floor
    from rules.lifecycle import advance
    from rules.model import DAY
    from storage.db import make_engine

    end = _meta(args)["end"]
    by_id = {r.id: r for r in rules}
    # The day before, on its own connection pool: its episodes are the states the timed cycle
    # starts from, as a service's cycle would, and its notifications are the first cycle's. On a
    # fresh book it is also the cold read: it builds the usage tiles (storage/tiles.py).
    warm = make_engine(args.db_url)
    t0 = time.perf_counter()
    previous, prev_load_s, _, _ = _run_rules(warm, rules, end - DAY, args.chunk_accounts)
    first = advance(by_id, previous.findings, previous.decided, {}, end - DAY,
                    evaluated_rules=previous.evaluated_rules)
    previous_s = time.perf_counter() - t0
    # then the last day is delivered (untimed; see ingest_daily), as every day before a cycle
    redeliver_s = _redeliver(warm, METRICS4[: args.metrics], end - DAY)
    warm.dispose()

    engine = make_engine(args.db_url)
    t0 = time.perf_counter()
    result, load_s, cells, n_accounts = _run_rules(engine, rules, end, args.chunk_accounts)
    t1 = time.perf_counter()
    step = advance(by_id, result.findings, result.decided, first.states, end,
                   evaluated_rules=result.evaluated_rules)
    t2 = time.perf_counter()
    tile_floor = read_tile_floor(engine, ranges_for(rules, end))
    engine.dispose()
    keys = [(f.rule_id, f.account_id, f.discriminator) for f in result.findings]
    return {"phase": phase, "rules": len(rules), "accounts": n_accounts, "cells": cells,
            "chunk_accounts": args.chunk_accounts, "load_s": load_s, "evaluate_s": t1 - t0 - load_s,
            "lifecycle_s": t2 - t1, "seconds": t2 - t0, "findings": len(keys), "digest": _digest(keys),
            "previous_s": previous_s, "previous_load_s": prev_load_s, "redeliver_s": redeliver_s,
            "tile_floor_s": tile_floor.seconds, "tiles_read": tile_floor.rows,
            "open_episodes": len(first.states), "notify_first": sum(1 for t in first.transitions if t.notify),
            "notify": sum(1 for t in step.transitions if t.notify), "peak_rss_mb": _rss_mb()}


def phase_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    return _evaluate(args, bench_rules(args.rules, METRICS4[: args.metrics]), "evaluate")


def phase_evaluate_subset(args: argparse.Namespace) -> dict[str, Any]:
    from bench.pandas_baseline import supported_rules

    return _evaluate(args, supported_rules(bench_rules(args.rules, METRICS4[: args.metrics])), "evaluate_subset")


def phase_pandas(args: argparse.Namespace) -> dict[str, Any]:
    from bench.pandas_baseline import pandas_findings, supported_rules
    from storage.db import make_engine

    end = _meta(args)["end"]
    rules = supported_rules(bench_rules(args.rules, METRICS4[: args.metrics]))
    engine = make_engine(args.db_url)
    t0 = time.perf_counter()
    findings = pandas_findings(engine, rules, end)
    seconds = time.perf_counter() - t0
    engine.dispose()
    return {"phase": "pandas", "rules": len(rules), "seconds": seconds, "findings": len(findings),
            "digest": _digest([f[:3] for f in findings]), "peak_rss_mb": _rss_mb()}


def _changed_accounts(args: argparse.Namespace, ids: Sequence[str], salt: int = 0) -> tuple[list[str], Any]:
    """--fraction of `ids` (at least one), drawn with a generator seeded by --seed, the fraction and
    `salt`; returns them sorted, and the generator for any further draws."""
    import numpy as np

    rng = np.random.default_rng(args.seed + salt + int(args.fraction * 1e6))
    n = max(1, round(args.fraction * len(ids)))
    return sorted(ids[i] for i in rng.choice(len(ids), size=n, replace=False)), rng


def phase_incremental(args: argparse.Namespace) -> dict[str, Any]:
    from bench.raw_floor import ranges_for, read_floor
    from integrations.sources.records import UsageRecord
    from rules.lifecycle import advance
    from rules.model import DAY
    from storage.accounts import list_accounts
    from storage.db import make_engine
    from storage.usage import upsert_usage

    end = _meta(args)["end"]
    metrics = METRICS4[: args.metrics]
    rules = bench_rules(args.rules, metrics)
    engine = make_engine(args.db_url)
    ids = [a.id for a in list_accounts(engine)]
    changed, rng = _changed_accounts(args, ids)
    n = len(changed)
    new_data = [UsageRecord(a, m, end - DAY, float(v))
                for a in changed for m, v in zip(metrics, rng.integers(0, 5000, size=len(metrics)), strict=True)]
    w0 = time.perf_counter()
    upsert_usage(engine, new_data)
    write_s = time.perf_counter() - w0
    ruleset = RuleSet(tuple(rules))
    by_id = {r.id: r for r in rules}
    best: dict[str, float] = {}
    floor_s = []
    for _ in range(INCREMENTAL_REPEAT):  # small figures: best of a few runs
        floor = read_floor(engine, ranges_for(rules, end), account_ids=changed)
        floor_s.append(floor.seconds)
        t0 = time.perf_counter()
        result = incremental_evaluation(engine, ruleset, end, changed)
        t1 = time.perf_counter()
        advance(by_id, result.findings, result.decided, {}, end, evaluated_rules=result.evaluated_rules)
        t2 = time.perf_counter()
        if not best or t2 - t0 < best["seconds"]:
            best = {"evaluate_s": t1 - t0, "lifecycle_s": t2 - t1, "seconds": t2 - t0}
    engine.dispose()
    return {"phase": "incremental", "fraction": args.fraction, "changed": n, "new_rows": len(new_data),
            "write_s": write_s, **best, "findings": len(result.findings), "floor_rows": floor.rows,
            "floor_seconds": min(floor_s), "peak_rss_mb": _rss_mb()}


def phase_calls(args: argparse.Namespace) -> dict[str, Any]:
    """Slack and Salesforce calls of the first cycle and of the next day's (bench/bench_calls.py).

    Persists episodes, outbox, Slack and CRM state: runs after the in-memory phases."""
    from bench.bench_calls import measure_cycle_calls

    end = _meta(args)["end"]
    t0 = time.perf_counter()
    out = measure_cycle_calls(args.db_url, bench_rules(args.rules, METRICS4[: args.metrics]), end)
    return {"phase": "calls", **out, "seconds": time.perf_counter() - t0, "peak_rss_mb": _rss_mb()}


def _persisted_cycle(args: argparse.Namespace, phase: str, day_before: bool) -> dict[str, Any]:
    from bot.service.pipeline import run_cycle
    from rules.model import DAY
    from storage.db import make_engine

    end = _meta(args)["end"]
    metrics = METRICS4[: args.metrics]
    ruleset = RuleSet(tuple(bench_rules(args.rules, metrics)))
    engine = make_engine(args.db_url)
    redeliver_s = 0.0 if day_before else _redeliver(engine, metrics, end - DAY)
    t0 = time.perf_counter()
    report = run_cycle(engine, ruleset, end - DAY if day_before else end, only_due=False)
    seconds = time.perf_counter() - t0
    engine.dispose()
    return {"phase": phase, "seconds": seconds, "redeliver_s": redeliver_s, "findings": report.findings,
            "transitions": len(report.transitions), "outbox_items": report.outbox_items, "peak_rss_mb": _rss_mb()}


def phase_cycle_first(args: argparse.Namespace) -> dict[str, Any]:
    """bot.service.pipeline.run_cycle at the day before the end, persisted (episodes, audit, outbox): the
    service's first daily cycle on the book (with --no-calls only; the calls phase runs it otherwise)."""
    return _persisted_cycle(args, "cycle_first", day_before=True)


def phase_cycle_next(args: argparse.Namespace) -> dict[str, Any]:
    """The next daily cycle, persisted: the last day delivered again (untimed), then run_cycle at the end."""
    return _persisted_cycle(args, "cycle_next", day_before=False)


def phase_incremental_cycle(args: argparse.Namespace) -> dict[str, Any]:
    """What the service does when new data arrives for some accounts, end to end: upsert it, then
    bot.service.pipeline.run_cycle(account_ids=...) re-evaluates, advances and persists only those
    accounts (their episode states read through ix_alert_episodes_account). Runs after the calls
    phase, so the book has a day of episode history."""
    from bot.service.pipeline import run_cycle
    from integrations.sources.records import UsageRecord
    from rules.model import DAY
    from storage.accounts import list_accounts
    from storage.db import make_engine
    from storage.usage import upsert_usage

    end = _meta(args)["end"]
    metrics = METRICS4[: args.metrics]
    ruleset = RuleSet(tuple(bench_rules(args.rules, metrics)))
    engine = make_engine(args.db_url)
    ids = [a.id for a in list_accounts(engine)]
    best: dict[str, Any] = {}
    for rep in range(INCREMENTAL_REPEAT):  # a different set of accounts each time: nothing cached
        changed, _ = _changed_accounts(args, ids, salt=1000 + rep)
        new_data = [UsageRecord(a, m, end - DAY, float(1000 + rep)) for a in changed for m in metrics]
        t0 = time.perf_counter()
        upsert_usage(engine, new_data)
        t1 = time.perf_counter()
        report = run_cycle(engine, ruleset, end, only_due=False, account_ids=changed)
        t2 = time.perf_counter()
        if not best or t2 - t0 < best["seconds"]:
            best = {"write_s": t1 - t0, "cycle_s": t2 - t1, "seconds": t2 - t0, "findings": report.findings,
                    "transitions": len(report.transitions), "outbox_items": report.outbox_items}
    with engine.connect() as conn:
        episodes = conn.exec_driver_sql("SELECT count(*) FROM alert_episodes").scalar_one()
    engine.dispose()
    return {"phase": "incremental_cycle", "fraction": args.fraction, "changed": len(changed),
            "episodes_stored": episodes, **best, "peak_rss_mb": _rss_mb()}


def phase_ingest_daily(args: argparse.Namespace) -> dict[str, Any]:
    """Steady-state ingest: the next day's bucket for every account and metric (what a daily poll
    delivers) upserted into the full book, one upsert_usage transaction per --chunk-rows."""
    import numpy as np

    from integrations.sources.records import UsageRecord
    from storage.accounts import list_accounts
    from storage.db import make_engine
    from storage.usage import upsert_usage

    end = _meta(args)["end"]
    engine = make_engine(args.db_url)
    ids = [a.id for a in list_accounts(engine)]
    rng = np.random.default_rng(args.seed)
    values = rng.integers(0, 5000, size=len(ids) * args.metrics).tolist()
    records = [UsageRecord(a, m, end, float(v)) for (a, m), v in
               zip(itertools.product(ids, METRICS4[: args.metrics]), values, strict=True)]
    t0 = time.perf_counter()
    for i in range(0, len(records), args.chunk_rows):
        upsert_usage(engine, records[i:i + args.chunk_rows])
    seconds = time.perf_counter() - t0
    engine.dispose()
    return {"phase": "ingest_daily", "rows": len(records), "seconds": seconds,
            "rows_per_s": len(records) / seconds, "peak_rss_mb": _rss_mb()}


PHASES = {
    "ingest": phase_ingest,
    "ingest_sample": phase_ingest_sample,
    "floor": phase_floor,
    "evaluate": phase_evaluate,
    "evaluate_subset": phase_evaluate_subset,
    "pandas": phase_pandas,
    "incremental": phase_incremental,
    "calls": phase_calls,
    "incremental_cycle": phase_incremental_cycle,
    "cycle_first": phase_cycle_first,
    "cycle_next": phase_cycle_next,
    "ingest_daily": phase_ingest_daily,
}


# ---------------------------------------------------------------------------- driver


def _run_phase(name: str, args: argparse.Namespace, fraction: float | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.bench_scale", "--phase", name, "--workdir", args.workdir,
           "--accounts", str(args.accounts), "--metrics", str(args.metrics), "--days", str(args.days),
           "--seed", str(args.seed), "--db-url", args.db_url, "--rules", str(args.rules),
           "--chunk-rows", str(args.chunk_rows), "--sample-accounts", str(args.sample_accounts),
           "--chunk-accounts", str(args.chunk_accounts)]
    if fraction is not None:
        cmd += ["--fraction", repr(fraction)]
    if not args.json:
        print(f"  running {name}{'' if fraction is None else f' ({fraction:g})'} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench_scale: phase {name!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def machine_info(db_url: str) -> dict[str, Any]:
    import numpy
    import pandas
    import sqlalchemy

    from storage.db import make_engine, redact_url

    cpu = ""
    mem_gib = None
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        mem_gib = round(kib / 1024 / 1024, 1)
    except (OSError, StopIteration, ValueError):
        pass
    engine = make_engine(db_url)
    with engine.connect() as conn:
        server = conn.exec_driver_sql(
            "SELECT sqlite_version()" if engine.dialect.name == "sqlite" else "SHOW server_version").scalar_one()
    engine.dispose()
    return {"cpu": cpu or platform.processor(), "cpus": os.cpu_count(), "memory_gib": mem_gib,
            "os": platform.platform(), "python": platform.python_version(), "numpy": numpy.__version__,
            "pandas": pandas.__version__, "sqlalchemy": sqlalchemy.__version__,
            "database": f"{engine.dialect.name} {server}", "db_url": redact_url(db_url)}


def _ratio(num: float | None, den: float | None) -> str:
    if not num or not den:
        return "-"
    return f"{num / den:.2f}"


def render(report: dict[str, Any]) -> str:
    info, r = report["info"], report["results"]
    ing, smp, flo, ev, sub, pd_ = (r[k] for k in ("ingest", "ingest_sample", "floor", "evaluate",
                                                  "evaluate_subset", "pandas"))
    lines = [
        f"usagebot scale benchmark: {report['shape']} on {info['database']}",
        f"machine: {info['cpu']}, {info['cpus']} CPUs, {info['memory_gib']} GiB; {info['os']}",
        f"Python {info['python']}, numpy {info['numpy']}, pandas {info['pandas']}, SQLAlchemy {info['sqlalchemy']}",
        "",
        f"{'figure':<58} {'result':>18} {'peak MB':>8} {'x floor':>8} {'pandas x':>9}",
    ]

    def row(label: str, result: str, peak: float | None, x_floor: str, x_pandas: str) -> None:
        lines.append(f"{label:<58} {result:>18} {'' if peak is None else f'{peak:,.0f}':>8} {x_floor:>8} {x_pandas:>9}")

    sf, se, sp = smp["floor_rows_per_s"], smp["engine_rows_per_s"], smp["pandas_rows_per_s"]
    row(f"ingest whole book, {ing['rows']:,} rows (records -> load_usage)", f"{ing['rows_per_s']:,.0f} rows/s",
        ing["peak_rss_mb"], _ratio(sf, ing["rows_per_s"]), _ratio(ing["rows_per_s"], sp))
    row("  of which load_usage alone (not making the records)", f"{ing['load_rows_per_s']:,.0f} rows/s", None,
        _ratio(sf, ing["load_rows_per_s"]), _ratio(ing["load_rows_per_s"], sp))
    row(f"ingest sample {smp['rows']:,} rows: engine load_usage", f"{se:,.0f} rows/s", smp["peak_rss_mb"],
        _ratio(sf, se), _ratio(se, sp))
    row("  same rows again, upsert_usage per chunk", f"{smp['reupsert_rows_per_s']:,.0f} rows/s", None,
        _ratio(sf, smp["reupsert_rows_per_s"]), _ratio(smp["reupsert_rows_per_s"], sp))
    row("  write floor (plain INSERT / COPY)", f"{sf:,.0f} rows/s", None, "1.00", _ratio(sf, sp))
    row("  pandas DataFrame.to_sql", f"{sp:,.0f} rows/s", None, _ratio(sf, sp), "1.00")
    daily = r.get("ingest_daily")
    if daily:
        row(f"next day for every account, {daily['rows']:,} rows into the book", f"{daily['rows_per_s']:,.0f} rows/s",
            daily["peak_rss_mb"], _ratio(sf, daily["rows_per_s"]), _ratio(daily["rows_per_s"], sp))
    row(f"columnar read floor, all evaluated rules' ranges ({flo['rows']:,} rows)", f"{flo['seconds']:.2f} s",
        flo["peak_rss_mb"], "1.00", "-")
    if "row_seconds" in flo:
        row("  row read floor (driver cursor into numpy), same rows", f"{flo['row_seconds']:.2f} s", None,
            _ratio(flo["row_seconds"], flo["seconds"]), "")
    row(f"columnar read floor, pandas rules' ranges ({flo['subset_rows']:,} rows)", f"{flo['subset_seconds']:.2f} s",
        None, "1.00", _ratio(pd_["seconds"], flo["subset_seconds"]))
    chunked = f", chunks of {ev['chunk_accounts']:,}" if ev.get("chunk_accounts") else ""
    row(f"full evaluation, {ev['rules']} rules x {ev['accounts']:,} accounts{chunked}", f"{ev['seconds']:.2f} s",
        ev["peak_rss_mb"], _ratio(ev["seconds"], flo["seconds"]), _ratio(pd_["seconds"], ev["seconds"]))
    row("  load blocks / detectors / lifecycle",
        f"{ev['load_s']:.1f}/{ev['evaluate_s']:.1f}/{ev['lifecycle_s']:.1f} s", None, "", "")
    if "previous_s" in ev:
        row("  the day before: first evaluation of the book (builds tiles)", f"{ev['previous_s']:.2f} s", None,
            _ratio(ev["previous_s"], flo["seconds"]), _ratio(pd_["seconds"], ev["previous_s"]))
        row(f"  tile read floor ({ev['tiles_read']:,} usage tiles)", f"{ev['tile_floor_s']:.2f} s", None,
            _ratio(ev["tile_floor_s"], flo["seconds"]), "")
    row(f"engine on the pandas baseline's {sub['rules']} rules", f"{sub['seconds']:.2f} s", sub["peak_rss_mb"],
        _ratio(sub["seconds"], flo["subset_seconds"]), _ratio(pd_["seconds"], sub["seconds"]))
    row(f"pandas baseline, same {pd_['rules']} rules", f"{pd_['seconds']:.2f} s", pd_["peak_rss_mb"],
        _ratio(pd_["seconds"], flo["subset_seconds"]), "1.00")
    for inc in r["incremental"]:
        row(f"incremental, {inc['fraction']:.1%} = {inc['changed']:,} accounts changed", f"{inc['seconds']:.2f} s",
            inc["peak_rss_mb"], _ratio(inc["seconds"], flo["seconds"]), _ratio(pd_["seconds"], inc["seconds"]))
        row(f"  vs read floor of those accounts' rows ({inc['floor_rows']:,})", f"{inc['floor_seconds']:.2f} s",
            None, _ratio(inc["seconds"], inc["floor_seconds"]), "")
    row(f"alerts to notify: first cycle / next day ({ev['open_episodes']:,} episodes)",
        f"{ev['notify_first']:,} / {ev['notify']:,}", None, "", "")
    for cyc in r.get("incremental_cycle", []):
        row(f"incremental run_cycle, {cyc['fraction']:.1%} = {cyc['changed']:,} accounts (write+cycle)",
            f"{cyc['seconds']:.2f} s", cyc["peak_rss_mb"], _ratio(cyc["seconds"], flo["seconds"]),
            _ratio(pd_["seconds"], cyc["seconds"]))
    calls = r.get("calls")
    if calls:
        for label, key in (("first cycle", "first"), ("next day", "next_day")):
            c = calls[key]
            row(f"Slack calls, {label}: {c['notified']:,} alerts ({c['slack_calls_per_alert']:.2f}/alert)",
                f"{c['slack_calls_total']:,}", None, "", "")
            row(f"Salesforce requests, {label}: {c['crm_records_written']:,} records written",
                f"{c['crm_requests']:,} + {c['crm_logins']} login", None, "", "")
            row("  persisted run_cycle of that day (evaluate, advance, store)", f"{c['evaluate_s']:.2f} s", None,
                _ratio(c["evaluate_s"], flo["seconds"]), _ratio(pd_["seconds"], c["evaluate_s"]))
    else:
        row("Slack / CRM calls per cycle", "skipped (--no-calls)", None, "", "")
    for key, label in (("cycle_first", "first"), ("cycle_next", "next day")):
        cyc = r.get(key)
        if cyc:
            row(f"persisted run_cycle, {label}: {cyc['transitions']:,} transitions, {cyc['outbox_items']:,} outbox",
                f"{cyc['seconds']:.2f} s", cyc["peak_rss_mb"], _ratio(cyc["seconds"], flo["seconds"]),
                _ratio(pd_["seconds"], cyc["seconds"]))
    same = sub["digest"] == pd_["digest"]
    lines += [
        "",
        f"findings: full evaluation {ev['findings']:,}; engine on pandas rules "
        f"{sub['findings']:,}, pandas {pd_['findings']:,}: {'identical' if same else 'DIFFERENT'} sets",
        "x floor = time / matching raw floor's time (ingest: floor rows/s / rows/s); "
        "pandas x = pandas baseline's time / this time.",
        "Whole-book ingest and full evaluation are compared with the sample write floor and with the pandas",
        "baseline of the spike/drop/quota-threshold rules only (pandas does not implement all rules).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="usagebot scale benchmark against a raw floor and a pandas baseline")
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--metrics", type=int, default=4, choices=range(1, 5))
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--db-url", help="an EMPTY database (default: a fresh SQLite file in a temp dir)")
    p.add_argument("--rules", default=str(SHIPPED))
    p.add_argument("--changed", default="0.01",
                   help="share(s) of accounts receiving new data for the incremental phase, e.g. 0.001,0.01")
    p.add_argument("--chunk-rows", type=int, default=200_000, help="records per upsert_usage call while ingesting")
    p.add_argument("--sample-accounts", type=int, default=3_000, help="accounts in the ingest comparison book")
    p.add_argument("--chunk-accounts", type=int, default=0,
                   help="evaluate in chunks of this many accounts (bot.service.pipeline.account_chunks); 0 = all at once")
    p.add_argument("--no-calls", action="store_true",
                   help="skip the Slack/CRM calls phase (its first cycle delivers every open alert over HTTP)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--fraction", type=float, default=0.01, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.phase:  # child process
        print(json.dumps(PHASES[args.phase](args)))
        return 0

    try:
        fractions = [float(x) for x in args.changed.split(",") if x.strip()]
    except ValueError:
        p.error(f"--changed: expected fractions such as 0.01 or 0.001,0.01, got {args.changed!r}")
    if not fractions or not all(0 < f <= 1 for f in fractions):
        p.error(f"--changed: every fraction must be in (0, 1], got {args.changed!r}")
    with tempfile.TemporaryDirectory(prefix="usagebot-scale-") as tmp:
        args.workdir = args.workdir or tmp
        args.db_url = args.db_url or f"sqlite:///{Path(args.workdir) / 'bench.db'}"
        started = time.perf_counter()
        results: dict[str, Any] = {}
        for name in ("ingest", "ingest_sample", "floor", "evaluate", "evaluate_subset", "pandas"):
            results[name] = _run_phase(name, args)
        if not args.no_calls:  # before the incremental phases change the last day of some accounts
            results["calls"] = _run_phase("calls", args)
        else:  # the same two persisted cycles, without Slack and Salesforce
            results["cycle_first"] = _run_phase("cycle_first", args)
            results["cycle_next"] = _run_phase("cycle_next", args)
        results["incremental"] = [_run_phase("incremental", args, f) for f in fractions]
        results["incremental_cycle"] = [_run_phase("incremental_cycle", args, f) for f in fractions]
        results["ingest_daily"] = _run_phase("ingest_daily", args)
        db_file = Path(args.workdir) / "bench.db"
        info = machine_info(args.db_url)
        if db_file.exists():
            info["db_file_mb"] = round(db_file.stat().st_size / 2**20)
    report = {"shape": f"{args.accounts:,} accounts x {args.metrics} metrics x {args.days} daily buckets",
              "info": info, "results": results, "total_wall_s": time.perf_counter() - started}
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

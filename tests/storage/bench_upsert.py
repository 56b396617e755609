"""Upsert throughput on SQLite and PostgreSQL (a measurement, not a test).

    python -m tests.storage.bench_upsert [ROWS]

Writes ROWS (default 500k) distinct minute points of 500 accounts, then
writes them again (the idempotent re-load path: every row conflicts), then
loads a 1h block; once with records grouped by account and once in time order
(accounts interleaved, as a usage export usually is). PostgreSQL uses the
throwaway server from tests/pg.py.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from storage.db import make_engine, migrate
from storage.usage import load_block, upsert_usage
from tests.pg import PgUnavailable, start_server
from tests.storage.test_usage import Rec


def make_records(n: int, accounts: int = 500) -> list[Rec]:
    per = n // accounts
    t0 = 1_700_000_040
    return [Rec(f"acct-{a:05d}", "api_calls", t0 + 60 * i, float(i % 17)) for a in range(accounts) for i in range(per)]


def run(url: str, label: str, n: int, time_order: bool) -> None:
    engine = make_engine(url)
    migrate(engine)
    records = make_records(n)
    if time_order:
        records.sort(key=lambda r: (r.ts, r.account))
    label = f"{label} {'time-order' if time_order else 'by-account'}"
    for phase in ("insert", "re-load"):
        t = time.perf_counter()
        written = upsert_usage(engine, records)
        dt = time.perf_counter() - t
        print(f"{label:22s} {phase:8s} {written:>8d} rows in {dt:6.2f} s = {written / dt:>9,.0f} rows/s")
    t = time.perf_counter()
    start = 1_700_000_040 - 1_700_000_040 % 3600
    end = start + 3600 * ((n // 500) * 60 // 3600 + 2)
    block = load_block(engine, "api_calls", 3600, start, end)
    print(f"{label:22s} load_block 1h {block.values.shape} in {time.perf_counter() - t:.2f} s")
    engine.dispose()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    for time_order in (False, True):
        with tempfile.TemporaryDirectory() as d:
            run(f"sqlite:///{Path(d) / 'bench.db'}", "sqlite", n, time_order)
    try:
        server = start_server()
    except PgUnavailable as exc:
        print(f"postgresql skipped: {exc}")
        return
    try:
        for time_order in (False, True):
            run(server.url(server.create_database("bench")), "postgresql", n, time_order)
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""storage.columnar: usage points reach numpy as (cell, value) arrays equal to a plain SELECT's rows,
on SQLite (group_concat of integer points parsed in C, other values as rows) and PostgreSQL (COPY
BINARY decoded by numpy, in the caller's transaction), whatever the values and the block sizes."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.engine import Engine

import storage.columnar as columnar
from integrations.sources.records import UsageRecord
from storage.db import write_transaction
from storage.usage import upsert_usage

DAY = 86_400
T0 = 1_790_000_000 // DAY * DAY
VALUES = [0.0, 1.0, 7.0, 2.5, 1e-300, 2.0**53, 2.0**53 + 2, 1.5e300, 123456789.0, 0.1]


def _book(n_accounts: int = 40, n_days: int = 12) -> list[UsageRecord]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n_accounts):
        for d in range(n_days):
            if rng.random() < 0.8:
                v = VALUES[(i * 7 + d) % len(VALUES)] if i % 3 == 0 else float(rng.integers(0, 10**6))
                out.append(UsageRecord(f"acct-{i:03d}", "api_calls", T0 + d * DAY, v))
    out.append(UsageRecord("acct-001", "events", T0, 5.0))  # another metric: left out
    return out


def _cells(engine: Engine, ids: list[str], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    with write_transaction(engine) as conn:
        conn.exec_driver_sql("CREATE TEMPORARY TABLE col_ids (account_id varchar PRIMARY KEY, ord bigint NOT NULL)")
        raw = conn.connection.driver_connection
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        raw.cursor().executemany(f"INSERT INTO col_ids VALUES ({mark}, {mark})", [(a, k) for k, a in enumerate(ids)])
        flat, vals = columnar.cells(conn, "api_calls", lo, hi, DAY, "col_ids")
        conn.exec_driver_sql("DROP TABLE col_ids")
    order = np.argsort(flat, kind="stable")
    return flat[order], vals[order]


def _expected(records: list[UsageRecord], ids: list[str], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    ords = {a: k for k, a in enumerate(ids)}
    n_cols = (hi - lo) // DAY
    pts = sorted((ords[r.account] * n_cols + (r.ts - lo) // DAY, r.value) for r in records
                 if r.metric == "api_calls" and r.account in ords and lo <= r.ts < hi)
    return np.array([p[0] for p in pts], dtype=np.int64), np.array([p[1] for p in pts], dtype=np.float64)


@pytest.mark.parametrize("block", [None, 64])
def test_cells_are_the_rows_of_a_plain_select(engine: Engine, monkeypatch: pytest.MonkeyPatch, block: int | None) -> None:
    if block:
        monkeypatch.setattr(columnar, "COPY_BLOCK", block)  # PostgreSQL: decoded in many small pieces
    records = _book()
    upsert_usage(engine, records, base_step=DAY)
    ids = [f"acct-{i:03d}" for i in range(0, 40, 2)][::-1]  # some accounts, in another order
    lo, hi = T0 + 2 * DAY, T0 + 10 * DAY
    flat, vals = _cells(engine, ids, lo, hi)
    want_flat, want_vals = _expected(records, ids, lo, hi)
    assert flat.dtype == np.int64 and vals.dtype == np.float64
    np.testing.assert_array_equal(flat, want_flat)
    np.testing.assert_array_equal(vals, want_vals)  # exactly: no value goes through a decimal text
    assert {2.5, 2.0**53 + 2, 1.5e300, 0.1} <= set(vals.tolist())


def test_an_empty_range_gives_empty_arrays(engine: Engine) -> None:
    upsert_usage(engine, _book(), base_step=DAY)
    flat, vals = _cells(engine, ["acct-000"], T0 - 10 * DAY, T0)
    assert flat.dtype == np.int64 and vals.dtype == np.float64 and flat.size == vals.size == 0

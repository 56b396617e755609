"""bench/bench_daily.py and the columnar read floor: the floor reads exactly the row floor's rows,
and the daily-loop benchmark runs end to end on a small book with usagebot and DuckDB agreeing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine, make_url

from bench.bench_daily import render, run_one
from bench.bench_scale import METRICS4, SHIPPED, bench_rules
from bench.raw_floor import ranges_for, read_columnar_floor, read_floor
from integrations.sources.demo import generate_book
from storage.usage import upsert_usage


def test_columnar_floor_reads_the_row_floors_rows(engine: Engine, db_url: str) -> None:
    book = generate_book(n_accounts=60, days=60, seed=2, metrics=METRICS4)
    upsert_usage(engine, book.records())
    ranges = ranges_for(bench_rules(SHIPPED, METRICS4), book.end)
    options = make_url(db_url).query.get("options", "")
    schema = str(options).removeprefix("-csearch_path=") if options else ""
    col = read_columnar_floor(db_url, ranges, table=f"{schema}.usage_points" if schema else "usage_points")
    row = read_floor(engine, ranges)
    assert col.rows == row.rows > 0
    assert col.per_metric == row.per_metric
    assert col.value_sum == pytest.approx(row.value_sum, rel=1e-12)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_daily_bench_runs_and_usagebot_and_duckdb_agree(tmp_path: Path) -> None:
    out = run_one(150, 60, 3, None, tmp_path)
    for day in ("day1", "day2"):
        assert out[day]["same_findings"], out[day]
        assert out[day]["findings"] > 0
        assert out[day]["rows"] == 150 * len(METRICS4)
    assert out["floor_rows"] > 0 and out["cold_findings"] > 0
    text = render({"database": "sqlite", "cpu": "x", "cpus": 2, "memory_gib": 1, "os": "linux", "python": "3",
                   "numpy": "2", "duckdb": "1", "pyarrow": "1"}, [out])
    assert "(same)" in text and "DIFFERENT" not in text

"""bench/bench_cold.py runs end to end on a small book: the floor, this checkout's cold evaluation and
another checkout's (here the same one) side by side, with the same findings, and renders its table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_cold import ROOT, render, run_one


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cold_bench_runs_and_both_sides_agree(tmp_path: Path) -> None:
    out = run_one(120, 40, 3, 1, ROOT, None, tmp_path)
    assert out["floor_rows"] > 0 and out["findings"] > 0
    assert out["floor_s"] > 0 and out["after_s"] > 0 and out["before_s"] > 0 and out["after_cpu"] > 0
    assert out["floor_cpu"] > 0  # the floor's own CPU time, beside the evaluation's
    again = run_one(120, 40, 3, 1, None, None, tmp_path)  # the book kept in tmp_path is reused
    assert again["findings"] == out["findings"] and "before_s" not in again
    text = render([out, again])
    assert "120 accounts" in text and "x floor" in text and text.count("\n") == 5
    assert "x the floor's" in text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cold_bench_on_postgresql_reads_the_copy_floor_too(tmp_path: Path, pg_server) -> None:  # noqa: ANN001
    """On PostgreSQL the bench also times COPY BINARY of the same rows' (bucket, value) into numpy:
    as many rows as the connectorx floor, shown in its own row with the evaluation's ratio to it."""
    db = pg_server.create_database("cold")
    try:
        out = run_one(80, 30, 3, 1, None, pg_server.url(db), tmp_path)
    finally:
        pg_server.drop_database(db)
    assert out["floor_rows"] > 0 and out["copy_s"] > 0 and out["after_s"] > 0
    assert out["copy_rows"] == out["floor_rows"] and len(out["copy_all"]) == 1
    text = render([out])
    assert "COPY BINARY" in text and "x the COPY floor" in text

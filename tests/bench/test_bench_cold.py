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
    again = run_one(120, 40, 3, 1, None, None, tmp_path)  # the book kept in tmp_path is reused
    assert again["findings"] == out["findings"] and "before_s" not in again
    text = render([out, again])
    assert "120 accounts" in text and "x floor" in text and text.count("\n") == 5

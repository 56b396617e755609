"""bench/bench_http_items.py runs: its timed poll stores every item it was given (the figure is a real poll)."""

from __future__ import annotations

from bench.bench_http_items import child


def test_the_timed_poll_reads_every_item() -> None:
    assert child(2000) > 0.0  # child() asserts the poll returned all 2,000 items as totals

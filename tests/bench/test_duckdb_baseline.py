"""The DuckDB baseline (bench/duckdb_baseline.py) finds exactly what the engine finds, on the same
small demo book (data outage, late-onboarded accounts) and rule variants as the pandas baseline's
test: the daily-loop comparison in bench/bench_daily.py is like for like."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy.engine import Engine

from bench.duckdb_baseline import connect, copy_from, deliver_day, duckdb_findings
from bench.pandas_baseline import supported_rules
from integrations.sources.demo import DemoBook, generate_book
from integrations.sources.records import UsageRecord
from rules.loader import load_rules, load_rules_text
from rules.model import DAY
from storage.accounts import list_accounts
from storage.usage import upsert_usage
from tests.bench.test_pandas_baseline import (
    SHIPPED,
    VARIANTS,
    _assert_same,
    _engine_findings,
    _outage_day,
    _store,
)


@pytest.fixture(scope="module")
def book() -> DemoBook:
    return generate_book(n_accounts=150, days=90, seed=11)


def test_shipped_rules_same_findings_as_engine(engine: Engine, book: DemoBook) -> None:
    _store(engine, book)
    con = connect()
    copy_from(con, engine)
    rules = supported_rules(load_rules([SHIPPED]))
    outage = _outage_day(book)
    kinds: set[str] = set()
    for at in (book.end, book.end - 9 * DAY, book.end - 23 * DAY, outage + DAY, outage + 2 * DAY):
        expected = _engine_findings(engine, rules, at)
        _assert_same(expected, duckdb_findings(con, rules, at), at)
        kinds.update(f[0] for f in expected)
    assert {"api-calls-spike", "api-calls-drop", "events-drop", "api-calls-quota", "events-quota"} <= kinds


def test_rule_variants_same_findings_as_engine(engine: Engine, book: DemoBook) -> None:
    _store(engine, book)
    con = connect()
    copy_from(con, engine)
    rules = supported_rules(load_rules_text(VARIANTS, "variants.toml"))
    seen: set[str] = set()
    for at in (book.end, book.end - 5 * DAY, book.end - 40 * DAY):
        expected = _engine_findings(engine, rules, at)
        _assert_same(expected, duckdb_findings(con, rules, at), at)
        seen.update(f[0] for f in expected)
    assert seen == {r.id for r in rules}


def test_a_delivered_day_gives_the_engines_findings_after_the_same_delivery(engine: Engine, book: DemoBook) -> None:
    _store(engine, book)
    con = connect()
    copy_from(con, engine)
    ids = [a.id for a in list_accounts(engine)]
    metrics = ["api_calls", "events"]
    values = np.random.default_rng(5).integers(0, 4000, size=(len(metrics), len(ids))).astype(float)
    values[0, ::7] *= 20  # some spikes
    day = book.end - DAY  # a stored day delivered again with other values: replaced, not added
    upsert_usage(engine, [UsageRecord(a, m, day, float(values[k, i]))
                          for k, m in enumerate(metrics) for i, a in enumerate(ids)])
    deliver_day(con, pa.array(ids, pa.string()), metrics, day, values)
    rules = supported_rules(load_rules([SHIPPED]))
    expected = _engine_findings(engine, rules, book.end)
    assert any(f[0] == "api-calls-spike" for f in expected)
    _assert_same(expected, duckdb_findings(con, rules, book.end), book.end)

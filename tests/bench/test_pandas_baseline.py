"""The pandas baseline (bench/pandas_baseline.py) finds exactly what the engine finds.

That is what makes the speed comparison in bench/bench_scale.py fair: both
read the same rows from the same database and implement the same rules with
the same missing-data semantics. Checked on a small demo book (with its data
outage and late-onboarded accounts) at several evaluation days, on SQLite and
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy.engine import Engine

from bench.pandas_baseline import BaselineFinding, pandas_findings, supported_rules
from bot.service.pipeline import load_blocks_for
from integrations.sources.demo import DemoBook, generate_book
from rules.engine import evaluate, history_needed
from rules.loader import load_rules, load_rules_text
from rules.model import DAY, Rule
from storage.accounts import list_accounts, upsert_accounts
from storage.usage import upsert_usage

SHIPPED = "rules/examples/default.toml"

# Variants the shipped rules do not exercise: mean baselines, smoothing, no seasonality with a
# z-score, a drop z-score, plan segments and exclusions, spike min_value, several quota levels.
VARIANTS = """
[[rule]]
id = "calls-mean-smooth"
kind = "spike"
metric = "api_calls"
threshold = { ratio = 1.6, smooth = 3 }
baseline = { window = "21d", method = "mean", seasonality = "none", min_points = 10 }
guards = { min_value = 30 }
segment = { plans = ["growth", "enterprise"] }

[[rule]]
id = "events-drop-z"
kind = "drop"
metric = "events"
threshold = { ratio = 0.7, zscore = 2.0, smooth = 2 }
baseline = { window = "14d", seasonality = "weekly", method = "mean", min_points = 2 }
guards = { min_baseline = 10, min_delta = 5 }

[[rule]]
id = "exports-none-z"
kind = "spike"
metric = "exports"
threshold = { ratio = 1.5, zscore = 1.5 }
baseline = { window = "10d", min_points = 5 }

[[rule]]
id = "events-quota-levels"
kind = "quota"
metric = "events"
threshold = { mode = "threshold", fractions = [0.25, 0.5, 0.9, 1.2] }
segment = { exclude_accounts = ["__none__"] }
"""


@pytest.fixture(scope="module")
def book() -> DemoBook:
    return generate_book(n_accounts=150, days=90, seed=11)


def _store(engine: Engine, book: DemoBook) -> None:
    upsert_accounts(engine, book.accounts, now=book.end)
    upsert_usage(engine, book.records())


def _engine_findings(engine: Engine, rules: Sequence[Rule], now: int) -> list[BaselineFinding]:
    accounts = {a.id: a for a in list_accounts(engine)}
    blocks = load_blocks_for(engine, history_needed(rules), now)
    result = evaluate(rules, blocks, accounts, now, only_due=False)
    out = [(f.rule_id, f.account_id, f.discriminator, f.value, f.baseline, f.threshold) for f in result.findings]
    return sorted(out, key=lambda f: f[:3])


def _assert_same(engine_out: list[BaselineFinding], pandas_out: list[BaselineFinding], at: int) -> None:
    assert [f[:3] for f in pandas_out] == [f[:3] for f in engine_out], f"at {at}"
    for e, p in zip(engine_out, pandas_out, strict=True):
        for x, y in zip(e[3:], p[3:], strict=True):
            assert (x is None) == (y is None), (e, p)
            if x is not None:
                assert y == pytest.approx(x, rel=1e-9, abs=1e-9), (e, p)


def _outage_day(book: DemoBook) -> int:
    """Start of the day on which no account has data (the demo book's data outage)."""
    values = book.values[book.metrics[0]]
    col = next(j for j in range(book.n_buckets) if all(v != v for v in values[:, j]))
    return book.start + col * DAY


def test_shipped_rules_same_findings_as_engine(engine: Engine, book: DemoBook) -> None:
    _store(engine, book)
    rules = supported_rules(load_rules([SHIPPED]))
    assert {r.kind for r in rules} == {"spike", "drop", "quota"}
    assert all(r.kind != "quota" or r.params.mode == "threshold" for r in rules)
    outage = _outage_day(book)
    days = [book.end, book.end - 9 * DAY, book.end - 23 * DAY, outage + DAY, outage + 2 * DAY]
    kinds: set[str] = set()
    for at in days:
        expected = _engine_findings(engine, rules, at)
        _assert_same(expected, pandas_findings(engine, rules, at), at)
        kinds.update(f[0] for f in expected)
    # the comparison is not vacuous: every kind of shipped rule found something on some day
    assert {"api-calls-spike", "api-calls-drop", "events-drop", "api-calls-quota", "events-quota"} <= kinds


def test_rule_variants_same_findings_as_engine(engine: Engine, book: DemoBook) -> None:
    _store(engine, book)
    rules = supported_rules(load_rules_text(VARIANTS, "variants.toml"))
    seen: set[str] = set()
    for at in (book.end, book.end - 5 * DAY, book.end - 40 * DAY):
        expected = _engine_findings(engine, rules, at)
        _assert_same(expected, pandas_findings(engine, rules, at), at)
        seen.update(f[0] for f in expected)
    assert seen == {r.id for r in rules}


def test_only_daily_buckets_are_supported() -> None:
    rules = load_rules_text(
        '[[rule]]\nid = "hourly"\nkind = "spike"\nmetric = "api_calls"\nbucket = "1h"\n', "hourly.toml"
    )
    with pytest.raises(ValueError, match=r"hourly.toml:1: rule 'hourly': bucket: .*daily buckets only"):
        supported_rules(rules)

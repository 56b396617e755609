"""bench/numpy_floor.py computes exactly the engine's findings (so "detection <= 2x numpy" is a fair ratio)."""

from __future__ import annotations

import pytest

from bench.numpy_floor import KINDS, RULES, _facts, floor_findings
from integrations.sources.demo import generate_book
from rules.engine import evaluate, history_needed
from rules.loader import load_rules
from rules.model import DAY


@pytest.mark.parametrize(("seed", "back"), [(1, 0), (2, 9), (3, 17)])
def test_the_numpy_floor_finds_what_the_engine_finds(seed, back):
    rules = [r for r in load_rules([RULES]).rules if r.kind in KINDS]
    book = generate_book(n_accounts=150, days=100, seed=seed, gaps=3, metrics=("api_calls", "events", "exports"))
    at = book.end - back * DAY
    blocks = {key: book.block(key[0]).truncated((at - book.block(key[0]).start) // DAY) for key in history_needed(rules)}
    accounts = {a.id: a for a in book.accounts}
    want = {(f.rule_id, f.account_id, f.discriminator) for f in evaluate(rules, blocks, accounts, at, only_due=False).findings}
    assert floor_findings(rules, blocks, _facts(rules, blocks, accounts)) == want
    assert len({k[0] for k in want}) >= 4  # most rules fire on the book

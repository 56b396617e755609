"""The one-pass scans (rules.detectors.scan, Kind.scan) are supersets: at every bucket close of random
books, every row the full detector gives a finding (with no open episode) is a candidate of the scan,
and where a scan says which rows are decided (Scanned) it says exactly what the detector decides."""

from __future__ import annotations

import numpy as np
import pytest

from integrations.sources.demo import generate_book
from rules.detectors import detect
from rules.detectors.scan import Scanned, trailing_max, trailing_mean, trailing_min, trailing_sum
from rules.engine import facts_for, history_needed
from rules.kinds import KINDS
from rules.loader import load_rules_text
from rules.model import DAY, MetricBlock
from tests.rules.test_replay_equivalence import DAYS, END, GUARDED, _rules_text


def _noisy(block: MetricBlock, rng: np.random.Generator) -> MetricBlock:
    """The block with more gaps, runs of zeros, repeated values and tiny fractions (ties and rounding)."""
    values = block.values.copy()
    shape = values.shape
    values[rng.random(shape) < 0.1] = np.nan
    values[rng.random(shape) < 0.1] = 0.0
    values[rng.random(shape) < 0.05] = 0.1
    zero_rows = rng.random(shape[0]) < 0.2
    cols = rng.integers(0, shape[1], size=2)
    values[np.ix_(zero_rows, np.arange(min(cols), max(cols) + 1))] = 0.0
    return MetricBlock(block.metric, block.start, block.step, block.account_ids, values)


@pytest.mark.parametrize("seed", range(8))
def test_every_finding_of_the_full_detector_is_a_scan_candidate(seed):
    rng = np.random.default_rng(100 + seed)
    text = _rules_text(rng) + GUARDED.format(seasonality=rng.choice(["none", "weekly"]),
                                             method=rng.choice(["median", "mean", "upper"]),
                                             smooth=int(rng.choice([1, 2, 3])))
    rules = list(load_rules_text(text).rules)
    scanned_kinds = {name for name, kind in KINDS.items() if kind.scan is not None}
    assert {"spike", "drop", "inactivity", "threshold", "quota", "expansion"} <= scanned_kinds
    assert {r.kind for r in rules} >= scanned_kinds, "add a rule of the kind with a scan to _rules_text"
    book = generate_book(n_accounts=int(rng.integers(15, 30)), days=DAYS, end=END, seed=seed,
                         gaps=int(rng.integers(0, 6)), holidays=int(rng.integers(0, 3)))
    accounts = {a.id: a for a in book.accounts}
    blocks = {key: book.block(key[0]) for key in history_needed(rules)}
    if seed % 2:
        blocks = {key: _noisy(b, rng) for key, b in blocks.items()}
    checked = fired = 0
    for rule in rules:
        kind = KINDS[rule.kind]
        if kind.scan is None:
            continue
        block = blocks[(rule.metric, rule.bucket)]
        facts = tuple(facts_for(block.account_ids, accounts))
        got = kind.scan(rule, block, facts)
        assert got is not None, f"{rule.id}: the scan should bound a book of non-negative usage"
        cand, decided = (got.candidates, got.decided) if isinstance(got, Scanned) else (got, None)
        assert cand.shape == (len(block.account_ids), block.n_buckets + 1) and cand.dtype == bool
        for j in range(1, block.n_buckets + 1):
            result = detect(rule, block.truncated(j), facts)
            rows = {block.account_ids.index(f.account_id) for f in result.findings}
            missed = sorted(i for i in rows if not cand[i, j])
            assert not missed, f"{rule.id} at column {j}: findings of rows {missed} are not candidates"
            if decided is not None:
                np.testing.assert_array_equal(decided[:, j], result.decided, err_msg=f"{rule.id} at column {j}")
            checked += 1
            fired += len(rows)
    assert checked > 500 and fired > 50  # the books do fire


def test_a_scan_gives_up_where_its_bound_needs_non_negative_usage():
    rules = list(load_rules_text(_rules_text(np.random.default_rng(0))).rules)
    quota = next(r for r in rules if r.kind == "quota")
    block = MetricBlock(quota.metric, 0, DAY, ["a", "b"], np.array([[1.0, -2.0, 3.0], [0.0, 1.0, 2.0]]))
    assert KINDS["quota"].scan(quota, block, tuple(facts_for(block.account_ids, {}))) is None


def test_trailing_windows_match_plain_numpy():
    rng = np.random.default_rng(5)
    values = rng.random((7, 40)) * 100
    values[rng.random(values.shape) < 0.2] = np.nan
    for width in (1, 2, 3, 7, 8, 29, 45):
        for j in range(41):
            win = values[:, max(0, j - width):j]
            seen = ~np.isnan(win)
            lo = np.where(seen.any(axis=1), np.nanmin(np.where(seen, win, np.inf), axis=1, initial=np.inf), np.inf)
            hi = np.where(seen.any(axis=1), np.nanmax(np.where(seen, win, -np.inf), axis=1, initial=-np.inf), -np.inf)
            np.testing.assert_array_equal(trailing_min(values, width)[:, j], lo)
            np.testing.assert_array_equal(trailing_max(values, width)[:, j], hi)
            sums, slack = trailing_sum(values, width)
            assert (np.abs(sums[:, j] - np.nansum(win, axis=1)) <= slack[:, j]).all()
            mean = trailing_mean(values, width)[:, j]
            want = win.mean(axis=1) if j >= width else np.full(7, np.nan)
            np.testing.assert_allclose(mean, want, rtol=1e-12, equal_nan=True)


def test_a_replay_runs_each_scan_once_and_not_before_its_first_evaluation_is_out(monkeypatch):
    """With the first-run policy every row of the first evaluation runs whatever a scan says, so the
    replay hands that step over before running any scan (a backtest's first events come out sooner),
    then runs each rule's scan once; the steps are those of the stepwise definition."""
    import dataclasses
    from pathlib import Path

    from rules.loader import load_rules
    from rules.replay import replay
    from tests.rules.reference import stepwise_replay
    from tests.rules.test_replay_equivalence import _blocks, _transitions

    calls: list[str] = []
    for name, kind in list(KINDS.items()):
        if kind.scan is not None:
            def counting(rule, block, accounts=(), _real=kind.scan):
                calls.append(rule.id)
                return _real(rule, block, accounts)
            monkeypatch.setitem(KINDS, name, dataclasses.replace(kind, scan=counting))
    ruleset = load_rules([Path(__file__).resolve().parents[2] / "rules" / "examples" / "default.toml"])
    rules = list(ruleset.rules)
    book = generate_book(n_accounts=30, days=DAYS + 30, end=END, seed=4, gaps=2)
    blocks, accounts = _blocks(book, rules), {a.id: a for a in book.accounts}
    kw = dict(inhibits=ruleset.inhibits, calendar=ruleset.calendar, quiet_first_run=True)
    steps = replay(rules, blocks, accounts, END - 40 * DAY, END, **kw)
    first = next(steps)
    assert calls == [] and any(t.reason == "first evaluation" for t in first.transitions)
    got = [(first.at, _transitions(first.transitions))] + [(s.at, _transitions(s.transitions)) for s in steps]
    scanned = [r.id for r in rules if KINDS[r.kind].scan is not None]
    assert sorted(calls) == sorted(scanned) and len(scanned) >= 5
    want = [(at, _transitions(ts)) for at, ts, *_ in stepwise_replay(rules, blocks, accounts, END - 40 * DAY, END, **kw)]
    assert got == want and sum(len(ts) for _, ts in got) > 20


def test_a_kind_that_reports_moved_has_no_scan():
    """Cohort settling uses the movers' share test only when every part of a rule's tally reports
    `moved` (rules.engine.settle_cohorts); a replay tallies the rows its scan leaves out without it.
    So a kind whose detector reports `moved` must have no scan, or the backtest would settle its
    cohorts by the other test than the scheduler."""
    rng = np.random.default_rng(7)
    rules = list(load_rules_text(_rules_text(rng)).rules)
    book = generate_book(n_accounts=20, days=DAYS, end=END, seed=7)
    accounts = {a.id: a for a in book.accounts}
    reporting = set()
    for rule in rules:
        block = book.block(rule.metric)
        if rule.bucket != block.step:
            continue
        if detect(rule, block, tuple(facts_for(block.account_ids, accounts))).moved is not None:
            reporting.add(rule.kind)
    assert "anomaly" in reporting, "add an anomaly rule to _rules_text"
    assert {k for k in reporting if KINDS[k].scan is not None} == set()

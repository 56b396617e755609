"""The engine's array paths against their definitions: decided pairs held as masks over a block's rows
(rules.engine.DecidedByRule), on random blocks (NaN gaps, zero and negative values, accounts without
facts, segments); each check fails when the array path diverges from the plain-Python definition."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rules.engine import DecidedByRule, evaluate
from rules.loader import load_rules_text
from rules.model import DAY, AccountFacts, MetricBlock

START = 1_790_000_000 - 1_790_000_000 % DAY

RULES = """
[[rule]]
id = "spike"
kind = "spike"
metric = "api_calls"
bucket = "1d"
[rule.baseline]
window = "7d"
min_points = 3
[rule.threshold]
ratio = 1.5

[[rule]]
id = "drop-pro"
kind = "drop"
metric = "api_calls"
bucket = "1d"
[rule.baseline]
window = "7d"
min_points = 3
[rule.threshold]
ratio = 0.7
[rule.segment]
plans = ["pro"]
"""


def _book(seed: int, n: int = 60, days: int = 20) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 50.0, size=(n, days))
    values[rng.random((n, days)) < 0.15] = np.nan  # gaps
    values[rng.random((n, days)) < 0.05] = 0.0
    values[rng.random((n, days)) < 0.02] = -3.0  # corrections
    values[rng.integers(0, n), -1] = np.inf  # contained, undecided
    ids = [f"acct{i:03d}" for i in range(n)]
    accounts = {a: AccountFacts(a, a, plan=str(rng.choice(["pro", "free"]))) for a in ids[: n - 5]}  # 5 without facts
    return {("api_calls", DAY): MetricBlock("api_calls", START, DAY, ids, values)}, accounts


def _definition(rules, blocks, accounts, now) -> set[tuple[str, str]]:
    """The decided pairs rule by rule, one rule per evaluation, as plain tuples."""
    out: set[tuple[str, str]] = set()
    for rule in rules:
        res = evaluate([rule], blocks, accounts, now, only_due=False)
        ids = blocks[(rule.metric, rule.bucket)].account_ids
        out |= {(rule.id, a) for a in ids if (rule.id, a) in res.decided}
    return out


@pytest.mark.parametrize("seed", range(6))
def test_decided_masks_are_the_pairs_the_detectors_decided(seed: int) -> None:
    rules = load_rules_text(RULES).rules
    blocks, accounts = _book(seed)
    now = START + 20 * DAY
    got = evaluate(rules, blocks, accounts, now, only_due=False).decided
    assert isinstance(got, DecidedByRule)
    pairs = set(got)
    assert len(got) == len(pairs)
    assert pairs == _definition(rules, blocks, accounts, now)
    assert got == pairs and pairs == got  # Set equality both ways
    ids = blocks[("api_calls", DAY)].account_ids
    for rule in rules:
        for a in ids + ["nobody"]:
            assert ((rule.id, a) in got) == ((rule.id, a) in pairs)
        assert got.rule_accounts(rule.id) == {a for r, a in pairs if r == rule.id}
    assert ("spike",) not in got and ("other-rule", ids[0]) not in got
    assert got.accounts() == {a for _, a in pairs}
    # pro-only rule: nobody outside the segment is decided, the 5 accounts without facts neither
    assert not {a for r, a in pairs if r == "drop-pro"} - {a for a, f in accounts.items() if f.plan == "pro"}


def test_decided_set_operations_give_sets_and_discard_leaves_accounts_undecided() -> None:
    d = DecidedByRule()
    ids = ["a", "b", "c"]
    mask = np.array([True, False, True])
    d.add("r1", ids, mask)
    d.add("r2", ["c", "d"], np.array([True, True]))
    merged: set[tuple[str, str]] = {("r0", "z")}
    merged |= d  # what the scheduler does with chunks of accounts
    assert merged == {("r0", "z"), ("r1", "a"), ("r1", "c"), ("r2", "c"), ("r2", "d")}
    assert type(d | {("r9", "q")}) is set and (d & {("r1", "a"), ("r1", "b")}) == {("r1", "a")}
    d.discard_accounts("r1", {"a"})
    assert set(d) == {("r1", "c"), ("r2", "c"), ("r2", "d")} and len(d) == 3
    assert mask.tolist() == [True, False, True]  # the detector's array is not changed
    d.add("r2", ["e"], np.array([True]))  # a second part for one rule
    assert ("r2", "e") in d and ("r2", "c") in d and len(d) == 4


def _settle_by_definition(parts, cohort) -> tuple[list[tuple[str, int, int, tuple[str, ...]]], set[str]]:
    """Cohort events as rules.model.Cohort defines them, account by account: per cohort, the accounts
    newly meeting the condition (each finding once) against the decided accounts without an open
    episode; an event mutes every account of its cohort. parts: (ids, plans, decided, open ids, new ids)."""
    hits: dict[str, list[str]] = {}
    eligible: dict[str, int] = {}
    members: dict[str, list[str]] = {}
    for ids, plans, decided, open_ids, new in parts:
        group = {a: (f"plan {p or '(none)'}" if cohort.by == "plan" else "all accounts") for a, p in zip(ids, plans, strict=True)}
        for a in new:
            hits.setdefault(group[a], []).append(a)
        for a, d in zip(ids, decided, strict=True):
            eligible[group[a]] = eligible.get(group[a], 0) + int(bool(d) and a not in open_ids)
            members.setdefault(group[a], []).append(a)
    events, muted = [], set()
    for g, got in hits.items():
        if len(got) >= cohort.min_accounts and len(got) >= cohort.share * eligible[g]:
            events.append((g, len(got), eligible[g], tuple(sorted(got)[:5])))
            muted |= set(members[g])
    return events, muted


EVENTS: list[int] = []


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("by", ["segment", "plan"])
def test_cohort_settling_with_arrays_is_the_definition(seed: int, by: str) -> None:
    from rules.engine import CohortTally, EvaluationResult, settle_cohorts
    from rules.model import Cohort

    rng = np.random.default_rng(seed)
    rule = load_rules_text(RULES).rules[0]
    cohort = Cohort(share=float(rng.choice([0.1, 0.3, 0.5])), min_accounts=int(rng.integers(1, 6)), by=by)
    rule = dataclasses.replace(rule, cohort=cohort)
    tallies, parts = [], []
    for p in range(int(rng.integers(1, 4))):  # blocks of accounts (chunks, a replay's rows not run)
        n = int(rng.integers(0, 30))
        ids = [f"p{p}a{i}" for i in range(n)]
        plans = [rng.choice(["pro", "free", None]) for _ in ids]
        decided = rng.random(n) < 0.8
        opened = rng.random(n) < 0.2 if rng.random() < 0.5 else None
        new_rows = np.flatnonzero(decided & ~(opened if opened is not None else np.zeros(n, bool))
                                  & (rng.random(n) < rng.random()))
        new_rows = np.concatenate([new_rows, new_rows[:1]]) if rng.random() < 0.2 else new_rows  # two findings
        rng.shuffle(new_rows)
        facts = tuple(AccountFacts(a, a, plan=pl) for a, pl in zip(ids, plans, strict=True))
        tallies.append(CohortTally(rule, START, ids, facts, decided, opened, new_rows.astype(np.intp)))
        open_ids = {a for a, o in zip(ids, opened if opened is not None else [False] * n, strict=True) if o}
        parts.append((ids, plans, decided, open_ids, [ids[i] for i in new_rows]))
    out = EvaluationResult()
    out.decided = DecidedByRule()  # type: ignore[assignment]
    for t in tallies:
        out.decided.add(rule.id, t.ids, t.decided)  # type: ignore[attr-defined]
    before = set(out.decided)
    settle_cohorts(tallies, out)
    events, muted = _settle_by_definition(parts, cohort)
    EVENTS.append(len(events))
    assert [(e.cohort, e.accounts, e.decided, e.examples) for e in out.cohort_events] == events
    assert set(out.decided) == {(r, a) for r, a in before if a not in muted}
    assert set(out.interrupted) == {(rule.id, a) for a in muted}


def test_the_random_tallies_make_events_and_not() -> None:
    """The random cases above cover both outcomes (so the equality is not only of empty lists)."""
    if len(EVENTS) < 80:  # run alone (-k, another order, xdist): the cases are run here
        EVENTS.clear()
        for by in ("segment", "plan"):
            for seed in range(40):
                test_cohort_settling_with_arrays_is_the_definition(seed, by)
    assert sum(1 for n in EVENTS if n) >= 10 and sum(1 for n in EVENTS if not n) >= 10


def _random_facts(rng: np.random.Generator, n: int) -> tuple[AccountFacts, ...]:
    zones = ["UTC", "America/New_York", "Asia/Tokyo"][: int(rng.integers(1, 4))]
    out = []
    for i in range(n):
        quotas: dict = {}
        r = rng.random()
        if r < 0.6:
            quotas["api_calls"] = float(rng.choice([0.0, -5.0, 100.0, 1e6, rng.gamma(2, 500)]))
        elif r < 0.7:
            quotas["api_calls"] = int(rng.integers(1, 1000))  # an int from a hand-written book
        elif r < 0.8:
            quotas["api_calls"] = None
        if rng.random() < 0.5:
            quotas["events"] = 10.0
        out.append(AccountFacts(f"a{i}", f"a{i}", quotas=quotas, billing_day=int(rng.integers(1, 29)) if rng.random() < 0.7
                                else 1, timezone=str(rng.choice(zones))))
    return tuple(out)


@pytest.mark.parametrize("seed", range(12))
def test_billing_groups_and_quota_arrays_as_columns_are_the_row_by_row_definition(seed: int) -> None:
    from rules.detectors.quota import account_groups, quota_array
    from rules.model import PickedFacts

    rng = np.random.default_rng(seed)
    facts = _random_facts(rng, int(rng.integers(0, 200)))
    groups: dict[tuple[int, str], list[int]] = {}  # the definition: first-seen order, rows ascending
    for i, f in enumerate(facts):
        groups.setdefault((f.billing_day, f.timezone), []).append(i)
    got = account_groups(facts)
    assert [(d, tz, rows.tolist()) for d, tz, rows in got] == [(d, tz, rows) for (d, tz), rows in groups.items()]
    assert all(rows.dtype == np.intp and not rows.flags.writeable for _, _, rows in got)
    for metric in ("api_calls", "events", "nothing"):
        want = [np.nan if f.quotas.get(metric) is None else float(f.quotas[metric]) for f in facts]
        np.testing.assert_array_equal(quota_array(facts, metric), np.array(want, dtype=float))
    idx = np.flatnonzero(rng.random(len(facts)) < 0.4)
    picked = PickedFacts(facts, idx)
    sub: dict[tuple[int, str], list[int]] = {}
    for i, f in enumerate(picked):
        sub.setdefault((f.billing_day, f.timezone), []).append(i)
    assert [(d, tz, rows.tolist()) for d, tz, rows in account_groups(picked)] == \
        [(d, tz, rows) for (d, tz), rows in sub.items()]


@pytest.mark.parametrize("seed", range(10))
def test_first_non_finite_column_is_the_isinf_definition(seed: int) -> None:
    from rules.engine import Reuse

    rng = np.random.default_rng(seed)
    n, days = int(rng.integers(0, 40)), int(rng.integers(0, 15))
    values = rng.normal(0, 100, size=(n, days))
    values[rng.random((n, days)) < 0.3] = np.nan
    if seed % 3 == 0:
        values[rng.random((n, days)) < 0.05] = np.inf
    if seed % 3 == 1:
        values[rng.random((n, days)) < 0.05] = -np.inf
    if seed == 5 and n:
        values[:] = np.nan  # nothing observed at all
    block = MetricBlock("api_calls", START, DAY, [f"a{i}" for i in range(n)], values)
    got = Reuse().first_inf(("api_calls", DAY), block)
    want = [next((j for j in range(days) if np.isinf(values[i, j])), days) for i in range(n)]
    assert got.tolist() == want


@pytest.mark.parametrize("shape", [(2, 0), (0, 0), (0, 3)])
def test_a_block_without_buckets_or_rows_is_evaluated_without_findings(shape: tuple[int, int]) -> None:
    """A block of rows and no buckets (storage.usage fills ids with an (n, 0) block) or of no rows: no
    finding, nothing decided, no error (the +-inf check once argmaxed an empty row)."""
    from rules.engine import Reuse

    ids = [f"a{i}" for i in range(shape[0])]
    block = MetricBlock("api_calls", START, DAY, ids, np.zeros(shape))
    assert Reuse().first_inf(("api_calls", DAY), block).tolist() == [shape[1]] * shape[0]
    out = evaluate(load_rules_text(RULES).rules, {("api_calls", DAY): block}, {a: AccountFacts(a, a) for a in ids},
                   START + shape[1] * DAY, only_due=False)
    assert out.findings == [] and set(out.decided) == set()


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("mode", ["forecast", "threshold"])
def test_quota_scan_keeps_every_row_the_quota_detector_finds(seed: int, mode: str) -> None:
    """rules.detectors.quota._period_candidates against the detector run at every bucket close, on random
    blocks (gaps, zeros, tiny and huge values) and facts (billing days, timezones, None/int quotas), random
    forecast / threshold parameters; and it narrows (fewer candidates than the earlier bounds)."""
    from rules.detectors import detect
    from rules.kinds import KINDS

    rng = np.random.default_rng(300 + seed)
    window, elapsed, observed = (int(rng.integers(1, 8)), int(rng.integers(0, 10)), int(rng.integers(0, 8)))
    if mode == "forecast":
        threshold = (f'mode = "forecast"\nfraction = {float(rng.choice([0.5, 0.8, 1.0, 1.2]))}\n'
                     f'forecast_window = "{window}d"\nmin_elapsed = "{elapsed}d"\nmin_observed = "{observed}d"')
    else:
        fractions = sorted(set(rng.choice([0.5, 0.8, 1.0, 1.5], size=int(rng.integers(1, 4))).tolist()))
        threshold = f'mode = "threshold"\nfractions = {fractions}'
    rule = load_rules_text(f"""
[[rule]]
id = "fc"
kind = "quota"
metric = "api_calls"
bucket = "1d"
[rule.threshold]
{threshold}
""").rules[0]
    n, days = int(rng.integers(20, 60)), int(rng.integers(35, 80))
    facts = _random_facts(rng, n)
    values = rng.gamma(1.5, 40.0, size=(n, days)) * rng.choice([1e-6, 1.0, 1e9], size=(n, 1))
    values[rng.random((n, days)) < 0.2] = np.nan
    values[rng.random((n, days)) < 0.1] = 0.0
    block = MetricBlock("api_calls", START + int(rng.integers(0, 30)) * DAY, DAY, [f.id for f in facts], values)
    cand = KINDS["quota"].scan(rule, block, facts)
    found = 0
    for j in range(1, days + 1):
        rows = {block.account_ids.index(f.account_id) for f in detect(rule, block.truncated(j), facts).findings}
        assert not [i for i in rows if not cand[i, j]], f"column {j}: a {mode} row is not a candidate"
        found += len(rows)
    # the earlier bounds: the longest period's sum (plus the largest recent bucket for the longest period)
    from rules.detectors.quota import MAX_PERIOD, account_groups, quota_array
    from rules.detectors.scan import at_least, trailing_max, trailing_sum

    total, slack = trailing_sum(values, MAX_PERIOD // DAY + 2)
    q = np.asarray(quota_array(facts, "api_calls"))[:, None]
    with np.errstate(invalid="ignore"):
        if mode == "forecast":
            most = total + slack + np.maximum(trailing_max(values, window), 0.0) * (MAX_PERIOD / DAY)
            earlier = (q > 0) & at_least(most, rule.params.fraction * q)
        else:
            earlier = (q > 0) & at_least(total + slack, min(rule.params.fractions) * q)
    rest = np.ones(n, dtype=bool)
    rest[[int(rows[0]) for _, _, rows in account_groups(facts)]] = False  # always candidates (scan_quota)
    FOUND.append((mode, found, float(cand[rest, 1:].sum()), float(earlier[rest, 1:].sum())))


FOUND: list[tuple[str, int, float, float]] = []  # (mode, findings, candidates, the earlier bound's)


@pytest.mark.parametrize("mode", ["forecast", "threshold"])
def test_the_random_quota_books_fire_and_the_scan_narrows(mode: str) -> None:
    cases = [c for c in FOUND if c[0] == mode]
    if len(cases) < 16:  # run alone (-k, another order, xdist): the cases are run here
        FOUND[:] = [c for c in FOUND if c[0] != mode]
        for seed in range(16):
            test_quota_scan_keeps_every_row_the_quota_detector_finds(seed, mode)
        cases = [c for c in FOUND if c[0] == mode]
    assert sum(c[1] for c in cases) > 50  # the superset is checked on books that fire
    assert sum(c[2] for c in cases) < 0.8 * sum(c[3] for c in cases)  # and narrows


def _settled_moves(tallies):
    from rules.engine import EvaluationResult, settle_cohorts

    out = EvaluationResult()
    out.decided = DecidedByRule()  # type: ignore[assignment]
    for t in tallies:
        out.decided.add(t.rule.id, t.ids, t.decided)  # type: ignore[attr-defined]
    settle_cohorts(tallies, out)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_the_share_test_is_the_same_over_any_split_of_the_book(seed: int) -> None:
    """A detector reporting `moved` (the anomaly kind) gets the share test: per cohort and direction,
    the accounts that could newly fire and moved that way, against those that could; settled over a
    book split in blocks of accounts (the service's chunks) it finds the events of the whole book, and
    an event mutes exactly the accounts of its cohort that moved its way."""
    from rules.engine import CohortTally
    from rules.model import Cohort

    rng = np.random.default_rng(seed)
    cohort = Cohort(share=float(rng.choice([0.2, 0.4])), min_accounts=int(rng.integers(1, 6)),
                    by=str(rng.choice(["segment", "plan"])))
    rule = dataclasses.replace(load_rules_text(RULES).rules[0], cohort=cohort)
    n = int(rng.integers(5, 60))
    ids = [f"a{i}" for i in range(n)]
    facts = tuple(AccountFacts(a, a, plan=str(rng.choice(["pro", "free"]))) for a in ids)
    decided = rng.random(n) < 0.9
    opened = rng.random(n) < 0.15
    moved = np.where(decided, rng.choice([-1, 0, 1], n, p=[0.45, 0.3, 0.25]), 0).astype(np.int8)
    new = np.flatnonzero(decided & ~opened & (moved != 0) & (rng.random(n) < 0.4)).astype(np.intp)
    whole = _settled_moves([CohortTally(rule, START, ids, facts, decided, opened, new, moved)])
    cut = sorted(rng.choice(np.arange(1, n), size=min(2, n - 1), replace=False).tolist())
    parts = []
    for lo, hi in zip([0, *cut], [*cut, n], strict=True):
        sub = np.arange(lo, hi)
        parts.append(CohortTally(rule, START, ids[lo:hi], facts[lo:hi], decided[lo:hi], opened[lo:hi],
                                 (new[(new >= lo) & (new < hi)] - lo).astype(np.intp), moved[sub]))
    split = _settled_moves(parts)
    assert [(e.cohort, e.accounts, e.decided) for e in split.cohort_events] == \
        [(e.cohort, e.accounts, e.decided) for e in whole.cohort_events]
    assert set(split.decided) == set(whole.decided) and set(split.interrupted) == set(whole.interrupted)
    for e in whole.cohort_events:  # by the definition
        way = -1 if any(moved[int(a[1:])] < 0 for a in e.examples) else 1
        group = [i for i in range(n) if cohort.by == "segment" or f"plan {facts[i].plan}" == e.cohort]
        could = [i for i in group if decided[i] and not opened[i]]
        assert e.accounts == sum(moved[i] == way for i in could) and e.decided == len(could)
        assert e.accounts >= cohort.min_accounts and e.accounts >= cohort.share * len(could)
        assert {(rule.id, f"a{i}") for i in group if moved[i] == way} <= set(whole.interrupted)
    muted = {a for _, a in whole.interrupted}
    assert all(moved[int(a[1:])] != 0 for a in muted)  # only accounts that moved are held


def test_the_share_test_counts_each_direction_on_its_own() -> None:
    """4 of 10 falling is an event (30%); 3 rising and 2 falling is one event, the rise; 2 and 2 is none
    (together they would be 40%: opposite moves are not one cohort)."""
    from rules.engine import CohortTally
    from rules.model import Cohort

    rule = dataclasses.replace(load_rules_text(RULES).rules[0], cohort=Cohort(share=0.3, min_accounts=3))
    ids = [f"a{i}" for i in range(10)]
    facts = tuple(AccountFacts(a, a) for a in ids)
    decided = np.ones(10, dtype=bool)
    ways = []
    for moved in ([-1] * 4 + [0] * 6, [1] * 3 + [-1] * 2 + [0] * 5, [1] * 2 + [-1] * 2 + [0] * 6):
        m = np.array(moved, dtype=np.int8)
        out = _settled_moves([CohortTally(rule, START, ids, facts, decided, None, np.array([0], dtype=np.intp), m)])
        ways.append([(e.accounts, e.decided, e.examples) for e in out.cohort_events])
    assert ways == [[(4, 10, ("a0",))], [(3, 10, ("a0",))], []]

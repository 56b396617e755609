"""Columnar findings (rules.model.FindingRows, issue 15 item 3): detectors hand their findings as arrays,
and a Finding with its message is built only where read. What the engine does with them (containment
of numbers that are not finite, [pricing] renewal severities, the order of `findings`) equals what it
does with Finding objects."""

from __future__ import annotations

import warnings

import numpy as np

from rules.detectors.quota import QuotaParams
from rules.engine import evaluate
from rules.impact import Pricing
from rules.model import (
    DAY,
    AccountFacts,
    Finding,
    FindingRows,
    LazyExplanation,
    MetricBlock,
    Rule,
    materialise,
)

START = 1_793_491_200  # 2026-11-01T00:00Z: a billing period's first day
RULE = Rule("levels", "quota", "api_calls", DAY, QuotaParams(fractions=(0.5, 0.8)), rule_hash="q1")


def _book(values: list[list[float]], renewal: dict[str, int] | None = None
          ) -> tuple[dict, dict[str, AccountFacts], int]:
    ids = [f"a{i}" for i in range(len(values))]
    block = MetricBlock("api_calls", START, DAY, ids, np.asarray(values, dtype=np.float64))
    accounts = {a: AccountFacts(a, a, quotas={"api_calls": 100.0}, renewal_at=(renewal or {}).get(a))
                for a in ids}
    return {("api_calls", DAY): block}, accounts, block.end


def test_quota_findings_are_columnar_and_materialise_in_order() -> None:
    blocks, accounts, at = _book([[30, 30, 30], [10, 10, 10], [40, 30, 20]])
    out = evaluate([RULE], blocks, accounts, at, only_due=False)
    assert out.found and all(isinstance(x, FindingRows) for x in out.found)
    rows, columnar = out.found[0], list(out.found)
    findings = out.findings  # materialised in place: out.found now holds Finding objects
    assert [(f.account_id, f.discriminator) for f in findings] == [
        ("a0", "2026-11-01:0.5"), ("a2", "2026-11-01:0.5"), ("a0", "2026-11-01:0.8"), ("a2", "2026-11-01:0.8")]
    assert findings == materialise(columnar) and all(isinstance(f, Finding) for f in findings)
    assert out.found is findings and out.findings is findings
    assert rows.keys() == [f.key for f in findings[:2]] and rows[0] is rows[0]  # built once
    assert findings[0].value == 90.0 and findings[0].threshold == 50.0 and "90% of the monthly quota" in findings[0].message


def test_a_row_whose_sum_overflows_is_contained_to_its_account() -> None:
    # finite buckets whose period sum is +inf: that account is left undecided, the others evaluated
    blocks, accounts, at = _book([[30, 30, 30], [1e308, 1e308, 1.0], [60, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # contained, not a RuntimeWarning in the service's log
        out = evaluate([RULE], blocks, accounts, at, only_due=False)
    assert {f.account_id for f in out.findings} == {"a0", "a2"}
    assert [(r, a) for r, a, _ in out.contained] == [("levels", "a1")]
    assert "overflowed" in out.contained[0][2]
    assert ("levels", "a1") not in out.decided and ("levels", "a0") in out.decided


def test_renewal_raises_the_severity_of_columnar_rows_per_account() -> None:
    blocks, accounts, at = _book([[30, 30, 30], [40, 30, 20]], renewal={"a1": START + 20 * DAY})
    out = evaluate([RULE], blocks, accounts, at, only_due=False, pricing=Pricing(renewal_within=60 * DAY))
    rows = out.found[0]
    sev = {(f.account_id, f.discriminator): f.severity for f in out.findings}
    assert sev[("a0", "2026-11-01:0.5")] == RULE.severity and sev[("a1", "2026-11-01:0.5")] != RULE.severity
    assert [rows.severity_of(k) for k in range(len(rows))] == [sev[rows.key(k)[1], rows.key(k)[3]]
                                                                 for k in range(len(rows))]


def test_rows_subset_and_lazy_explanation_build_nothing_until_read() -> None:
    built: list[int] = []

    def build(k: int) -> Finding:
        built.append(k)
        return Finding("r", "acct", "m", "quota", "warning", 10, 5, float(k), 2.0 * k, None, 0, 10,
                       message=f"m{k}", discriminator=f"d{k}")

    rows = FindingRows("r", "m", "warning", 10, ["x", "acct", "y"], np.array([1, 1, 1]), [f"d{k}" for k in range(3)],
                       build, (np.array([0.0, np.inf, 2.0]),), np.array([0.0, 2.0, 4.0]))
    assert rows.finite().tolist() == [True, False, True]
    kept = rows.subset(rows.finite())
    assert kept.keys() == [("r", "acct", "m", "d0"), ("r", "acct", "m", "d2")] and built == []
    lazy = LazyExplanation(kept, 1)
    assert lazy["baseline"] == 4.0 and built == []  # read at every replay step: no Finding for it
    assert lazy["message"] == "m2" and built == [2] and kept[1] is rows[2]


def test_renewal_raise_of_columnar_rows_equals_renewal_severity_at_the_window_edges() -> None:
    """engine._renewal_raised reads a map of renewal dates per row: the same severity as
    rules.impact.renewal_severity of each finding's account (renewing at `at`, at the window's last
    second, one second outside it, before `at`, never), for every rule severity."""
    from rules.impact import renewal_severity

    within = 30 * DAY
    values = [[60, 30, 30]] * 6
    blocks, accounts, at = _book(values)
    edges = [at, at + within, at + within + 1, at - 1, None, at + 5 * DAY]
    accounts = {a: AccountFacts(a, a, quotas={"api_calls": 100.0}, renewal_at=edges[i])
                for i, a in enumerate(accounts)}
    pricing = Pricing(renewal_within=within)
    for severity in ("info", "warning", "critical"):
        rule = Rule("levels", "quota", "api_calls", DAY, QuotaParams(fractions=(0.5, 0.8)), rule_hash="q1",
                    severity=severity)
        got = evaluate([rule], blocks, accounts, at, only_due=False, pricing=pricing).findings
        assert len(got) == 2 * len(values)
        assert [f.severity for f in got] == [renewal_severity(severity, accounts[f.account_id], pricing, at)
                                             for f in got]
        assert any(f.severity != severity for f in got) == (severity != "critical")


def test_picked_is_the_items_at_the_indices_in_order() -> None:
    """rules.model.picked: [seq[i] for i in idx] for every length of idx (one itemgetter returns a
    bare item for one index and is not called for none)."""
    import numpy as np

    from rules.model import picked

    seq = [f"a{i}" for i in range(10)]
    for idx in ([], [3], [0, 9], [9, 0, 4, 4], list(range(10))):
        got = picked(seq, np.asarray(idx, dtype=np.intp))
        assert got == [seq[i] for i in idx] and type(got) is list
    assert picked(("x", "y", "z"), np.flatnonzero(np.array([True, False, True]))) == ["x", "z"]

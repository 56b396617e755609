"""Precision/recall of the shipped rules on labelled synthetic books (regression floor).

The figures themselves are reported by `python -m bench.quality` and recorded in
docs/benchmarks.md; this test keeps the shipped rules from silently getting worse.
"""

from __future__ import annotations

from bench.quality import SHIPPED, measure
from rules.loader import load_rules


def test_shipped_rules_find_labelled_anomalies_without_noise():
    scores, exact = measure(load_rules([SHIPPED]), seeds=(1, 2, 3), n_accounts=200, days=120)
    for kind in ("spike", "drop", "inactivity", "expansion"):
        s = scores[kind]
        assert s.labels >= 10, kind
        assert s.recall >= 0.85, (kind, s.recall, s.missed[:3])
        # an alert is at least about a real labelled anomaly of that account and metric
        assert s.explained_precision >= 0.8, (kind, s.explained_precision, s.false_alerts[:3])
    assert scores["inactivity"].precision == 1.0
    assert exact["api-calls-quota"] > 0 and exact["api-calls-quota-forecast"] > 0


def test_quality_cli_prints_table(capsys):
    from bench.quality import main

    assert main(["--seeds", "5", "--accounts", "60"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:3] == ["kind", "alerts", "true"]
    assert any(line.startswith("inactivity") for line in out.splitlines())

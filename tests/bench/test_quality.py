"""How true the shipped rules are on labelled books (bench/quality.py), as a floor that cannot slip.

Every run draws fresh seeds (printed on failure, to reproduce with `python -m bench.quality --seeds
... --show-errors`): the shipped rules are held to the targets on books they were never tuned on.
The figures themselves are reported by `python -m bench.quality` in docs/benchmarks.md.
"""

from __future__ import annotations

import secrets

from bench.quality import SHIPPED, measure
from rules.loader import load_rules


def test_shipped_rules_are_true_on_fresh_labelled_books() -> None:
    seeds = [secrets.randbelow(2**31) for _ in range(3)]
    again = f"python -m bench.quality --seeds {' '.join(map(str, seeds))} --show-errors"
    scores, volume = measure(load_rules([SHIPPED]), seeds, n_accounts=300, days=200, holidays=2, gaps=1)
    for kind in ("spike", "drop", "inactivity", "expansion"):
        s = scores[kind]
        assert s.labels >= 10, (kind, again)
        # never "resolved" while the labelled condition persists, never fired again for it
        assert s.false_recoveries == 0, (kind, s.false_recovery_cases[:3], again)
        assert s.flaps == 0, (kind, s.flap_cases[:3], again)
    found = sum(scores[k].found for k in ("spike", "drop", "inactivity"))
    labels = sum(scores[k].labels for k in ("spike", "drop", "inactivity"))
    assert found / labels >= 0.95, (found, labels, again)
    for kind in ("spike", "drop", "inactivity"):
        s = scores[kind]
        assert s.recall >= 0.9, (kind, s.recall, s.missed[:3], again)
        # an alert is about a real labelled anomaly of that account and metric
        assert s.explained_precision >= 0.85, (kind, s.explained_precision, s.false_alerts[:3], again)
    assert scores["inactivity"].precision == 1.0, again
    assert scores["expansion"].recall >= 0.5, (scores["expansion"].missed[:3], again)  # 53-93% over 45 fresh books
    # holidays: held as cohort events, no account alert about them; the first cycle pages nobody
    assert volume.cohort_events > 0 and volume.cohort_alerts == 0, (volume.cohort_cases[:3], again)
    assert volume.first_cycle_notifications == 0 and volume.first_run_held > 0, again
    assert volume.forecasts > 0 and volume.forecast_resolved_then_reached == 0, again


def test_quality_cli_prints_table(capsys) -> None:
    from bench.quality import main

    assert main(["--seeds", "5", "--accounts", "60", "--days", "120"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:3] == ["kind", "alerts", "true"]
    assert any(line.startswith("inactivity") for line in out.splitlines())
    assert "per account-month" in out and "cohort events" in out


def test_the_anomaly_preset_beside_spike_and_drop() -> None:
    """The anomaly row counts what it should on a book: each alert true, a holiday alarm or a false
    alarm; spike labels are found; the spike and drop rows are the shipped rules' own figures."""
    from bench.quality import Comparison, anomaly_ruleset, anomaly_vs_spike_drop, score_anomaly_book
    from integrations.sources.demo import generate_book

    book = generate_book(n_accounts=60, days=120, seed=5, holidays=2, gaps=1)
    assert [(r.id, r.kind, r.metric, r.bucket) for r in anomaly_ruleset(["a", "b"]).rules] == [
        ("a-anomaly", "anomaly", "a", 86_400), ("b-anomaly", "anomaly", "b", 86_400)]
    got = Comparison()
    score_anomaly_book(book, got)
    row = got.row()
    assert row["alerts"] >= row["false_alarms"] + row["holiday_alarms"] and row["labels"]["spike"] > 0
    assert row["recall"]["spike"] > 0.5 and got.account_months == 60 * (120 - 35) / 30
    scores, volume = measure(load_rules([SHIPPED]), [5], n_accounts=60, days=120, holidays=2, gaps=1)
    rows = anomaly_vs_spike_drop(scores, volume, [5], 60, 120, 2, 1)
    assert rows["anomaly"] == row and rows["spike"]["recall"] == {"spike": scores["spike"].recall}
    assert rows["drop"]["false_alarms"] == len(scores["drop"].false_alerts)

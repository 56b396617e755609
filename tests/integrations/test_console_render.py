"""The console notifier prints alerts as Slack would show them (what the demo and `evaluate` print)."""

from __future__ import annotations

import io

from integrations.console import ConsoleNotifier


def _alert(**kw):
    base = {"event": "fired", "at": "2026-11-02T00:00:00Z", "rule": "api-calls-utilization", "kind": "expansion",
            "account": "acme", "account_name": "Acme", "owner_email": "ae@x.io", "plan": "growth", "crm_id": "",
            "metric": "api_calls", "severity": "info", "value": 13_100.0, "baseline": None, "threshold": 9_000.0,
            "message": "api_calls used at least 90% of the monthly quota", "discriminator": "", "notified": True,
            "suppressed_reason": "", "started_at": "2026-11-02T00:00:00Z", "fired_at": "2026-11-02T00:00:00Z",
            "rule_hash": "", "description": "", "routing": {"owner": True, "channels": []}, "template": None,
            "details": {"quota": 10_000.0, "utilization": 1.31, "target": 0.9}, "recent": [1.0, 2.0]}
    return base | kw


def test_the_quota_bar_shows_the_actual_use_not_the_rule_threshold():
    """Seen: the utilization alert's quota bar showed the rule threshold (90%) instead of the use (131%)."""
    out = io.StringIO()
    ConsoleNotifier(out=out).deliver(_alert())
    (bar,) = [line for line in out.getvalue().splitlines() if line.strip().startswith("Quota:")]
    assert bar.endswith("131% of 10,000")


def test_a_quiet_close_prints_nothing():
    out = io.StringIO()
    ConsoleNotifier(out=out).deliver(_alert(event="resolved", quiet=True))
    assert out.getvalue() == ""


def test_the_numbers_beside_the_sentence_are_the_sentences_numbers():
    """Seen: a spike of 0.003 over a baseline of 0.001 printed "(latest 0, baseline 0, threshold 0)" under a
    sentence saying 0.003, 0.001 and 0.002; and a quota used 29% (2,900 of 10,000) printed "28%"."""
    out = io.StringIO()
    ConsoleNotifier(out=out).deliver(_alert(kind="spike", value=0.003, baseline=0.001, threshold=0.002,
                                            details={}, recent=[0.001, 0.003]))
    (line,) = [x for x in out.getvalue().splitlines() if "Last 2 buckets" in x]
    assert line.endswith("(latest 0.003, baseline 0.001, threshold 0.002)")
    out = io.StringIO()
    ConsoleNotifier(out=out).deliver(_alert(value=1e-4, details={"quota": 10_000.0, "utilization": 0.29},
                                            recent=[1.0, 1e-4]))
    text = out.getvalue()
    assert "(latest 1.0e-04, threshold 9,000)" in text and text.count("29% of 10,000") == 1 and "28%" not in text


def test_latest_is_the_last_bucket_of_the_sparkline():
    """Seen: a smoothed drop (the mean of two days, 25) printed "latest 25" beside a sparkline whose last day
    was 50, and a growth alert its two-day window sum as "latest"."""
    out = io.StringIO()
    ConsoleNotifier(out=out).deliver(_alert(kind="drop", value=25.0, baseline=50.0, threshold=25.0, details={},
                                            recent=[50.0, 0.0, 50.0]))
    (line,) = [x for x in out.getvalue().splitlines() if "Last 3 buckets" in x]
    assert line.endswith("(latest 50; the rule's value 25, baseline 50, threshold 25)")
    out = io.StringIO()
    ConsoleNotifier(out=out).deliver(_alert(kind="spike", value=50.0, baseline=10.0, threshold=20.0, details={},
                                            recent=[10.0, 50.0]))
    assert "(latest 50, baseline 10, threshold 20)" in out.getvalue()

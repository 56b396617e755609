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

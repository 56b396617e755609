"""Checking an admin's Slack and console templates before they are used: every template rendered
with a sample alert that has every field set (`usagebot slack check`, and the service's hot reload
before it takes a template change)."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError

from integrations.console import ConsoleNotifier
from integrations.slack.config import SlackConfig


def sample_alert() -> dict[str, Any]:
    """An alert record with every field set, for checking templates."""
    return {
        "event": "fired", "at": "2026-11-24T00:00:00Z", "rule": "api-calls-spike", "kind": "quota",
        "account": "acme", "account_name": "Acme Corp", "owner_email": "owner@example.com", "plan": "growth",
        "crm_id": "001000000000001", "metric": "api_calls", "severity": "warning", "value": 5230.0,
        "baseline": 1800.0, "threshold": 4500.0, "window": ["2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"],
        "message": "api_calls 5,230 is 2.9x the usual 1,800", "discriminator": "", "notified": True,
        "suppressed_reason": "", "started_at": "2026-11-24T00:00:00Z", "fired_at": "2026-11-24T00:00:00Z",
        "rule_hash": "0123456789ab", "description": "API calls spike", "routing": {"owner": True, "channels": []},
        "template": None, "details": {"quota": 100000.0, "utilization": 0.83, "projected_date": "2026-11-28"},
        "recent": [1700.0, 1800.0, None, 1900.0, 1750.0, 5230.0],
    }


def template_problems(cfg: SlackConfig) -> list[str]:
    """Render every Slack template with sample data; the problems found (file:line and why)."""
    from integrations.slack.render import EpisodeView, SlackRenderer

    r = SlackRenderer(cfg)
    a = sample_alert()
    view = EpisodeView(1, "firing", "fired", 1_795_478_400, acknowledged_by="U0000001", acknowledged_at=1_795_480_000)
    problems = r.check(["slack/alert.json.j2"], r.alert_context(a, view, "<@U0000001>", True))
    problems += r.check(["slack/followup.json.j2"], r.alert_context({**a, "event": "resolved"}, view, "", False))
    rows = [{"a": a, "icon": "🔔", "sev_icon": "🟠", "links": {"crm": None, "dashboard": None}}]
    opened = [{"account_name": "Acme", "rule": "r", "metric": "api_calls", "severity": "warning", "sev_icon": "🟠",
               "message": "m", "since": 1_795_478_400, "util_pct": 83, "arr_text": "130,000",
               "acknowledged": False}]
    problems += r.check(["slack/digest.json.j2"], {"owner_email": "owner@example.com", "items": rows,
                                                   "day": "2026-11-24", "max_items": 20, "open_alerts": opened,
                                                   "max_open": 10})
    alert_row = {"account_name": "Acme", "account": "acme", "rule": "r", "metric": "api_calls", "kind": "spike",
                 "severity": "warning", "sev_icon": "🟠", "message": "m", "since": "2026-11-24T00:00:00Z",
                 "acknowledged_by": None, "snoozed_until": None}
    problems += r.check(["slack/alerts.json.j2"], {"title": "Open alerts", "note": "", "alerts": [alert_row],
                                                   "more": 0, "command": cfg.command})
    problems += r.check(["slack/top.json.j2"], {
        "title": "Top", "note": "", "direction": "growing", "command": cfg.command,
        "rows": [{"name": "Acme", "id": "acme", "metric": "api_calls", "last30": 10.0, "prev30": 5.0, "change": 1.0}]})
    problems += r.check(["slack/account.json.j2"], {
        "acct": {"id": "acme", "name": "Acme", "plan": "growth", "owner_email": "o@example.com", "crm_id": "001"},
        "owner_mention": "", "period": {"label": "2026-11-01", "elapsed_pct": 50, "start": "", "end": ""},
        "metrics": [{"metric": "api_calls", "ptd": 10.0, "last_same": 8.0, "last_total": 20.0, "change": 0.25,
                     "quota": 100.0, "util_pct": 10, "bar": "▰▱", "trend": "Growing", "arrow": "↗", "spark": "▁█",
                     "days": 2}],
        "primary_metric": "api_calls", "health": {"score": 80, "band": "Healthy", "trend": "Growing", "factors": [
            {"name": "trend", "points": 35.0, "max": 35.0, "note": "n"}]},
        "alerts": [alert_row], "more_alerts": 0, "links": {"crm": None, "dashboard": None}})
    return problems


def template_check(slack_config: Any) -> list[str]:
    """Problems of the admin's Slack and console templates as they are on disk (rendered with sample data)."""
    problems = template_problems(slack_config)
    try:
        ConsoleNotifier(template_dir=slack_config.template_dir).render(sample_alert())
    except TemplateError as exc:
        where = getattr(exc, "filename", None) or getattr(exc, "name", None) or "console template"
        line = getattr(exc, "lineno", None)
        problems.append(f"{where}{f':{line}' if line else ''}: {type(exc).__name__}: {exc}")
    except Exception as exc:  # a filter failing on the sample data
        problems.append(f"console template: {type(exc).__name__}: {exc}")
    return problems

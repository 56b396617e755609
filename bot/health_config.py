"""The [health] table of the config file -> rules.health.HealthModel.

Every key is optional; a missing key keeps the default of HealthModel. Example:

    [health]
    primary_metric = "api_calls"
    window_days = 30
    [health.weights]        # must add up to 100
    trend = 35
    active_days = 25
    quota_use = 20
    open_alerts = 20
    [health.trend]
    full_ratio = 1.0        # last/previous ratio earning all trend points
    zero_ratio = 0.5        # ... and none
    growing = 1.1           # trend word thresholds
    declining = 0.9
    [health.quota]
    target = 0.5            # share of the pro-rated quota earning all quota points
    no_quota_share = 0.5
    [health.alerts]
    risk_kinds = ["drop", "inactivity"]
    penalty = { critical = 10, warning = 5, info = 1 }
    [health.bands]
    healthy = 70
    watch = 40
    [health.expansion]
    kinds = ["expansion"]
    quota_at = 1.0          # open quota episodes at >= this fraction of quota; false = never
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rules.config import Section, Table
from rules.health import DEFAULT_MODEL, FACTORS, HealthModel
from rules.kinds import KINDS
from rules.model import SEVERITIES

HEALTH = Table("health", ("primary_metric", "window_days"), (
    Table("weights", FACTORS), Table("trend", ("full_ratio", "zero_ratio", "growing", "declining")),
    Table("quota", ("target", "no_quota_share")), Table("alerts", ("risk_kinds",), (Table("penalty", SEVERITIES),)),
    Table("bands", ("healthy", "watch")), Table("expansion", ("kinds", "quota_at"))))


def _kinds(sec: Section, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    values = sec.str_list(key, default)
    bad = [k for k in values if k not in KINDS]
    if bad:
        sec.problem(key, f"unknown rule kind(s) {', '.join(bad)}; kinds are {', '.join(KINDS)}")
        return default
    return tuple(values)


def parse_health_model(section: Section) -> HealthModel:
    """Read [health]; problems (with file:line and field) are added to the section's document."""
    d = DEFAULT_MODEL
    section.check_keys(HEALTH)
    changes: dict[str, Any] = {}
    metric = section.str("primary_metric")
    if metric:
        changes["primary_metric"] = metric
    changes["window_days"] = section.int("window_days", d.window_days, min=1, max=365)

    weights = section.table("weights")
    weights.check_keys(HEALTH.table("weights"))
    changes["weights"] = {f: weights.float(f, d.weight(f), min=0.0, max=100.0) for f in FACTORS}

    trend = section.table("trend")
    trend.check_keys(HEALTH.table("trend"))
    changes["trend_full_ratio"] = trend.float("full_ratio", d.trend_full_ratio, min=0.0)
    changes["trend_zero_ratio"] = trend.float("zero_ratio", d.trend_zero_ratio, min=0.0)
    changes["growing_ratio"] = trend.float("growing", d.growing_ratio, min=0.0)
    changes["declining_ratio"] = trend.float("declining", d.declining_ratio, min=0.0)

    quota = section.table("quota")
    quota.check_keys(HEALTH.table("quota"))
    changes["quota_target"] = quota.float("target", d.quota_target, min=0.01, max=10.0)
    changes["no_quota_share"] = quota.float("no_quota_share", d.no_quota_share, min=0.0, max=1.0)

    alerts = section.table("alerts")
    alerts.check_keys(HEALTH.table("alerts"))
    changes["risk_kinds"] = _kinds(alerts, "risk_kinds", d.risk_kinds)
    penalty = alerts.table("penalty")
    penalty.check_keys(HEALTH.table("alerts").table("penalty"))
    changes["alert_penalty"] = {s: penalty.float(s, float(d.alert_penalty.get(s, 0.0)), min=0.0, max=100.0)
                                for s in SEVERITIES}

    bands = section.table("bands")
    bands.check_keys(HEALTH.table("bands"))
    changes["healthy_at"] = bands.float("healthy", d.healthy_at, min=0.0, max=100.0)
    changes["watch_at"] = bands.float("watch", d.watch_at, min=0.0, max=100.0)

    expansion = section.table("expansion")
    expansion.check_keys(HEALTH.table("expansion"))
    changes["expansion_kinds"] = _kinds(expansion, "kinds", d.expansion_kinds)
    if expansion.has("quota_at") and expansion.data["quota_at"] is False:
        changes["expansion_quota_at"] = None
    else:
        changes["expansion_quota_at"] = expansion.float("quota_at", d.expansion_quota_at, min=0.0)

    model = replace(d, **changes)
    where = {"weights": weights, "window_days": section, "trend_zero_ratio": trend, "declining_ratio": trend,
             "quota_target": quota, "no_quota_share": quota, "watch_at": bands}
    keys = {"trend_zero_ratio": "zero_ratio", "declining_ratio": "declining", "quota_target": "target",
            "watch_at": "watch", "weights": None}
    for name, message in model.problems():
        sec = where.get(name, section)
        sec.problem(keys.get(name, name), message)
    return model

from __future__ import annotations

import numpy as np

from rules.health import crm_fields, score_account
from rules.periods import iso


def test_growing_active_account_is_healthy():
    daily = np.concatenate([np.full(30, 100.0), np.full(30, 130.0)])
    h = score_account(daily, utilization=0.6, period_elapsed=0.5, open_alerts=[], expansion_signal=True,
                      last_alert=None)
    assert h.trend == "Growing" and h.band == "Healthy" and h.score == 100
    assert {f.name for f in h.factors} == {"trend", "active_days", "quota_use", "open_alerts"}
    assert sum(f.points for f in h.factors) == 100


def test_declining_account_with_open_drop_alerts_is_at_risk():
    daily = np.concatenate([np.full(30, 100.0), np.full(15, 40.0), np.zeros(15)])
    h = score_account(daily, utilization=0.05, period_elapsed=0.8,
                      open_alerts=[("drop", "critical"), ("inactivity", "warning"), ("spike", "critical")],
                      expansion_signal=False, last_alert=("api_calls dropped", 1_700_000_000))
    assert h.trend == "Declining" and h.band == "At risk"
    alerts = next(f for f in h.factors if f.name == "open_alerts")
    assert alerts.points == 5.0  # 20 - 10 - 5; the spike does not count against the account
    fields = crm_fields(h, iso)
    assert fields["Usage_Trend__c"] == "Declining"
    assert fields["Last_Usage_Alert_At__c"] == "2023-11-14T22:13:20Z"
    assert fields["Quota_Utilization__c"] == 5.0


def test_missing_days_are_not_counted_as_inactive_and_no_quota_is_neutral():
    daily = np.full(60, 10.0)
    daily[-5:] = np.nan
    h = score_account(daily, utilization=None, period_elapsed=0.3, open_alerts=[], expansion_signal=False,
                      last_alert=None)
    assert h.active_days == 25
    active = next(f for f in h.factors if f.name == "active_days")
    assert active.points == 25.0 and "25 of 25" in active.note
    assert next(f for f in h.factors if f.name == "quota_use").points == 10.0
    assert h.trend == "Stable"


def test_no_history_at_all():
    h = score_account(np.array([]), utilization=None, period_elapsed=0.0, open_alerts=[],
                      expansion_signal=False, last_alert=None)
    assert h.trend == "Stable" and h.active_days == 0 and 0 <= h.score <= 100


# ----------------------------------------------------------------- configurable model


def test_default_model_is_consistent_and_explains_each_factor():
    from rules.health import DEFAULT_MODEL

    assert DEFAULT_MODEL.problems() == []
    daily = np.concatenate([np.full(30, 100.0), np.full(30, 75.0)])  # ratio 0.75 -> half the trend points
    h = score_account(daily, utilization=None, period_elapsed=0.5, open_alerts=[("drop", "warning")],
                      expansion_signal=False, last_alert=None)
    pts = {f.name: f.points for f in h.factors}
    assert pts == {"trend": 17.5, "active_days": 25.0, "quota_use": 10.0, "open_alerts": 15.0}
    assert h.score == 68 and h.band == "Watch" and h.trend == "Declining"
    assert h.explain() == "trend 18/35 · active days 25/25 · quota use 10/20 · open alerts 15/20"
    alerts = next(f for f in h.factors if f.name == "open_alerts")
    assert alerts.note == "1 open drop/inactivity alert(s) (1 warning)"


def test_weights_and_thresholds_come_from_the_model():
    from rules.health import HealthModel

    model = HealthModel(weights={"trend": 50, "active_days": 50, "quota_use": 0, "open_alerts": 0},
                        trend_zero_ratio=0.8, trend_full_ratio=1.2, growing_ratio=1.5, declining_ratio=0.95,
                        healthy_at=90, watch_at=60, window_days=14)
    daily = np.concatenate([np.full(14, 100.0), np.full(14, 100.0)])  # ratio 1.0 -> half of (0.8..1.2)
    h = score_account(daily, utilization=0.9, period_elapsed=0.5, open_alerts=[("drop", "critical")],
                      expansion_signal=False, last_alert=None, model=model)
    pts = {f.name: f.points for f in h.factors}
    assert pts == {"trend": 25.0, "active_days": 50.0, "quota_use": 0.0, "open_alerts": 0.0}
    assert h.score == 75 and h.band == "Watch" and h.trend == "Stable"
    assert "last 14d" in h.factors[0].note


def test_alert_penalty_and_risk_kinds_are_configurable():
    from rules.health import HealthModel

    model = HealthModel(alert_penalty={"critical": 20, "warning": 2, "info": 0}, risk_kinds=("drop", "quota"))
    h = score_account(np.full(60, 10.0), None, 0.5, [("quota", "warning"), ("inactivity", "critical")],
                      False, None, model)
    assert next(f for f in h.factors if f.name == "open_alerts").points == 18.0


def test_model_problems():
    from rules.health import HealthModel

    bad = HealthModel(weights={"trend": 50, "activity": 10}, trend_zero_ratio=1.0, trend_full_ratio=0.5,
                      declining_ratio=1.2, growing_ratio=1.1, watch_at=80, healthy_at=70, no_quota_share=2)
    fields = [f for f, _ in bad.problems()]
    assert fields == ["weights", "weights", "trend_zero_ratio", "declining_ratio", "no_quota_share", "watch_at"]
    assert "they add up to 50" in bad.problems()[1][1]


def test_summarize_alerts_open_episodes_expansion_and_last_alert():
    from rules.health import summarize_alerts
    from rules.lifecycle import EpisodeState

    def ep(acct, rule, status, fired, sev="warning", disc="", details=None, msg="m"):
        return EpisodeState(rule, acct, "calls", disc, status, started_at=fired or 0, fired_at=fired, severity=sev,
                            last_explanation={"message": msg, "details": details or {}})

    kinds = {"drop": "drop", "grow": "expansion", "quota": "quota", "fc": "quota"}
    states = [
        ep("a", "drop", "firing", 100, "critical", msg="calls dropped"),
        ep("a", "quota", "resolved", 300, msg="quota 100%", disc="2026-11-01:1", details={"fraction": 1.0}),
        ep("b", "quota", "firing", 50, disc="2026-11-01:1", details={"fraction": 1.0}),
        ep("c", "fc", "firing", 60, disc="2026-11-01:forecast1", details={"fraction": 1.0}),
        ep("d", "quota", "firing", 70, disc="2026-11-01:0.8", details={"fraction": 0.8}),
        ep("e", "grow", "firing", 80),
        ep("f", "drop", "pending", None),
    ]
    out = summarize_alerts(states, lambda s: kinds[s.rule_id])
    assert out["a"].open_alerts == [("drop", "critical")] and out["a"].last_alert == ("quota 100%", 300)
    assert not out["a"].expansion_signal
    assert out["b"].expansion_signal and not out["c"].expansion_signal and not out["d"].expansion_signal
    assert out["e"].expansion_signal
    assert out["f"].open_alerts == [] and out["f"].last_alert is None

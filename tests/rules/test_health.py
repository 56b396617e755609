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

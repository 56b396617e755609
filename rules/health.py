"""Usage health of an account: a 0-100 score from explainable factors (pure).

Factors (points add up to the score; each keeps its contribution):
- trend (35):        mean daily usage of the last 30 days vs the 30 before
                     (per observed day; missing days are not zero): ratio >= 1.0
                     earns all points, <= 0.5 none, linear in between.
- active days (25):  share of observed days in the last 30 with usage > 0.
- quota use (20):    period-to-date use of paid quota, pro-rated to the share of
                     the period elapsed: >= 50% of the pro-rated quota earns all
                     points; no quota earns half (neutral).
- open alerts (20):  minus 10 per open critical, 5 per warning, 1 per info
                     drop/inactivity episode (risk signals only; spikes, quota
                     and expansion alerts are not held against an account).
Band: >= 70 Healthy, >= 40 Watch, else At risk. Trend word: ratio >= 1.1
Growing, <= 0.9 Declining, else Stable (no prior usage: Growing if any now).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

RISK_KINDS = ("drop", "inactivity")
ALERT_PENALTY = {"critical": 10.0, "warning": 5.0, "info": 1.0}


@dataclass(frozen=True)
class Factor:
    name: str
    points: float
    max_points: float
    note: str


@dataclass(frozen=True)
class Health:
    score: int
    band: str
    trend: str
    trend_ratio: float | None
    quota_utilization: float | None
    active_days: int
    expansion_signal: bool
    last_alert: str | None
    last_alert_at: int | None
    factors: tuple[Factor, ...] = field(default_factory=tuple)


def _trend(last30: float, prev30: float) -> tuple[float | None, str, float]:
    if prev30 <= 0:
        return None, ("Growing" if last30 > 0 else "Stable"), (1.0 if last30 > 0 else 0.5)
    r = last30 / prev30
    word = "Growing" if r >= 1.1 else "Declining" if r <= 0.9 else "Stable"
    return r, word, float(np.clip((r - 0.5) / 0.5, 0.0, 1.0))


def score_account(
    daily: np.ndarray,
    utilization: float | None,
    period_elapsed: float,
    open_alerts: Sequence[tuple[str, str]],
    expansion_signal: bool,
    last_alert: tuple[str, int] | None,
) -> Health:
    """daily: the primary metric's last 60 daily values (NaN = missing), oldest first.

    utilization: period-to-date usage / quota (None = no quota).
    period_elapsed: share of the billing period elapsed (0..1).
    open_alerts: (kind, severity) of the account's open episodes.
    """
    d = np.asarray(daily, dtype=float)[-60:]
    last, prev = d[-30:], d[:-30] if d.size > 30 else np.array([])
    # Per observed day, scaled to 30 days: missing days are not zero usage.
    last30 = float(np.nanmean(last) * 30) if np.any(~np.isnan(last)) else 0.0
    prev30 = float(np.nanmean(prev) * 30) if np.any(~np.isnan(prev)) else 0.0
    ratio, word, trend_share = _trend(last30, prev30)
    observed = int(np.count_nonzero(~np.isnan(last)))
    active = int(np.count_nonzero(np.nan_to_num(last) > 0))
    active_share = active / observed if observed else 0.0

    factors = [
        Factor("trend", 35 * trend_share, 35,
               f"last 30d {last30:,.0f} vs previous 30d {prev30:,.0f}" + (f" ({ratio:.2f}x)" if ratio else "")),
        Factor("active_days", 25 * active_share, 25, f"{active} of {observed} observed days active"),
    ]
    if utilization is None:
        factors.append(Factor("quota_use", 10.0, 20, "no quota"))
    else:
        expected = max(period_elapsed, 0.05)
        share = float(np.clip((utilization / expected) / 0.5, 0.0, 1.0))
        factors.append(Factor("quota_use", 20 * share, 20,
                              f"{utilization:.0%} of quota used with {period_elapsed:.0%} of the period elapsed"))
    penalty = sum(ALERT_PENALTY.get(sev, 0.0) for kind, sev in open_alerts if kind in RISK_KINDS)
    n_risk = sum(1 for kind, _ in open_alerts if kind in RISK_KINDS)
    factors.append(Factor("open_alerts", max(0.0, 20 - penalty), 20, f"{n_risk} open drop/inactivity alert(s)"))

    score = int(round(sum(f.points for f in factors)))
    band = "Healthy" if score >= 70 else "Watch" if score >= 40 else "At risk"
    return Health(
        score=score, band=band, trend=word, trend_ratio=ratio, quota_utilization=utilization,
        active_days=active, expansion_signal=expansion_signal,
        last_alert=last_alert[0] if last_alert else None,
        last_alert_at=last_alert[1] if last_alert else None, factors=tuple(factors),
    )


def crm_fields(h: Health, iso_fn) -> Mapping[str, object]:
    """Default Salesforce field mapping for a Health value."""
    return {
        "Usage_Health_Score__c": h.score,
        "Usage_Health_Band__c": h.band,
        "Usage_Trend__c": h.trend,
        "Quota_Utilization__c": None if h.quota_utilization is None else round(h.quota_utilization * 100, 1),
        "Last_Usage_Alert__c": h.last_alert,
        "Last_Usage_Alert_At__c": iso_fn(h.last_alert_at) if h.last_alert_at else None,
        "Expansion_Signal__c": h.expansion_signal,
    }

"""Usage health of an account: a 0-100 score from explainable factors (pure).

The weights and thresholds live in a `HealthModel` (read from the [health]
table of the config file by bot.config.health; `DEFAULT_MODEL` without one).
With the defaults, the factors (points add up to the score; each keeps its
contribution and a note saying why) are:

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
Expansion signal: an open expansion episode, or an open quota episode at 100%
or more of quota.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rules.lifecycle import FIRING, EpisodeState

FACTORS: tuple[str, ...] = ("trend", "active_days", "quota_use", "open_alerts")
BANDS: tuple[str, ...] = ("Healthy", "Watch", "At risk")
TRENDS: tuple[str, ...] = ("Growing", "Stable", "Declining")
RISK_KINDS = ("drop", "inactivity")
ALERT_PENALTY = {"critical": 10.0, "warning": 5.0, "info": 1.0}


@dataclass(frozen=True)
class HealthModel:
    """Weights and thresholds of the health score. Weights must add up to 100.

    window_days:        length of the "last" and "previous" windows of the trend.
    trend_full_ratio:   last/previous ratio that earns all trend points.
    trend_zero_ratio:   ratio at or below which the trend earns none (linear in between).
    growing_ratio / declining_ratio: thresholds of the trend word.
    quota_target:       share of the pro-rated quota used that earns all quota points.
    no_quota_share:     share of the quota points an account without a quota gets.
    alert_penalty:      points taken from the open-alerts factor per open episode, by severity.
    risk_kinds:         rule kinds whose open episodes count against the account.
    healthy_at / watch_at: lowest score of the Healthy and Watch bands.
    expansion_kinds:    open episodes of these kinds set the expansion signal ...
    expansion_quota_at: ... and so do open quota episodes at this fraction of quota or above
                        (None: quota episodes never do).
    primary_metric:     the metric the score is computed from (None: the metric with the most
                        quotas, else the first one).
    """

    weights: Mapping[str, float] = field(default_factory=lambda: {
        "trend": 35.0, "active_days": 25.0, "quota_use": 20.0, "open_alerts": 20.0})
    window_days: int = 30
    trend_full_ratio: float = 1.0
    trend_zero_ratio: float = 0.5
    growing_ratio: float = 1.1
    declining_ratio: float = 0.9
    quota_target: float = 0.5
    no_quota_share: float = 0.5
    alert_penalty: Mapping[str, float] = field(default_factory=lambda: dict(ALERT_PENALTY))
    risk_kinds: tuple[str, ...] = RISK_KINDS
    healthy_at: float = 70.0
    watch_at: float = 40.0
    expansion_kinds: tuple[str, ...] = ("expansion",)
    expansion_quota_at: float | None = 1.0
    primary_metric: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every inconsistency; empty when the model is usable."""
        out: list[tuple[str, str]] = []
        unknown = sorted(set(self.weights) - set(FACTORS))
        if unknown:
            out.append(("weights", f"unknown factor(s) {', '.join(unknown)}; factors are {', '.join(FACTORS)}"))
        if any(w < 0 for w in self.weights.values()):
            out.append(("weights", "weights must not be negative"))
        total = sum(self.weights.get(f, 0.0) for f in FACTORS)
        if abs(total - 100.0) > 1e-9:
            out.append(("weights", f"weights must add up to 100 so the score is 0-100 (they add up to {total:g})"))
        if self.window_days < 1:
            out.append(("window_days", f"must be at least 1 (got {self.window_days})"))
        if not self.trend_zero_ratio < self.trend_full_ratio:
            out.append(("trend_zero_ratio", f"must be below trend_full_ratio ({self.trend_zero_ratio:g} >= "
                                            f"{self.trend_full_ratio:g})"))
        if not self.declining_ratio < self.growing_ratio:
            out.append(("declining_ratio", f"must be below growing_ratio ({self.declining_ratio:g} >= "
                                           f"{self.growing_ratio:g})"))
        if self.quota_target <= 0:
            out.append(("quota_target", f"must be above 0 (got {self.quota_target:g})"))
        if not 0.0 <= self.no_quota_share <= 1.0:
            out.append(("no_quota_share", f"must be between 0 and 1 (got {self.no_quota_share:g})"))
        if not self.watch_at <= self.healthy_at:
            out.append(("watch_at", f"must not be above healthy_at ({self.watch_at:g} > {self.healthy_at:g})"))
        return out

    def weight(self, factor: str) -> float:
        return float(self.weights.get(factor, 0.0))


DEFAULT_MODEL = HealthModel()


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

    def explain(self) -> str:
        """One line: each factor's points of its maximum, e.g. "trend 35/35 · active days 20/25 · ..."."""
        return " · ".join(f"{f.name.replace('_', ' ')} {f.points:.0f}/{f.max_points:g}" for f in self.factors)


def _trend(last: float, prev: float, m: HealthModel) -> tuple[float | None, str, float]:
    if prev <= 0:
        return None, ("Growing" if last > 0 else "Stable"), (1.0 if last > 0 else 0.5)
    r = last / prev
    word = "Growing" if r >= m.growing_ratio else "Declining" if r <= m.declining_ratio else "Stable"
    share = (r - m.trend_zero_ratio) / (m.trend_full_ratio - m.trend_zero_ratio)
    return r, word, float(np.clip(share, 0.0, 1.0))


def band_of(score: float, model: HealthModel = DEFAULT_MODEL) -> str:
    return "Healthy" if score >= model.healthy_at else "Watch" if score >= model.watch_at else "At risk"


class UsageNotFinite(ValueError):
    """The usage a health score would be computed from is not a finite number (an inf bucket total,
    or sums past the largest float64): no score, rather than a false one."""


def score_account(
    daily: np.ndarray,
    utilization: float | None,
    period_elapsed: float,
    open_alerts: Sequence[tuple[str, str]],
    expansion_signal: bool,
    last_alert: tuple[str, int] | None,
    model: HealthModel = DEFAULT_MODEL,
) -> Health:
    """daily: the primary metric's last 2 * model.window_days daily values (NaN = missing), oldest first.

    utilization: period-to-date usage / quota (None = no quota).
    period_elapsed: share of the billing period elapsed (0..1).
    open_alerts: (kind, severity) of the account's open episodes.
    Raises UsageNotFinite when the usage or the utilization is not a finite number.
    """
    if utilization is not None and not math.isfinite(utilization):
        raise UsageNotFinite(f"its quota utilization is not a finite number ({utilization})")
    n = model.window_days
    d = np.asarray(daily, dtype=float)[-2 * n:]
    last, prev = d[-n:], d[:-n] if d.size > n else np.array([])
    # Per observed day, scaled to the window: missing days are not zero usage.
    last_sum = float(np.nanmean(last) * n) if np.any(~np.isnan(last)) else 0.0
    prev_sum = float(np.nanmean(prev) * n) if np.any(~np.isnan(prev)) else 0.0
    if not (math.isfinite(last_sum) and math.isfinite(prev_sum)):
        raise UsageNotFinite("its daily usage is not a finite number (a bucket total is inf, or the sums overflow)")
    ratio, word, trend_share = _trend(last_sum, prev_sum, model)
    observed = int(np.count_nonzero(~np.isnan(last)))
    active = int(np.count_nonzero(np.nan_to_num(last) > 0))
    active_share = active / observed if observed else 0.0

    w = model.weight
    factors = [
        Factor("trend", w("trend") * trend_share, w("trend"),
               f"last {n}d {last_sum:,.0f} vs previous {n}d {prev_sum:,.0f}"
               + (f" ({ratio:.2f}x)" if ratio is not None else "")),
        Factor("active_days", w("active_days") * active_share, w("active_days"),
               f"{active} of {observed} observed days active"),
    ]
    if utilization is None:
        factors.append(Factor("quota_use", w("quota_use") * model.no_quota_share, w("quota_use"), "no quota"))
    else:
        expected = max(period_elapsed, 0.05)
        share = float(np.clip((utilization / expected) / model.quota_target, 0.0, 1.0))
        factors.append(Factor("quota_use", w("quota_use") * share, w("quota_use"),
                              f"{utilization:.0%} of quota used with {period_elapsed:.0%} of the period elapsed"))
    risky = [sev for kind, sev in open_alerts if kind in model.risk_kinds]
    penalty = sum(float(model.alert_penalty.get(sev, 0.0)) for sev in risky)
    by_sev = ", ".join(f"{risky.count(s)} {s}" for s in sorted(set(risky)))
    factors.append(Factor("open_alerts", max(0.0, w("open_alerts") - penalty), w("open_alerts"),
                          f"{len(risky)} open {'/'.join(model.risk_kinds)} alert(s)"
                          + (f" ({by_sev})" if by_sev else "")))

    score = int(round(sum(f.points for f in factors)))
    return Health(
        score=score, band=band_of(score, model), trend=word, trend_ratio=ratio, quota_utilization=utilization,
        active_days=active, expansion_signal=expansion_signal,
        last_alert=last_alert[0] if last_alert else None,
        last_alert_at=last_alert[1] if last_alert else None, factors=tuple(factors),
    )


@dataclass
class AlertSummary:
    """What an account's alert episodes contribute to its health."""

    open_alerts: list[tuple[str, str]] = field(default_factory=list)  # (kind, severity) of firing episodes
    expansion_signal: bool = False
    last_alert: tuple[str, int] | None = None  # (message, fired_at) of the newest fired episode


def _quota_fraction(s: EpisodeState) -> float | None:
    """The quota fraction a threshold episode crossed (None for forecasts and unknown shapes)."""
    if "forecast" in s.discriminator:
        return None  # predicted, not reached
    details = s.last_explanation.get("details")
    frac = details.get("fraction") if isinstance(details, Mapping) else None
    if isinstance(frac, int | float) and not isinstance(frac, bool):
        return float(frac)
    try:
        return float(s.discriminator.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def summarize_alerts(
    states: Iterable[EpisodeState], kind_of: Callable[[EpisodeState], str], model: HealthModel = DEFAULT_MODEL,
) -> dict[str, AlertSummary]:
    """Per account: open (firing) episodes, the expansion signal and the newest fired alert."""
    out: dict[str, AlertSummary] = {}
    for s in states:
        kind = kind_of(s)
        summary = out.setdefault(s.account_id, AlertSummary())
        if s.status == FIRING:
            summary.open_alerts.append((kind, s.severity))
            if kind in model.expansion_kinds:
                summary.expansion_signal = True
            elif kind == "quota" and model.expansion_quota_at is not None:
                frac = _quota_fraction(s)
                if frac is not None and frac >= model.expansion_quota_at:
                    summary.expansion_signal = True
        if s.fired_at is not None and (summary.last_alert is None or s.fired_at > summary.last_alert[1]):
            summary.last_alert = (str(s.last_explanation.get("message") or s.rule_id), s.fired_at)
    return out


def crm_fields(h: Health, iso_fn: Callable[[int], str]) -> Mapping[str, object]:
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

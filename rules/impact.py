"""Why an alert matters: plain words first, and the money (pure: no I/O, no clock).

`assess` turns one alert's facts (kind, metric, value, baseline, the detector's details), the
account's facts (plan, ARR, renewal date) and the [pricing] model into an `Impact`:

- headline: the change in plain words, e.g. "api calls fell 87% vs a normal Tuesday" (weekly
  seasonality) or "... vs the usual level"; the detector's message stays the statistical detail;
- quota forecasts and quota thresholds: the overage (units over the account's quota: projected to
  the period end for a forecast, so far for a threshold) x the plan's per-unit overage price =
  `overage_cost`;
- drops and inactivity: `revenue_at_risk` = the account's ARR x the share of usage lost (all of it
  for inactivity), capped at the ARR;
- expansion: `next_plan`, the lowest plan above the account's (by `order`) whose quota for the
  metric covers the usage per billing period (a growth window's usage scaled to 30 days);
- renewal within `renewal_within` seconds of the alert: `renewal_days` says how soon; the alert's
  severity is raised by `renewal_raise` levels (up to critical) by `renewal_severity`, which
  rules.engine applies to the findings themselves, so the stored episode, the Slack message, the
  digest and the backtest all carry the raised severity (assess takes it as given).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rules.detectors import format as fmt
from rules.model import DAY, SEVERITIES, SEVERITY_RANK, AccountFacts

PERIOD = 30 * DAY  # a billing period for per-window usage of growth expansions (monthly quotas)


@dataclass(frozen=True)
class PlanPrice:
    """A plan of the price list: its rank (`order`, higher = bigger), its price per billing period,
    its quotas per metric and the price of each unit over them."""

    name: str
    order: int = 0
    price: float | None = None
    quotas: Mapping[str, float] = field(default_factory=dict)
    overage: Mapping[str, float] = field(default_factory=dict)  # metric -> price per unit over the quota


@dataclass(frozen=True)
class Pricing:
    plans: Mapping[str, PlanPrice] = field(default_factory=dict)
    currency: str = "$"
    renewal_within: int = 60 * DAY  # 0 = renewals never raise severity
    renewal_raise: int = 1  # severity levels

    def money(self, amount: float) -> str:
        """ "$1,234" (whole units; cents below 100; "<$0.01" for less than a cent, never "$0"); a negative
        amount (a credit) with its sign in front: "-$12", "-<$0.01"."""
        if amount < 0:
            return "-" + self.money(-amount)
        if 0 < amount < 0.01:
            return f"<{self.currency}0.01"
        if amount < 100:  # not negative here
            return f"{self.currency}{amount:,.2f}".replace(".00", "")
        return f"{self.currency}{amount:,.0f}"


@dataclass(frozen=True)
class Impact:
    headline: str
    severity: str
    overage_units: float | None = None
    overage_cost: float | None = None
    revenue_at_risk: float | None = None
    next_plan: str | None = None
    next_plan_price: float | None = None
    renewal_days: int | None = None
    overage_projected: bool = False  # a forecast's overage by the period end (else the overage so far)

    def money_line(self, pricing: Pricing, arr: float | None) -> str:
        """The money, in words: "Projected overage: 30,000 units ≈ $1,500 · renews in 21 days"."""
        parts = []
        if self.overage_units:
            what = "projected overage" if self.overage_projected else "overage so far"
            cost = f" ≈ {pricing.money(self.overage_cost)}" if self.overage_cost is not None else ""
            parts.append(f"{what} {fmt.number(self.overage_units)}{cost}")
        if self.revenue_at_risk is not None and arr:
            parts.append(f"{pricing.money(self.revenue_at_risk)} of {pricing.money(arr)} ARR at risk")
        if self.next_plan:
            price = f" ({pricing.money(self.next_plan_price)})" if self.next_plan_price is not None else ""
            parts.append(f"fits plan {self.next_plan}{price}")
        if self.renewal_days is not None:
            parts.append(f"renews in {self.renewal_days} day{'s' if self.renewal_days != 1 else ''}")
        text = " · ".join(parts)
        return text[:1].upper() + text[1:]


def words(metric: str) -> str:
    """A metric for reading: "api_calls" -> "api calls"."""
    return metric.replace("_", " ").replace(".", " ")


def finite(x: Any) -> float | None:
    """A finite float, else None (NaN, infinities, text)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


_num = finite


def _against(details: Mapping[str, Any], bucket_start: int | None) -> str:
    if details.get("seasonality") == "weekly" and bucket_start is not None:
        return f"vs a normal {datetime.fromtimestamp(bucket_start, UTC).strftime('%A')}"
    return "vs the usual level"


def headline(kind: str | None, metric: str, value: float | None, baseline: float | None,
             details: Mapping[str, Any], bucket_start: int | None) -> str:
    """The change in plain words ("" when the kind has none: the message is plain enough)."""
    m = words(metric)
    util = _num(details.get("utilization"))
    if kind in ("drop", "spike") and value is not None and baseline:
        if kind == "drop" and value <= 0:
            return f"{m} fell to zero {_against(details, bucket_start)}"
        if kind == "drop":
            return f"{m} fell {fmt.whole_percent(1 - value / baseline):d}% {_against(details, bucket_start)}"
        r = value / baseline
        rise = fmt.ratio(r) if r >= 2 else f"{fmt.whole_percent(r - 1):d}%"  # as the sentence says it: "3x"
        return f"{m} rose {rise} {_against(details, bucket_start)}"
    if kind == "inactivity":
        return f"No {m} at all since {str(details.get('inactive_since') or '')[:10]}".rstrip(" since")
    if kind == "quota" and util is not None:
        projected, quota = _num(details.get("projected_total")), _num(details.get("quota"))
        if projected is not None and quota:
            return f"On track to use {fmt.whole_percent(projected / quota):d}% of the {m} quota this period"
        return f"{m} at {fmt.whole_percent(util):d}% of the quota"
    if kind == "anomaly" and value is not None and baseline is not None:
        return _anomaly_headline(m, value, baseline, details)
    if kind == "expansion":
        rates, width = details.get("growth_rates"), _num(details.get("period"))
        if isinstance(rates, list | tuple) and rates and width and value is not None and baseline:
            span = len(rates) * width / DAY
            return f"{m} up {fmt.whole_percent(value / baseline - 1):d}% in {fmt.count(span, 'day')}"
        periods = details.get("periods")
        if util is not None and isinstance(periods, list | tuple) and periods:
            return f"{m} at {fmt.whole_percent(util):d}% of the quota, {fmt.count(len(periods), 'billing period')} running"
    return ""


_WHEN = {"daily": "this time of day", "weekly": "this time of the week"}  # the anomaly kind's seasonal models
_ACROSS = {model: when.replace("this ", "the ", 1) for model, when in _WHEN.items()}  # the same, over several buckets


def _anomaly_headline(m: str, value: float, expected: float, details: Mapping[str, Any]) -> str:
    """An anomaly in plain words, of what its signal measured: the bucket against what its model
    expects ("api calls 25.6x what is usual for this time of day", "api calls fell to zero (usually
    about 58.5 at this time of day)"), or a sustained shift's median over its span (`_shift_headline`).
    An expected value below 0 (a falling trend extrapolated) is said as 0: usage is never negative."""
    model = str(details.get("model"))
    if details.get("signal") == "shift":
        return _shift_headline(m, expected, details, model)
    when = _WHEN.get(model)
    if expected <= 0 or value <= 0:
        usual = f"usually about {fmt.number(max(0.0, expected))} at {when}" if when else \
            f"its recent level: about {fmt.number(max(0.0, expected))}"
        if expected <= 0:
            return f"{m} at {fmt.number(value)} ({usual})"
        return f"{m} fell to zero ({usual})"
    return f"{m} {_relative(value, expected, f'what is usual for {when}' if when else 'its recent level')}"


def _shift_headline(m: str, expected: float, details: Mapping[str, Any], model: str) -> str:
    """A sustained shift: the median of the last `adapt` buckets against the usual level. With the
    level model that median is of the buckets themselves, so it is said as a share of the usual level
    ("api calls 78% below the usual level over the last 6h"). With a seasonal model it is the median
    of each bucket's departure from its own time of day's usual value, said in units ("api calls ran
    50.5 below what is usual for the time of day over the last 6h (median)"): a share of the current
    bucket's usual value would be false when the pattern varies across the span."""
    shift, span = _num(details.get("shift")), _num(details.get("span"))
    if shift is None:
        return ""
    over = f"over the last {fmt.duration(int(span))}" if span else "lately"
    across = _ACROSS.get(model)
    if across is not None:
        if shift == 0:  # a holding finding at `recovery = 0`
            return f"{m} at what is usual for {across} {over} (median)"
        side = "above" if shift > 0 else "below"
        return f"{m} ran {fmt.number(abs(shift))} {side} what is usual for {across} {over} (median)"
    level = expected + shift
    if expected <= 0 or level <= 0:
        return f"{m} at {fmt.number(max(0.0, level))} {over} (usually about {fmt.number(max(0.0, expected))})"
    return f"{m} {_relative(level, expected, 'the usual level')} {over}"


def _relative(value: float, expected: float, against: str) -> str:
    """ "3.1x <against>", "37% above <against>", "45% below <against>" (under 1%: with its decimal);
    `expected` > 0."""
    r = value / expected
    if r >= 2:
        return f"{fmt.ratio(r)} {against}"
    change = abs(r - 1)
    if change == 0:
        return f"at {against}"
    share = f"{fmt.whole_percent(change):d}%" if change >= 0.01 else fmt.percent(change)
    return f"{share} {'above' if r > 1 else 'below'} {against}"


def _period_usage(kind: str | None, value: float | None, details: Mapping[str, Any]) -> float | None:
    """Usage per billing period that a plan's quota must cover."""
    if kind == "quota":
        return _num(details.get("projected_total")) or value
    if kind == "expansion":
        width = _num(details.get("period"))
        if "window_sums" in details and width:
            return value * PERIOD / width if value is not None else None
        return value
    return None


def fitting_plan(pricing: Pricing, current: str, metric: str, usage: float) -> PlanPrice | None:
    """The lowest plan above `current` (by order) whose quota for `metric` covers `usage`."""
    here = pricing.plans.get(current)
    floor = here.order if here is not None else -math.inf
    fits = [p for p in pricing.plans.values() if p.order > floor and p.quotas.get(metric, -1.0) >= usage]
    return min(fits, key=lambda p: p.order) if fits else None


def raised(severity: str, levels: int) -> str:
    return SEVERITIES[min(len(SEVERITIES) - 1, SEVERITY_RANK.get(severity, 0) + levels)]


def renewal_days(account: AccountFacts | None, pricing: Pricing, at: int) -> int | None:
    """Days (rounded up) until the account renews, when that is within [pricing] renewal_within of `at`."""
    if account is None or account.renewal_at is None or not pricing.renewal_within:
        return None
    left = account.renewal_at - at
    return -(-left // DAY) if 0 <= left <= pricing.renewal_within else None


def renewal_severity(severity: str, account: AccountFacts | None, pricing: Pricing, at: int) -> str:
    """`severity` raised by [pricing] renewal_raise levels when the account renews within renewal_within."""
    if not pricing.renewal_raise or renewal_days(account, pricing, at) is None:
        return severity
    return raised(severity, pricing.renewal_raise)


def assess(kind: str | None, metric: str, severity: str, value: float | None, baseline: float | None,
           details: Mapping[str, Any], account: AccountFacts | None, pricing: Pricing, at: int,
           bucket_start: int | None = None) -> Impact:
    """The impact of one alert (see the module docstring)."""
    plan = pricing.plans.get(account.plan) if account is not None else None
    arr = account.arr if account is not None else None
    overage_units = overage_cost = at_risk = None
    nxt: PlanPrice | None = None
    if kind == "quota":
        used = _num(details.get("projected_total")) or value
        quota = _num(details.get("quota"))
        if used is not None and quota is not None and used > quota:
            overage_units = used - quota
            price = plan.overage.get(metric) if plan is not None else None
            overage_cost = overage_units * price if price is not None else None
    if kind in ("drop", "inactivity") and arr:
        lost = 1.0 if kind == "inactivity" else (1 - value / baseline if value is not None and baseline else None)
        at_risk = arr * min(1.0, max(0.0, lost)) if lost is not None else None
    usage = _period_usage(kind, value, details)
    if usage is not None and account is not None and kind == "expansion":
        nxt = fitting_plan(pricing, account.plan, metric, usage)
    days = renewal_days(account, pricing, at)
    return Impact(headline=headline(kind, metric, value, baseline, details, bucket_start), severity=severity,
                  overage_units=overage_units, overage_cost=overage_cost, revenue_at_risk=at_risk,
                  next_plan=nxt.name if nxt else None, next_plan_price=nxt.price if nxt else None,
                  renewal_days=days, overage_projected=_num(details.get("projected_total")) is not None)


def render_action(template: str | None, **values: str) -> str:
    """A rule's `action` with its placeholders filled (the loader checked their names; "" for unknown facts)."""
    if not template:
        return ""
    try:
        return template.format_map(_Blank(values))
    except (ValueError, IndexError, AttributeError):
        return template


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""

"""Charts of an account's usage, built from a series, rules, episodes and account facts (pure).

- `usage_chart`: the usage of one metric with each spike/drop rule's usual level and threshold at
  every bucket (rules.levels: what the detector compared the bucket with) and the alerts as markers.
- `quota_chart`: billing-period-to-date usage against the account's quota and the quota rules'
  thresholds (a quota is per billing period, so it is drawn against the running period total).
- `episode_chart`: the chart of one alert episode from what was stored when it fired (its frozen
  usual level, its threshold, its quota): what the Slack image and the episode page show. It
  needs no rule, so it stays true after the rule changed or was removed.

The storage reads that feed these live in integrations.charts.data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from integrations.charts.model import Chart, Level, Line, Marker
from rules.detectors.quota import QuotaParams
from rules.levels import EpisodeSpan, has_levels, period_to_date, rule_levels
from rules.model import DAY, AccountFacts, Reference, Rule
from rules.periods import billing_period

RULE_COLORS = (("", ""), ("#7c3aed", "#7c3aed"), ("#0891b2", "#0891b2"), ("#be185d", "#be185d"))  # per rule
MAX_BUCKETS = 400  # a chart draws at most this many buckets (beyond it the lookback is shortened)


@dataclass(frozen=True)
class EpisodeMark:
    """What a chart needs of a stored alert episode."""

    episode_id: int
    rule_id: str
    metric: str
    severity: str
    status: str
    started_at: int
    fired_at: int | None = None
    resolved_at: int | None = None
    reference: Reference | None = None
    explanation: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[tuple[str, int, str], ...] = ()  # (event, at, actor) of manual actions

    @classmethod
    def from_row(cls, row: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> EpisodeMark:
        """From an alert_episodes row (a mapping of its columns) and its alert_events rows."""
        return cls(
            episode_id=int(row["id"]), rule_id=str(row["rule_id"]), metric=str(row["metric"]),
            severity=str(row.get("severity") or "warning"), status=str(row["status"]),
            started_at=int(row["started_at"]), fired_at=_opt(row.get("fired_at")),
            resolved_at=_opt(row.get("resolved_at")), reference=Reference.from_json(row.get("reference")),
            explanation=dict(row.get("last_explanation") or {}),
            events=tuple((str(e["event"]), int(e["at"]), str(e.get("actor") or "")) for e in events
                         if e.get("event") in ("acknowledged", "snoozed", "unsnoozed")),
        )

    @property
    def step(self) -> int | None:
        """The rule's bucket, from the stored explanation (at - bucket_start) or the reference."""
        e = self.explanation
        if isinstance(e.get("at"), int | float) and isinstance(e.get("bucket_start"), int | float):
            step = int(e["at"]) - int(e["bucket_start"])
            if step > 0:
                return step
        return self.reference.step if self.reference is not None else None


def _opt(x: Any) -> int | None:
    return None if x is None else int(x)


def _tuple(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def lookback_buckets(step: int) -> int:
    """Buckets a chart shows before its moment: 8 weeks of days, a week of hours (at most MAX_BUCKETS)."""
    span = 56 * DAY if step >= DAY else 7 * DAY
    return max(1, min(MAX_BUCKETS, span // step))


def markers(episodes: Sequence[EpisodeMark]) -> list[Marker]:
    """Fired / resolved / acknowledged / snoozed moments of the episodes."""
    out: list[Marker] = []
    for e in episodes:
        if e.fired_at is not None:
            out.append(Marker(e.fired_at, "fired", f"{e.rule_id} fired ({e.severity}) · episode {e.episode_id}",
                              e.severity))
        if e.resolved_at is not None and e.fired_at is not None:
            out.append(Marker(e.resolved_at, "resolved", f"{e.rule_id} resolved · episode {e.episode_id}",
                              e.severity))
        for event, at, actor in e.events:
            who = f" by {actor}" if actor else ""
            out.append(Marker(at, "snoozed" if event != "acknowledged" else "acknowledged",
                              f"{e.rule_id} {event}{who} · episode {e.episode_id}", e.severity))
    return out


def _spans(rule: Rule, episodes: Sequence[EpisodeMark]) -> list[EpisodeSpan]:
    out = []
    for e in episodes:
        if e.rule_id != rule.id or e.reference is None:
            continue
        out.append(EpisodeSpan(e.reference.anchor, e.resolved_at, e.reference, e.fired_at is not None))
    return out


def usage_chart(
    metric: str, values: np.ndarray, start: int, step: int, rules: Sequence[Rule] = (),
    episodes: Sequence[EpisodeMark] = (), show_from: int | None = None, title: str | None = None,
    span: tuple[int, int] | None = None,
) -> Chart:
    """Usage of `metric` (one account, buckets of `step` from `start`) with the usual level and
    threshold of each spike/drop rule of the metric at this bucket size, and alert markers.

    `values` may start earlier than the chart (history the levels need): only buckets from
    `show_from` (default: all) are drawn."""
    row = np.asarray(values, dtype=np.float64)
    lines: list[Line] = []
    level_rules = [r for r in rules if r.metric == metric and r.bucket == step and has_levels(r)]
    first = 0 if show_from is None else max(0, min(len(row), (show_from - start) // step))
    shown_start = start + first * step
    lines.append(Line(f"{metric}", "usage", _tuple(row[first:])))
    seen: dict[tuple[float, ...], str] = {}
    for k, r in enumerate(level_rules):
        lv = rule_levels(r, row, start, step, _spans(r, episodes))
        base_color, threshold_color = RULE_COLORS[k % len(RULE_COLORS)]
        key = tuple(_tuple(lv.baseline[first:]))
        if key not in seen:  # rules with the same usual level draw it once
            seen[key] = r.id
            lines.append(Line(f"usual level ({r.id})", "baseline", key, color=base_color))
        lines.append(Line(f"{r.kind} threshold ({r.id})", "threshold", _tuple(lv.threshold[first:]),
                          color=threshold_color))
    marks = [m for m in markers([e for e in episodes if e.metric == metric])]
    return Chart(title or metric, shown_start, step, len(row) - first, tuple(lines), (), tuple(marks), span=span)


def quota_chart(
    account: AccountFacts, metric: str, values: np.ndarray, start: int, step: int, rules: Sequence[Rule] = (),
    episodes: Sequence[EpisodeMark] = (), show_from: int | None = None, title: str | None = None,
    span: tuple[int, int] | None = None,
) -> Chart | None:
    """Billing-period-to-date usage of `metric` against the account's quota and the thresholds of
    its quota rules (fractions of the quota); None when the account has no quota for the metric."""
    quota = account.quotas.get(metric)
    if quota is None or not quota > 0:
        return None
    row = np.asarray(values, dtype=np.float64)
    periods = [billing_period(start + j * step, account.billing_day, account.timezone).start
               for j in range(len(row))]
    ptd = period_to_date(row, start, step, periods)
    first = 0 if show_from is None else max(0, min(len(row), (show_from - start) // step))
    levels = [Level(f"quota {quota:,.0f}", "quota", float(quota))]
    fractions: set[float] = set()
    for r in rules:
        if r.metric == metric and isinstance(r.params, QuotaParams):
            fractions.update(r.params.fractions if r.params.mode == "threshold" else (r.params.fraction,))
    for f in sorted(fractions):
        if f != 1.0:
            levels.append(Level(f"{f:.0%} of quota", "threshold", f * float(quota)))
    marks = markers([e for e in episodes if e.metric == metric])
    breaks = tuple(j - first for j in range(first + 1, len(row)) if periods[j] != periods[j - 1])
    return Chart(title or f"{metric}: billing period to date", start + first * step, step, len(row) - first,
                 (Line(f"{metric} this period", "usage", _tuple(ptd[first:]), breaks),), tuple(levels),
                 tuple(marks), span=span)


def episode_window(e: EpisodeMark, now: int) -> tuple[int, int, int] | None:
    """(start, end, step) of the buckets an episode's chart shows: a lookback before it fired (or
    started) through its resolution, or `now` while open; None without a known bucket size."""
    step = e.step
    if step is None:
        return None
    moment = e.fired_at or e.started_at
    end_at = e.resolved_at if e.resolved_at is not None else now
    end = (min(end_at, max(now, moment)) // step) * step  # closed buckets only: a started one is not a drop
    end = max(end, -(-moment // step) * step)
    start = (moment // step) * step - lookback_buckets(step) * step
    if (end - start) // step > MAX_BUCKETS:
        start = end - MAX_BUCKETS * step
    return start, end, step


def episode_chart(e: EpisodeMark, values: np.ndarray, start: int, step: int,
                  account: AccountFacts | None = None, title: str | None = None) -> Chart:
    """The chart of one episode from what it stored: usage, the usual level frozen when it opened
    (spike/drop: one value per position in the week), the threshold it crossed (the same ratio of
    that level; a quota rule's fraction of the quota), the quota, the episode shaded, its markers."""
    expl = e.explanation
    kind = str(expl.get("kind") or "")
    span_end = e.resolved_at if e.resolved_at is not None else start + len(values) * step
    begin = e.reference.anchor if e.reference is not None else (e.fired_at or e.started_at) - step
    span = (begin, span_end)
    name = title or f"{e.metric} · {e.rule_id}"
    details = expl.get("details") or {}
    if "quota" in details and account is not None:  # quota and utilization alerts: the period's total
        q = details.get("quota")
        acct = account if _finite(q) is None else replace(account, quotas={e.metric: float(q)})
        chart = quota_chart(acct, e.metric, values, start, step, episodes=[e], title=name, span=span)
        if chart is not None:
            threshold = _finite(expl.get("threshold"))
            if threshold is not None and all(abs(lv.value - threshold) > 1e-9 for lv in chart.levels):
                chart = Chart(chart.title, chart.start, chart.step, chart.n, chart.lines,
                              (*chart.levels, Level(f"threshold {threshold:,.0f}", "threshold", threshold)),
                              chart.markers, chart.span)
            return chart
    row = np.asarray(values, dtype=np.float64)
    lines = [Line(e.metric, "usage", _tuple(row))]
    levels: list[Level] = []
    baseline, threshold = _finite(expl.get("baseline")), _finite(expl.get("threshold"))
    if e.reference is not None:
        ref = np.array([e.reference.level_at(start + j * step) for j in range(len(row))])
        lines.append(Line("usual level (when it fired)", "baseline", _tuple(ref)))
        if baseline and threshold is not None:
            lines.append(Line(f"{kind or 'alert'} threshold", "threshold", _tuple(ref * (threshold / baseline))))
    else:
        if baseline is not None:
            levels.append(Level(f"usual level {baseline:,.4g}", "threshold", baseline))
        if threshold is not None and threshold != baseline:
            levels.append(Level(f"threshold {threshold:,.4g}", "threshold", threshold))
    return Chart(name, start, step, len(row), tuple(lines), tuple(levels), tuple(markers([e])), span=span)


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None

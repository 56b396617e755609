"""The data behind `/usage`: per-metric usage this billing period vs the last, quota use, trend,
health (integrations.health.account_health, what the CRM sync writes), open alerts and a sparkline; and accounts ranked by trend.

Reads storage only (list_accounts, load_block, episodes). Missing data is not zero usage: days no
account has data for are left out of sums and shown as gaps in sparklines. A metric whose usage is
not a finite number (an inf bucket total) is left out of the answer with a warning in the log, and
the rest of the answer is given as usual.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.engine import Engine

from integrations.health import account_health, health_metric
from rules.engine import non_finite_rows
from rules.health import DEFAULT_MODEL, Health, HealthModel
from rules.lifecycle import EpisodeState
from rules.model import DAY, AccountFacts
from rules.periods import Period, billing_period, previous_period
from storage import slack as store
from storage.usage import load_block, metrics

log = logging.getLogger(__name__)

HISTORY_DAYS = 60
SPARK_DAYS = 14


def _not_finite(account_id: str, metric: str, what: str) -> None:
    log.warning("account %s: %s usage is not a finite number (%s); left out of /usage until the data is fixed",
                account_id, metric, what, extra={"event": "account_contained", "account": account_id})


@dataclass(frozen=True)
class MetricSummary:
    metric: str
    period_to_date: float
    last_period_same_point: float | None  # the last period over the same number of days
    last_period_total: float | None
    quota: float | None
    utilization: float | None  # period_to_date / quota
    trend: str  # Growing | Stable | Declining (last 30 days vs the 30 before)
    trend_ratio: float | None
    recent: list[float | None] = field(default_factory=list)  # last SPARK_DAYS days, None = no data

    @property
    def change(self) -> float | None:
        if not self.last_period_same_point:
            return None
        return self.period_to_date / self.last_period_same_point - 1.0


@dataclass(frozen=True)
class AccountSummary:
    account: AccountFacts
    period: Period
    period_elapsed: float
    metrics: list[MetricSummary]
    primary_metric: str | None
    health: Health | None
    open_alerts: list[EpisodeState]


@dataclass(frozen=True)
class TrendRow:
    account: AccountFacts
    metric: str
    last30: float
    prev30: float
    ratio: float | None


def _window(now: int, window_days: int = 30) -> tuple[int, int]:
    """Daily buckets through today (partial), far enough back for the previous billing period and
    two health windows."""
    end = (now // DAY + 1) * DAY
    return end - (max(HISTORY_DAYS, 2 * window_days) + 45) * DAY, end


def _sum(values: np.ndarray) -> float | None:
    return float(np.nansum(values)) if values.size and np.any(~np.isnan(values)) else None


def _per_30(values: np.ndarray) -> float:
    return float(np.nanmean(values) * 30) if values.size and np.any(~np.isnan(values)) else 0.0


def _trend(last30: float, prev30: float) -> tuple[float | None, str]:
    if prev30 <= 0:
        return None, ("Growing" if last30 > 0 else "Stable")
    r = last30 / prev30
    return r, "Growing" if r >= 1.1 else "Declining" if r <= 0.9 else "Stable"


def _cols(start: int, lo: int, hi: int, n: int) -> slice:
    a = max(0, (lo - start) // DAY)
    b = min(n, max(0, -(-(hi - start) // DAY)))
    return slice(a, max(a, b))


def kind_of(s: EpisodeState) -> str:
    return str(s.last_explanation.get("kind", ""))


def summarize_account(engine: Engine, account: AccountFacts, now: int,
                      model: HealthModel = DEFAULT_MODEL) -> AccountSummary:
    start, end = _window(now, model.window_days)
    today = (now // DAY) * DAY
    period = billing_period(now, account.billing_day, account.timezone)
    prev = previous_period(period, account.billing_day, account.timezone)
    elapsed = min(1.0, max(0.0, (now - period.start) / period.length))
    out: list[MetricSummary] = []
    for metric in metrics(engine):
        block = load_block(engine, metric, DAY, start, end, account_ids=[account.id])
        row = block.values[0]
        if not np.any(~np.isnan(row)):
            continue
        if non_finite_rows(block.values)[0]:
            _not_finite(account.id, metric, "a daily total is inf")
            continue
        n = row.size
        ptd = _sum(row[_cols(start, (period.start // DAY) * DAY, end, n)]) or 0.0
        p_start = (prev.start // DAY) * DAY
        same = _sum(row[_cols(start, p_start, min(p_start + (now - period.start), prev.end), n)])
        total = _sum(row[_cols(start, p_start, (prev.end // DAY) * DAY, n)])
        done = row[: (today - start) // DAY]  # completed days
        last30, prev30 = _per_30(done[-30:]), _per_30(done[-60:-30])
        ratio, word = _trend(last30, prev30)
        quota = account.quotas.get(metric)
        util = ptd / quota if quota and quota > 0 else None
        recent = [None if math.isnan(v) else float(v) for v in done[-SPARK_DAYS:]]
        if not all(math.isfinite(x) for x in (ptd, same or 0.0, total or 0.0, last30, prev30)):
            _not_finite(account.id, metric, "its sums overflow")
            continue
        out.append(MetricSummary(metric, ptd, same, total, quota if quota else None, util, word, ratio, recent))
    episodes = store.account_episodes(engine, [account.id], open_only=False)
    # the CRM sync's computation (integrations.health): /usage shows the health the CRM fields hold
    primary = health_metric(engine, model)
    scored = account_health(engine, None, now, model, account_ids=[account.id])
    health = scored[0][1] if scored else None
    return AccountSummary(account, period, elapsed, out, primary, health,
                          [s for s in episodes if s.status == "firing"])


def rank_by_trend(engine: Engine, accounts: Sequence[AccountFacts], now: int,
                  direction: str = "growing", limit: int = 10) -> list[TrendRow]:
    """Accounts ordered by their last-30-days vs previous-30-days ratio on their main metric."""
    if not accounts:
        return []
    today = (now // DAY) * DAY
    start = today - HISTORY_DAYS * DAY
    ids = [a.id for a in accounts]
    per: dict[str, list[tuple[str, float, float]]] = {a: [] for a in ids}
    for metric in metrics(engine):
        block = load_block(engine, metric, DAY, start, today, account_ids=ids)
        for i, aid in enumerate(block.account_ids):
            row = block.values[i]
            if np.any(~np.isnan(row)):
                last30, prev30 = _per_30(row[-30:]), _per_30(row[:-30])
                if math.isfinite(last30) and math.isfinite(prev30):
                    per[aid].append((metric, last30, prev30))
                else:
                    _not_finite(aid, metric, "its 30-day sums are not finite")
    rows: list[TrendRow] = []
    for a in accounts:
        cands = per.get(a.id) or []
        if not cands:
            continue
        quota_ms = [c for c in cands if a.quotas.get(c[0])]
        metric, last30, prev30 = max(quota_ms or cands, key=lambda c: c[1])
        ratio, _ = _trend(last30, prev30)
        rows.append(TrendRow(a, metric, last30, prev30, ratio))
    ranked = [r for r in rows if r.ratio is not None]
    ranked.sort(key=lambda r: (r.ratio if direction == "growing" else -(r.ratio or 0.0), r.last30), reverse=True)
    if direction == "growing":
        ranked = [r for r in ranked if (r.ratio or 0) > 1.0]
    else:
        ranked = [r for r in ranked if (r.ratio or 0) < 1.0]
    return ranked[:limit]

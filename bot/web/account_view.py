"""The account page's data: facts, the `/usage` summary, each metric's charts, the alerts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.web.queries import account_episode_rows
from integrations.charts.build import quota_chart, usage_chart
from integrations.charts.data import account_series, episode_marks
from integrations.charts.svg import render_svg
from rules.detectors import required_history
from rules.levels import has_levels
from rules.model import DAY, AccountFacts, RuleSet
from storage.accounts import list_accounts
from storage.models import UsageCoverage, UsageFirstSeen

log = logging.getLogger(__name__)
_fs = UsageFirstSeen.__table__.c  # type: ignore[attr-defined]
_cov = UsageCoverage.__table__.c  # type: ignore[attr-defined]


@dataclass
class AccountView:
    account: AccountFacts
    summary: Any  # integrations.slack.usage_summary.AccountSummary, or None
    charts: list[str] = field(default_factory=list)  # SVG
    episodes: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)


def account_metrics(engine: Engine, account_id: str) -> list[str]:
    """Metrics the account has usage of: the (few) metrics, each probed on usage_first_seen's key."""
    with engine.connect() as conn:
        names = list(conn.execute(sa.select(_cov.metric).distinct().order_by(_cov.metric)).scalars())
        return [m for m in names if conn.execute(
            sa.select(_fs.first_bucket).where(_fs.metric == m, _fs.account_id == account_id)).first() is not None]


def account_view(engine: Engine, account_id: str, ruleset: RuleSet, now: int, days: int = 90) -> AccountView | None:
    """None when the account is neither in the accounts table nor in the usage."""
    found = list_accounts(engine, [account_id])
    metrics = account_metrics(engine, account_id)
    if not found and not metrics:
        return None
    account = found[0] if found else AccountFacts(id=account_id, name=account_id)
    summary = None
    try:
        from integrations.slack.usage_summary import summarize_account

        summary = summarize_account(engine, account, now)
    except Exception:  # the summary is a nicety: the charts and alerts still show
        log.exception("account page %s: usage summary failed", account_id)
    rows = account_episode_rows(engine, account_id)
    marks = episode_marks(engine, rows)
    end = (now // DAY + 1) * DAY  # through today (partial)
    show_from = end - days * DAY
    view = AccountView(account, summary, episodes=rows, metrics=metrics)
    for metric in metrics:
        rules = [r for r in ruleset.rules if r.metric == metric]
        history = max([required_history(r) for r in rules if r.bucket == DAY and has_levels(r)] + [0])
        start = show_from - -(-history // DAY) * DAY
        values = account_series(engine, account_id, metric, DAY, start, end)
        view.charts.append(render_svg(usage_chart(metric, values, start, DAY, rules, marks, show_from=show_from,
                                                  title=f"{metric} per day")))
        q = quota_chart(account, metric, values, start, DAY, rules, marks, show_from=show_from)
        if q is not None:
            view.charts.append(render_svg(q))
    return view

"""Usage health of stored accounts: the one computation the CRM sync and `/usage` both show.

`account_health` scores rules.health for every account (or the given ones) from storage: the
primary metric's daily usage, quota use in the billing period and alert episodes, as of the start
of the UTC day containing `now`. Health is a daily figure, so a dry run, the real sync that follows
it and a `/usage` asked the same day show the same score, band and trend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sqlalchemy.engine import Engine

from rules.health import DEFAULT_MODEL, Health, HealthModel, UsageNotFinite, score_account, summarize_alerts
from rules.lifecycle import EpisodeState
from rules.model import DAY, AccountFacts, RuleSet
from rules.periods import billing_period
from storage.accounts import list_accounts
from storage.episodes import load_states
from storage.usage import load_block, metrics

log = logging.getLogger(__name__)


def health_as_of(now: int) -> int:
    """The time health is computed at: the start of the UTC day containing `now`."""
    return (now // DAY) * DAY


def pick_primary_metric(engine: Engine, accounts: Sequence[AccountFacts], preferred: str | None) -> str | None:
    available = metrics(engine)
    if preferred and preferred in available:
        return preferred
    quota_metrics = [m for a in accounts for m in a.quotas if m in available]
    if quota_metrics:
        return max(sorted(set(quota_metrics)), key=quota_metrics.count)
    return available[0] if available else None


def health_metric(engine: Engine, model: HealthModel = DEFAULT_MODEL,
                  accounts: Sequence[AccountFacts] | None = None) -> str | None:
    """The metric health is scored on, the same for every account: [health] primary_metric when it
    has data, else the metric most accounts have a quota on, else the first stored metric."""
    everyone = list_accounts(engine) if accounts is None else accounts
    return pick_primary_metric(engine, everyone, model.primary_metric)


def account_health(
    engine: Engine, ruleset: RuleSet | None, now: int, model: HealthModel = DEFAULT_MODEL,
    primary_metric: str | None = None, account_ids: Sequence[str] | None = None,
) -> list[tuple[AccountFacts, Health]]:
    """(account, health) for every stored account (or those of `account_ids`), in account id order.

    The primary metric is chosen among all accounts, so one account's health is the
    same whether it is computed alone (Slack's /usage, the web UI) or with the others (the CRM sync).
    An episode's kind is its rule's in `ruleset`, else the one its explanation recorded.
    An account whose usage is not a finite number is left out (with a warning naming it):
    the others are scored and synced as usual.
    """
    everyone = list_accounts(engine)
    metric = pick_primary_metric(engine, everyone, primary_metric or model.primary_metric)
    wanted = None if account_ids is None else set(account_ids)
    accounts = everyone if wanted is None else [a for a in everyone if a.id in wanted]
    if metric is None or not accounts:
        return []
    end = health_as_of(now)
    window = 2 * model.window_days
    ids = [a.id for a in accounts]
    daily = load_block(engine, metric, DAY, end - window * DAY, end, account_ids=ids)
    kinds = {r.id: r.kind for r in ruleset.rules} if ruleset is not None else {}

    def kind_of(s: EpisodeState) -> str:
        return kinds.get(s.rule_id, str(s.last_explanation.get("kind", "")))

    states = load_states(engine, account_ids=None if wanted is None else ids)  # per account: same summary
    alerts = summarize_alerts(states.values(), kind_of, model)
    out = []
    for i, acct in enumerate(accounts):
        util = None
        elapsed = 0.0
        quota = acct.quotas.get(metric)
        if quota and quota > 0:
            period = billing_period(end - 1, acct.billing_day, acct.timezone)
            p_start = (period.start // DAY) * DAY
            if p_start >= daily.start:
                cols = slice((p_start - daily.start) // DAY, daily.n_buckets)
                util = float(np.nansum(daily.values[i, cols])) / quota
            elapsed = min(1.0, max(0.0, (end - period.start) / period.length))
        summary = alerts.get(acct.id)
        try:
            h = score_account(daily.values[i], util, elapsed, summary.open_alerts if summary else [],
                              summary.expansion_signal if summary else False,
                              summary.last_alert if summary else None, model)
        except UsageNotFinite as exc:
            log.warning("account %s: no health score (%s usage: %s); its CRM fields and /usage health wait "
                        "until the data is fixed", acct.id, metric, exc, extra={"event": "account_contained",
                                                                      "account": acct.id})
            continue
        out.append((acct, h))
    return out

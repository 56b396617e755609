"""Usage health of every stored account, and the Salesforce field values it maps to.

`account_health` computes rules.health for every account from storage (the
primary metric's daily usage, quotas, alert episodes) as of the start of the
UTC day containing `now`: health is a daily figure, so a dry run and the real
sync that follows it on the same day compute the same values. `crm_preview`
adds the field values (the default mapping unless given one); nothing is sent
anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from integrations.salesforce.config import DEFAULT_FIELDS
from integrations.salesforce.mapping import field_values
from rules.health import DEFAULT_MODEL, Health, HealthModel, UsageNotFinite, score_account, summarize_alerts
from rules.lifecycle import EpisodeState
from rules.model import DAY, AccountFacts, RuleSet
from rules.periods import billing_period, iso
from storage.accounts import list_accounts
from storage.episodes import load_states
from storage.usage import load_block, metrics

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CrmPreviewRow:
    account: AccountFacts
    health: Health
    fields: Mapping[str, Any]


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


def account_health(
    engine: Engine, ruleset: RuleSet, now: int, model: HealthModel = DEFAULT_MODEL,
    primary_metric: str | None = None, account_ids: Sequence[str] | None = None,
) -> list[tuple[AccountFacts, Health]]:
    """(account, health) for every stored account (or those of `account_ids`), in account id order.

    The primary metric is chosen among all accounts, so one account's health is the
    same whether it is computed alone (e.g. for Slack's /usage) or with the others.
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
    kinds = {r.id: r.kind for r in ruleset.rules}

    def kind_of(s: EpisodeState) -> str:
        return kinds.get(s.rule_id, str(s.last_explanation.get("kind", "")))

    alerts = summarize_alerts(load_states(engine).values(), kind_of, model)
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
            log.warning("account %s: no health score (%s usage: %s); its CRM fields are not updated until the "
                        "data is fixed", acct.id, metric, exc, extra={"event": "account_contained",
                                                                      "account": acct.id})
            continue
        out.append((acct, h))
    return out


def crm_preview(
    engine: Engine, ruleset: RuleSet, now: int, primary_metric: str | None = None,
    model: HealthModel = DEFAULT_MODEL, fields: Mapping[str, str] | None = None, text_limit: int = 255,
) -> list[CrmPreviewRow]:
    """Health and Salesforce field values (API name -> value) per account; sends nothing."""
    mapping = DEFAULT_FIELDS if fields is None else fields
    return [CrmPreviewRow(acct, h, field_values(h, mapping, iso, text_limit))
            for acct, h in account_health(engine, ruleset, now, model, primary_metric)]

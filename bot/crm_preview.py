"""Dry-run of the CRM sync: the usage-health field values usagebot would write.

Nothing is sent anywhere; this computes rules.health for every account from
storage (usage, quotas, open alert episodes) and returns the default
Salesforce field mapping per account.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from rules.health import Health, crm_fields, score_account
from rules.model import DAY, AccountFacts, RuleSet
from rules.periods import billing_period, iso
from storage.accounts import list_accounts
from storage.episodes import load_states
from storage.usage import load_block, metrics


@dataclass(frozen=True)
class CrmPreviewRow:
    account: AccountFacts
    health: Health
    fields: Mapping[str, Any]


def pick_primary_metric(engine: Engine, accounts: Sequence[AccountFacts], preferred: str | None) -> str | None:
    available = metrics(engine)
    if preferred and preferred in available:
        return preferred
    quota_metrics = [m for a in accounts for m in a.quotas if m in available]
    if quota_metrics:
        return max(set(quota_metrics), key=quota_metrics.count)
    return available[0] if available else None


def crm_preview(engine: Engine, ruleset: RuleSet, now: int, primary_metric: str | None = None) -> list[CrmPreviewRow]:
    accounts = list_accounts(engine)
    metric = pick_primary_metric(engine, accounts, primary_metric)
    if metric is None or not accounts:
        return []
    end = (now // DAY) * DAY
    ids = [a.id for a in accounts]
    daily = load_block(engine, metric, DAY, end - 60 * DAY, end, account_ids=ids)
    kinds = {r.id: r.kind for r in ruleset.rules}
    states = load_states(engine)
    open_by_acct: dict[str, list[tuple[str, str]]] = {}
    last_alert: dict[str, tuple[str, int]] = {}
    expansion: set[str] = set()
    for s in states.values():
        kind = kinds.get(s.rule_id, str(s.last_explanation.get("kind", "")))
        if s.status == "firing":
            open_by_acct.setdefault(s.account_id, []).append((kind, s.severity))
            if kind == "expansion" or (kind == "quota" and s.discriminator.endswith(":1")):
                expansion.add(s.account_id)
        if s.fired_at is not None and (s.account_id not in last_alert or s.fired_at > last_alert[s.account_id][1]):
            last_alert[s.account_id] = (str(s.last_explanation.get("message", s.rule_id)), s.fired_at)

    rows = []
    for i, acct in enumerate(accounts):
        util = None
        elapsed = 0.0
        quota = acct.quotas.get(metric)
        if quota and quota > 0:
            period = billing_period(now - 1, acct.billing_day, acct.timezone)
            p_start = (period.start // DAY) * DAY
            if p_start >= daily.start:
                cols = slice((p_start - daily.start) // DAY, daily.n_buckets)
                util = float(np.nansum(daily.values[i, cols])) / quota
            elapsed = (now - period.start) / period.length
        h = score_account(daily.values[i], util, elapsed, open_by_acct.get(acct.id, []),
                          acct.id in expansion, last_alert.get(acct.id))
        rows.append(CrmPreviewRow(acct, h, crm_fields(h, iso)))
    return rows

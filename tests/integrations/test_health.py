"""One health computation (integrations.health.account_health) serves the CRM sync and `/usage`: for
the same account at the same moment both show the same score, band, trend and factors (issue 14)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from bot.crm.preview import crm_preview
from bot.service.pipeline import run_cycle
from integrations.slack.usage_summary import summarize_account
from integrations.sources.records import UsageRecord
from rules.loader import load_rules_text
from rules.model import DAY, AccountFacts
from storage.accounts import upsert_accounts
from storage.usage import upsert_usage
from tests.bot.helpers import SPIKE_RULES

T0 = 1_788_220_800  # 2026-09-01 00:00 UTC
# "big" has its highest quota use on "storage" (a quota only it has); most accounts' quota is on
# api_calls, the metric health is scored on for everyone.
ACCOUNTS = [AccountFacts("big", "Big Corp", quotas={"api_calls": 50_000.0, "storage": 100.0}),
            AccountFacts("mid", "Mid Co", quotas={"api_calls": 20_000.0}),
            AccountFacts("new", "New Ltd", quotas={"api_calls": 5_000.0})]


def _book(engine: Engine) -> None:
    upsert_accounts(engine, ACCOUNTS)
    recs = [UsageRecord(a.id, "api_calls", T0 + d * DAY, 100.0 + 10 * d * (i + 1))
            for i, a in enumerate(ACCOUNTS) for d in range(45)]
    recs += [UsageRecord("big", "storage", T0 + d * DAY, 3.0) for d in range(45)]
    recs += [UsageRecord(a, "api_calls", T0 + 44 * DAY, 5_000.0) for a in ("big", "mid")]  # a spike on day 44
    upsert_usage(engine, recs)


def test_crm_and_usage_show_the_same_health_for_the_same_account(engine: Engine) -> None:
    _book(engine)
    rules = load_rules_text(SPIKE_RULES, "rules.toml")
    run_cycle(engine, rules, T0 + 45 * DAY)
    now = T0 + 45 * DAY + 15 * 3600 + 17  # mid-afternoon: today's usage is partial
    upsert_usage(engine, [UsageRecord("big", "api_calls", now - 60, 7_000.0)])
    crm = {row.account.id: row.health for row in crm_preview(engine, rules, now)}
    assert set(crm) == {"big", "mid", "new"}
    for account in ACCOUNTS:
        shown = summarize_account(engine, account, now)
        assert shown.health == crm[account.id], account.id
        assert shown.primary_metric == "api_calls"
    assert any(h.last_alert for h in crm.values())  # the alerts factor is part of what is compared

"""Usage that is not a finite number (an inf stored by an older version or by hand, or finite minute
values whose daily sum overflows) is contained to its account: evaluation, health, the CRM plan and
/usage go on for every other account, and a log line names the bad one (issue 12, item 5)."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.crm.preview import account_health, crm_preview
from bot.service.pipeline import run_cycle
from integrations.slack.usage_summary import rank_by_trend, summarize_account
from integrations.sources.records import UsageRecord
from rules.loader import load_rules_text
from rules.model import DAY, AccountFacts
from rules.periods import iso
from storage.accounts import list_accounts, upsert_accounts
from storage.episodes import load_states
from storage.usage import upsert_usage
from tests.bot.helpers import SPIKE_RULES

T0 = 1_788_220_800  # 2026-09-01
ACCOUNTS = [AccountFacts("bad", "Bad Data Inc", quotas={"api_calls": 10_000.0}),
            AccountFacts("good", "Good Co", quotas={"api_calls": 10_000.0}),
            AccountFacts("calm", "Calm Ltd")]


def _book(engine: Engine) -> None:
    upsert_accounts(engine, ACCOUNTS)
    recs = [UsageRecord(a.id, "api_calls", T0 + d * DAY, 100.0) for a in ACCOUNTS for d in range(30)]
    recs += [UsageRecord(a, "api_calls", T0 + 30 * DAY, 900.0) for a in ("bad", "good")]  # both spike on day 30
    upsert_usage(engine, recs)


def _make_bad(engine: Engine, how: str) -> None:
    at = T0 + 31 * DAY
    if how == "stored-inf":  # what an older version stored for 1e308 + 1e308 in one minute
        upsert_usage(engine, [UsageRecord("bad", "api_calls", at, 100.0)])
        with engine.begin() as c:
            c.execute(sa.text("UPDATE usage_points SET value = :v WHERE account_id = 'bad' AND bucket_start = :b"),
                      {"v": float("inf"), "b": at})
    else:  # finite minutes (each accepted) whose daily total overflows on read
        upsert_usage(engine, [UsageRecord("bad", "api_calls", at + 60, 1e308),
                              UsageRecord("bad", "api_calls", at + 120, 1e308)])


def _check(engine: Engine, how: str, caplog) -> None:
    # resolve at the first quiet day (a spike's default is 3), so "good" resolves on day 32
    rules = load_rules_text(SPIKE_RULES.replace('cooldown = "0"', 'cooldown = "0"\nresolve_after = "1d"', 1),
                            "rules.toml")
    _book(engine)
    first = run_cycle(engine, rules, T0 + 31 * DAY)
    assert {(a.account, a.event) for a in first.alerts} >= {("bad", "fired"), ("good", "fired")}
    _make_bad(engine, how)
    with caplog.at_level(logging.WARNING):
        upsert_usage(engine, [UsageRecord(a, "api_calls", T0 + 31 * DAY, 100.0) for a in ("good", "calm")])
        report = run_cycle(engine, rules, T0 + 32 * DAY)  # no crash, every cycle
        report = run_cycle(engine, rules, T0 + 32 * DAY)
    assert not [a for a in report.alerts if a.account == "bad"]
    spikes = {s.account_id: s.status for s in load_states(engine).values() if s.rule_id == "calls-spike"}
    assert spikes == {"good": "resolved", "bad": "firing"}  # bad is undecided: not resolved on bad data
    assert "account bad not evaluated by rule calls-spike" in caplog.text and "not a finite number" in caplog.text
    assert f"calls-spike at {iso(T0 + 32 * DAY)}:" in caplog.text  # a time a person reads, not epoch seconds
    assert "account good" not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        health = account_health(engine, rules, T0 + 33 * DAY)
        preview = crm_preview(engine, rules, T0 + 33 * DAY)
        summary = summarize_account(engine, ACCOUNTS[0], T0 + 33 * DAY)
        ranked = rank_by_trend(engine, list_accounts(engine), T0 + 33 * DAY, direction="declining")
    assert [a.id for a, _ in health] == ["calm", "good"] and [r.account.id for r in preview] == ["calm", "good"]
    assert "account bad: no health score" in caplog.text
    assert summary.metrics == [] and summary.health is None  # answered, without the bad metric
    assert "bad" not in [r.account.id for r in ranked]
    good = summarize_account(engine, ACCOUNTS[1], T0 + 33 * DAY)
    assert good.health is not None and good.metrics[0].metric == "api_calls"


def test_a_stored_inf_is_contained_to_its_account(engine: Engine, caplog) -> None:
    _check(engine, "stored-inf", caplog)


def test_a_daily_total_that_overflows_is_contained_to_its_account(engine: Engine, caplog) -> None:
    _check(engine, "overflowing-day", caplog)

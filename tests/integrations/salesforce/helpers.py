"""Builders shared by the Salesforce tests: a small book in storage and configs pointing at the fake org."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Engine

from integrations.salesforce.config import SalesforceConfig, TaskConfig
from integrations.sources.records import UsageRecord
from rules.config import Secret
from rules.lifecycle import FIRING, LifecycleResult
from rules.lifecycle import EpisodeState as State
from rules.model import DAY
from storage.accounts import upsert_accounts
from storage.episodes import load_states, record_step
from storage.usage import upsert_usage
from tests.fakes.salesforce_server import FakeSalesforce

NOW = 1_795_478_400 + 10 * 3600  # 2026-11-24T10:00:00Z; health is computed as of 2026-11-24T00:00:00Z
TODAY = 1_795_478_400


def sf_id(n: int) -> str:
    return f"001{n:012d}AAA"


def seed_accounts(engine: Engine, n: int, days: int = 60, value: float = 100.0, metric: str = "api_calls",
                  fake: FakeSalesforce | None = None, crm_id: bool = True) -> list[str]:
    """n accounts a0000.. with steady daily usage over `days` days up to TODAY (health 90, Stable)."""
    from rules.model import AccountFacts

    accounts = [AccountFacts(id=f"a{i:04d}", name=f"Account {i}", owner_email=f"owner{i}@example.com",
                             crm_id=sf_id(i) if crm_id else "") for i in range(n)]
    upsert_accounts(engine, accounts, now=TODAY)
    upsert_usage(engine, [UsageRecord(a.id, metric, TODAY - d * DAY, value)
                          for a in accounts for d in range(1, days + 1)])
    if fake is not None:
        for a in accounts:
            if a.crm_id:
                fake.add_record("Account", {"Name": a.name, "OwnerId": f"005{int(a.id[1:]):012d}AAA"}, id=a.crm_id)
    return [a.id for a in accounts]


def set_usage(engine: Engine, account_ids: list[str], value: float, days: int = 1, metric: str = "api_calls") -> None:
    """Overwrite the last `days` days of usage of these accounts."""
    upsert_usage(engine, [UsageRecord(a, metric, TODAY - d * DAY, value) for a in account_ids
                          for d in range(1, days + 1)])


def fire_episode(engine: Engine, account_id: str, rule_id: str = "calls-drop", kind: str = "drop",
                 severity: str = "critical", fired_at: int = TODAY - DAY, message: str = "api_calls dropped 60%",
                 status: str = FIRING, discriminator: str = "") -> int:
    """Store a fired episode; returns its id."""
    state = State(rule_id=rule_id, account_id=account_id, metric="api_calls", discriminator=discriminator,
                  status=status,
                  started_at=fired_at, consecutive=1, fired_at=fired_at, severity=severity, last_seen_at=fired_at,
                  last_explanation={"kind": kind, "message": message, "value": 40.0, "baseline": 100.0,
                                    "threshold": 50.0})
    record_step(engine, LifecycleResult(states={state.key: state}, transitions=[]), [], {}, now=fired_at)
    stored = load_states(engine)[state.key]
    assert stored.episode_id is not None
    return stored.episode_id


def password_config(fake: FakeSalesforce, **changes: Any) -> SalesforceConfig:
    cfg = SalesforceConfig(auth="password", username=fake.username, password=Secret(fake.password),
                           security_token=Secret(fake.security_token), retry_backoff=0.0,
                           bulk_poll_interval=0.01)
    return replace(cfg, **changes)


def tasks_on(**changes: Any) -> TaskConfig:
    return replace(TaskConfig(enabled=True), **changes)

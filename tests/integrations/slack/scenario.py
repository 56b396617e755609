"""A small, realistic book for the Slack tests, driven through the real evaluation cycle.

Accounts: acme (owner alice, on Slack), globex (owner bob), initech (owner not on Slack), acme-labs.
api_calls is ~100/day for every account; acme spikes on day SPIKE_DAY (600) and SPIKE_DAY+1 (650),
then is back to 100. With the rule below: fired at day SPIKE_DAY+1, re-notified at +2, resolved at +3.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Engine

from bot.notices import Notices
from bot.pipeline import CycleReport, DeliveryReport, Notifier, deliver_outbox, run_cycle
from integrations.slack.config import SlackConfig
from integrations.slack.notifier import SlackNotifier
from integrations.sources.records import UsageRecord
from rules.config import Secret
from rules.loader import load_rules_text
from rules.model import DAY, AccountFacts, RuleSet
from storage.accounts import upsert_accounts
from storage.usage import upsert_usage
from tests.fakes.slack_server import FakeSlack

T0 = 1_788_220_800  # 2026-09-01T00:00:00Z
SPIKE_DAY = 30
FIRED = SPIKE_DAY + 1  # evaluation days (the cycle runs at T0 + day * DAY)
RENOTIFIED = SPIKE_DAY + 2
RESOLVED = SPIKE_DAY + 3
TOKEN = "xoxb-test-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"

SPIKE_RULE = """
[[rule]]
id = "calls-spike"
kind = "spike"
metric = "api_calls"
bucket = "1d"
severity = "warning"
description = "API calls far above the usual level"
cooldown = "0"
renotify = "1d"
resolve_after = "1d"  # Slack mechanics: resolve at the first quiet day
[rule.baseline]
window = "14d"
min_points = 7
[rule.threshold]
ratio = 3.0
[rule.guards]
min_baseline = 10
[rule.routing]
owner = true
channels = ["#usage-alerts"]
"""

ACCOUNTS = [
    AccountFacts("acme", "Acme Corp", plan="growth", owner_email="alice@example.com", crm_id="001ACME",
                 quotas={"api_calls": 10_000.0}),
    AccountFacts("globex", "Globex", plan="starter", owner_email="bob@example.com", crm_id="001GLOBEX"),
    AccountFacts("initech", "Initech", plan="starter", owner_email="peter@initech.example", crm_id=""),
    AccountFacts("acme-labs", "Acme Labs", plan="starter", owner_email="bob@example.com"),
]


class TestClock:
    """An int epoch clock the tests move by hand (shared by the notifier and the fake Slack)."""

    __test__ = False

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def set_day(self, day: int, seconds: int = 0) -> int:
        self.now = T0 + day * DAY + seconds
        return self.now


def slack_config(fake: FakeSlack, **kw: Any) -> SlackConfig:
    base = SlackConfig(
        bot_token=Secret(TOKEN), signing_secret=Secret(SIGNING_SECRET), default_channel="#usage-alerts",
        base_url=fake.api_url, min_post_interval=0.0, max_inline_wait=0,
        crm_url="https://crm.example.com/r/Account/{crm_id}/view",
        dashboard_url="https://app.example.com/accounts/{account}?metric={metric}",
    )
    return replace(base, **kw)


def usage_records(days: int = SPIKE_DAY + 10, spikes: dict[int, float] | None = None,
                  accounts: tuple[str, ...] = ("acme", "globex", "initech", "acme-labs")) -> list[UsageRecord]:
    spikes = {SPIKE_DAY: 600.0, SPIKE_DAY + 1: 650.0} if spikes is None else spikes
    out = []
    for d in range(days):
        for a in accounts:
            v = spikes.get(d, 100.0) if a == "acme" else 100.0 + (d % 3)
            out.append(UsageRecord(a, "api_calls", T0 + d * DAY + 3600, v))
    return out


class Scenario:
    def __init__(self, engine: Engine, clock: TestClock, rules: str = SPIKE_RULE,
                 records: list[UsageRecord] | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.ruleset: RuleSet = load_rules_text(rules, "rules.toml")
        upsert_accounts(engine, ACCOUNTS, now=T0)
        upsert_usage(engine, records if records is not None else usage_records())

    def cycle(self, day: int) -> CycleReport:
        self.clock.set_day(day)
        # Slack delivery mechanics: every condition is notified, also at the first evaluation
        return run_cycle(self.engine, self.ruleset, T0 + day * DAY, notices=Notices(("slack",), first_run="notify"))

    def deliver(self, notifier: Notifier, at: int | None = None) -> DeliveryReport:
        now = self.clock.now if at is None else at
        self.clock.now = now
        return deliver_outbox(self.engine, notifier, now)

    def notifier(self, config: SlackConfig, **kw: Any) -> SlackNotifier:
        return SlackNotifier(config, self.engine, clock=self.clock, **kw)


def assert_valid_message(msg: dict[str, Any]) -> None:
    """A posted message has fallback text and Block Kit that slack_sdk's block models accept."""
    from slack_sdk.models.blocks import Block

    assert str(msg.get("text") or "").strip(), f"message without fallback text: {msg}"
    blocks = msg.get("blocks") or []
    assert len(blocks) <= 50
    for b in blocks:
        parsed = Block.parse(b)
        assert parsed is not None, f"unknown block type in {b}"
        parsed.validate_json()
        assert parsed.to_dict()["type"] == b["type"]

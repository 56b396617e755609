"""One evaluation cycle against storage, and outbox delivery.

    load accounts + open episodes -> load usage blocks (bulk SQL) ->
    rules.engine.evaluate (pure) -> rules.lifecycle.advance (pure) ->
    storage.episodes.record_step (episodes + audit + outbox in ONE transaction)

Delivery is separate: `deliver_outbox` sends due outbox rows through a
notifier and marks them sent, or failed with a backoff, so a crash between
the two loses nothing and a re-run duplicates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from bot.alerts import PUBLISHED_EVENTS, alert_record, idempotency_key, recent_values
from rules.engine import BlockKey, due, evaluate, history_needed
from rules.lifecycle import Transition, advance
from rules.model import AccountFacts, MetricBlock, RuleSet
from storage.accounts import list_accounts
from storage.episodes import load_states, record_step
from storage.outbox import OutboxItem, claim_due, mark_failed, mark_sent
from storage.usage import load_block

log = logging.getLogger(__name__)

NOTIFY_KIND = "notify"


class Notifier(Protocol):
    def deliver(self, alert: Mapping[str, Any]) -> None: ...


@dataclass
class CycleReport:
    at: int
    rules_evaluated: list[str] = field(default_factory=list)
    findings: int = 0
    transitions: list[Transition] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # records of published transitions
    outbox_items: int = 0


def load_blocks_for(engine: Engine, needs: Mapping[BlockKey, int], now: int) -> dict[BlockKey, MetricBlock]:
    """Blocks covering [now - history, last bucket end <= now) per (metric, bucket)."""
    blocks: dict[BlockKey, MetricBlock] = {}
    for (metric, step), history in needs.items():
        end = (now // step) * step
        start = ((end - history) // step) * step
        blocks[(metric, step)] = load_block(engine, metric, step, start, end)
    return blocks


def run_cycle(engine: Engine, ruleset: RuleSet, now: int, only_due: bool = True) -> CycleReport:
    """Evaluate the rules whose bucket closed at `now` (or all), persist the outcome."""
    report = CycleReport(at=now)
    rules = [r for r in ruleset.rules if not only_due or due(r, now)]
    if not rules:
        return report
    accounts: dict[str, AccountFacts] = {a.id: a for a in list_accounts(engine)}
    blocks = load_blocks_for(engine, history_needed(rules), now)
    result = evaluate(rules, blocks, accounts, now, only_due=False)
    states = load_states(engine)
    by_id = ruleset.by_id()
    step = advance(by_id, result.findings, result.decided, states, now,
                   evaluated_rules=result.evaluated_rules)
    outbox: list[OutboxItem] = []
    for t in step.transitions:
        if t.event not in PUBLISHED_EVENTS:
            continue
        rule = by_id.get(t.state.rule_id)
        block = blocks.get((rule.metric, rule.bucket)) if rule else None
        record = alert_record(t, rule, accounts.get(t.state.account_id),
                              recent_values(block, t.state.account_id, now))
        report.alerts.append(record)
        if t.notify:
            outbox.append(OutboxItem(idempotency_key(t), NOTIFY_KIND, record))
    record_step(engine, step, outbox, {r.id: r.rule_hash for r in ruleset.rules})
    report.rules_evaluated = sorted(result.evaluated_rules)
    report.findings = len(result.findings)
    report.transitions = step.transitions
    report.outbox_items = len(outbox)
    return report


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def deliver_outbox(
    engine: Engine, notifier: Notifier, now: int, limit: int = 500,
    backoff: Callable[[int], int] = lambda attempts: min(3600, 30 * 2 ** attempts),
) -> DeliveryReport:
    """Send due notification rows; failures are retried later with backoff."""
    report = DeliveryReport()
    for row in claim_due(engine, now, limit=limit, kinds=[NOTIFY_KIND]):
        try:
            notifier.deliver(row.payload)
        except Exception as exc:  # a failing notifier must not lose the row
            report.failed += 1
            msg = f"{type(exc).__name__}: {exc}"
            report.errors.append(f"outbox {row.idempotency_key}: {msg}")
            log.warning("delivery of %s failed: %s", row.idempotency_key, msg)
            mark_failed(engine, row.id, now, msg, retry_in=backoff(row.attempts))
            continue
        mark_sent(engine, [row.id], now)
        report.sent += 1
    return report

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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from bot.alerts import PUBLISHED_EVENTS, alert_record, idempotency_key, recent_values
from bot.redaction import mask
from rules.engine import BlockKey, due, evaluate, history_needed
from rules.gcpause import gc_paused
from rules.lifecycle import EpisodeState, Key, Transition, advance
from rules.model import AccountFacts, Finding, MetricBlock, Rule, RuleSet
from storage.accounts import list_accounts
from storage.episodes import load_states, record_step
from storage.outbox import OutboxItem, claim_due, mark_dead, mark_failed, mark_sent
from storage.slack import active_account_snoozes
from storage.usage import accounts_with_usage, load_block

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


def load_blocks_for(
    engine: Engine, needs: Mapping[BlockKey, int], now: int, account_ids: Sequence[str] | None = None
) -> dict[BlockKey, MetricBlock]:
    """Blocks covering [now - history, last bucket end <= now) per (metric, bucket).

    account_ids: only these accounts (rows in that order); None = every account with data.
    """
    blocks: dict[BlockKey, MetricBlock] = {}
    for (metric, step), history in needs.items():
        end = (now // step) * step
        start = ((end - history) // step) * step
        blocks[(metric, step)] = load_block(engine, metric, step, start, end, account_ids=account_ids)
    return blocks


def _recent_for(engine: Engine, transitions: Sequence[Transition], by_id: Mapping[str, Rule], now: int,
                n: int = 14) -> dict[tuple[str, str], list[float | None]]:
    """Last `n` bucket values of (rule, account) for the published transitions only."""
    wanted: dict[tuple[str, int], set[str]] = {}
    for t in transitions:
        rule = by_id.get(t.state.rule_id)
        if rule is not None and t.event in PUBLISHED_EVENTS:
            wanted.setdefault((rule.metric, rule.bucket), set()).add(t.state.account_id)
    blocks = {
        key: load_block(engine, key[0], key[1], (now // key[1] - n) * key[1], (now // key[1]) * key[1],
                        account_ids=sorted(ids))
        for key, ids in wanted.items()
    }
    out: dict[tuple[str, str], list[float | None]] = {}
    for t in transitions:
        rule = by_id.get(t.state.rule_id)
        if rule is not None and (rule.metric, rule.bucket) in blocks:
            out[(t.state.rule_id, t.state.account_id)] = recent_values(
                blocks[(rule.metric, rule.bucket)], t.state.account_id, now, n)
    return out


def _rewound(states: Mapping[Key, EpisodeState], findings: Sequence[Finding], now: int) -> dict[Key, EpisodeState]:
    """States as they were before an earlier evaluation at this same `now`.

    advance() counts one more consecutive evaluation for every open episode with
    a finding. When `now` was evaluated before (the condition was last seen at
    `now`), that count is already in the state: take it back first, so
    re-evaluating a time is idempotent and `for` counts buckets, not runs.
    """
    out = dict(states)
    for f in findings:
        s = out.get(f.key)
        if s is not None and s.is_open and s.last_seen_at == now and s.consecutive > 0:
            out[f.key] = replace(s, consecutive=s.consecutive - 1)
    return out


def account_chunks(engine: Engine, size: int, known: Iterable[str] | None = None) -> list[list[str]]:
    """Every account with an account record or usage, sorted, in chunks of `size`.

    known: the account-record ids when the caller has already read them.
    """
    records = set(known) if known is not None else {a.id for a in list_accounts(engine)}
    ids = sorted(records | set(accounts_with_usage(engine)))
    return [ids[i:i + size] for i in range(0, len(ids), size)]


@gc_paused()  # the whole cycle: reads, evaluation, lifecycle, persisting (rules/gcpause.py)
def run_cycle(
    engine: Engine,
    ruleset: RuleSet,
    now: int,
    only_due: bool = True,
    account_ids: Sequence[str] | None = None,
    chunk_accounts: int | None = None,
    muted: Mapping[str, Collection[str]] | None = None,
    rule_ids: Collection[str] | None = None,
) -> CycleReport:
    """Evaluate the rules whose bucket closed at `now` (or all), persist the outcome.

    account_ids: evaluate only these accounts (incremental evaluation after new data:
    the cost follows the number of accounts; other accounts' episodes are untouched).
    chunk_accounts: evaluate all accounts in chunks of this many, so memory stays
    bounded by the chunk, not the book. Findings of all chunks go through ONE
    lifecycle step and ONE transaction, exactly as without chunking.
    muted: metric -> account ids whose data cannot be trusted now (their source is
    stale): their findings are dropped and they count as undecided, so nothing fires
    or resolves for them. Evaluating a time again (a restart, late data) counts an
    open episode's condition once, not twice (see `_rewound`).
    rule_ids: evaluate only these rules of the rule set (the others' episodes are
    left alone, not taken for removed rules).
    """
    report = CycleReport(at=now)
    rules = [r for r in ruleset.rules
             if (not only_due or due(r, now)) and (rule_ids is None or r.id in rule_ids)]
    if not rules:
        return report
    accounts: dict[str, AccountFacts] = {a.id: a for a in list_accounts(engine, ids=account_ids)}
    needs = history_needed(rules)
    if account_ids is not None:
        chunks: list[Sequence[str] | None] = [list(account_ids)] if account_ids else []
    elif chunk_accounts:
        chunks = list(account_chunks(engine, chunk_accounts, known=accounts))
    else:
        chunks = [None]
    findings = []
    decided: set[tuple[str, str]] = set()
    evaluated: set[str] = set()
    for chunk in chunks:
        blocks = load_blocks_for(engine, needs, now, account_ids=chunk)
        result = evaluate(rules, blocks, accounts, now, only_due=False)
        if muted:
            metric_of = {r.id: r.metric for r in rules}
            result.findings = [f for f in result.findings if f.account_id not in muted.get(f.metric, ())]
            result.decided = {(r, a) for r, a in result.decided if a not in muted.get(metric_of[r], ())}
        findings.extend(result.findings)
        decided |= result.decided
        evaluated |= result.evaluated_rules
    # An incremental cycle reads only its accounts' states; other accounts' episodes are untouched
    # (an episode of a removed rule resolves at the next full cycle).
    states = _rewound(load_states(engine, account_ids=account_ids), findings, now)
    by_id = ruleset.by_id()
    # Accounts snoozed from Slack (/usage snooze): transitions are recorded, not notified.
    step = advance(by_id, findings, decided, states, now, evaluated_rules=evaluated,
                   snoozed_accounts=active_account_snoozes(engine, now))
    recent = _recent_for(engine, step.transitions, by_id, now)
    outbox: list[OutboxItem] = []
    for t in step.transitions:
        if t.event not in PUBLISHED_EVENTS:
            continue
        record = alert_record(t, by_id.get(t.state.rule_id), accounts.get(t.state.account_id),
                              recent.get((t.state.rule_id, t.state.account_id), []))
        report.alerts.append(record)
        if t.notify:
            outbox.append(OutboxItem(idempotency_key(t), NOTIFY_KIND, record))
    record_step(engine, step, outbox, {r.id: r.rule_hash for r in ruleset.rules})
    report.rules_evaluated = sorted(evaluated)
    report.findings = len(findings)
    report.transitions = step.transitions
    report.outbox_items = len(outbox)
    return report


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0  # every row not delivered in this run (includes dead and deferred)
    dead: int = 0  # of those: permanent failures, not retried
    deferred: int = 0  # of those: due again after the notifier's retry_after
    errors: list[str] = field(default_factory=list)


def deliver_outbox(
    engine: Engine, notifier: Notifier, now: int, limit: int = 500,
    backoff: Callable[[int], int] = lambda attempts: min(3600, 30 * 2 ** attempts),
) -> DeliveryReport:
    """Send due notification rows; failures are retried later with backoff.

    A notifier's exception may carry `retry_after` (int seconds, e.g. Slack's 429 Retry-After):
    the row is due again after exactly that delay instead of the backoff (and is never marked dead
    for it); or `permanent = True` (retrying cannot help, e.g. an unknown channel): the row is
    marked dead with the error, for an operator (storage.outbox.retry_dead puts it back).
    Anything else is retried with backoff.
    """
    report = DeliveryReport()
    for row in claim_due(engine, now, limit=limit, kinds=[NOTIFY_KIND]):
        try:
            notifier.deliver(row.payload)
        except Exception as exc:  # a failing notifier must not lose the row
            report.failed += 1
            msg = mask(f"{type(exc).__name__}: {exc}")
            report.errors.append(f"outbox {row.idempotency_key}: {msg}")
            retry_after = getattr(exc, "retry_after", None)
            if getattr(exc, "permanent", False) is True:
                log.error("delivery of %s failed permanently (marked dead): %s", row.idempotency_key, msg)
                mark_dead(engine, row.id, now, msg)
                report.dead += 1
            elif isinstance(retry_after, int) and not isinstance(retry_after, bool) and retry_after >= 0:
                log.info("delivery of %s deferred by %ss: %s", row.idempotency_key, retry_after, msg)
                # a deferral is not the row failing: it never makes the row dead
                mark_failed(engine, row.id, now, msg, retry_in=retry_after, max_attempts=row.attempts + 1)
                report.deferred += 1
            else:
                log.warning("delivery of %s failed: %s", row.idempotency_key, msg)
                mark_failed(engine, row.id, now, msg, retry_in=backoff(row.attempts))
            continue
        mark_sent(engine, [row.id], now)
        report.sent += 1
    return report

"""One evaluation cycle against storage, and outbox delivery.

    load accounts + open episodes -> load usage blocks (bulk SQL) ->
    rules.engine.evaluate (pure) -> rules.lifecycle.advance (pure) ->
    storage.episodes.record_step (episodes + audit + outbox in ONE transaction)

Delivery is separate: `deliver_outbox` sends due outbox rows through a
notifier (`deliver_rows` through any outlet: Slack message updates, CRM
writes) and marks them sent, or failed with a backoff, so a crash between
the two loses nothing and a re-run duplicates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy.engine import Connection, Engine

from bot.service.alerts import (
    PUBLISHED_EVENTS,
    alert_notice,
    cohort_notice,
    first_run_summary,
    recent_values,
)
from bot.service.cycle_lock import serialised
from bot.service.notices import Notices
from integrations.notice import AlertNotice
from integrations.notifier import DeliveryError, NoticeOutlet, Notifier, Outlet
from rules.config.redaction import mask
from rules.engine import (
    BlockKey,
    CohortEvent,
    CohortTally,
    EvaluationResult,
    due,
    evaluate,
    history_needed,
    settle_cohorts,
)
from rules.gcpause import gc_paused
from rules.impact import Pricing
from rules.lifecycle import EpisodeState, FirstRun, Key, Transition, advance, open_episodes
from rules.model import AccountFacts, MetricBlock, OpenEpisode, Rule, RuleSet
from rules.periods import iso
from storage.accounts import list_accounts
from storage.episodes import load_states, record_step
from storage.first_evaluations import ACCOUNT, RULE, first_times, firsts, mark
from storage.outbox import (
    DEAD,
    DEFAULT_LEASE,
    ClaimLost,
    LeaseKeeper,
    OutboxItem,
    OutboxRow,
    claim_due,
    mark_dead,
    mark_failed,
    mark_sent,
)
from storage.slack import active_account_snoozes
from storage.usage import accounts_with_usage, load_block

log = logging.getLogger(__name__)

@dataclass
class CycleReport:
    at: int
    rules_evaluated: list[str] = field(default_factory=list)
    findings: int = 0
    transitions: list[Transition] = field(default_factory=list)
    alerts: list[AlertNotice] = field(default_factory=list)  # notices of the published transitions
    outbox_items: int = 0
    cohort_events: list[CohortEvent] = field(default_factory=list)


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


def _rewound(states: Mapping[Key, EpisodeState], now: int) -> dict[Key, EpisodeState]:
    """States as they were before an earlier evaluation at this same `now`.

    advance() counts one more consecutive evaluation for every open episode with a
    finding, and one more clear evaluation for a firing one without. When `now` was
    evaluated before (the condition was last seen, or last cleared, at `now`), that count
    is already in the state: take it back first, so re-evaluating a time is idempotent and
    `for` / `resolve_after` count buckets, not runs.
    """
    out = dict(states)
    for key, s in states.items():
        if not s.is_open:
            continue
        if s.last_seen_at == now and s.consecutive > 0:
            out[key] = replace(s, consecutive=s.consecutive - 1)
        elif s.cleared_at == now and s.clear_count > 0:
            count = s.clear_count - 1
            out[key] = replace(s, clear_count=count, cleared_at=None,
                               recovering_since=s.recovering_since if count else None)
    return out


def log_contained(contained: Iterable[tuple[str, str, str]], now: int) -> None:
    """One warning per (rule, account) left undecided because its usage is not a finite number."""
    for rule_id, account_id, why in contained:
        log.warning("account %s not evaluated by rule %s at %s: %s; its other rules and every other account "
                    "are evaluated (fix or re-load its usage)", account_id, rule_id, iso(now), why,
                    extra={"event": "account_contained", "account": account_id, "rule": rule_id})


def account_chunks(engine: Engine, size: int, known: Iterable[str] | None = None) -> list[list[str]]:
    """Every account with an account record or usage, sorted, in chunks of `size`.

    known: the account-record ids when the caller has already read them.
    """
    records = set(known) if known is not None else {a.id for a in list_accounts(engine)}
    ids = sorted(records | set(accounts_with_usage(engine)))
    return [ids[i:i + size] for i in range(0, len(ids), size)]


@gc_paused()  # the whole cycle: reads, evaluation, lifecycle, persisting (rules/gcpause.py)
@serialised  # one cycle at a time per database; re-run after losing a race (bot/service/cycle_lock.py)
def run_cycle(
    engine: Engine,
    ruleset: RuleSet,
    now: int,
    only_due: bool = True,
    account_ids: Sequence[str] | None = None,
    chunk_accounts: int | None = None,
    muted: Mapping[str, Collection[str]] | None = None,
    rule_ids: Collection[str] | None = None,
    notices: Notices | None = None,
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
    notices: the notifiers, admin channel and first-run policy (bot.service.notices.Notices; default:
    the console, no admin channel, first_run "digest").
    """
    notices = notices or Notices()
    report = CycleReport(at=now)
    rules = [r for r in ruleset.rules
             if (not only_due or due(r, now)) and (rule_ids is None or r.id in rule_ids)]
    if not rules:
        return report
    by_id = ruleset.by_id()
    accounts: dict[str, AccountFacts] = {a.id: a for a in list_accounts(engine, ids=account_ids)}
    # An incremental cycle reads only its accounts' states; other accounts' episodes are untouched
    # (an episode of a removed rule resolves at the next full cycle).
    states = _rewound(load_states(engine, account_ids=account_ids), now)
    result = _evaluate_chunks(engine, rules, ruleset, accounts, now, account_ids, chunk_accounts,
                              open_episodes(states, by_id, now), muted, notices.pricing)
    first, marks = _first_run(engine, result, now, notices, account_ids)
    # Accounts snoozed from Slack (/usage snooze): transitions are recorded, not notified.
    step = advance(by_id, result.findings, result.decided, states, now, evaluated_rules=result.evaluated_rules,
                   snoozed_accounts=active_account_snoozes(engine, now), recoveries=result.recoveries,
                   first_run=first, inhibits=ruleset.inhibits, interrupted=result.interrupted)
    recent = _recent_for(engine, step.transitions, by_id, now)
    admin = _admin_notices(step.transitions, result.cohort_events, first, now, notices)

    def outbox(episode_ids: Mapping[Key, int]) -> list[OutboxItem]:  # in record_step's transaction
        report.alerts, items = _notifications(step.transitions, by_id, accounts, recent, episode_ids, notices)
        report.outbox_items = len(items) + len(admin)
        return items + admin

    record_step(engine, step, outbox, {r.id: r.rule_hash for r in ruleset.rules}, also=marks)
    report.rules_evaluated = sorted(result.evaluated_rules)
    report.findings = len(result.findings)
    report.transitions = step.transitions
    report.cohort_events = list(result.cohort_events)
    return report


def _evaluate_chunks(
    engine: Engine, rules: Sequence[Rule], ruleset: RuleSet, accounts: Mapping[str, AccountFacts], now: int,
    account_ids: Sequence[str] | None, chunk_accounts: int | None,
    opened: Mapping[str, Sequence[OpenEpisode]], muted: Mapping[str, Collection[str]] | None,
    pricing: Pricing | None = None,
) -> EvaluationResult:
    """The rules' verdicts on every chunk of accounts, merged (muted series undecided; severities
    raised for renewals by `pricing`)."""
    needs = history_needed(rules)
    if account_ids is not None:
        chunks: list[Sequence[str] | None] = [list(account_ids)] if account_ids else []
    elif chunk_accounts:
        chunks = list(account_chunks(engine, chunk_accounts, known=accounts))
    else:
        chunks = [None]
    out = EvaluationResult()
    tallies: list[CohortTally] = []  # cohort events are settled over the whole book, not per chunk
    metric_of = {r.id: r.metric for r in rules}
    for chunk in chunks:
        blocks = load_blocks_for(engine, needs, now, account_ids=chunk)
        result = evaluate(rules, blocks, accounts, now, only_due=False, open_episodes=opened,
                          calendar=ruleset.calendar, tallies=tallies, pricing=pricing)
        log_contained(result.contained, now)
        if muted:
            def is_muted(rule_id: str, account: str) -> bool:
                return account in muted.get(metric_of[rule_id], ())

            result.findings = [f for f in result.findings if not is_muted(f.rule_id, f.account_id)]
            result.decided = {(r, a) for r, a in result.decided if not is_muted(r, a)}
            result.recoveries = {k: v for k, v in result.recoveries.items() if not is_muted(k[0], k[1])}
        out.findings.extend(result.findings)
        out.decided |= result.decided
        out.evaluated_rules |= result.evaluated_rules
        out.recoveries.update(result.recoveries)
        out.interrupted.update(result.interrupted)
    settle_cohorts(tallies, out)
    return out


def _first_run(
    engine: Engine, result: EvaluationResult, now: int, notices: Notices, account_ids: Sequence[str] | None,
) -> tuple[FirstRun | None, list[Callable[[Connection], None]]]:
    """Which rules and accounts are evaluated for the first time now, and the writes that mark them
    (in the cycle's transaction). With first_run = "notify" nothing is marked or held back."""
    if notices.first_run == "notify":
        return None, []
    decided_accounts = {a for _, a in result.decided}
    known_rules = first_times(engine, RULE, result.evaluated_rules)
    known_accounts = first_times(engine, ACCOUNT, decided_accounts if account_ids is not None else None)
    first = FirstRun(firsts(known_rules, result.evaluated_rules, now), firsts(known_accounts, decided_accounts, now))
    new_rules = [r for r in first.rules if r not in known_rules]
    new_accounts = [a for a in first.accounts if a not in known_accounts]
    writes: list[Callable[[Connection], None]] = []
    if new_rules or new_accounts:
        writes.append(lambda conn: (mark(conn, RULE, new_rules, now), mark(conn, ACCOUNT, new_accounts, now)))
    return first, writes


def _notifications(
    transitions: Sequence[Transition], by_id: Mapping[str, Rule], accounts: Mapping[str, AccountFacts],
    recent: Mapping[tuple[str, str], list[float | None]], episode_ids: Mapping[Key, int], notices: Notices,
) -> tuple[list[AlertNotice], list[OutboxItem]]:
    """The notices of the published transitions (with their episode ids) and the outbox rows of
    those to notify, one per notifier. A quiet resolution of a notified episode is queued too, so a
    notifier can update what it showed (Slack: the parent message) without telling anyone."""
    published: list[AlertNotice] = []
    outbox: list[OutboxItem] = []
    for t in transitions:
        if t.event not in PUBLISHED_EVENTS:
            continue
        notice = alert_notice(t, by_id.get(t.state.rule_id), accounts.get(t.state.account_id),
                              recent.get((t.state.rule_id, t.state.account_id), []), episode_ids.get(t.key),
                              notices.pricing)
        published.append(notice)
        if t.notify or (t.quiet and t.reason.startswith("closed quietly")):
            outbox.extend(notices.items(notice))
    return published, outbox


def _admin_notices(
    transitions: Sequence[Transition], cohorts: Sequence[CohortEvent], first: FirstRun | None, now: int,
    notices: Notices,
) -> list[OutboxItem]:
    """One first-run summary (policy "digest") and one notice per cohort event, to the admin channel."""
    out: list[OutboxItem] = []
    held = [t for t in transitions if t.event == "fired" and t.reason == "first evaluation"]
    if held and first is not None and notices.first_run == "digest":
        out += notices.items(first_run_summary(held, first, now, notices.admin_channel), now)
    for ev in cohorts:
        out += notices.items(cohort_notice(ev, notices.admin_channel), now)
    return out


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0  # every row not delivered in this run (includes dead and deferred)
    dead: int = 0  # of those: permanent failures, not retried
    deferred: int = 0  # of those: due again after the notifier's retry_after
    lost: int = 0  # rows whose claim another deliverer took over (not delivered nor marked by this run)
    halted: int = 0  # of the dead: not tried, their outlet refused itself earlier in the run (DeliveryError.halts)
    errors: list[str] = field(default_factory=list)

    def not_sent(self) -> str:
        """What happened to the rows not sent: "2 deferred, 500 dead (499 of them not tried: ...)"."""
        text = f"{self.deferred} deferred, {self.dead} dead"
        if self.halted:
            text += f" ({self.halted} of them not tried: their notifier refused itself on an earlier row)"
        return text

    def add(self, other: DeliveryReport) -> None:
        """Count another run's rows in this report (the deliver job runs one per outlet)."""
        for name in ("sent", "failed", "dead", "deferred", "lost", "halted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors


CLAIM_BATCH = 20  # rows claimed at a time: well within what one lease covers at 1 post/s per channel


def deliver_outbox(
    engine: Engine, notifier: Notifier, now: int, limit: int = 500,
    backoff: Callable[[int], int] = lambda attempts: min(3600, 30 * 2 ** attempts),
    lease: int = DEFAULT_LEASE, holder: str | None = None,
) -> DeliveryReport:
    """Send the notifier's own due notification rows (at most `limit`); see `deliver_rows`."""
    return deliver_rows(engine, NoticeOutlet(notifier), now, limit, backoff, lease, holder)


def deliver_rows(
    engine: Engine, outlet: Outlet, now: int, limit: int = 500,
    backoff: Callable[[int], int] = lambda attempts: min(3600, 30 * 2 ** attempts),
    lease: int = DEFAULT_LEASE, holder: str | None = None, keys: Sequence[str] | None = None,
) -> DeliveryReport:
    """Carry out the outlet's own due outbox rows (at most `limit`; only these idempotency `keys`
    when given); failures are retried later with backoff.

    Rows are claimed CLAIM_BATCH at a time under a fenced lease (storage.outbox): the claim is
    renewed right before each row is handed to the outlet and by a heartbeat while the batch
    is worked on, and every outcome is recorded only under the claim's token. So a row is never
    delivered by two live deliverers (another `usagebot slack deliver`, a replica after
    failover), even when this run outlives one lease or the replicas' clocks disagree; a row
    whose claim was lost is skipped and counted in `lost`.

    A DeliveryError (integrations.notifier) with `retry_after` (int seconds, e.g. Slack's 429
    Retry-After) makes the row due again after exactly that delay instead of the backoff (a
    deferral: no try of the row, never dead for it); one that is `permanent` (retrying cannot help,
    e.g. an unknown channel) marks the row dead with the error, for an operator
    (storage.outbox.retry_dead puts it back); one that is `persistent` is retried with backoff and
    never made dead (something else bounds it). Anything else is retried with backoff.
    """
    report = DeliveryReport()
    handled: list[int] = []
    halted: DeliveryError | None = None  # the outlet refused itself: its other rows get the same answer
    while len(handled) < limit:
        batch = claim_due(engine, now, limit=min(CLAIM_BATCH, limit - len(handled)), kinds=list(outlet.kinds),
                          lease=lease, holder=holder, exclude=handled, keys=keys)
        if not batch:
            break
        handled += [r.id for r in batch]
        with LeaseKeeper(engine, batch[0].claim_token or "", [r.id for r in batch], lease) as keeper:
            for row in batch:
                if not keeper.take(row.id):
                    report.lost += 1
                    log.warning("delivery of %s skipped: its claim was taken over by another deliverer",
                                row.idempotency_key)
                    continue
                try:
                    if halted is not None:
                        _mark_halted(engine, row, now, halted, report)
                    else:
                        halted = _deliver_row(engine, outlet, row, now, backoff, report)
                except ClaimLost as exc:
                    report.lost += 1
                    log.warning("delivery of %s: %s", row.idempotency_key, exc)
                keeper.done(row.id)
    return report


def _mark_halted(engine: Engine, row: OutboxRow, now: int, halted: DeliveryError, report: DeliveryReport) -> None:
    """A row of an outlet that refused itself earlier in this run: dead with that error, not tried."""
    msg = mask(f"{type(halted).__name__}: {halted} (not tried: an earlier row of this run got this answer)")
    mark_dead(engine, row.id, now, msg, token=row.claim_token)
    report.dead += 1
    report.failed += 1
    report.halted += 1


def _deliver_row(engine: Engine, outlet: Outlet, row: OutboxRow, now: int,
                 backoff: Callable[[int], int], report: DeliveryReport) -> DeliveryError | None:
    """Carry out one row and record its outcome; returns the error when it halts the outlet."""
    token = row.claim_token
    try:
        outlet.handle(row.payload)
    except Exception as exc:  # a failing outlet must not lose the row
        msg = mask(f"{type(exc).__name__}: {exc}")
        retry_after = exc.retry_after if isinstance(exc, DeliveryError) else None
        if isinstance(exc, DeliveryError) and exc.halts:
            mark_dead(engine, row.id, now, msg, token=token)
            log.error("delivery of %s failed permanently (marked dead; the run sends no more rows of this kind): %s",
                      row.idempotency_key, msg)
            report.dead += 1
            report.failed += 1
            report.errors.append(f"outbox {row.idempotency_key}: {msg}")
            return exc
        if isinstance(exc, DeliveryError) and exc.permanent:
            mark_dead(engine, row.id, now, msg, token=token)
            log.error("delivery of %s failed permanently (marked dead): %s", row.idempotency_key, msg)
            report.dead += 1
        elif retry_after is not None:
            # a deferral is not the row failing: no try of the row, never dead
            mark_failed(engine, row.id, now, msg, retry_in=retry_after, token=token, counted=False)
            log.info("delivery of %s deferred by %ss: %s", row.idempotency_key, retry_after, msg)
            report.deferred += 1
        elif isinstance(exc, DeliveryError) and exc.persistent:  # bounded elsewhere: never dead
            mark_failed(engine, row.id, now, msg, retry_in=backoff(row.attempts), max_attempts=None, token=token)
            log.warning("delivery of %s failed (retried until done): %s", row.idempotency_key, msg)
        elif mark_failed(engine, row.id, now, msg, retry_in=backoff(row.attempts), token=token) == DEAD:
            log.error("delivery of %s failed for the last time (%s tries; marked dead): %s", row.idempotency_key,
                      row.attempts, msg)
            report.dead += 1
        else:
            log.warning("delivery of %s failed: %s", row.idempotency_key, msg)
        report.failed += 1
        report.errors.append(f"outbox {row.idempotency_key}: {msg}")
        return None
    if mark_sent(engine, [row.id], now, token=token) == 0:
        raise ClaimLost(f"outbox row {row.id} was delivered, but its claim had been taken over meanwhile")
    report.sent += 1
    return None

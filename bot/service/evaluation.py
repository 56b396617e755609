"""When the scheduler evaluates which rules, for which accounts.

Each tick (the `evaluate` job, every `scheduler.evaluate_every`):

1. Closed buckets. A rule is evaluated once per closed bucket, for every
   account: that is what drop detection (an account with no rows IS a drop),
   inactivity and quota forecasts need, and what `for` counts. A bucket
   ending at `at` is evaluated as soon as every source feeding the rule's
   metric has delivered data at or after `at` (so the bucket is complete),
   or at the latest `max_wait` after it closed. Progress per rule is stored
   (rule_progress), so a restart or a new leader continues where the last
   one stopped; missed buckets are caught up (at most `catch_up` per rule).
2. Changed data. Every write to usage records the (account, metric) series it
   changed with the first and last bucket written (storage.changes: polls,
   pushes, `usagebot ingest`, backfills). Data written inside the history a
   rule already evaluated ([at - history, at)) re-evaluates that rule at its
   last evaluation time for those accounts only; re-evaluating a time is
   idempotent (bot.service.pipeline), so this only corrects what the late data
   changes (a finding appearing, or resolving). A backfill of months into a
   running service thus gives the same episodes as loading it before the
   first evaluation (and the first-run policy applies to accounts evaluated
   for the first time).

Series fed by a stale source are muted in both (bot.service.freshness), and so are those of a
source still catching up (integrations.sources.base.catching_up): its data is not complete yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from bot.service.freshness import muted_series
from bot.service.notices import Notices
from bot.service.pipeline import CycleReport, run_cycle
from integrations.sources.base import catching_up
from rules.detectors import required_history
from rules.model import Rule, RuleSet
from rules.periods import iso
from storage.changes import changed_accounts, delete_changes, read_changes
from storage.rule_progress import get_rule_progress, set_rule_progress
from storage.sources import SourceState, list_source_states

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    at: int
    rule_ids: list[str]
    reason: str  # "bucket closed" | "late data"
    accounts: int | None  # None = every account
    seconds: float
    report: CycleReport


@dataclass
class TickReport:
    now: int
    evaluations: list[Evaluation] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)  # rule id -> bucket end it waits for
    muted_series: int = 0

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [a for e in self.evaluations for a in e.report.alerts]


def _ready(metric: str, at: int, now: int, max_wait: int, sources: list[SourceState]) -> bool:
    if now >= at + max_wait:
        return True
    feeds = [s for s in sources if metric in s.metrics and s.stale_since is None]
    if not feeds:
        return False  # nobody known to feed it: wait for max_wait
    return all(s.last_data_at is not None and s.last_data_at >= at for s in feeds)


class Evaluator:
    def __init__(self, engine: Engine, ruleset: RuleSet, max_wait: int = 3600, catch_up: int = 3,
                 chunk_accounts: int = 5000, timer: Callable[[], float] = time.perf_counter,
                 notices: Notices | None = None) -> None:
        self.engine = engine
        self.notices = notices or Notices()
        self.chunk_accounts = chunk_accounts  # full evaluations load this many accounts at a time
        self.ruleset = ruleset
        self.max_wait = max_wait
        self.catch_up = max(1, catch_up)
        self.timer = timer

    def _run(self, at: int, rules: list[Rule], reason: str, muted: dict[str, set[str]],
             accounts: list[str] | None = None) -> Evaluation:
        started = self.timer()
        report = run_cycle(self.engine, self.ruleset, at, only_due=False, account_ids=accounts,
                           chunk_accounts=self.chunk_accounts if accounts is None else None,
                           muted=muted, rule_ids={r.id for r in rules}, notices=self.notices)
        ev = Evaluation(at, [r.id for r in rules], reason, None if accounts is None else len(accounts),
                        self.timer() - started, report)
        log.info("evaluated %d rule(s) at %s (%s): %d alert(s)", len(rules), iso(at), reason, len(report.alerts),
                 extra={"event": "evaluation", "at": at, "rules": ev.rule_ids, "reason": reason,
                        "accounts": ev.accounts, "seconds": round(ev.seconds, 3),
                        "alerts": len(report.alerts)})
        return ev

    def tick(self, now: int) -> TickReport:
        out = TickReport(now)
        rules = list(self.ruleset.rules)
        if not rules:
            changes = read_changes(self.engine)
            if changes.upto_id:
                delete_changes(self.engine, changes.upto_id)  # nothing to evaluate: don't let them pile up
            return out
        sources = list_source_states(self.engine)
        # a source catching up (it read a shorter window than it is behind by: integrations.sources.base
        # CatchUp) has stored only part of what is due, as a stale one has: its series are muted too, or
        # buckets past max_wait would be judged on the days it has not read yet (a drop for every account)
        stale = [s.source_id for s in sources if s.stale_since is not None or catching_up(s.cursor)]
        muted = muted_series(self.engine, stale) if stale else {}
        out.muted_series = sum(len(v) for v in muted.values())
        changes = read_changes(self.engine)  # read BEFORE step 1: what step 1 evaluates includes these
        progress = get_rule_progress(self.engine)

        due: dict[int, list[Rule]] = {}
        for rule in rules:
            latest = (now // rule.bucket) * rule.bucket
            through = progress.get(rule.id, latest - rule.bucket)
            first = max(through + rule.bucket, latest - (self.catch_up - 1) * rule.bucket)
            for at in range(first, latest + 1, rule.bucket):
                if not _ready(rule.metric, at, now, self.max_wait, sources):
                    out.waiting[rule.id] = at
                    break
                due.setdefault(at, []).append(rule)
        evaluated_now: set[str] = set()
        for at in sorted(due):
            out.evaluations.append(self._run(at, due[at], "bucket closed", muted))
            set_rule_progress(self.engine, {r.id: at for r in due[at]}, now)
            evaluated_now |= {r.id for r in due[at]}
            for r in due[at]:
                progress[r.id] = at

        late: dict[tuple[int, str], tuple[list[Rule], set[str]]] = {}
        changed_metrics = changes.metrics()
        for rule in rules:
            at = progress.get(rule.id)
            if at is None or rule.id in evaluated_now or rule.metric not in changed_metrics:
                continue
            accounts = changed_accounts(self.engine, changes, rule.metric, before=at, since=at - required_history(rule))
            if accounts:
                rs, accs = late.setdefault((at, rule.metric), ([], set()))
                rs.append(rule)
                accs |= accounts
        for (at, _metric), (rs, accs) in sorted(late.items(), key=lambda kv: kv[0]):
            out.evaluations.append(self._run(at, rs, "late data", muted, sorted(accs)))
        if changes.upto_id:
            delete_changes(self.engine, changes.upto_id)
        return out

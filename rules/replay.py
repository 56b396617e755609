"""Replay history bucket by bucket, exactly as the scheduler would (pure).

At every bucket close time t in (start, end] (the union of the rules' bucket
boundaries), the rules whose bucket closes at t are evaluated on data that
ended by t, then the lifecycle advances. Nothing after t is visible at t:
`rules.engine.evaluate_rule` truncates each block to the buckets ended by t.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rules.detectors.scan import Scanned
from rules.engine import BlockKey, CohortEvent, DecidedByRule, Reuse, RunRows, evaluate
from rules.impact import Pricing
from rules.kinds import kind_of
from rules.lifecycle import OPEN, EpisodeState, FirstRun, Key, Run, Transition, advance, ran, told_again
from rules.model import (
    AccountFacts,
    Calendar,
    FindingRows,
    FoundItem,
    Inhibit,
    LazyExplanation,
    MetricBlock,
    OpenEpisode,
    Rule,
)


@dataclass(frozen=True)
class ReplayStep:
    at: int
    transitions: list[Transition]
    states: Mapping[Key, EpisodeState]  # every state after this step: a live view, built when read (States; copy it to keep it)
    cohort_events: list[CohortEvent]
    # (rule_id, account_id, why): left undecided at this step, their usage not a finite number (rules.engine)
    contained: list[tuple[str, str, str]] = field(default_factory=list)


def evaluation_times(rules: Sequence[Rule], start: int, end: int) -> list[int]:
    """Bucket close times t with start < t <= end for any of the rules."""
    times: set[int] = set()
    for step in {r.bucket for r in rules}:
        first = (start // step + 1) * step
        times.update(range(first, end + 1, step))
    return sorted(times)


class Scans:
    """Which rows each rule's detector must run on at a step of the replay (the one-pass scans).

    A rule whose kind has a scan (rules.kinds.Kind.scan) is scanned once over its whole block: the
    rows that may have a finding at each bucket close (a superset, rules.detectors.scan). At a step
    its detector runs on those rows, the rows with an open episode of the rule (judged, resolved or
    continued) and, with the first-run policy, the rows of accounts no rule has decided yet (the
    first evaluation that decides an account is what the policy reads). Every other row would get
    no finding and its verdict would change nothing: it has no open episode to resolve or carry, so
    the events are those of running the detector on every row. A cohort event's share needs every
    row's verdict: a scan that knows which rows are decided (rules.detectors.scan.Scanned) has the
    rows not run tallied from that; without it, a rule with a cohort runs on every row at a step
    where its candidates without an open episode could make an event (at least `min_accounts` of
    them). Rules of kinds without a
    scan, or whose scan cannot bound the block, run on every row, and so does a rule at a step where
    more than half its rows must run anyway (picking them out would cost more than it saves).
    """

    def __init__(self, rules: Sequence[Rule], blocks: Mapping[BlockKey, MetricBlock],
                 accounts: Mapping[str, AccountFacts], reuse: Reuse, first_run: bool) -> None:
        self.rules = list(rules)
        self.blocks = blocks
        self.accounts = accounts
        self.reuse = reuse
        self.candidates: dict[str, np.ndarray | None] = {}  # None: no bound (every row runs)
        self.decided: dict[str, np.ndarray] = {}
        self.row_of: dict[BlockKey, dict[str, int]] = {}
        self.unseen: dict[BlockKey, np.ndarray] | None = {} if first_run else None
        self.pending: dict[str, Rule] = {}  # rules with a scan not run yet (run when first needed)
        self._opened_of: dict[str, tuple[Sequence[OpenEpisode], list[int]]] = {}
        for rule in rules:
            key = (rule.metric, rule.bucket)
            block = blocks.get(key)
            if kind_of(rule.kind).scan is None or block is None:
                continue
            self.pending[rule.id] = rule
            if key not in self.row_of:
                self.row_of[key] = {a: i for i, a in enumerate(block.account_ids)}
                if self.unseen is not None:
                    self.unseen[key] = np.ones(len(block.account_ids), dtype=bool)

    def _scan(self, rule: Rule) -> np.ndarray | None:
        """The rule's one-pass scan over its whole block (run once, at the first step that reads it)."""
        del self.pending[rule.id]
        key = (rule.metric, rule.bucket)
        block = self.blocks[key]
        # huge values may overflow in a scan as in a detector (rules.engine contains them per account)
        with np.errstate(over="ignore", invalid="ignore"):
            got = kind_of(rule.kind).scan(rule, block, self.reuse.facts(key, block, self.accounts))  # type: ignore[misc]
        if isinstance(got, Scanned):
            self.candidates[rule.id], self.decided[rule.id] = got.candidates, got.decided
        else:
            self.candidates[rule.id] = got
        return self.candidates[rule.id]

    def rows_at(self, t: int, told: Mapping[str, Sequence[OpenEpisode]]) -> dict[str, RunRows]:
        """rule id -> the rows its detector runs on at t (rules without a scan: not listed).

        A rule's scan runs at the first step that reads it: while every row of its block is unseen
        (the first-run policy's first evaluation) every row runs whatever the scan says, so the
        first step's events come out before the scans are run (~1/3 of the time to the first
        event of a 2k x 180 backtest)."""
        out: dict[str, RunRows] = {}
        for rule in self.rules:
            if t % rule.bucket:
                continue
            key = (rule.metric, rule.bucket)
            if rule.id in self.pending:
                unseen = None if self.unseen is None else self.unseen.get(key)
                if unseen is not None and unseen.size and unseen.all():
                    continue  # every row unseen: every row runs (rows |= unseen below), no scan needed
                cand = self._scan(rule)
            else:
                cand = self.candidates.get(rule.id)
            if cand is None:
                continue
            block = self.blocks[key]
            j = max(0, min((t - block.start) // block.step, block.n_buckets))
            rows = cand[:, j].copy()
            opened = self._opened(rule.id, key, told.get(rule.id, ()))
            decided = self.decided.get(rule.id)
            if rule.cohort is not None and decided is None:
                fresh = rows.copy()
                fresh[opened] = False
                if np.count_nonzero(fresh) >= rule.cohort.min_accounts:
                    continue  # a cohort event is possible: every row's verdict counts
            rows[opened] = True
            if self.unseen is not None:
                rows |= self.unseen[key]
            if 2 * np.count_nonzero(rows) <= rows.size:  # else picking the rows costs more than it saves
                out[rule.id] = RunRows(rows, None if decided is None else decided[:, j])
        return out

    def _opened(self, rule_id: str, key: BlockKey, told: Sequence[OpenEpisode]) -> list[int]:
        """The block rows of the rule's open episodes, kept while the told list is the same object
        (rules.replay.Told.lists: unchanged OpenEpisodes)."""
        hit = self._opened_of.get(rule_id)
        if hit is not None and hit[0] is told:
            return hit[1]
        row_of = self.row_of[key]
        rows = [row_of[e.account_id] for e in told if e.account_id in row_of]
        self._opened_of[rule_id] = (told, rows)
        return rows

    def seen(self, accounts: Iterable[str]) -> None:
        """Accounts some rule has decided (the first-run policy no longer needs their rows)."""
        if self.unseen is None:
            return
        for key, row_of in self.row_of.items():
            rows = [row_of[a] for a in accounts if a in row_of]
            self.unseen[key][rows] = False


def _baseline(s: EpisodeState) -> object:
    """s.last_explanation.get("baseline"), read from the columnar findings row without a call chain when
    it is a replay's lazy explanation of one (what a continued episode's state holds)."""
    e = s.last_explanation
    if type(e) is LazyExplanation:
        rows = e._finding  # the FindingRows it explains a row of, until built
        if type(rows) is FindingRows and rows.baselines is None:
            return None  # none of the rows has a baseline (quota, expansion): LazyExplanation.get's answer
    return e.get("baseline")


def _told_alike(old: EpisodeState, new: EpisodeState) -> bool:
    """Whether open state `new` is told to the detectors as `old` is (rules.lifecycle._told_same, for
    two states of one key, `old` open): Told may keep either, what it tells is the same."""
    if new.status != old.status or new.fired_at != old.fired_at or new.started_at != old.started_at:
        return False
    ref = new.reference
    if ref is not None or old.reference is not None:
        return old.reference is ref
    a, b = old.last_explanation, new.last_explanation
    if type(a) is LazyExplanation and type(b) is LazyExplanation:  # two rows of columnar findings: most calls
        fa, fb = a._finding, b._finding
        if type(fa) is FindingRows and type(fb) is FindingRows:
            if fa.baselines is None and fb.baselines is None:
                return True  # no row of either has a baseline (quota, expansion: most continued episodes)
            return fa.baseline_of(a._k) == fb.baseline_of(b._k)
    return _baseline(old) == _baseline(new)


class Told:
    """What the detectors are told about the open episodes at each step (rules.lifecycle.open_episodes
    of the open states), kept across the steps of a replay and updated only for the states a step
    changed: the same lists, in the same order (the open states' order), as open_episodes of every
    open state at every step, without walking the episodes no step changed. An episode a finding
    continued (a new state, told the same: rules.lifecycle.told_again) keeps its OpenEpisode; the state
    kept beside it may be an earlier one told the same (the replay does not put a continued episode
    told alike, _told_alike): only what it tells is compared."""

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        self.rules = rules
        self.by_rule: dict[str, dict[Key, tuple[EpisodeState, OpenEpisode]]] = {}
        self._lists: dict[str, list[OpenEpisode]] = {}  # each rule's list as last handed out
        self._dirty: set[str] = set()  # rules whose OpenEpisodes changed since (their list is rebuilt)

    def put(self, s: EpisodeState, key: Key | None = None) -> None:
        """A state after a step (of `key`, s.key when not given): told (open) or no longer (closed)."""
        if s.rule_id not in self.rules:
            return  # open_episodes leaves out the episodes of rules it is not given
        told = self.by_rule.get(s.rule_id)
        if told is None:
            told = self.by_rule[s.rule_id] = {}
        if key is None:
            key = s.key
        if s.status not in OPEN:
            if told.pop(key, None) is not None:
                self._dirty.add(s.rule_id)
            return
        hit = told.get(key)
        if hit is not None and _told_alike(hit[0], s):
            told[key] = (s, hit[1])  # told the same: keeps its OpenEpisode (no told_again call chain)
            return
        told[key] = now = told_again(hit, s, self.rules)
        if hit is None or now[1] is not hit[1]:
            self._dirty.add(s.rule_id)

    def reorder(self, position: Mapping[Key, int], rule_ids: Iterable[str]) -> None:
        """Back to the open states' order after an episode of each of `rule_ids` reopened in its old
        place (only those rules' episodes are out of order: every other put keeps its place or comes
        last, as in the open states)."""
        for rid in rule_ids:
            told = self.by_rule.get(rid)
            if told:
                self.by_rule[rid] = _in_order(told, position)
                self._dirty.add(rid)

    def lists(self) -> dict[str, list[OpenEpisode]]:
        """rule id -> its open episodes as told: a rule's list is the same object from step to step
        while none of its OpenEpisodes changed (Scans.rows_at keeps what it derives from one), so
        neither the lists nor the callers' rows are rebuilt per open episode per step. Not to be changed."""
        for rid in self._dirty:
            told = self.by_rule.get(rid)
            if told:
                self._lists[rid] = [e for _, e in told.values()]
            else:
                self._lists.pop(rid, None)
        self._dirty.clear()
        return dict(self._lists)


class States(Mapping[Key, EpisodeState]):
    """Every state of a replay after its latest step (ReplayStep.states), a live view: a firing episode
    continued without a transition is held as its state when the run began and the run's steps
    (rules.lifecycle.advance `runs`), and is materialised when read (then kept: read again, it is the
    same object until the episode changes). So a step costs nothing per such episode beyond counting
    it, while the view gives every state as the stepwise lifecycle makes it."""

    __slots__ = ("_states", "_open", "_runs")

    def __init__(self, states: dict[Key, EpisodeState], open_now: dict[Key, EpisodeState],
                 runs: dict[Key, Run]) -> None:
        self._states, self._open, self._runs = states, open_now, runs

    def __getitem__(self, key: Key) -> EpisodeState:
        s = self._states[key]
        if self._runs:
            run = self._runs.pop(key, None)
            if run is not None:
                s = self._states[key] = ran(s, run)
                if key in self._open:
                    self._open[key] = s
        return s

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def __iter__(self) -> Iterator[Key]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)


def _reopened(found: Sequence[FoundItem], open_now: Mapping[Key, EpisodeState],
              current: Mapping[Key, EpisodeState]) -> list[Key]:
    """The keys of findings whose episode is recorded and closed (in no order: the caller sorts them),
    by set operations over each columnar item's keys, not a test per finding in Python (most findings
    continue an open episode)."""
    keys: set[Key] = set()
    for item in found:
        if type(item) is FindingRows:
            keys.update(item.keys())
        else:
            keys.add(item.key)
    keys.difference_update(open_now)
    return [k for k in keys if k in current]


def _in_order(d: dict[Key, EpisodeState] | dict[Key, tuple[EpisodeState, OpenEpisode]],
              position: Mapping[Key, int]) -> dict:  # type: ignore[type-arg]
    """`d` in the order of `position` (a key's place in the replay's states): sorted by a C-level key
    (position.__getitem__), not a lambda per item (at 10k x 180 three sorts of ~3.5k open episodes
    per step, 1.8M lambda calls)."""
    keys = sorted(d, key=position.__getitem__)
    return dict(zip(keys, map(d.__getitem__, keys), strict=True))


def replay(
    rules: Sequence[Rule],
    blocks: Mapping[BlockKey, MetricBlock],
    accounts: Mapping[str, AccountFacts],
    start: int,
    end: int,
    states: Mapping[Key, EpisodeState] | None = None,
    inhibits: Sequence[Inhibit] = (),
    calendar: Calendar | None = None,
    quiet_first_run: bool = False,
    pricing: Pricing | None = None,
) -> Iterator[ReplayStep]:
    """Evaluate and advance at every bucket close in (start, end], as the scheduler would.

    quiet_first_run: conditions already true when a rule or an account is first evaluated are
    recorded, not notified (the service's default first-run policy).
    pricing: the service's [pricing] (a renewal raises a finding's severity, rules.engine.evaluate).
    """
    by_id = {r.id: r for r in rules}
    current: dict[Key, EpisodeState] = dict(states or {})
    # Only open episodes (and closed ones a finding reopens) can change in a step: the lifecycle is
    # handed those, not every state ever recorded (that made a replay quadratic in its days).
    open_now: dict[Key, EpisodeState] = {k: s for k, s in current.items() if s.is_open}
    # firing episodes continued without a transition since their state in `current` (not materialised)
    runs: dict[Key, Run] = {}
    position = {k: n for n, k in enumerate(current)}  # handed over in `current`'s order, as before
    reuse = Reuse()
    disordered: set[str] = set()  # rules with an episode reopened in its old place (out of order)
    told = Told(by_id)  # what the detectors are told, per rule and state
    for st in open_now.values():
        told.put(st)
    seen_rules: set[str] = set()
    seen_accounts: set[str] = set()
    scans = Scans(rules, blocks, accounts, reuse, quiet_first_run)
    live = States(current, open_now, runs)
    for t in evaluation_times(rules, start, end):
        if disordered:  # an episode reopened: back to its place in `current`'s order
            ordered = _in_order(open_now, position)
            open_now.clear()  # in place: the states view reads it
            open_now.update(ordered)
            told.reorder(position, disordered)
            disordered = set()
        told_now = told.lists()
        result = evaluate(rules, blocks, accounts, t, only_due=True, calendar=calendar,
                          open_episodes=told_now, reuse=reuse, only=scans.rows_at(t, told_now), pricing=pricing)
        first = None
        if quiet_first_run:
            decided = result.decided
            decided_accounts = decided.accounts() if isinstance(decided, DecidedByRule) else {a for _, a in decided}
            first = FirstRun(frozenset(result.evaluated_rules - seen_rules),
                             frozenset(decided_accounts - seen_accounts))
            seen_rules |= result.evaluated_rules
            seen_accounts |= decided_accounts
            scans.seen(first.accounts)
        touched = dict(open_now)
        reopened = _reopened(result.found, open_now, current)
        if reopened:
            touched.update((k, current[k]) for k in reopened)
            touched = _in_order(touched, position)
        step = advance(by_id, result.found, result.decided, touched, t,
                       evaluated_rules=result.evaluated_rules, recoveries=result.recoveries,
                       first_run=first, inhibits=inhibits, explain=LazyExplanation,
                       interrupted=result.interrupted, runs=runs)
        for key, new in step.states.items():
            old = touched.get(key)
            if old is new:
                continue
            if old is not None and key in open_now and _told_alike(old, new):
                # an open episode continued (told the same: the detectors' view of it needs no update,
                # rules.replay.Told keeps a state told the same); most changed states of a step
                current[key] = open_now[key] = new
                continue
            if key not in position:
                position[key] = len(position)
            current[key] = new
            if new.status in OPEN:
                if key not in open_now and position[key] < len(position) - 1:
                    disordered.add(new.rule_id)
                open_now[key] = new
            else:
                open_now.pop(key, None)
            told.put(new, key)
        yield ReplayStep(t, step.transitions, live, result.cohort_events, result.contained)

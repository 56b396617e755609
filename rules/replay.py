"""Replay history bucket by bucket, exactly as the scheduler would (pure).

At every bucket close time t in (start, end] (the union of the rules' bucket
boundaries), the rules whose bucket closes at t are evaluated on data that
ended by t, then the lifecycle advances. Nothing after t is visible at t:
`rules.engine.evaluate_rule` truncates each block to the buckets ended by t.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from rules.engine import BlockKey, CohortEvent, DecidedByRule, Reuse, evaluate
from rules.lifecycle import EpisodeState, FirstRun, Key, Transition, advance, open_episodes
from rules.model import AccountFacts, Calendar, Inhibit, LazyExplanation, MetricBlock, OpenEpisode, Rule


@dataclass(frozen=True)
class ReplayStep:
    at: int
    transitions: list[Transition]
    states: Mapping[Key, EpisodeState]  # every state after this step: a live view (copy it to keep it)
    cohort_events: list[CohortEvent]


def evaluation_times(rules: Sequence[Rule], start: int, end: int) -> list[int]:
    """Bucket close times t with start < t <= end for any of the rules."""
    times: set[int] = set()
    for step in {r.bucket for r in rules}:
        first = (start // step + 1) * step
        times.update(range(first, end + 1, step))
    return sorted(times)


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
) -> Iterator[ReplayStep]:
    """Evaluate and advance at every bucket close in (start, end], as the scheduler would.

    quiet_first_run: conditions already true when a rule or an account is first evaluated are
    recorded, not notified (the service's default first-run policy).
    """
    by_id = {r.id: r for r in rules}
    current: dict[Key, EpisodeState] = dict(states or {})
    live = MappingProxyType(current)
    # Only open episodes (and closed ones a finding reopens) can change in a step: the lifecycle is
    # handed those, not every state ever recorded (that made a replay quadratic in its days).
    open_now: dict[Key, EpisodeState] = {k: s for k, s in current.items() if s.is_open}
    position = {k: n for n, k in enumerate(current)}  # handed over in `current`'s order, as before
    reuse = Reuse()
    disordered = False
    told: dict[Key, tuple[EpisodeState, OpenEpisode]] = {}  # what the detectors were told, per state
    seen_rules: set[str] = set()
    seen_accounts: set[str] = set()
    for t in evaluation_times(rules, start, end):
        if disordered:  # an episode reopened: back to its place in `current`'s order
            open_now = dict(sorted(open_now.items(), key=lambda kv: position[kv[0]]))
            disordered = False
        result = evaluate(rules, blocks, accounts, t, only_due=True, calendar=calendar,
                          open_episodes=open_episodes(open_now, by_id, memo=told), reuse=reuse)
        first = None
        if quiet_first_run:
            decided = result.decided
            decided_accounts = decided.accounts() if isinstance(decided, DecidedByRule) else {a for _, a in decided}
            first = FirstRun(frozenset(result.evaluated_rules - seen_rules),
                             frozenset(decided_accounts - seen_accounts))
            seen_rules |= result.evaluated_rules
            seen_accounts |= decided_accounts
        touched = dict(open_now)
        reopened = [f.key for f in result.findings if f.key in current and f.key not in open_now]
        if reopened:
            touched.update((k, current[k]) for k in reopened)
            touched = dict(sorted(touched.items(), key=lambda kv: position[kv[0]]))
        step = advance(by_id, result.findings, result.decided, touched, t,
                       evaluated_rules=result.evaluated_rules, recoveries=result.recoveries,
                       first_run=first, inhibits=inhibits, explain=LazyExplanation,
                       interrupted=result.interrupted)
        for key, new in step.states.items():
            if touched.get(key) is not new:
                if key not in position:
                    position[key] = len(position)
                current[key] = new
                if new.is_open:
                    disordered = disordered or (key not in open_now and position[key] < len(position) - 1)
                    open_now[key] = new
                else:
                    open_now.pop(key, None)
                    told.pop(key, None)
        yield ReplayStep(t, step.transitions, live, result.cohort_events)

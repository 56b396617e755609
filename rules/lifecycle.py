"""Alert episode lifecycle: pending -> firing -> resolved (pure, no clock reads).

One episode exists per key (rule, account, metric, discriminator). Each
evaluation hands `advance` the findings (conditions holding now), the set of
(rule, account) pairs the detectors could decide, the previous states and
`now`; it returns the new states and the transitions to act on.

- A finding opens a *pending* episode; it *fires* once the condition has held
  for `rule.for_buckets` consecutive evaluations. A firing episode never fires
  again (no duplicate fires for one episode).
- A pending episode whose key has no finding is *cleared* when the detector
  decided its account. A firing one *resolves* only after `resolve_buckets(rule)`
  decided evaluations in a row without the condition (the hold Prometheus calls
  keep_firing_for; the detectors already judge open episodes against the level
  frozen when they opened, with a recovery threshold). The resolution carries
  the detector's Recovery: what is true now. A quiet recovery (a billing period
  ended, an opportunity passed) resolves without notifying people. Missing data
  keeps the state; a bucket explained by an event shared by many accounts (a
  cohort event, a [calendar] day) clears a pending episode (`for` counts
  consecutive buckets of the account's own behaviour) and keeps a firing one.
- `once` keys (quota thresholds per billing period) fire at most once, ever.
- Cooldown: a new episode firing within `rule.cooldown` of the last
  notification for the same key is recorded but not notified.
- Renotify: a firing episode is notified again every `rule.renotify` seconds
  (never sooner than the cooldown) unless acknowledged or snoozed.
- Levels of one once-per-period rule crossing in the same step notify only
  the highest level (the others are recorded, reason "superseded").
- Snoozes (per episode, or per account via `snoozed_accounts`) and
  acknowledgements suppress notifications, never the state change itself.
- First evaluation (`first_run`): a condition already true when a rule or an
  account is evaluated for the first time is recorded, not notified (reason
  "first evaluation"); the caller sends one summary instead.
- Inhibition (`inhibits`, as in Alertmanager): a fired/renotified notification
  is suppressed while a firing, notified source episode with the same labels
  started at or before it. A rule whose fingerprint equals an earlier rule's is
  its duplicate: the earlier rule's firing episode of the same key inhibits it.
- Grouping: alerts of one account that fire in the same step to the same people
  are one notification, led by the most severe (`Transition.grouped`).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields
from typing import Any

from rules.gcpause import gc_paused
from rules.kinds import resolve_buckets
from rules.model import (
    Finding,
    FindingRows,
    FoundItem,
    Inhibit,
    LazyExplanation,
    OpenEpisode,
    Recovery,
    Reference,
    Rule,
)
from rules.periods import iso

Key = tuple[str, str, str, str]

PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"
# Why a pending episode is cleared at a cohort event or a [calendar] day (see advance's `interrupted`).
INTERRUPTED = "the run of buckets was broken by an event shared by many accounts"
OPEN = (PENDING, FIRING)


@dataclass(frozen=True)
class EpisodeState:
    rule_id: str
    account_id: str
    metric: str
    discriminator: str
    status: str
    started_at: int
    consecutive: int = 0
    fired_at: int | None = None
    resolved_at: int | None = None
    last_notified_at: int | None = None
    once: bool = False
    severity: str = "warning"
    last_seen_at: int | None = None  # last evaluation at which the condition held
    last_explanation: Mapping[str, Any] = field(default_factory=dict)
    acknowledged_by: str | None = None
    acknowledged_at: int | None = None
    snoozed_until: int | None = None
    reference: Reference | None = None  # usual level frozen when the episode opened (spike/drop)
    clear_count: int = 0  # decided evaluations in a row without the condition (while firing)
    recovering_since: int | None = None  # the first of those evaluations
    cleared_at: int | None = None  # the last of those (so re-evaluating a time counts it once)
    held: bool = False  # opened at a first evaluation: firing later (for) is recorded, not notified
    episode_id: int | None = None  # storage row id, set by the storage adapter

    @property
    def key(self) -> Key:
        return (self.rule_id, self.account_id, self.metric, self.discriminator)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN


_STATE_FIELDS = frozenset(f.name for f in fields(EpisodeState))


def replace(state: EpisodeState, **changes: Any) -> EpisodeState:
    """dataclasses.replace for EpisodeState, about 5x faster (a step replaces one state per finding).

    EpisodeState is frozen with no __post_init__, so copying its __dict__ and applying the changes
    gives exactly what dataclasses.replace would; unknown field names still raise.
    """
    if not changes.keys() <= _STATE_FIELDS:
        raise TypeError(f"EpisodeState has no field(s) {sorted(changes.keys() - _STATE_FIELDS)}")
    new = object.__new__(EpisodeState)
    d = state.__dict__.copy()  # the whole table copied, then the changes (not one insert per field)
    d.update(changes)
    object.__setattr__(new, "__dict__", d)
    return new


def _continued(prev: EpisodeState, now: int, explanation: Mapping[str, Any], severity: str) -> EpisodeState:
    """replace(prev, ...) for an open episode a finding continues without a transition (the replay
    makes one per open episode per step: the changes set directly, no keyword dict to check)."""
    new = object.__new__(EpisodeState)
    d = prev.__dict__.copy()  # a copy of the whole table, not one insert per field (a fresh dict's update)
    object.__setattr__(new, "__dict__", d)
    d["consecutive"] = prev.consecutive + 1
    d["last_seen_at"] = now
    d["last_explanation"] = explanation
    d["severity"] = severity
    d["clear_count"] = 0
    d["recovering_since"] = None
    d["cleared_at"] = None
    return new


# A run of steps a finding continued a firing episode without a transition, not materialised yet (a
# replay's rules.lifecycle.advance `runs`): [steps, last step's now, its FindingRows, row, severity,
# the state the run continues (the one its key keeps meanwhile)].
Run = list[Any]


def ran(prev: EpisodeState, run: Run) -> EpisodeState:
    """The state `prev` becomes after the steps of `run`: _continued(prev, ...) once per step, in one go
    (each step sets the same fields to its own values; only `consecutive` counts the steps)."""
    steps, now, rows, k, severity = run[:5]
    s = _continued(prev, now, LazyExplanation(rows, k), severity)
    s.__dict__["consecutive"] = prev.consecutive + steps
    return s


def _current(states: Mapping[Key, EpisodeState], runs: dict[Key, Run] | None, key: Key) -> EpisodeState | None:
    """states[key] (None: no state), with the steps of its run (if any) applied and the run dropped."""
    prev = states.get(key)
    if runs and prev is not None:
        run = runs.pop(key, None)
        if run is not None:
            return ran(prev, run)
    return prev


@dataclass(frozen=True)
class Transition:
    """Something that happened to an episode at `at`.

    event: "pending" | "fired" | "renotified" | "resolved" | "cleared"
    ("cleared" = a pending episode whose condition went away before firing).
    notify: whether a notification should be sent (False when suppressed by
    cooldown, snooze or acknowledgement; `reason` says why).
    """

    event: str
    at: int
    state: EpisodeState
    finding: Finding | None
    notify: bool
    reason: str = ""
    recovery: Recovery | None = None  # resolved: what is true now
    quiet: bool = False  # resolved without a message to people (a period ended, an opportunity passed)
    grouped: tuple[Transition, ...] = ()  # fired: the account's other alerts of this step, sent in this message

    @property
    def key(self) -> Key:
        return self.state.key


@dataclass
class LifecycleResult:
    states: dict[Key, EpisodeState]  # every state after this step (changed or not)
    transitions: list[Transition]


@dataclass(frozen=True)
class FirstRun:
    """Rules and accounts evaluated for the first time in this step."""

    rules: frozenset[str] = frozenset()
    accounts: frozenset[str] = frozenset()

    def covers(self, rule_id: str, account_id: str) -> bool:
        return rule_id in self.rules or account_id in self.accounts


def open_episodes(states: Mapping[Key, EpisodeState], rules: Mapping[str, Rule],
                  now: int | None = None) -> dict[str, list[OpenEpisode]]:
    """rule id -> its open episodes, as the detectors are told about them.

    now: when `now` itself was evaluated before (a retried cycle), the episodes as they were
    before it: one that started at `now` is not open yet, one that fired at `now` was pending.
    An episode stored before references were kept gets its last baseline as a one-value reference.
    (A replay keeps what it told the detectors across steps instead: rules.replay.Told.)
    """
    out: dict[str, list[OpenEpisode]] = {}
    for s in states.values():
        if not s.is_open or s.rule_id not in rules or s.started_at == now:
            continue
        out.setdefault(s.rule_id, []).append(_open_episode(s, rules, now))
    return out


def told_again(hit: tuple[EpisodeState, OpenEpisode] | None, s: EpisodeState,
               rules: Mapping[str, Rule]) -> tuple[EpisodeState, OpenEpisode]:
    """(s, what the detectors are told about open state s), given `hit`, the pair last told for its
    key (None: never): the OpenEpisode kept while s is told the same (a finding continued it)."""
    if hit is None or (hit[0] is not s and not _told_same(hit[0], s)):
        return s, _open_episode(s, rules, None)
    return hit if hit[0] is s else (s, hit[1])


def _told_same(old: EpisodeState, new: EpisodeState) -> bool:
    """Whether the detectors are told the same about two states of one key (equal OpenEpisodes):
    an episode a finding continued (a new state each step) keeps its OpenEpisode."""
    if old.status != new.status or old.fired_at != new.fired_at or old.started_at != new.started_at:
        return False
    if new.reference is not None or old.reference is not None:
        return old.reference is new.reference
    return old.last_explanation.get("baseline") == new.last_explanation.get("baseline")


def _open_episode(s: EpisodeState, rules: Mapping[str, Rule], now: int | None) -> OpenEpisode:
    ref = s.reference
    if ref is None:
        base = s.last_explanation.get("baseline")
        if isinstance(base, int | float) and not isinstance(base, bool):
            step = rules[s.rule_id].bucket
            ref = Reference(s.started_at - step, step, (float(base),))
    firing = s.status == FIRING and (now is None or s.fired_at != now)
    return OpenEpisode(s.account_id, s.discriminator, s.started_at, firing, ref)


def _suppression(
    state: EpisodeState, now: int, snoozed_accounts: Mapping[str, int]
) -> str:
    if state.snoozed_until is not None and now < state.snoozed_until:
        return "snoozed"
    until = snoozed_accounts.get(state.account_id)
    if until is not None and now < until:
        return "account snoozed"
    if state.acknowledged_by is not None:
        return "acknowledged"
    return ""


@gc_paused()
def advance(
    rules: Mapping[str, Rule],
    findings: Sequence[FoundItem],
    decided: Iterable[tuple[str, str]],
    states: Mapping[Key, EpisodeState],
    now: int,
    snoozed_accounts: Mapping[str, int] | None = None,
    evaluated_rules: Iterable[str] | None = None,
    recoveries: Mapping[tuple[str, str, str], Recovery] | None = None,
    first_run: FirstRun | None = None,
    inhibits: Sequence[Inhibit] = (),
    explain: Callable[[Finding], Mapping[str, Any]] = Finding.explanation,
    interrupted: Container[tuple[str, str]] = (),
    runs: dict[Key, Run] | None = None,
) -> LifecycleResult:
    """One lifecycle step at evaluation time `now`.

    decided: (rule_id, account_id) pairs whose detector had enough data.
    evaluated_rules: rule ids evaluated in this step; open episodes of other
    rules are left alone unless the rule no longer exists (then they resolve).
    Defaults to every rule in `rules`.
    recoveries: (rule_id, account_id, discriminator) -> the detector's Recovery
    for open episodes whose condition does not hold now.
    first_run: rules/accounts evaluated for the first time (fired, not notified).
    inhibits: inhibit rules, in order.
    interrupted: (rule_id, account_id) pairs whose bucket an event shared by many accounts explains
    (rules.engine.Interrupted): their pending episodes are cleared, since `for` counts consecutive
    buckets of the account's own behaviour; firing episodes keep their state, as for missing data.
    explain: what a finding's state keeps as last_explanation (a replay, whose states are never
    stored, passes rules.model.LazyExplanation: built only if an event reads it).
    runs: (a replay, with LazyExplanation) the firing episodes continued without a transition and not
    materialised: a key in `runs` stands for ran(states[key], runs[key]). A row that continues such an
    episode again only counts a step in its run (no new state: the returned states keep the one
    handed in, which tells the detectors and the inhibits the same: its status, start, firing time,
    reference, baseline (none) and notification time are what the run leaves them); an episode
    that changes otherwise is materialised first and its run dropped. Updated in place.
    """
    snoozed = snoozed_accounts or {}
    recovered = recoveries or {}
    decided_set = decided if isinstance(decided, AbstractSet) else set(decided)  # no copy of a big set
    evaluated = set(rules) if evaluated_rules is None else set(evaluated_rules)
    out: dict[Key, EpisodeState] = dict(states)
    transitions: list[Transition] = []

    seen_keys: set[Key] = set()
    for item in findings:
        if isinstance(item, Finding):
            _step_finding(rules, states, out, transitions, seen_keys, item, 0, item.key, item.rule_id,
                          item.severity, now, snoozed, first_run, explain, runs)
            continue
        _step_rows(rules, states, out, transitions, seen_keys, item, now, snoozed, first_run, explain, runs)

    for key, prev in states.items():
        if key in seen_keys or prev.status not in OPEN:
            continue
        rule_gone = prev.rule_id not in rules
        if not rule_gone:
            if prev.rule_id not in evaluated:
                continue  # not evaluated now: keep the state
            if (prev.rule_id, prev.account_id) not in decided_set:
                if prev.status == PENDING and (prev.rule_id, prev.account_id) in interrupted:
                    s = replace(prev, status=RESOLVED, resolved_at=now, consecutive=0)
                    transitions.append(Transition("cleared", now, s, None, notify=False, reason=INTERRUPTED))
                    out[key] = s
                continue  # not enough data: keep the state
        if runs and key in runs:
            prev = ran(prev, runs.pop(key))
        reason = "rule removed" if rule_gone else "condition no longer holds"
        recovery = None if rule_gone else recovered.get((key[0], key[1], key[3]))
        if prev.status == PENDING:
            s = replace(prev, status=RESOLVED, resolved_at=now, consecutive=0)
            transitions.append(Transition("cleared", now, s, None, notify=False, reason=reason, recovery=recovery))
            out[key] = s
            continue
        if not rule_gone and not (recovery is not None and recovery.immediate):
            count = prev.clear_count + 1
            if count < resolve_buckets(rules[prev.rule_id]):  # hold: not resolved yet (keep_firing_for)
                out[key] = replace(prev, clear_count=count, cleared_at=now,
                                   recovering_since=prev.recovering_since or now)
                continue
        s = replace(prev, status=RESOLVED, resolved_at=now, consecutive=0, cleared_at=now,
                    clear_count=prev.clear_count + 1, recovering_since=prev.recovering_since or now)
        # A resolution is posted only where the firing was posted (same thread).
        notified = prev.last_notified_at is not None and prev.fired_at is not None and \
            prev.last_notified_at >= prev.fired_at
        quiet = recovery is not None and recovery.quiet
        why = reason if notified else "firing was not notified"
        if notified and quiet:
            why = "closed quietly: " + recovery.message  # type: ignore[union-attr]
        transitions.append(Transition("resolved", now, s, None, notify=notified and not quiet, reason=why,
                                      recovery=recovery, quiet=quiet))
        out[key] = s

    _supersede_lower_levels(transitions, out)
    if inhibits or _has_duplicates(rules):
        _inhibit(rules, inhibits, transitions, out)
    _group(rules, transitions, out)
    return LifecycleResult(out, transitions)


def _step_rows(
    rules: Mapping[str, Rule], states: Mapping[Key, EpisodeState], out: dict[Key, EpisodeState],
    transitions: list[Transition], seen_keys: set[Key], item: FindingRows, now: int,
    snoozed: Mapping[str, int], first_run: FirstRun | None, explain: Callable[[Finding], Mapping[str, Any]],
    runs: dict[Key, Run] | None = None,
) -> None:
    """advance() for columnar findings: a row that continues an open episode without a transition (a
    firing one not due to renotify, a pending one short of `for`) gets its new state here, with a lazy
    explanation and no Finding built (with `runs`, a firing one told the same only counts a step in
    its run: advance's docstring); every other row goes through _step_finding."""
    rule = rules.get(item.rule_id)
    lazy = explain is LazyExplanation and rule is not None
    gap = max(rule.renotify, rule.cooldown) if rule is not None and rule.renotify > 0 else None
    for_buckets = rule.for_buckets if rule is not None else 0
    severities, severity = item.severities, item.severity
    # a run's steps leave what the detectors are told alone only while the rows have no baseline or
    # the episode keeps a reference (what it is told instead of the baseline): quota, expansion, spike/drop
    no_baseline = item.baselines is None
    keys = item.keys()
    todo: Iterable[int] = range(len(keys))
    if lazy and runs and seen_keys.isdisjoint(keys):
        todo = _count_runs(item, keys, runs, seen_keys, now, gap)
    for k in todo:
        key = keys[k]
        prev = states.get(key)
        if lazy and prev is not None and key not in seen_keys and (
                (prev.status == FIRING and (gap is None or prev.last_notified_at is None
                                            or now - prev.last_notified_at < gap))
                or (prev.status == PENDING and prev.consecutive + 1 < for_buckets)):
            seen_keys.add(key)
            sev = severity if severities is None else severities[k]
            if runs is not None and prev.status == FIRING:
                run = runs.get(key)
                if run is not None:
                    if no_baseline or prev.reference is not None:
                        run[0] += 1
                        run[1:5] = now, item, k, sev
                        continue
                    prev = ran(prev, runs.pop(key))
                elif prev.reference is not None or (no_baseline and prev.last_explanation.get("baseline") is None):
                    runs[key] = [1, now, item, k, sev, prev]
                    continue
            out[key] = _continued(prev, now, LazyExplanation(item, k), sev)
            continue
        _step_finding(rules, states, out, transitions, seen_keys, item, k, key, item.rule_id,
                      item.severity_of(k), now, snoozed, first_run, explain, runs)


def _count_runs(item: FindingRows, keys: Sequence[Key], runs: dict[Key, Run], seen_keys: set[Key], now: int,
                gap: int | None) -> list[int]:
    """_step_rows' case of most rows in a replay, for a whole item at once: a row whose key has a run
    that it continues again (not due to renotify, told the same) counts a step in the run, with one
    lookup and no state read; the rows left (returned) are stepped one by one, as without runs. The
    keys are marked seen in one set operation (none was seen before in this step)."""
    seen_keys.update(keys)
    rest: list[int] = []
    no_baseline = item.baselines is None
    severities, severity = item.severities, item.severity
    get = runs.get
    for k, key in enumerate(keys):
        run = get(key)
        if run is not None:
            base = run[5]
            if (no_baseline or base.reference is not None) and (
                    gap is None or base.last_notified_at is None or now - base.last_notified_at < gap):
                run[0] += 1
                run[1:5] = now, item, k, severity if severities is None else severities[k]
                continue
        rest.append(k)
    seen_keys.difference_update([keys[k] for k in rest])  # stepped one by one: marked seen there
    return rest


def _step_finding(
    rules: Mapping[str, Rule], states: Mapping[Key, EpisodeState], out: dict[Key, EpisodeState],
    transitions: list[Transition], seen_keys: set[Key], src: Finding | FindingRows, k: int, key: Key,
    rule_id: str, severity: str, now: int, snoozed: Mapping[str, int], first_run: FirstRun | None,
    explain: Callable[[Finding], Mapping[str, Any]], runs: dict[Key, Run] | None = None,
) -> None:
    """advance() for one finding (`src`, or row k of columnar `src`), given its key and severity.

    An open episode the finding continues without a transition gets its new state without the
    Finding being built (a replay's explanation is lazy: LazyExplanation of the row)."""
    if key in seen_keys:
        raise ValueError(f"duplicate finding for episode {key}")
    seen_keys.add(key)
    rule = rules.get(rule_id)
    if rule is None:
        raise ValueError(f"finding for unknown rule {rule_id!r}")
    prev = _current(states, runs, key)
    if prev is not None and prev.once and prev.fired_at is not None and not prev.is_open:
        return  # once-per-key episode already fired (e.g. quota threshold this period)
    if prev is not None and prev.is_open:
        if explain is LazyExplanation:
            expl: Mapping[str, Any] = LazyExplanation(src, k)
        else:
            expl = explain(_finding(src, k))
        s = _continued(prev, now, expl, severity)
        if prev.status == PENDING:
            if s.consecutive >= rule.for_buckets:
                s, t = _fire(s, _finding(src, k), rule, now, prev_notified=prev.last_notified_at, snoozed=snoozed,
                             first_run=first_run)
                transitions.append(t)
        elif rule.renotify > 0 and s.last_notified_at is not None:
            gap = max(rule.renotify, rule.cooldown)
            if now - s.last_notified_at >= gap:
                why = _suppression(s, now, snoozed)
                if not why:
                    s = replace(s, last_notified_at=now)
                transitions.append(Transition("renotified", now, s, _finding(src, k), notify=not why, reason=why))
        out[key] = s
        return
    f = _finding(src, k)
    s = EpisodeState(
        rule_id=f.rule_id, account_id=f.account_id, metric=f.metric, discriminator=f.discriminator,
        status=PENDING, started_at=now, consecutive=1, once=f.once, severity=f.severity,
        last_seen_at=now, last_explanation=explain(f),
        last_notified_at=prev.last_notified_at if prev is not None else None,
        snoozed_until=(prev.snoozed_until if prev is not None and prev.snoozed_until
                       and prev.snoozed_until > now else None),
        reference=f.reference,
        held=first_run is not None and first_run.covers(f.rule_id, f.account_id),
    )
    if s.consecutive >= rule.for_buckets:
        s, t = _fire(s, f, rule, now, prev_notified=s.last_notified_at, snoozed=snoozed, first_run=first_run)
        transitions.append(t)
    else:
        transitions.append(Transition("pending", now, s, f, notify=False, reason="waiting for 'for'"))
    out[key] = s


def _finding(src: Finding | FindingRows, k: int) -> Finding:
    return src if isinstance(src, Finding) else src[k]


_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def _group(rules: Mapping[str, Rule], transitions: list[Transition], states: dict[Key, EpisodeState]) -> None:
    """One message per account and step: alerts of one account firing together (to the same people)
    are sent as one, led by the most severe; the others ride along in it (`grouped`) and are
    recorded as not notified on their own ("grouped into ..."), so their resolutions stay quiet."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, t in enumerate(transitions):
        rule = rules.get(t.state.rule_id)
        if t.event == "fired" and t.notify and rule is not None:
            routing = (rule.routing.owner, tuple(sorted(rule.routing.channels)))
            groups.setdefault((t.state.account_id, routing), []).append(i)
    order = {rid: n for n, rid in enumerate(rules)}
    for idxs in groups.values():
        if len(idxs) < 2:
            continue
        idxs.sort(key=lambda i: (_SEVERITY_ORDER.get(transitions[i].state.severity, 3),
                                 order.get(transitions[i].state.rule_id, 0)))
        lead, rest = idxs[0], idxs[1:]
        t = transitions[lead]
        for i in rest:
            other = transitions[i]
            s = replace(other.state, last_notified_at=None)
            states[other.key] = s
            transitions[i] = Transition(other.event, other.at, s, other.finding, notify=False,
                                        reason=f"grouped into the {t.state.rule_id} alert")
        transitions[lead] = Transition(t.event, t.at, t.state, t.finding, t.notify, t.reason,
                                       grouped=tuple(transitions[i] for i in rest))


def _has_duplicates(rules: Mapping[str, Rule]) -> bool:
    return len({r.fingerprint for r in rules.values()}) < len(rules)


def _inhibit(rules: Mapping[str, Rule], inhibits: Sequence[Inhibit], transitions: list[Transition],
             states: dict[Key, EpisodeState]) -> None:
    """Suppress the notifications of inhibited transitions (see the module docstring)."""
    first_with: dict[tuple[Any, ...], str] = {}
    duplicate_of: dict[str, str] = {}
    for r in rules.values():
        duplicate_of_id = first_with.setdefault(r.fingerprint, r.id)
        if duplicate_of_id != r.id:
            duplicate_of[r.id] = duplicate_of_id
    todo = [i for i, t in enumerate(transitions) if t.notify and t.event in ("fired", "renotified")]
    if not todo:
        return
    suppressed: set[Key] = set()

    def firing_source(s: EpisodeState) -> bool:
        return s.status == FIRING and s.key not in suppressed and s.last_notified_at is not None

    def suppress(i: int, why: str) -> None:
        t = transitions[i]
        s = t.state
        if t.event == "fired":  # not notified after all (a suppressed renotify keeps its clock)
            s = replace(s, last_notified_at=None)
        states[t.key] = s
        transitions[i] = Transition(t.event, t.at, s, t.finding, notify=False, reason=why)
        suppressed.add(t.key)

    for i in todo:
        t = transitions[i]
        original = duplicate_of.get(t.state.rule_id)
        if original is not None:
            src = states.get((original,) + t.key[1:])
            if src is not None and firing_source(src):
                suppress(i, f"duplicate of rule {original}")
    is_sources = [{rid for rid, r in rules.items() if inh.source.matches(rid, r.kind)} for inh in inhibits]
    # the firing states are scanned only for inhibits with a target among the transitions still
    # notified (a replay step of the shipped rules notifies mostly quota levels, targets of no inhibit:
    # at 10k x 180 the scan of every state at every such step was ~1.3% of the backtest)
    targeted = {rid for i in todo if transitions[i].notify for rid in (transitions[i].state.rule_id,) if rid in rules}
    any_source = set().union(*(src for inh, src in zip(inhibits, is_sources, strict=True)
                               if any(inh.target.matches(rid, rules[rid].kind) for rid in targeted)))
    # one scan for all inhibits, keeping only the states of source rules (in a replay most firing
    # episodes are quota levels held to the period's end, sources of no inhibit)
    firing = [s for s in states.values() if s.status == FIRING and s.rule_id in any_source] if any_source else []
    for inh, is_source in zip(inhibits, is_sources, strict=True):
        sources: dict[tuple[str, ...], list[EpisodeState]] = {}
        for s in firing:
            if s.rule_id in is_source:
                sources.setdefault(_labels(s, inh.equal), []).append(s)
        if not sources:
            continue
        for i in todo:
            t = transitions[i]
            rule = rules.get(t.state.rule_id)
            if not t.notify or rule is None or not inh.target.matches(t.state.rule_id, rule.kind):
                continue
            for src in sources.get(_labels(t.state, inh.equal), ()):
                if src.key != t.key and firing_source(src) and src.started_at <= t.state.started_at:
                    since = iso(src.fired_at) if src.fired_at is not None else "now"
                    suppress(i, f"inhibited by rule {src.rule_id} (firing since {since})")
                    break


def _labels(s: EpisodeState, equal: Sequence[str]) -> tuple[str, ...]:
    return tuple(s.account_id if label == "account" else s.metric for label in equal)


def _supersede_lower_levels(transitions: list[Transition], states: dict[Key, EpisodeState]) -> None:
    """Several levels of one once-per-period rule firing in the same step (e.g. an account
    already past 80% and 100% of quota when first evaluated): notify only the highest
    level; the lower ones are recorded as fired but not notified."""
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for i, t in enumerate(transitions):
        if t.event == "fired" and t.notify and t.state.once and t.finding is not None:
            period = t.state.discriminator.split(":", 1)[0]
            groups.setdefault((t.state.rule_id, t.state.account_id, t.state.metric, period), []).append(i)
    for idxs in groups.values():
        if len(idxs) < 2:
            continue
        top = max(idxs, key=lambda i: transitions[i].finding.threshold or 0.0)  # type: ignore[union-attr]
        for i in idxs:
            if i == top:
                continue
            t = transitions[i]
            prev_notified = states[t.key].last_notified_at
            s = replace(t.state, last_notified_at=None if prev_notified == t.at else prev_notified)
            states[t.key] = s
            transitions[i] = Transition(t.event, t.at, s, t.finding, notify=False,
                                        reason="superseded by a higher level")


def _fire(
    s: EpisodeState, f: Finding, rule: Rule, now: int, prev_notified: int | None,
    snoozed: Mapping[str, int], first_run: FirstRun | None = None,
) -> tuple[EpisodeState, Transition]:
    why = _suppression(s, now, snoozed)
    if not why and (s.held or (first_run is not None and first_run.covers(s.rule_id, s.account_id))):
        why = "first evaluation"
    if not why and prev_notified is not None and rule.cooldown > 0 and now - prev_notified < rule.cooldown:
        why = "cooldown"
    s = replace(s, status=FIRING, fired_at=now, resolved_at=None,
                last_notified_at=now if not why else s.last_notified_at)
    return s, Transition("fired", now, s, f, notify=not why, reason=why)


def acknowledge(state: EpisodeState, user: str, at: int) -> EpisodeState:
    return replace(state, acknowledged_by=user, acknowledged_at=at)


def snooze(state: EpisodeState, until: int) -> EpisodeState:
    return replace(state, snoozed_until=until)

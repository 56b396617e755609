"""Alert episode lifecycle: pending -> firing -> resolved (pure, no clock reads).

One episode exists per key (rule, account, metric, discriminator). Each
evaluation hands `advance` the findings (conditions holding now), the set of
(rule, account) pairs the detectors could decide, the previous states and
`now`; it returns the new states and the transitions to act on.

- A finding opens a *pending* episode; it *fires* once the condition has held
  for `rule.for_buckets` consecutive evaluations. A firing episode never fires
  again (no duplicate fires for one episode).
- A pending/firing episode whose key has no finding *resolves* only when the
  detector decided its account (enough data); missing data keeps the state.
- `once` keys (quota thresholds per billing period) fire at most once, ever.
- Cooldown: a new episode firing within `rule.cooldown` of the last
  notification for the same key is recorded but not notified.
- Renotify: a firing episode is notified again every `rule.renotify` seconds
  (never sooner than the cooldown) unless acknowledged or snoozed.
- Levels of one once-per-period rule crossing in the same step notify only
  the highest level (the others are recorded, reason "superseded").
- Snoozes (per episode, or per account via `snoozed_accounts`) and
  acknowledgements suppress notifications, never the state change itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from rules.gcpause import gc_paused
from rules.model import Finding, Rule

Key = tuple[str, str, str, str]

PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"
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
    new.__dict__.update(state.__dict__, **changes)
    return new


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

    @property
    def key(self) -> Key:
        return self.state.key


@dataclass
class LifecycleResult:
    states: dict[Key, EpisodeState]  # every state after this step (changed or not)
    transitions: list[Transition]

    def changed_states(self) -> list[EpisodeState]:
        seen: dict[Key, EpisodeState] = {}
        for t in self.transitions:
            seen[t.key] = self.states[t.key]
        return list(seen.values())


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
    findings: Sequence[Finding],
    decided: Iterable[tuple[str, str]],
    states: Mapping[Key, EpisodeState],
    now: int,
    snoozed_accounts: Mapping[str, int] | None = None,
    evaluated_rules: Iterable[str] | None = None,
) -> LifecycleResult:
    """One lifecycle step at evaluation time `now`.

    decided: (rule_id, account_id) pairs whose detector had enough data.
    evaluated_rules: rule ids evaluated in this step; open episodes of other
    rules are left alone unless the rule no longer exists (then they resolve).
    Defaults to every rule in `rules`.
    """
    snoozed = snoozed_accounts or {}
    decided_set = decided if isinstance(decided, set | frozenset) else set(decided)  # no copy of a big set
    evaluated = set(rules) if evaluated_rules is None else set(evaluated_rules)
    out: dict[Key, EpisodeState] = dict(states)
    transitions: list[Transition] = []

    seen_keys: set[Key] = set()
    for f in findings:
        if f.key in seen_keys:
            raise ValueError(f"duplicate finding for episode {f.key}")
        seen_keys.add(f.key)
        rule = rules.get(f.rule_id)
        if rule is None:
            raise ValueError(f"finding for unknown rule {f.rule_id!r}")
        prev = states.get(f.key)
        expl = f.explanation()
        if prev is not None and prev.is_open:
            s = replace(prev, consecutive=prev.consecutive + 1, last_seen_at=now, last_explanation=expl,
                        severity=f.severity)
            if prev.status == PENDING:
                if s.consecutive >= rule.for_buckets:
                    s, t = _fire(s, f, rule, now, prev_notified=prev.last_notified_at, snoozed=snoozed)
                    transitions.append(t)
            elif rule.renotify > 0 and s.last_notified_at is not None:
                gap = max(rule.renotify, rule.cooldown)
                if now - s.last_notified_at >= gap:
                    why = _suppression(s, now, snoozed)
                    if not why:
                        s = replace(s, last_notified_at=now)
                    transitions.append(Transition("renotified", now, s, f, notify=not why, reason=why))
            out[f.key] = s
            continue
        if prev is not None and prev.once and prev.fired_at is not None:
            continue  # once-per-key episode already fired (e.g. quota threshold this period)
        s = EpisodeState(
            rule_id=f.rule_id, account_id=f.account_id, metric=f.metric, discriminator=f.discriminator,
            status=PENDING, started_at=now, consecutive=1, once=f.once, severity=f.severity,
            last_seen_at=now, last_explanation=expl,
            last_notified_at=prev.last_notified_at if prev is not None else None,
            snoozed_until=(prev.snoozed_until if prev is not None and prev.snoozed_until
                           and prev.snoozed_until > now else None),
        )
        if s.consecutive >= rule.for_buckets:
            s, t = _fire(s, f, rule, now, prev_notified=s.last_notified_at, snoozed=snoozed)
            transitions.append(t)
        else:
            transitions.append(Transition("pending", now, s, f, notify=False, reason="waiting for 'for'"))
        out[f.key] = s

    for key, prev in states.items():
        if key in seen_keys or not prev.is_open:
            continue
        rule_gone = prev.rule_id not in rules
        if not rule_gone:
            if prev.rule_id not in evaluated or (prev.rule_id, prev.account_id) not in decided_set:
                continue  # not evaluated now, or not enough data: keep the state
        reason = "rule removed" if rule_gone else "condition no longer holds"
        if prev.status == PENDING:
            s = replace(prev, status=RESOLVED, resolved_at=now, consecutive=0)
            transitions.append(Transition("cleared", now, s, None, notify=False, reason=reason))
        else:
            s = replace(prev, status=RESOLVED, resolved_at=now, consecutive=0)
            # A resolution is posted only where the firing was posted (same thread).
            notified = prev.last_notified_at is not None and prev.fired_at is not None and \
                prev.last_notified_at >= prev.fired_at
            transitions.append(Transition("resolved", now, s, None, notify=notified,
                                          reason=reason if notified else "firing was not notified"))
        out[key] = s

    _supersede_lower_levels(transitions, out)
    return LifecycleResult(out, transitions)


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
    snoozed: Mapping[str, int],
) -> tuple[EpisodeState, Transition]:
    why = _suppression(s, now, snoozed)
    if not why and prev_notified is not None and rule.cooldown > 0 and now - prev_notified < rule.cooldown:
        why = "cooldown"
    s = replace(s, status=FIRING, fired_at=now, resolved_at=None,
                last_notified_at=now if not why else s.last_notified_at)
    return s, Transition("fired", now, s, f, notify=not why, reason=why)


def acknowledge(state: EpisodeState, user: str, at: int) -> EpisodeState:
    return replace(state, acknowledged_by=user, acknowledged_at=at)


def snooze(state: EpisodeState, until: int) -> EpisodeState:
    return replace(state, snoozed_until=until)

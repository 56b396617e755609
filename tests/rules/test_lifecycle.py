from __future__ import annotations

from dataclasses import replace

import pytest

from rules.detectors.quota import QuotaParams
from rules.detectors.spike_drop import SpikeParams
from rules.lifecycle import FIRING, PENDING, RESOLVED, EpisodeState, acknowledge, advance, snooze
from rules.model import DAY, Finding, Rule

H = 3600


def rule(**kw) -> Rule:
    base = dict(id="r1", kind="spike", metric="api_calls", bucket=DAY, params=SpikeParams(), resolve_after=DAY)
    base.update(kw)
    return Rule(**base)


def finding(at: int, account: str = "a1", rule_id: str = "r1", disc: str = "", once: bool = False,
            value: float = 10.0) -> Finding:
    return Finding(rule_id=rule_id, account_id=account, metric="api_calls", kind="spike",
                   severity="warning", at=at, bucket_start=at - DAY, value=value, baseline=2.0,
                   threshold=4.0, window_start=at - 28 * DAY, window_end=at, message="m",
                   discriminator=disc, once=once)


def run(rules, steps, states=None, snoozed=None):
    """steps: list of (now, findings, decided accounts). Returns (states, all transitions)."""
    rules_by_id = {r.id: r for r in rules}
    states = dict(states or {})
    events = []
    for now, fs, decided in steps:
        res = advance(rules_by_id, fs, {(r.id, a) for r in rules for a in decided}, states, now,
                      snoozed_accounts=snoozed)
        states = res.states
        events.extend(res.transitions)
    return states, events


def kinds(events):
    return [(e.event, e.at, e.notify) for e in events]


def test_fires_immediately_with_for_1_and_resolves_when_decided():
    r = rule()
    states, ev = run([r], [(DAY, [finding(DAY)], ["a1"]), (2 * DAY, [], ["a1"])])
    assert kinds(ev) == [("fired", DAY, True), ("resolved", 2 * DAY, True)]
    (s,) = states.values()
    assert s.status == RESOLVED and s.fired_at == DAY and s.resolved_at == 2 * DAY


def test_no_duplicate_fire_while_condition_holds():
    r = rule()
    steps = [(d * DAY, [finding(d * DAY)], ["a1"]) for d in range(1, 6)]
    _, ev = run([r], steps)
    assert [e.event for e in ev] == ["fired"]


def test_pending_until_for_then_fires():
    r = rule(for_buckets=3)
    steps = [(d * DAY, [finding(d * DAY)], ["a1"]) for d in range(1, 4)]
    states, ev = run([r], steps)
    assert [e.event for e in ev] == ["pending", "fired"]
    assert ev[-1].at == 3 * DAY
    assert next(iter(states.values())).status == FIRING


def test_pending_that_clears_is_not_notified():
    r = rule(for_buckets=3)
    _, ev = run([r], [(DAY, [finding(DAY)], ["a1"]), (2 * DAY, [], ["a1"])])
    assert kinds(ev) == [("pending", DAY, False), ("cleared", 2 * DAY, False)]


def test_missing_data_keeps_firing_state():
    r = rule()
    states, ev = run([r], [(DAY, [finding(DAY)], ["a1"]), (2 * DAY, [], []), (3 * DAY, [], [])])
    assert [e.event for e in ev] == ["fired"]
    assert next(iter(states.values())).status == FIRING


def test_cooldown_suppresses_notification_of_new_episode_but_records_it():
    r = rule(cooldown=3 * DAY)
    steps = [
        (DAY, [finding(DAY)], ["a1"]),
        (2 * DAY, [], ["a1"]),
        (3 * DAY, [finding(3 * DAY)], ["a1"]),  # within 3d of the notification at DAY
        (4 * DAY, [], ["a1"]),
        (6 * DAY, [finding(6 * DAY)], ["a1"]),  # 5d after the last notification
    ]
    _, ev = run([r], steps)
    assert kinds(ev) == [
        ("fired", DAY, True),
        ("resolved", 2 * DAY, True),
        ("fired", 3 * DAY, False),
        ("resolved", 4 * DAY, False),  # its firing was not posted, so no resolution either
        ("fired", 6 * DAY, True),
    ]
    assert ev[2].reason == "cooldown"


def test_once_keys_fire_once_per_discriminator():
    r = rule(id="q", kind="quota", params=QuotaParams())
    f = lambda at, d: finding(at, rule_id="q", disc=d, once=True)  # noqa: E731
    steps = [
        (DAY, [f(DAY, "2026-11-01:0.8")], ["a1"]),
        (2 * DAY, [f(2 * DAY, "2026-11-01:0.8")], ["a1"]),
        (3 * DAY, [], ["a1"]),  # e.g. a data correction dips below
        (4 * DAY, [f(4 * DAY, "2026-11-01:0.8")], ["a1"]),  # crossing again: not re-fired
        (5 * DAY, [f(5 * DAY, "2026-12-01:0.8")], ["a1"]),  # next period: new episode
    ]
    _, ev = run([r], steps)
    fired = [(e.at, e.state.discriminator) for e in ev if e.event == "fired"]
    assert fired == [(DAY, "2026-11-01:0.8"), (5 * DAY, "2026-12-01:0.8")]


def test_renotify_respects_interval_and_ack():
    r = rule(renotify=2 * DAY)
    steps = [(d * DAY, [finding(d * DAY)], ["a1"]) for d in range(1, 6)]
    states, ev = run([r], steps)
    assert kinds(ev) == [("fired", DAY, True), ("renotified", 3 * DAY, True), ("renotified", 5 * DAY, True)]
    # acknowledged: still tracked, not notified
    key = next(iter(states))
    states[key] = acknowledge(states[key], "U123", 5 * DAY)
    _, ev2 = run([r], [(7 * DAY, [finding(7 * DAY)], ["a1"])], states=states)
    assert kinds(ev2) == [("renotified", 7 * DAY, False)]
    assert ev2[0].reason == "acknowledged"


def test_snooze_suppresses_fire_and_new_episode_inherits_active_snooze():
    r = rule()
    states, _ = run([r], [(DAY, [finding(DAY)], ["a1"]), (2 * DAY, [], ["a1"])])
    key = next(iter(states))
    states[key] = snooze(states[key], until=10 * DAY)
    _, ev = run([r], [(3 * DAY, [finding(3 * DAY)], ["a1"])], states=states)
    assert kinds(ev) == [("fired", 3 * DAY, False)]
    assert ev[0].reason == "snoozed"


def test_account_snooze():
    r = rule()
    _, ev = run([r], [(DAY, [finding(DAY)], ["a1"])], snoozed={"a1": 2 * DAY})
    assert kinds(ev) == [("fired", DAY, False)] and ev[0].reason == "account snoozed"


def test_removed_rule_resolves_open_episodes():
    r = rule()
    states, _ = run([r], [(DAY, [finding(DAY)], ["a1"])])
    res = advance({}, [], set(), states, 2 * DAY)
    assert [(t.event, t.reason) for t in res.transitions] == [("resolved", "rule removed")]


def test_rules_not_evaluated_this_step_keep_their_episodes():
    r = rule()
    states, _ = run([r], [(DAY, [finding(DAY)], ["a1"])])
    res = advance({"r1": r}, [], {("r1", "a1")}, states, DAY + H, evaluated_rules=[])
    assert res.transitions == [] and next(iter(res.states.values())).status == FIRING


def test_duplicate_and_unknown_findings_are_errors():
    r = rule()
    with pytest.raises(ValueError, match="duplicate"):
        advance({"r1": r}, [finding(DAY), finding(DAY)], set(), {}, DAY)
    with pytest.raises(ValueError, match="unknown rule"):
        advance({}, [finding(DAY)], set(), {}, DAY)


def test_state_is_plain_data():
    s = EpisodeState("r", "a", "m", "", PENDING, started_at=1)
    assert replace(s, status=FIRING).key == ("r", "a", "m", "")


def test_levels_crossed_together_notify_only_the_highest():
    r = rule(id="q", kind="quota", params=QuotaParams())

    def f(at, level, thr):
        return replace(finding(at, rule_id="q", disc=f"2026-11-01:{level}", once=True), threshold=thr)

    states, ev = run([r], [(DAY, [f(DAY, "0.8", 80.0), f(DAY, "1", 100.0)], ["a1"])])
    got = {(e.state.discriminator, e.notify, e.reason) for e in ev}
    assert got == {("2026-11-01:0.8", False, "superseded by a higher level"), ("2026-11-01:1", True, "")}
    low = states[("q", "a1", "api_calls", "2026-11-01:0.8")]
    assert low.status == FIRING and low.last_notified_at is None
    # crossing one level at a time still notifies each
    _, ev2 = run([r], [(DAY, [f(DAY, "0.8", 80.0)], ["a1"]),
                       (2 * DAY, [f(2 * DAY, "0.8", 80.0), f(2 * DAY, "1", 100.0)], ["a1"])])
    assert [(e.state.discriminator, e.notify) for e in ev2] == [("2026-11-01:0.8", True), ("2026-11-01:1", True)]


@pytest.mark.parametrize("with_runs", [False, True])
def test_a_columnar_item_repeating_a_key_is_a_duplicate_finding_with_or_without_runs(with_runs: bool) -> None:
    """A replay counts a firing episode's continuations in a run (advance `runs`) for a whole item at
    once; an item that repeats a key (a detector's bug) must still be refused, as row by row."""
    import numpy as np

    from rules.model import FindingRows, LazyExplanation

    r = rule(kind="quota", params=QuotaParams(mode="forecast"))
    ids = ["a1", "a2"]

    def rows(at: int, idx: list[int]) -> FindingRows:
        return FindingRows("r1", "api_calls", "warning", at, ids, np.array(idx),
                           "", lambda k: finding(at, account=ids[idx[k]]))

    runs: dict | None = {} if with_runs else None
    states: dict = {}
    for at in (DAY, 2 * DAY, 3 * DAY):
        states = dict(advance({"r1": r}, [rows(at, [0])], {("r1", "a1")}, states, at,
                              explain=LazyExplanation, runs=runs).states)
    assert states[("r1", "a1", "api_calls", "")].status == FIRING
    assert bool(runs) == with_runs  # the continuations were counted in a run
    with pytest.raises(ValueError, match="duplicate finding"):
        advance({"r1": r}, [rows(4 * DAY, [0, 0])], {("r1", "a1")}, states, 4 * DAY,
                explain=LazyExplanation, runs=runs)

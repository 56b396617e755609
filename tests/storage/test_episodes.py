"""Alert episodes, audit events and the outbox written by record_step, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import storage.episodes as episodes_mod
from rules.detectors.spike_drop import SpikeParams
from rules.lifecycle import LifecycleResult, acknowledge, advance
from rules.model import Finding, Rule
from storage.episodes import (
    episode_history,
    find_episode,
    get_episode,
    load_states,
    record_action,
    record_step,
    set_slack_message,
)
from storage.outbox import OutboxItem, claim_due, counts

H = 3600
T = 1_792_800_000 - 1_792_800_000 % H
RULE = Rule(id="calls-spike", kind="spike", metric="calls", bucket=H, params=SpikeParams(), for_buckets=2,
            resolve_after=H)
RULES = {RULE.id: RULE}
KEY = (RULE.id, "acme", "calls", "")
HASHES = {RULE.id: "rulefilehash"}


def finding(at: int, value: float = 50.0, account: str = "acme", **kw: object) -> Finding:
    base = dict(rule_id=RULE.id, account_id=account, metric="calls", kind="spike", severity="warning", at=at,
                bucket_start=at - H, value=value, baseline=10.0, threshold=20.0, window_start=at - 28 * 86400,
                window_end=at, message=f"calls {value} vs 10", rule_hash="fromfinding", details={"z": 4.2})
    base.update(kw)
    return Finding(**base)  # type: ignore[arg-type]


def notify_items(step: LifecycleResult) -> list[OutboxItem]:
    return [OutboxItem(f"notify:{t.key}:{t.event}:{t.at}", "notify.console", {"event": t.event, "at": t.at})
            for t in step.transitions if t.notify]


def run(engine: Engine, at: int, findings: list[Finding], decided=(("calls-spike", "acme"),)):
    step = advance(RULES, findings, decided, load_states(engine), at)
    ids = record_step(engine, step, notify_items(step), HASHES)
    return step, ids


def table_counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as c:
        return tuple(c.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()  # type: ignore[return-value]
                     for t in ("alert_episodes", "alert_events", "outbox"))


def test_episode_lifecycle_history_and_new_episode_after_resolution(engine: Engine) -> None:
    step, ids = run(engine, T, [finding(T)])
    assert [t.event for t in step.transitions] == ["pending"]
    first_id = ids[KEY]
    s = load_states(engine)[KEY]
    assert (s.status, s.consecutive, s.episode_id, s.started_at) == ("pending", 1, first_id, T)
    assert s.last_explanation["details"] == {"z": 4.2} and s.last_explanation["window"] == [T - 28 * 86400, T]

    step, ids = run(engine, T + H, [finding(T + H, 60.0)])
    assert [(t.event, t.notify) for t in step.transitions] == [("fired", True)]
    assert ids[KEY] == first_id
    s = load_states(engine)[KEY]
    assert (s.status, s.fired_at, s.last_notified_at, s.consecutive) == ("firing", T + H, T + H, 2)

    step, ids = run(engine, T + 2 * H, [])  # decided, no finding -> resolved
    assert [t.event for t in step.transitions] == ["resolved"]
    assert load_states(engine)[KEY].status == "resolved"
    assert ids[KEY] == first_id

    step, ids = run(engine, T + 3 * H, [finding(T + 3 * H)])  # a new episode for the same key
    assert ids[KEY] != first_id
    current = load_states(engine)[KEY]
    assert (current.episode_id, current.status, current.started_at) == (ids[KEY], "pending", T + 3 * H)
    assert current.last_notified_at == T + H  # carried over for cooldown

    history = episode_history(engine, rule_id=RULE.id)
    assert [e["id"] for e in history] == [ids[KEY], first_id]
    old = history[1]
    assert old["status"] == "resolved" and old["rule_hash"] == "rulefilehash" and old["key"] == KEY
    assert [(ev["event"], ev["at"], ev["notify"]) for ev in old["events"]] == [
        ("pending", T, False), ("fired", T + H, True), ("resolved", T + 2 * H, True)]
    fired = old["events"][1]["explanation"]
    assert fired["value"] == 60.0 and fired["baseline"] == 10.0 and fired["threshold"] == 20.0
    assert fired["rule"] == RULE.id and fired["rule_hash"] == "fromfinding" and fired["message"] == "calls 60.0 vs 10"
    assert old["events"][2]["explanation"]["value"] == 60.0  # resolution explains with the last finding
    assert episode_history(engine, account_id="nobody") == []
    assert len(episode_history(engine, limit=1)) == 1
    with engine.connect() as c:
        assert [r[0] for r in c.execute(sa.text("SELECT kind FROM outbox ORDER BY id"))] == ["notify.console"] * 2


def test_state_changes_without_transitions_are_persisted(engine: Engine) -> None:
    slow = replace(RULE, for_buckets=3)
    for at in (T, T + H):
        step = advance({slow.id: slow}, [finding(at)], [], load_states(engine), at)
        record_step(engine, step, [], HASHES)
    assert len(step.transitions) == 0  # consecutive went 1 -> 2 with no transition
    s = load_states(engine)[KEY]
    assert (s.consecutive, s.last_seen_at, s.status) == (2, T + H, "pending")
    assert table_counts(engine)[:2] == (1, 1)


def test_retrying_the_same_step_duplicates_nothing(engine: Engine) -> None:
    run(engine, T, [finding(T)])
    states = load_states(engine)
    step = advance(RULES, [finding(T + H), finding(T + H, account="globex")],
                   [("calls-spike", "acme"), ("calls-spike", "globex")], states, T + H)
    items = notify_items(step)
    ids1 = record_step(engine, step, items, HASHES)
    before = table_counts(engine)
    assert before == (2, 3, 1)  # acme fired (+ its old pending), globex pending; one notification
    ids2 = record_step(engine, step, items, HASHES)  # e.g. a retry after a lost acknowledgement
    assert ids2 == ids1 and table_counts(engine) == before
    assert load_states(engine)[KEY].status == "firing"

    run(engine, T + 2 * H, [], decided=[("calls-spike", "acme"), ("calls-spike", "globex")])
    step = advance(RULES, [finding(T + 3 * H)], [("calls-spike", "acme")], load_states(engine), T + 3 * H)
    ids1 = record_step(engine, step, notify_items(step), HASHES)  # a new episode after the resolution
    before = table_counts(engine)
    assert record_step(engine, step, notify_items(step), HASHES) == ids1 and table_counts(engine) == before


def test_a_failure_writes_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    run(engine, T, [finding(T)])
    before = table_counts(engine)
    snapshot = load_states(engine)
    step = advance(RULES, [finding(T + H), finding(T + H, account="globex")],
                   [("calls-spike", "acme")], snapshot, T + H)
    bad = [*notify_items(step), OutboxItem("bad", "slack.post", {"blocks": {1, 2}})]
    with pytest.raises(ValueError, match="outbox item 'bad'"):
        record_step(engine, step, bad, HASHES)
    assert table_counts(engine) == before and load_states(engine) == snapshot

    real_enqueue = episodes_mod.enqueue

    def crash_after_insert(conn, items, now=None):  # the outbox insert itself dies half-way
        real_enqueue(conn, items[:1], now=now)
        raise ConnectionError("database went away")

    monkeypatch.setattr(episodes_mod, "enqueue", crash_after_insert)
    with pytest.raises(ConnectionError):
        record_step(engine, step, notify_items(step), HASHES)
    assert table_counts(engine) == before and load_states(engine) == snapshot
    monkeypatch.undo()
    record_step(engine, step, notify_items(step), HASHES)
    assert table_counts(engine) == (2, 3, 1)


def test_stored_resolved_row_with_open_state_starts_a_new_row(engine: Engine) -> None:
    run(engine, T, [finding(T)])
    run(engine, T + H, [finding(T + H)])
    run(engine, T + 2 * H, [])
    resolved = load_states(engine)[KEY]
    reopened = replace(resolved, status="pending", started_at=T + 5 * H, resolved_at=None, consecutive=1)
    step = LifecycleResult({KEY: reopened}, [])
    ids = record_step(engine, step, [], HASHES)
    assert ids[KEY] != resolved.episode_id
    assert record_step(engine, step, [], HASHES) == ids  # retried: still one new row
    assert table_counts(engine)[0] == 2
    assert load_states(engine)[KEY].started_at == T + 5 * H
    assert get_episode(engine, resolved.episode_id)["status"] == "resolved"  # history kept


def test_once_keys_stay_current_after_resolution(engine: Engine) -> None:
    quota = Rule(id="quota", kind="quota", metric="calls", bucket=H, params=SpikeParams(), resolve_after=H)
    key = ("quota", "acme", "calls", "2026-11:0.8")
    f = finding(T, rule_id="quota", discriminator="2026-11:0.8", once=True)
    rules = {"quota": quota}
    for at, fs in ((T, [f]), (T + H, []), (T + 2 * H, [replace(f, at=T + 2 * H)])):
        step = advance(rules, fs, [("quota", "acme")], load_states(engine, ["quota"]), at)
        record_step(engine, step, [], {})
    s = load_states(engine)[key]
    assert s.once and s.status == "resolved" and s.fired_at == T  # fired once, never again
    assert len(episode_history(engine, rule_id="quota")) == 1
    assert load_states(engine, ["other-rule"]) == {}
    assert get_episode(engine, s.episode_id)["rule_hash"] == "fromfinding"  # no hash given: the finding's


def test_manual_actions_slack_thread_and_lookup(engine: Engine) -> None:
    run(engine, T, [finding(T)])
    run(engine, T + H, [finding(T + H, baseline=math.nan)])
    s = load_states(engine)[KEY]
    assert s.last_explanation["baseline"] is None  # NaN is stored as null (JSON on PostgreSQL)
    acked = acknowledge(s, "U123", T + H + 60)
    assert record_action(engine, acked, "acknowledged", T + H + 60, actor="U123", reason="on it") == s.episode_id
    got = load_states(engine)[KEY]
    assert (got.acknowledged_by, got.acknowledged_at) == ("U123", T + H + 60)
    events = episode_history(engine)[0]["events"]
    assert (events[-1]["event"], events[-1]["actor"], events[-1]["reason"]) == ("acknowledged", "U123", "on it")
    with pytest.raises(ValueError, match="needs a stored episode"):
        record_action(engine, replace(acked, episode_id=None), "snoozed", T)

    set_slack_message(engine, s.episode_id, "C42", "1700000000.000100")
    ep = find_episode(engine, KEY)
    assert ep is not None and (ep["slack_channel"], ep["slack_ts"]) == ("C42", "1700000000.000100")
    assert find_episode(engine, KEY, started_at=T)["id"] == s.episode_id
    assert find_episode(engine, KEY, started_at=T + 1) is None
    with pytest.raises(KeyError, match="episode 9999"):
        set_slack_message(engine, 9999, "C", "1")
    assert get_episode(engine, 9999) is None
    # the fired notification is queued, due from the step's evaluation time
    assert counts(engine) == {"pending": 1}
    assert [r.payload["event"] for r in claim_due(engine, T + 2 * H)] == ["fired"]


def test_manual_action_does_not_write_back_a_stale_episode(engine: Engine) -> None:
    """A button click on a state loaded before an evaluation resolved the episode keeps it resolved."""
    run(engine, T, [finding(T)])
    run(engine, T + H, [finding(T + H)])  # for = 2: fires on the second bucket
    stale = load_states(engine)[KEY]
    assert stale.status == "firing"
    run(engine, T + 2 * H, [])  # the next cycle resolves it (account decided, no finding)
    assert load_states(engine)[KEY].status == "resolved"
    record_action(engine, acknowledge(stale, "U9", T + 2 * H + 5), "acknowledged", T + 2 * H + 5, actor="U9")
    got = load_states(engine)[KEY]
    assert got.status == "resolved" and got.resolved_at == T + 2 * H
    assert (got.acknowledged_by, got.acknowledged_at) == ("U9", T + 2 * H + 5)


def test_load_states_of_some_accounts_only(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(episodes_mod, "_CHUNK", 2)  # several IN (...) batches
    accounts = ["acme", "bolt", "cask", "dune", "echo"]
    decided = [(RULE.id, a) for a in accounts]
    run(engine, T, [finding(T, account=a) for a in accounts], decided)
    run(engine, T + H, [], decided)  # all resolve ...
    run(engine, T + 2 * H, [finding(T + 2 * H, account="bolt")], decided)  # ... bolt opens a new episode
    everything = load_states(engine)
    some = load_states(engine, account_ids=["bolt", "dune", "echo", "nobody"])
    assert set(some) == {(RULE.id, a, "calls", "") for a in ("bolt", "dune", "echo")}
    assert all(some[k] == everything[k] for k in some)
    assert some[(RULE.id, "bolt", "calls", "")].started_at == T + 2 * H  # the latest episode of the key
    assert load_states(engine, account_ids=[]) == {}
    assert load_states(engine, ["other-rule"], account_ids=["bolt"]) == {}


def test_a_step_with_two_transitions_of_one_key_is_written_in_order(engine: Engine) -> None:
    from rules.lifecycle import EpisodeState, Transition

    pending = EpisodeState(rule_id=RULE.id, account_id="acme", metric="calls", discriminator="",
                           status="pending", started_at=T, consecutive=1, last_seen_at=T)
    firing = replace(pending, status="firing", fired_at=T, consecutive=2, last_notified_at=T)
    step = LifecycleResult({KEY: firing}, [Transition("pending", T, pending, finding(T), notify=False),
                                           Transition("fired", T, firing, finding(T), notify=True)])
    ids = record_step(engine, step, [], HASHES)
    again = record_step(engine, step, [], HASHES)  # the same step again: nothing doubles
    assert ids == again and table_counts(engine) == (1, 2, 0)
    assert load_states(engine)[KEY].status == "firing"
    assert [e["event"] for e in episode_history(engine)[0]["events"]] == ["pending", "fired"]


def test_many_new_episodes_in_one_step_then_the_same_step_again(engine: Engine) -> None:
    accounts = [f"acct-{i:03d}" for i in range(40)]
    decided = [(RULE.id, a) for a in accounts]
    step, ids = run(engine, T, [finding(T, account=a) for a in accounts], decided)
    assert len(set(ids.values())) == 40 and table_counts(engine) == (40, 40, 0)
    again = record_step(engine, step, notify_items(step), HASHES)
    assert again == ids and table_counts(engine) == (40, 40, 0)
    # all resolve, then all open anew: 40 more episodes, the old rows keep their history
    run(engine, T + H, [], decided)
    step, reopened = run(engine, T + 2 * H, [finding(T + 2 * H, account=a) for a in accounts], decided)
    assert set(reopened.values()).isdisjoint(ids.values()) and table_counts(engine)[:2] == (80, 120)
    assert record_step(engine, step, notify_items(step), HASHES) == reopened
    assert table_counts(engine)[:2] == (80, 120)

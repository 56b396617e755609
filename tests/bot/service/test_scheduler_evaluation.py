"""What the scheduler's evaluate job evaluates: closed buckets once data is in, late data for changed
accounts only, catch-up after downtime, and no drop alerts while a source is stale."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.service.evaluation import Evaluator
from bot.service.freshness import Watch, check_freshness
from integrations.sources.records import UsageRecord
from rules.loader import load_rules_text
from rules.model import RuleSet
from storage.episodes import load_states
from storage.outbox import list_outbox
from storage.rule_progress import get_rule_progress
from storage.sources import register_source, store_batch

DAY = 86_400
T0 = 1_793_491_200  # 2026-11-01
RULES = """
[[rule]]
id = "calls-drop"
kind = "drop"
metric = "api_calls"
bucket = "1d"
for = 2
cooldown = "0"
[rule.baseline]
window = "7d"
min_points = 3
[rule.threshold]
ratio = 0.5
[rule.guards]
min_baseline = 10
"""


def _rules() -> RuleSet:
    return load_rules_text(RULES, "rules.toml")


def _deliver(engine: Engine, day: int, values: dict[str, float], now: int, source: str = "api") -> None:
    store_batch(engine, source, now, totals=[UsageRecord(a, "api_calls", T0 + day * DAY, v) for a, v in values.items()])


def _history(engine: Engine, days: int, accounts: tuple[str, ...] = ("acme", "globex")) -> None:
    for d in range(days):
        _deliver(engine, d, {a: 100.0 for a in accounts}, T0 + d * DAY + 3600)


def _acme_drop(engine: Engine) -> dict:
    return {k: s for k, s in load_states(engine).items() if k[1] == "acme"}


def test_a_closed_bucket_waits_for_its_data_then_is_evaluated_once(engine: Engine) -> None:
    _history(engine, 10)
    ev = Evaluator(engine, _rules(), max_wait=6 * 3600)
    t = ev.tick(T0 + 10 * DAY + 300)  # day 9 closed at midnight, but the source has not moved on yet
    assert t.evaluations == [] and t.waiting == {"calls-drop": T0 + 10 * DAY}
    _deliver(engine, 10, {"acme": 4.0, "globex": 3.0}, T0 + 10 * DAY + 600)  # day 10's first data
    t = ev.tick(T0 + 10 * DAY + 660)
    assert [(e.at, e.reason, e.accounts) for e in t.evaluations] == [(T0 + 10 * DAY, "bucket closed", None)]
    assert ev.tick(T0 + 10 * DAY + 720).evaluations == []  # once per bucket
    assert get_rule_progress(engine) == {"calls-drop": T0 + 10 * DAY}


def test_max_wait_evaluates_without_new_data(engine: Engine) -> None:
    _history(engine, 10)
    ev = Evaluator(engine, _rules(), max_wait=3600)
    assert ev.tick(T0 + 10 * DAY + 3599).evaluations == []
    assert [e.at for e in ev.tick(T0 + 10 * DAY + 3600).evaluations] == [T0 + 10 * DAY]


def test_for_counts_buckets_and_late_data_reevaluates_only_changed_accounts(engine: Engine) -> None:
    _history(engine, 10, ("acme", "globex", "initech"))
    ev = Evaluator(engine, _rules(), max_wait=0, chunk_accounts=2)  # full evaluations in 2 chunks
    _deliver(engine, 10, {"acme": 10.0, "globex": 100.0, "initech": 100.0}, T0 + 11 * DAY - 60)
    ev.tick(T0 + 11 * DAY)  # evaluates day 10: acme's drop is pending (for = 2)
    [s] = _acme_drop(engine).values()
    assert (s.status, s.consecutive) == ("pending", 1)

    _deliver(engine, 10, {"acme": 12.0, "globex": 90.0}, T0 + 11 * DAY + 600)  # late corrections
    t = ev.tick(T0 + 11 * DAY + 660)
    assert [(e.at, e.reason, e.accounts) for e in t.evaluations] == [(T0 + 11 * DAY, "late data", 2)]
    [s] = _acme_drop(engine).values()
    assert (s.status, s.consecutive) == ("pending", 1)  # the same bucket again: still one bucket, not two

    _deliver(engine, 11, {"acme": 9.0, "globex": 100.0, "initech": 100.0}, T0 + 12 * DAY - 60)
    t = ev.tick(T0 + 12 * DAY)
    [s] = _acme_drop(engine).values()
    assert (s.status, s.consecutive) == ("firing", 2)
    assert [a.account for a in t.alerts if a.event == "fired"] == ["acme"]


def test_a_late_day_in_new_buckets_reevaluates_exactly_its_accounts(engine: Engine) -> None:
    """A day evaluated without its data (max_wait passed), then delivered: its buckets are new, so the
    change log holds one row per (metric, bucket), not one per account (storage.changes); the late
    evaluation still covers exactly the accounts delivered."""
    _history(engine, 10, ("acme", "globex", "initech"))
    ev = Evaluator(engine, _rules(), max_wait=3600)
    ev.tick(T0 + 10 * DAY + 60)
    assert [e.at for e in ev.tick(T0 + 11 * DAY + 3600).evaluations] == [T0 + 11 * DAY]  # day 10, no data
    _deliver(engine, 10, {"acme": 5.0, "globex": 100.0}, T0 + 11 * DAY + 4000)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT account_id, bucket_start FROM usage_changes")).all() == [(None, T0 + 10 * DAY)]
    t = ev.tick(T0 + 11 * DAY + 4100)
    assert [(e.at, e.reason, e.accounts) for e in t.evaluations] == [(T0 + 11 * DAY, "late data", 2)]
    [s] = _acme_drop(engine).values()
    assert (s.status, s.consecutive) == ("pending", 1)


def test_a_new_leader_continues_from_the_stored_progress_and_catches_up(engine: Engine) -> None:
    _history(engine, 20)
    Evaluator(engine, _rules(), max_wait=0).tick(T0 + 10 * DAY)
    # the service was down 6 days; a fresh evaluator (another replica) catches up the last 3 buckets in order
    t = Evaluator(engine, _rules(), max_wait=0, catch_up=3).tick(T0 + 16 * DAY + 5)
    assert [e.at for e in t.evaluations] == [T0 + 14 * DAY, T0 + 15 * DAY, T0 + 16 * DAY]
    assert get_rule_progress(engine) == {"calls-drop": T0 + 16 * DAY}


def test_a_stale_source_notifies_the_admin_channel_and_mutes_drop_alerts(engine: Engine) -> None:
    _history(engine, 10)
    register_source(engine, "billing", "poll", T0)
    _history(engine, 10, ("acme",))  # re-delivered: no change
    for d in range(10):  # acme's usage comes from the "billing" source
        _deliver(engine, d, {"acme": 100.0}, T0 + d * DAY + 3600, source="billing")
    watches = [Watch("billing", stale_after=12 * 3600), Watch("api", stale_after=12 * 3600)]
    # billing stops delivering; api goes on (globex, and a zero-looking acme on day 10 and 11)
    for d in (10, 11):
        _deliver(engine, d, {"globex": 100.0}, T0 + (d + 1) * DAY - 60)
    now = T0 + 12 * DAY
    report = check_freshness(engine, watches, now, admin_channel="#usagebot-admin")
    assert report.became_stale == ["billing"] and report.stale == ["billing"]
    t = Evaluator(engine, _rules(), max_wait=0).tick(now)
    assert t.muted_series == 1 and [e.at for e in t.evaluations] == [now]
    assert _acme_drop(engine) == {}  # acme has no data because its pipe broke: no drop alert
    [notice] = [r.payload for r in list_outbox(engine)]
    assert notice["event"] == "stale" and notice["routing"] == {"owner": False, "channels": ["#usagebot-admin"]}
    assert "Usage source 'billing' is stale" in notice["message"] and "api_calls" in notice["message"]
    assert check_freshness(engine, watches, now + 60, "#usagebot-admin").became_stale == []  # notified once

    _deliver(engine, 12, {"acme": 100.0}, now + 3600, source="billing")  # back
    report = check_freshness(engine, watches, now + 3660, "#usagebot-admin")
    assert report.recovered == ["billing"]
    assert [r.payload["event"] for r in list_outbox(engine)] == ["recovered", "stale"]
    # control: unmuted, the same evaluation does see a drop for acme
    from bot.service.pipeline import run_cycle

    run_cycle(engine, _rules(), now, only_due=False, account_ids=["acme"])
    assert [s.status for s in _acme_drop(engine).values()] == ["pending"]


def test_a_source_catching_up_mutes_its_series_as_a_stale_one_does(engine: Engine) -> None:
    """A window source that read a shorter window than it is behind by (its cursor a CatchUp with a span)
    has stored only part of what is due: its series are muted, so a bucket past max_wait is not judged on
    the days it has not read yet. Once it read a whole window (a CatchUp of span 0 keeps only its
    position) it is judged again."""
    from integrations.sources.base import CatchUp

    _history(engine, 10, ("globex",))
    for d in range(10):  # acme's usage comes from "billing", which fell behind on day 10
        _deliver(engine, d, {"acme": 100.0}, T0 + d * DAY + 3600, source="billing")
    for d in (10, 11):
        _deliver(engine, d, {"globex": 100.0}, T0 + (d + 1) * DAY - 60)
    now = T0 + 12 * DAY
    behind = CatchUp(read_to=T0 + 10 * DAY, span=DAY, pages=9).cursor()
    store_batch(engine, "billing", now, cursor=behind, watermark=T0 + 9 * DAY + 3600)
    t = Evaluator(engine, _rules(), max_wait=0).tick(now)
    assert t.muted_series == 1 and _acme_drop(engine) == {}

    caught_up = CatchUp(read_to=T0 + 10 * DAY, span=0, pages=9).cursor()
    store_batch(engine, "billing", now + 60, cursor=caught_up, watermark=T0 + 9 * DAY + 3600)
    t = Evaluator(engine, _rules(), max_wait=0).tick(now + DAY)
    assert t.muted_series == 0 and [e.at for e in t.evaluations] == [now + DAY]

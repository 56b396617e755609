"""Fenced outbox claims: leases on the database clock, renewal, and outcomes written only under the
claim's token (issue 12: a run outliving its lease, or a replica with a skewed clock, re-posted)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import Engine

from storage.outbox import (
    SENT,
    ClaimLost,
    LeaseKeeper,
    OutboxItem,
    claim_due,
    enqueue,
    list_outbox,
    mark_dead,
    mark_failed,
    mark_sent,
    renew,
)


def _rows(engine: Engine, n: int, now: int = 100) -> None:
    enqueue(engine, [OutboxItem(f"k{i}", "notify", {"i": i}) for i in range(n)], now=now)


def _expire(lease: int) -> None:
    time.sleep(lease + 1.1)  # leases are whole seconds of the database clock


def test_a_skewed_caller_clock_never_takes_a_live_claim(engine: Engine) -> None:
    _rows(engine, 3)
    a = claim_due(engine, now=100, holder="replica-a")
    assert len(a) == 3 and len({r.claim_token for r in a}) == 1 and a[0].lease_until is not None
    # a replica whose clock is a day (or years) ahead sees the rows due, but the lease is the database's
    for skewed in (100 + 301, 100 + 86_400, 10**10):
        assert claim_due(engine, now=skewed, holder="replica-b") == []
    assert {r.status for r in list_outbox(engine)} == {"pending"}


def test_an_expired_claim_is_taken_over_and_the_old_holder_is_fenced(engine: Engine) -> None:
    _rows(engine, 2)
    old = claim_due(engine, now=100, lease=1)
    _expire(1)
    new = claim_due(engine, now=100, lease=60)
    assert [r.id for r in new] == [r.id for r in old] and new[0].claim_token != old[0].claim_token
    assert all(r.attempts == 2 for r in new)
    t_old, t_new = old[0].claim_token, new[0].claim_token
    assert renew(engine, t_old, [r.id for r in old]) == set()  # the old holder learns it lost them
    with pytest.raises(ClaimLost, match="claim .* lost"):
        mark_failed(engine, old[0].id, 100, "late failure", token=t_old)
    with pytest.raises(ClaimLost):
        mark_dead(engine, old[0].id, 100, "late", token=t_old)
    assert mark_sent(engine, [old[1].id], 100, token=t_old) == 0
    assert mark_sent(engine, [r.id for r in new], 100, token=t_new) == 2
    # a sent row stays sent: a stale "failed" can never make it due again
    with pytest.raises(ClaimLost):
        mark_failed(engine, new[0].id, 100, "stale", token=t_old)
    assert {r.status for r in list_outbox(engine)} == {SENT}
    assert all(r.claim_token is None and r.lease_until is None for r in list_outbox(engine))
    with pytest.raises(KeyError, match="outbox row 999"):
        mark_failed(engine, 999, 100, "x", token=t_new)


def test_renewal_keeps_a_claim_past_its_first_lease(engine: Engine) -> None:
    _rows(engine, 1)
    (row,) = claim_due(engine, now=100, lease=2)
    for _ in range(3):  # 3 s > the 2 s lease, renewed every second
        time.sleep(1)
        assert renew(engine, row.claim_token or "", [row.id], lease=2) == {row.id}
        assert claim_due(engine, now=100) == []
    assert mark_sent(engine, [row.id], 100, token=row.claim_token) == 1


def test_lease_keeper_heartbeat_holds_the_batch_while_the_worker_is_alive(engine: Engine) -> None:
    _rows(engine, 3)
    rows = claim_due(engine, now=100, lease=1)
    token = rows[0].claim_token or ""
    with LeaseKeeper(engine, token, [r.id for r in rows], lease=1, interval=0.2) as keeper:
        assert keeper.take(rows[0].id)
        time.sleep(2.5)  # 2.5 leases: the heartbeat renews the rows not yet done
        assert claim_due(engine, now=100) == []
        assert mark_sent(engine, [rows[0].id], 100, token=token) == 1
        keeper.done(rows[0].id)
        assert keeper.take(rows[1].id) and keeper.lost == set()
    # the worker stopped (as if it died): its remaining rows are free again after one lease
    _expire(1)
    assert sorted(r.id for r in claim_due(engine, now=100)) == sorted(r.id for r in rows[1:])


def test_lease_keeper_reports_rows_taken_over(engine: Engine) -> None:
    _rows(engine, 2)
    rows = claim_due(engine, now=100, lease=1)
    keeper = LeaseKeeper(engine, rows[0].claim_token or "", [r.id for r in rows], lease=1, interval=60)
    _expire(1)  # no heartbeat ran (a frozen process): another worker takes the rows
    assert len(claim_due(engine, now=100, lease=60)) == 2
    assert not keeper.take(rows[0].id) and not keeper.take(rows[1].id)
    assert keeper.lost == {r.id for r in rows}

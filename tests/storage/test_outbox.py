"""Outbox queue semantics, on SQLite and PostgreSQL."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from storage.outbox import (
    DEAD,
    FAILED,
    OutboxItem,
    claim_due,
    counts,
    default_backoff,
    enqueue,
    list_outbox,
    mark_dead,
    mark_failed,
    mark_sent,
    retry_dead,
)


def item(key: str, kind: str = "slack.post", not_before: int | None = None, **payload: object) -> OutboxItem:
    return OutboxItem(key, kind, payload or {"text": key}, not_before)


def test_enqueue_is_idempotent_and_claims_oldest_first(engine: Engine) -> None:
    assert enqueue(engine, [item("k1"), item("k2", not_before=150), item("k3", kind="crm.write")], now=100) == 3
    assert enqueue(engine, [item("k1"), item("k4")], now=120) == 1  # k1 already there
    assert counts(engine) == {"pending": 4}

    due = claim_due(engine, now=130)
    assert [r.idempotency_key for r in due] == ["k1", "k3", "k4"]  # k2 not before 150
    assert all(r.attempts == 1 for r in due)
    assert due[0].payload == {"text": "k1"} and due[0].created_at == 100
    # claimed rows are leased: not handed out again while the lease lasts (on the database's clock,
    # so a caller whose clock is far ahead does not take them either: see test_outbox_claims.py)
    assert [r.idempotency_key for r in claim_due(engine, now=150)] == ["k2"]
    assert claim_due(engine, now=130 + 300) == []

    assert mark_sent(engine, [due[0].id, due[1].id], now=200) == 2
    left = [r for r in list_outbox(engine) if r.status == "pending" and r.kind == "slack.post"]
    assert sorted(r.idempotency_key for r in left) == ["k2", "k4"]
    sent = {r.idempotency_key: r for r in list_outbox(engine, status="sent")}
    assert set(sent) == {"k1", "k3"} and sent["k1"].sent_at == 200
    assert claim_due(engine, now=10_000, limit=0) == []


def test_failure_backoff_and_dead(engine: Engine) -> None:
    enqueue(engine, [item("k")], now=0)
    now = 0
    for attempt in range(1, 4):
        (row,) = claim_due(engine, now=now)
        assert row.attempts == attempt
        assert mark_failed(engine, row.id, now, f"HTTP 500 #{attempt}", retry_in=60, max_attempts=3) == (
            FAILED if attempt < 3 else DEAD)
        assert claim_due(engine, now=now + 59) == []  # backing off
        now += 60
    (dead,) = list_outbox(engine)
    assert dead.status == DEAD and dead.last_error == "HTTP 500 #3" and dead.attempts == 3
    assert claim_due(engine, now=10**9) == []

    assert retry_dead(engine, now=now) == 1
    (again,) = claim_due(engine, now=now)
    assert again.attempts == 1
    # default backoff doubles from 30 s
    assert mark_failed(engine, again.id, now, "timeout") == FAILED
    assert list_outbox(engine)[0].next_attempt_at == now + default_backoff(1) == now + 30
    assert [default_backoff(n) for n in (1, 2, 3, 20)] == [30, 60, 120, 3600]

    mark_dead(engine, again.id, now, "channel_not_found")
    assert counts(engine) == {"dead": 1}
    with pytest.raises(KeyError, match="outbox row 999"):
        mark_failed(engine, 999, now, "x")
    with pytest.raises(KeyError, match="outbox row 999"):
        mark_dead(engine, 999, now, "x")


def test_payloads_are_json_safe_or_rejected(engine: Engine) -> None:
    enqueue(engine, [OutboxItem("k", "notify", {"v": math.nan, "n": np.int64(3), "w": (1, 2), "a": np.ones(2)})],
            now=1)
    (row,) = claim_due(engine, now=1)
    assert row.payload == {"v": None, "n": 3, "w": [1, 2], "a": [1.0, 1.0]}
    with pytest.raises(ValueError, match=r"outbox item 'bad' \('notify'\) payload: value at \$.s of type set"):
        enqueue(engine, [OutboxItem("ok", "notify", {}), OutboxItem("bad", "notify", {"s": {1}})], now=2)
    assert counts(engine) == {"pending": 1}  # the batch was rejected as a whole
    with pytest.raises(ValueError, match="idempotency_key must not be empty"):
        enqueue(engine, [OutboxItem("", "notify", {})])


def test_enqueue_inside_callers_transaction(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="boom"), engine.begin() as conn:
        assert enqueue(conn, [item("k1")], now=5) == 1
        raise RuntimeError("boom")
    assert counts(engine) == {}
    with engine.begin() as conn:
        enqueue(conn, [item("k1")], now=5)
    assert counts(engine) == {"pending": 1}


def test_failure_without_a_try_limit_is_never_dead(engine: Engine) -> None:
    """max_attempts=None counts every try but never makes the row dead (a row bounded elsewhere)."""
    enqueue(engine, [item("k")], now=0)
    now = 0
    for attempt in range(1, 15):
        (row,) = claim_due(engine, now=now)
        assert row.attempts == attempt
        assert mark_failed(engine, row.id, now, f"HTTP 503 #{attempt}", retry_in=60, max_attempts=None) == FAILED
        now += 60
    (kept,) = list_outbox(engine)
    assert kept.status == FAILED and kept.attempts == 14 and kept.last_error == "HTTP 503 #14"
    assert kept.next_attempt_at == now - 60 + 60

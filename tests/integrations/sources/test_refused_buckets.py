"""Refused buckets (integrations.sources.refused), push and poll: each bucket told once under its own
key (an account id or metric holding ':' is no other bucket's), every overflowing bucket found in
one pass (one store, not one per bucket), duplicates counted as duplicates, and a batch's own error
still told beside a refusal. SQLite and PostgreSQL (the engine fixture)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from integrations.sources.push import PushConfig, PushIngest
from rules.config import Secret
from storage.outbox import OutboxItem, idempotency_key, list_outbox
from tests.integrations.sources.helpers import T0
from tests.integrations.sources.test_push import NOW, SECRET, _event, _post


def _ingest(engine: Engine, told: list) -> PushIngest:
    def outbox(part: str, refusals: list, now: int) -> list[OutboxItem]:
        told.extend(refusals)
        return [OutboxItem(r.key("push"), "notify:console", {"message": r.reason}) for r in refusals]

    return PushIngest(engine, PushConfig(secret=Secret(SECRET)), clock=lambda: NOW, refusal_outbox=outbox)


def test_idempotency_key_parts_holding_a_colon_are_two_keys() -> None:
    assert idempotency_key("source-refused", "push", "acme:x", "calls", T0) != \
        idempotency_key("source-refused", "push", "acme", "x:calls", T0)
    assert idempotency_key("k", "a", 1) == 'k:["a",1]'


def test_pushed_buckets_whose_ids_join_alike_are_each_told(engine: Engine) -> None:
    """Account 'acme:x' metric 'calls' and account 'acme' metric 'x:calls' are two buckets: both
    overflow, both are told (before: one key, so the second was never told)."""
    told: list = []
    p = _ingest(engine, told)
    for i, (account, metric) in enumerate([("acme:x", "calls"), ("acme", "x:calls")]):
        assert _post(p, [dict(_event(f"a{i}", account, 1e308), type=metric)])[0] == 200
        status, answer = _post(p, [dict(_event(f"b{i}", account, 1e308), type=metric)])
        assert status == 200 and [(r["account"], r["metric"]) for r in answer["refused"]] == [(account, metric)]
    assert [r.bucket for r in told] == [("acme:x", "calls", T0), ("acme", "x:calls", T0)]
    assert len({r.idempotency_key for r in list_outbox(engine)}) == 2

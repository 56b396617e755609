"""Refused buckets (integrations.sources.refused), push and poll: each bucket told once under its own
key (an account id or metric holding ':' is no other bucket's), every overflowing bucket found in
one pass (one store, not one per bucket), duplicates counted as duplicates, and a batch's own error
still told beside a refusal. SQLite and PostgreSQL (the engine fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine

import bot.service.polling as polling
import integrations.sources.push as push
from bot.service.polling import poll_source
from integrations.sources.base import Batch, PollContext, UsageEvent
from integrations.sources.push import PushConfig, PushIngest
from integrations.sources.records import UsageRecord
from rules.config import Secret
from storage.outbox import OutboxItem, idempotency_key, list_outbox
from tests.integrations.sources.helpers import T0, points, refusal_notices
from tests.integrations.sources.test_push import NOW, SECRET, _event, _post


def _ingest(engine: Engine, told: list) -> PushIngest:
    def outbox(part: str, refusals: list, now: int) -> list[OutboxItem]:
        told.extend(refusals)
        return [OutboxItem(r.key("push"), "notify:console", {"message": r.reason}) for r in refusals]

    return PushIngest(engine, PushConfig(secret=Secret(SECRET)), clock=lambda: NOW, refusal_outbox=outbox)


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any) -> dict[str, int]:
    """Count the store transactions `module` runs (store_batch is one transaction each)."""
    calls = {"n": 0}
    real = module.store_batch

    def counted(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(module, "store_batch", counted)
    return calls


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


def test_every_overflowing_pushed_bucket_is_found_before_one_store(engine: Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """40 buckets that each overflow on their stored total: one refused try and one store (before:
    one store transaction per bucket, 41; 300 buckets took 12-17 s)."""
    told: list = []
    p = _ingest(engine, told)
    n = 40
    assert _post(p, [_event(f"a{i}", f"acct{i}", 1e308) for i in range(n)])[0] == 200
    calls = _counting(monkeypatch, push)
    status, answer = _post(p, [_event(f"b{i}", f"acct{i}", 1e308) for i in range(n)] + [_event("g", "globex", 1)])
    assert status == 200 and answer["accepted"] == 1 and len(answer["refused"]) == n
    assert calls["n"] == 2  # the store that refused, then the one without the refused buckets
    assert len(told) == n and points(engine)[("globex", "api_calls", T0)] == 1.0
    assert "stored 1e+308 plus the new values" in answer["refused"][0]["error"]


def test_a_duplicate_in_a_refused_bucket_is_a_duplicate_not_refused(engine: Engine) -> None:
    """POST [a] then POST [a, b] (b overflows a's bucket): a is a duplicate, only b is refused
    (before: duplicates 0, refused [a, b])."""
    told: list = []
    p = _ingest(engine, told)
    assert _post(p, [_event("a", value=1e308)])[1]["accepted"] == 1
    status, answer = _post(p, [_event("a", value=1e308), _event("b", value=1e308)])
    assert status == 200 and (answer["accepted"], answer["duplicates"]) == (0, 1)
    assert [e["id"] for e in answer["refused"][0]["events"]] == ["b"]
    assert points(engine) == {("acme", "api_calls", T0): 1e308}


class FeedSource:
    """A source whose one poll delivers the batches given (an event feed, a window of totals)."""

    id = "feed"

    def __init__(self, *batches: Batch) -> None:
        self.batches = batches

    def poll(self, ctx: PollContext) -> Iterator[Batch]:
        yield from self.batches

    def close(self) -> None:
        return None


def _events(prefix: str, buckets: list[tuple[str, str]], value: float) -> list[UsageEvent]:
    return [UsageEvent(a, m, T0 + 30, value, f"{prefix}{i}") for i, (a, m) in enumerate(buckets)]


def test_polled_feed_buckets_are_found_in_one_pass_and_told_each(engine: Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A polled event feed: 30 buckets overflow on their stored totals, two of them named alike with
    ':' ('acme:x'/'calls' and 'acme'/'x:calls'); one refused store and one store, each bucket told,
    the duplicates counted, the good event stored."""
    buckets = [("acme:x", "calls"), ("acme", "x:calls")] + [(f"acct{i}", "calls") for i in range(28)]
    first = poll_source(engine, FeedSource(Batch("c1", T0 + 30, events=_events("a", buckets, 1e308))), NOW)
    assert first.ok and first.events_new == 30
    calls = _counting(monkeypatch, polling)
    again = Batch("c2", T0 + 30, label="page 2", events=[*_events("a", buckets[:1], 1e308),  # a duplicate
                                                         *_events("b", buckets, 1e308),
                                                         UsageEvent("globex", "calls", T0 + 30, 1, "g")])
    report = poll_source(engine, FeedSource(again), NOW + 60)
    assert report.ok and calls["n"] == 2
    assert (report.events_new, report.events_duplicate) == (1, 1)
    assert "page 2: 30 bucket(s) refused" in report.rejected[0]
    told = {(n["details"]["account"], n["details"]["metric"]) for n in refusal_notices(engine, "feed")}
    assert told == set(buckets)
    assert points(engine, "calls")[("globex", "calls", T0)] == 1.0


def test_a_batch_error_is_still_told_beside_a_refused_bucket(engine: Engine) -> None:
    """A batch with its own error (rows it skipped) and a refused bucket: both notices are queued
    (before: only the refusal's, the batch's error was never told)."""
    batch = Batch("c1", T0 + 30, label="window 1", error="source 'feed': window 1: 2 row(s) skipped",
                  totals=[UsageRecord("acme", "calls", T0, 1e308), UsageRecord("acme", "calls", T0 + 1, 1e308),
                          UsageRecord("globex", "calls", T0, 3)])
    report = poll_source(engine, FeedSource(batch), NOW)
    assert report.ok and points(engine, "calls") == {("globex", "calls", T0): 3.0}
    keys = [r.idempotency_key for r in list_outbox(engine)]
    assert idempotency_key("source-rejected", "feed", "window 1", NOW) in keys
    assert len(refusal_notices(engine, "feed")) == 1
    messages = [r.payload["message"] for r in list_outbox(engine)]
    assert any("2 row(s) skipped" in m and "bucket refused" not in m for m in messages)


def test_a_pushed_id_whose_first_copy_is_refused_is_refused_in_every_bucket(engine: Engine) -> None:
    """One request holds event x twice: its first copy overflows acme's bucket, a later copy is in
    globex's. An id is one event: every copy is refused with its first one and listed, x is not
    recorded as seen, and the corrected re-send is counted (before: the later copy was counted in
    globex's bucket and the re-send was a duplicate, accepted 0)."""
    told: list = []
    p = _ingest(engine, told)
    assert _post(p, [_event("a", value=1e308)])[1]["accepted"] == 1
    status, answer = _post(p, [_event("x", value=1e308), _event("y", "globex", 1), _event("x", "globex", 5)])
    assert status == 200 and (answer["accepted"], answer["duplicates"]) == (1, 0)
    assert [(e["index"], e["id"]) for e in answer["refused"][0]["events"]] == [(0, "x"), (2, "x")]
    assert points(engine)[("globex", "api_calls", T0)] == 1.0
    status, answer = _post(p, [_event("x", "globex", 5)])  # the sender's corrected re-send
    assert status == 200 and (answer["accepted"], answer["duplicates"]) == (1, 0)
    assert points(engine)[("globex", "api_calls", T0)] == 6.0


def test_a_pushed_id_counted_in_a_good_bucket_is_a_duplicate_in_a_refused_one(engine: Engine) -> None:
    """The other order: x's first copy is in globex's bucket (counted), a later copy in acme's
    refused bucket is a duplicate within the request, not a refused event."""
    p = _ingest(engine, [])
    assert _post(p, [_event("a", value=1e308)])[1]["accepted"] == 1
    status, answer = _post(p, [_event("x", "globex", 5), _event("x", value=1e308), _event("b", value=1e308)])
    assert status == 200 and (answer["accepted"], answer["duplicates"]) == (1, 1)
    assert [e["id"] for e in answer["refused"][0]["events"]] == ["b"]
    assert points(engine)[("globex", "api_calls", T0)] == 5.0


def test_a_polled_id_whose_first_copy_is_refused_is_refused_in_every_bucket(engine: Engine) -> None:
    """A polled event feed behaves as push: event x's first copy overflows acme's bucket, its later
    copy in globex's is left out with it, and the feed's corrected x is counted on the next poll."""
    first = poll_source(engine, FeedSource(Batch("c1", T0 + 30, events=_events("a", [("acme", "calls")], 1e308))), NOW)
    assert first.ok
    batch = Batch("c2", T0 + 30, label="page 2", events=[
        UsageEvent("acme", "calls", T0 + 30, 1e308, "x"), UsageEvent("globex", "calls", T0 + 30, 1, "y"),
        UsageEvent("globex", "calls", T0 + 30, 5, "x")])
    report = poll_source(engine, FeedSource(batch), NOW + 60)
    assert report.ok and (report.events_new, report.events_duplicate) == (1, 0)
    assert points(engine, "calls")[("globex", "calls", T0)] == 1.0
    fixed = poll_source(engine, FeedSource(Batch("c3", T0 + 30, events=[UsageEvent("globex", "calls", T0 + 30, 5, "x")])),
                        NOW + 120)
    assert fixed.ok and fixed.events_new == 1
    assert points(engine, "calls")[("globex", "calls", T0)] == 6.0

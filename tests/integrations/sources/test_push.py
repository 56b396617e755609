"""Push ingest: CloudEvents (structured, batch, binary), shared secret, dedup by id, bucketed, all or nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from integrations.sources.push import BATCH, STRUCTURED, PushConfig, PushIngest, parse_ingest_config
from rules.config import Secret, document_from_text
from storage.outbox import OutboxItem
from storage.sources import get_source_state, prune_events
from tests.integrations.sources.helpers import DAY, T0, count, points

SECRET = "push-secret-7f3"
AUTH = {"Authorization": f"Bearer {SECRET}"}
NOW = T0 + 3600


def _event(eid: str, account: str = "acme", value: Any = 2, ts: int = T0 + 30, **extra: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {"specversion": "1.0", "id": eid, "source": "app/api", "type": "api_calls", "subject": account,
            "time": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "data": {"value": value}, **extra}


def _ingest(engine: Engine, **cfg: Any) -> PushIngest:
    return PushIngest(engine, PushConfig(secret=Secret(SECRET), **cfg), clock=lambda: NOW)


def _post(p: PushIngest, body: Any, ctype: str = BATCH, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return p.handle({**AUTH, "Content-Type": ctype, **(headers or {})}, raw)


def test_batch_is_aggregated_into_buckets_and_deduplicated(engine: Engine) -> None:
    p = _ingest(engine)
    status, body = _post(p, [_event("1"), _event("2", value=3, ts=T0 + 59), _event("3", ts=T0 + 60),
                             _event("1")])  # "1" twice in one batch counts once
    assert (status, body) == (200, {"accepted": 3, "duplicates": 1, "events": 4})
    status, body = _post(p, [_event("2", value=3, ts=T0 + 59), _event("4", "globex", 1)])  # "2" again
    assert (status, body) == (200, {"accepted": 1, "duplicates": 1, "events": 2})
    assert points(engine) == {("acme", "api_calls", T0): 5.0, ("acme", "api_calls", T0 + 60): 2.0,
                              ("globex", "api_calls", T0): 1.0}
    state = get_source_state(engine, "push")
    assert state is not None and state.kind == "push" and state.last_data_at == T0 + 60


def test_structured_json_and_binary_modes(engine: Engine) -> None:
    p = _ingest(engine)
    assert _post(p, _event("s1"), STRUCTURED)[0] == 200
    assert _post(p, [_event("j1")], "application/json; charset=utf-8")[0] == 200
    binary = {"ce-specversion": "1.0", "ce-id": "b1", "ce-source": "app/api", "ce-type": "api_calls",
              "ce-subject": "acme", "ce-time": "2026-11-01T00:00:10Z"}
    assert _post(p, {"value": 4}, "application/json", binary) == (200, {"accepted": 1, "duplicates": 0, "events": 1})
    assert points(engine) == {("acme", "api_calls", T0): 8.0}


def test_same_id_from_another_cloudevents_source_is_a_different_event(engine: Engine) -> None:
    p = _ingest(engine)
    _post(p, [_event("1"), dict(_event("1"), source="app/worker")])
    assert points(engine) == {("acme", "api_calls", T0): 4.0}


def test_wrong_or_missing_secret_is_401_and_stores_nothing(engine: Engine) -> None:
    p = _ingest(engine)
    assert p.handle({"Content-Type": BATCH}, json.dumps([_event("1")]).encode())[0] == 401
    status, body = p.handle({"Authorization": "Bearer nope", "Content-Type": BATCH}, b"[]")
    assert status == 401 and "Authorization: Bearer <secret>" in body["error"]
    assert count(engine, "usage_points") == 0


def test_malformed_events_reject_the_whole_request_listing_each_problem(engine: Engine) -> None:
    p = _ingest(engine)
    events = [_event("ok"), {"specversion": "0.3", "id": "", "source": "s", "type": "t", "subject": "a",
                             "data": {"value": 1}},
              _event("late", ts=NOW - 8 * DAY), _event("future", ts=NOW + 3600), _event("neg", value=-1),
              _event("nov", data={}), dict(_event("badtype"), type="API Calls!"), _event("noacct", subject=""),
              "nope"]
    status, body = _post(p, events)
    assert status == 400 and body["error"] == "8 of 9 event(s) are malformed; nothing was stored"
    probs = {(x["index"], x["field"]): x["message"] for x in body["problems"]}
    assert probs[(1, "specversion")] == 'must be "1.0" (got \'0.3\')'
    assert probs[(1, "id")].startswith("is required")
    assert "older than max_age" in probs[(2, "time")]
    assert "3600 s in the future" in probs[(3, "time")]
    assert "must be a finite number >= 0" in probs[(4, "data.value")]
    assert "the usage value is missing" in probs[(5, "data.value")]
    assert "is not a metric name" in probs[(6, "type")]
    assert "the account id is missing or empty" in probs[(7, "subject")]
    assert "expected an event object" in probs[(8, "")]
    assert [x["id"] for x in body["problems"] if x["index"] == 3] == ["future"]
    assert count(engine, "usage_points") == 0 and count(engine, "ingested_events") == 0


@pytest.mark.parametrize("body,ctype,status,needle", [
    (b"{not json", BATCH, 400, "body is not valid JSON"),
    (b"{}", BATCH, 400, "must be a JSON array"),
    (b"[]", BATCH, 400, "no events"),
    (b"[1]", "text/plain", 415, "unsupported content-type 'text/plain'"),
    (json.dumps([_event("x")]).encode(), STRUCTURED, 400, "must be one event object"),
])
def test_bad_bodies(engine: Engine, body: bytes, ctype: str, status: int, needle: str) -> None:
    got, answer = _post(_ingest(engine), body, ctype)
    assert got == status and needle in answer["error"]


def test_limits_and_default_value(engine: Engine) -> None:
    p = _ingest(engine, max_events=2, default_value=1.0)
    assert _post(p, [_event(str(i)) for i in range(3)])[0] == 413
    assert _post(p, [_event("a", data={}), _event("b", data={})])[0] == 200  # counted as 1 each
    assert points(engine) == {("acme", "api_calls", T0): 2.0}
    big = _ingest(engine, max_body_bytes=1024)
    assert big.handle({**AUTH, "Content-Type": BATCH}, b" " * 2000)[0] == 413


def test_custom_paths_metric_map_and_pruning(engine: Engine) -> None:
    p = _ingest(engine, account="data.customer", metric="data.meter", value="data.n",
                metric_map={"API Calls": "api_calls"})
    ev = _event("1", data={"customer": "c9", "meter": "API Calls", "n": 7})
    assert _post(p, [ev])[0] == 200
    assert points(engine) == {("c9", "api_calls", T0): 7.0}
    assert prune_events(engine, before=NOW + 1) == 1
    # a forgotten id would count again: an event that old is refused instead (issue 12)
    status, answer = _post(p, [ev])
    assert status == 400 and "no longer kept for deduplication" in answer["problems"][0]["message"]
    assert points(engine) == {("c9", "api_calls", T0): 7.0}


def test_a_pruned_id_is_never_accepted_again(engine: Engine) -> None:
    """Ids are pruned by the EVENT's time, which acceptance checks too: a future-dated event (within
    max_future) is not counted twice after the prune job ran (it was pruned by arrival time before)."""
    week = 7 * DAY
    sent_at = NOW
    clock = {"now": sent_at}
    p = PushIngest(engine, PushConfig(secret=Secret(SECRET)), clock=lambda: clock["now"])
    ev = _event("future", ts=sent_at + 299)  # 299 s ahead: accepted (max_future 300 s)
    assert _post(p, [ev])[1]["accepted"] == 1
    for later in (week + 1, week + 200, week + 298, week + 299, week + 400, 3 * week):
        clock["now"] = sent_at + later
        prune_events(engine, before=clock["now"] - week)  # what the service's prune job does
        status, answer = _post(p, [ev])
        assert status == 400 or answer["accepted"] == 0, (later, answer)
    assert points(engine) == {("acme", "api_calls", T0 + 3600 + 240): 2.0}


def test_a_replica_with_a_slow_clock_does_not_accept_a_pruned_id(engine: Engine) -> None:
    """The horizon is stored with the ids, so a replica whose clock is behind the pruner's refuses too."""
    assert _post(_ingest(engine), [_event("e1")])[1]["accepted"] == 1
    assert prune_events(engine, before=T0 + 31) == 1  # pruned by a replica whose clock is ahead
    slow = PushIngest(engine, PushConfig(secret=Secret(SECRET), max_age=30 * DAY), clock=lambda: NOW)
    assert _post(slow, [_event("e1")])[0] == 400
    assert prune_events(engine, before=T0) == 0  # the horizon never moves back
    assert get_source_state(engine, "push").events_forgotten_before == T0 + 31
    assert points(engine) == {("acme", "api_calls", T0): 2.0}


def test_parse_ingest_config() -> None:
    doc = document_from_text('[ingest]\nsecret = "${S}"\npath = "events"\nmax_age = "1w"\nsource_id = "a b"\n',
                             "c.toml", {"S": "x" * 16})
    cfg = parse_ingest_config(doc.section("ingest"))
    assert cfg is not None and cfg.max_age == 7 * DAY and cfg.secret.reveal() == "x" * 16
    assert [str(p) for p in doc.problems] == ["c.toml:3: ingest.path: must start with / (got 'events')",
                                              "c.toml:5: ingest.source_id: must be letters, digits and _ . : - "
                                              "only (got 'a b')"]
    doc = document_from_text("[ingest]\nenabled = true\n", "c.toml", {})
    parse_ingest_config(doc.section("ingest"))
    assert [str(p) for p in doc.problems] == ["c.toml:1: ingest.secret: is required"]
    doc = document_from_text('[ingest]\nsecret = "${S}"\n', "c.toml", {"S": "hunter2-secret"})  # 14 characters
    parse_ingest_config(doc.section("ingest"))
    assert [str(p) for p in doc.problems] == [
        "c.toml:2: ingest.secret: is too short to guard the endpoint: use at least 16 characters (e.g. "
        "`openssl rand -hex 32`; value not shown)"]
    doc = document_from_text('[ingest]\nenabled = false\nsecret = "short"\n', "c.toml", {})
    parse_ingest_config(doc.section("ingest"))
    assert doc.problems == []  # an endpoint that is off guards nothing; turning it on is checked


def test_events_whose_bucket_total_overflows_are_refused_the_rest_counted_told_once(engine: Engine, caplog) -> None:
    """Event b would add 1e308 to acme's stored 1e308: only that bucket's events are refused (named in
    the answer, with their ids; not kept, so a corrected re-send counts), globex's event of the same
    request is counted in the same transaction, and the admin is told once: a re-send is refused
    again in its answer, not told again. Before, the whole request was refused and nobody but the
    sender knew."""
    told: list[tuple[str, list]] = []

    def outbox(part: str, refusals: list, now: int) -> list[OutboxItem]:
        told.append((part, refusals))
        return [OutboxItem(r.key("push"), "notify:console", {"message": r.reason}) for r in refusals]

    p = PushIngest(engine, PushConfig(secret=Secret(SECRET)), clock=lambda: NOW, refusal_outbox=outbox)
    assert _post(p, [_event("a", value=1e308)])[0] == 200
    status, answer = _post(p, [_event("b", value=1e308), _event("c", "globex", 1)])
    assert status == 200 and (answer["accepted"], answer["events"]) == (1, 2)
    [refused] = answer["refused"]
    assert (refused["account"], refused["metric"], refused["bucket"], refused["events"]) == \
        ("acme", "api_calls", "2026-11-01T00:00:00Z", [{"index": 0, "source": "app/api", "id": "b"}])
    assert "add up to more than the largest number a float64 holds" in refused["error"]
    assert points(engine) == {("acme", "api_calls", T0): 1e308, ("globex", "api_calls", T0): 1.0}
    [(part, [r])] = told
    assert part == "POST /ingest/events of 2 event(s)" and r.bucket == ("acme", "api_calls", T0)
    assert caplog.text.count("bucket(s) refused") == 1
    status, again = _post(p, [_event("b", value=1e308), _event("d", "globex", 2, ts=T0 + 90)])  # re-sent
    assert status == 200 and again["accepted"] == 1 and again["refused"][0]["events"][0]["id"] == "b"
    assert len(told) == 1 and caplog.text.count("bucket(s) refused") == 1  # told once
    assert _post(p, [_event("b", value=5)])[1] == {"accepted": 1, "duplicates": 0, "events": 1}  # corrected
    assert points(engine)[("globex", "api_calls", T0 + 60)] == 2.0


def test_a_refused_bucket_does_not_move_the_watermark(engine: Engine) -> None:
    """The watermark says how far the stored data reach: the newest event of a request is in a bucket
    the store refuses, so the watermark is the newest event stored (globex's), not the refused one's;
    a request whose every event is refused keeps the stored watermark."""
    p = _ingest(engine)
    assert _post(p, [_event("a", value=1e308, ts=T0 + 600)])[0] == 200
    assert get_source_state(engine, "push").watermark == T0 + 600
    status, answer = _post(p, [_event("c", "globex", 1, ts=T0 + 660), _event("b", value=1e308, ts=T0 + 610),
                               _event("z", "zeta", 1e308, ts=T0 + 1800), _event("y", "zeta", 1e308, ts=T0 + 1810)])
    assert status == 200 and answer["accepted"] == 1 and len(answer["refused"]) == 2
    assert get_source_state(engine, "push").watermark == T0 + 660
    assert _post(p, [_event("x", "zeta", 1e308, ts=T0 + 1900), _event("w", "zeta", 1e308, ts=T0 + 1910)])[0] == 200
    assert get_source_state(engine, "push").watermark == T0 + 660

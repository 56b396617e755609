"""http_json source against a real local HTTP server, through httpx, stored in a real database."""

from __future__ import annotations

import base64
import time

import pytest
from sqlalchemy.engine import Engine

from bot.service.polling import poll_source
from integrations.sources.base import PollContext, SourceError
from integrations.sources.http_json import HttpJsonSource
from storage.sources import get_source_state, prune_events
from tests.integrations.sources.fake_http import FakeHttp, Seen
from tests.integrations.sources.helpers import (
    DAY,
    HOUR,
    T0,
    config_problems,
    count,
    points,
    refusal_notices,
    source_config,
)

SECRET = "tok-5f1e-very-secret"


def _toml(url: str, extra: str = "", auth: str = 'type = "bearer"\ntoken = "${API_TOKEN}"') -> str:
    return f"""
[[sources]]
id = "billing"
type = "http_json"
url = "{url}"
records = "data.items"
overlap = "2h"
backfill = "1d"
retries = 2
backoff = "0s"
timeout = "1s"
{extra}
[sources.auth]
{auth}
[sources.fields]
account = "customer.id"
metric = "meter"
value = "qty"
timestamp = "start"
"""


def _source(url: str, extra: str = "", **kw: str) -> HttpJsonSource:
    return HttpJsonSource(source_config(_toml(url, extra, **kw), {"API_TOKEN": SECRET}))


def _item(acct: str, ts: int, qty: float, meter: str = "api_calls") -> dict:
    from datetime import UTC, datetime

    return {"customer": {"id": acct}, "meter": meter, "qty": qty,
            "start": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_bearer_auth_window_params_and_mapping_are_stored(engine: Engine) -> None:
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": [_item("acme", T0, 10), _item("acme", T0 + HOUR, 5),
                                                              _item("globex", T0, 7, "events")]}}))
        src = _source(srv.url("/usage"))
        now = T0 + 2 * HOUR + 17
        report = poll_source(engine, src, now)
        assert report.ok and report.rows == 3
        req = srv.requests[0]
        assert req.headers["authorization"] == f"Bearer {SECRET}"
        assert req.q("start") == "2026-10-31T02:00:00Z"  # first poll: now - backfill, aligned to the minute
        assert req.q("end") == "2026-11-01T02:00:17Z"
    assert points(engine) == {("acme", "api_calls", T0): 10.0, ("acme", "api_calls", T0 + HOUR): 5.0,
                              ("globex", "events", T0): 7.0}
    state = get_source_state(engine, "billing")
    assert state is not None and state.watermark == T0 + HOUR and state.last_error is None
    assert set(state.metrics) == {"api_calls", "events"}


def test_second_poll_rereads_the_overlap_and_replaces_not_doubles(engine: Engine) -> None:
    served = [[_item("acme", T0, 10)], [_item("acme", T0, 12), _item("acme", T0 + HOUR, 3)]]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": served[min(len(srv.requests), 2) - 1]}}))
        src = _source(srv.url("/usage"))
        poll_source(engine, src, T0 + 30 * 60)
        poll_source(engine, src, T0 + 90 * 60)
        # the second window starts at the newest stored data (T0) minus the 2h overlap
        assert srv.requests[1].q("start") == "2026-10-31T22:00:00Z"
    assert points(engine) == {("acme", "api_calls", T0): 12.0, ("acme", "api_calls", T0 + HOUR): 3.0}


def test_basic_and_header_auth(engine: Engine) -> None:
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": []}}))
        basic = _source(srv.url("/usage"), auth='type = "basic"\nusername = "bot"\npassword = "${API_TOKEN}"')
        header = _source(srv.url("/usage"), auth='type = "header"\nheader = "X-Api-Key"\nvalue = "${API_TOKEN}"')
        assert poll_source(engine, basic, T0).ok and poll_source(engine, header, T0).ok
        assert srv.requests[0].headers["authorization"] == "Basic " + base64.b64encode(
            f"bot:{SECRET}".encode()).decode()
        assert srv.requests[1].headers["x-api-key"] == SECRET


@pytest.mark.parametrize("kind", ["cursor", "page", "offset", "link"])
def test_pagination_kinds_read_every_page(kind: str) -> None:
    items = [_item(f"a{i}", T0, i + 1) for i in range(5)]

    def handler(r: Seen) -> tuple:
        if kind == "cursor":
            start = int(r.q("page_token") or 0)
            nxt = start + 2 if start + 2 < 5 else None
            return 200, {"data": {"items": items[start:start + 2]}, "next": nxt}
        if kind == "page":
            p = int(r.q("p") or 1)
            return 200, {"data": {"items": items[(p - 1) * 2:p * 2]}}
        if kind == "offset":
            o = int(r.q("offset") or 0)
            return 200, {"data": {"items": items[o:o + 2]}}
        start = int(r.q("from_item") or 0)
        headers = {"Link": f'</usage?from_item={start + 2}>; rel="next"'} if start + 2 < 5 else {}
        return 200, {"data": {"items": items[start:start + 2]}}, headers

    pag = {"cursor": 'type = "cursor"\nparam = "page_token"\nnext = "next"',
           "page": 'type = "page"\nparam = "p"\nsize_param = "limit"\nsize = 2',
           "offset": 'type = "offset"\nparam = "offset"\nsize_param = "limit"\nsize = 2',
           "link": 'type = "link"'}[kind]
    with FakeHttp() as srv:
        srv.route("/usage", handler)
        src = _source(srv.url("/usage"), extra=f"[sources.pagination]\n{pag}\n")
        batches = list(src.poll(PollContext("billing", T0 + HOUR)))
        assert len(srv.requests) == 3
        if kind in ("page", "offset"):
            assert srv.requests[0].q("limit") == "2"
    assert sorted(r.account for r in batches[0].totals) == ["a0", "a1", "a2", "a3", "a4"]


def test_cursor_incremental_sends_the_saved_cursor_and_saves_the_new_one(engine: Engine) -> None:
    extra = 'incremental = "cursor"\n[sources.cursor]\nparam = "since"\nfield = "next_since"\ninitial = "0"\n'
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": [_item("acme", T0, 1)]},
                                             "next_since": str(int(r.q("since") or 0) + 10)}))
        src = _source(srv.url("/usage"), extra)
        poll_source(engine, src, T0 + 60)
        poll_source(engine, src, T0 + 120)
        assert [r.q("since") for r in srv.requests] == ["0", "10"]
        assert srv.requests[0].q("start") is None  # no time window in cursor mode
    assert get_source_state(engine, "billing").cursor == "20"  # type: ignore[union-attr]


def _event_source(url: str) -> HttpJsonSource:
    """A source whose items are events (fields.id)."""
    return HttpJsonSource(source_config(_toml(url).replace('timestamp = "start"', 'timestamp = "start"\nid = "id"'),
                                        {"API_TOKEN": SECRET}))


def test_event_items_with_ids_are_deduplicated_and_added(engine: Engine) -> None:
    page = [dict(_item("acme", T0 + 5, 1), id="e1"), dict(_item("acme", T0 + 20, 2), id="e2")]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": page}}))
        src = _event_source(srv.url("/usage"))
        first = poll_source(engine, src, T0 + 60)
        page.append(dict(_item("acme", T0 + 30, 4), id="e3"))
        second = poll_source(engine, src, T0 + 120)  # e1, e2 delivered again: counted once
    assert (first.events_new, second.events_new, second.events_duplicate) == (2, 1, 2)
    assert points(engine) == {("acme", "api_calls", T0): 7.0}


def test_event_items_before_the_pruning_horizon_are_never_counted_again(engine: Engine) -> None:
    """An event feed re-reading old items after their ids were pruned does not add them twice."""
    page = [dict(_item("acme", T0 + 5, 1), id="e1"), dict(_item("acme", T0 + 600, 2), id="e2")]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": page}}))
        src = _event_source(srv.url("/usage"))
        assert poll_source(engine, src, T0 + 700).events_new == 2
        assert prune_events(engine, before=T0 + 60) == 1  # e1's id is forgotten
        again = poll_source(engine, src, T0 + 800)
    assert (again.events_new, again.events_duplicate) == (0, 1)
    assert points(engine) == {("acme", "api_calls", T0): 1.0, ("acme", "api_calls", T0 + 600): 2.0}


def test_retries_5xx_and_429_honouring_retry_after_then_succeeds(engine: Engine) -> None:
    answers = [(503, {"error": "busy"}), (429, {"error": "slow down"}, {"Retry-After": "0"}),
               (200, {"data": {"items": [_item("acme", T0, 1)]}})]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: answers[len(srv.requests) - 1])
        src = _source(srv.url("/usage"))
        slept: list[float] = []
        src.fetcher.sleep = slept.append
        report = poll_source(engine, src, T0 + HOUR)
    assert report.ok and len(srv.requests) == 3 and slept == [0.0, 0.0]


def test_gives_up_after_the_retries_with_a_clear_error_and_keeps_the_cursor(engine: Engine) -> None:
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (500, {"error": "database exploded"}))
        src = _source(srv.url("/usage"))
        src.fetcher.sleep = lambda s: None
        report = poll_source(engine, src, T0)
    assert not report.ok and len(srv.requests) == 3
    assert "source 'billing': GET " in report.error and "/usage (page 1): HTTP 500" in report.error
    assert "gave up after 3 attempt(s)" in report.error
    state = get_source_state(engine, "billing")
    assert state is not None and state.failures == 1 and "HTTP 500" in (state.last_error or "")


def test_timeout_is_retried_then_reported() -> None:
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (time.sleep(1.5), (200, {"data": {"items": []}}))[1])
        src = HttpJsonSource(source_config(_toml(srv.url("/usage")).replace("retries = 2", "retries = 1"),
                                           {"API_TOKEN": SECRET}))
        src.fetcher.sleep = lambda s: None
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"timed out after 1s \(gave up after 2 attempt\(s\)\)"):
            list(src.poll(PollContext("billing", T0)))
    assert time.monotonic() - started < 4


def test_401_fails_at_once_with_a_hint_and_never_shows_the_secret(engine: Engine) -> None:
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (401, {"error": f"bad token {SECRET}"}))
        src = _source(srv.url("/usage") + "?tenant=42")
        report = poll_source(engine, src, T0)
    assert len(srv.requests) == 1
    assert "HTTP 401" in report.error and "check the credentials" in report.error
    assert SECRET not in report.error and "tenant=42" not in report.error
    assert SECRET not in (get_source_state(engine, "billing").last_error or "")  # type: ignore[union-attr]


def test_malformed_items_fail_the_poll_naming_page_item_and_field_and_store_nothing(engine: Engine) -> None:
    bad = [_item("acme", T0, 1), {"customer": {"id": "x"}, "meter": "api calls!", "qty": "lots", "start": "soon"},
           {"meter": "m", "qty": -1, "start": "2026-11-01T00:00:00Z"}, "not an object"]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": bad}}))
        report = poll_source(engine, _source(srv.url("/usage")), T0 + HOUR)
    assert not report.ok
    err = report.error or ""
    assert "3 malformed item(s) in 1 page(s) (6 problem(s)); nothing was stored from this poll" in err
    assert "page 1, item 1 (data.items[1]): field 'meter' (metric): 'api calls!' is not a metric name" in err
    assert "page 1, item 1 (data.items[1]): field 'qty' (value): expected a number, got 'lots'" in err
    assert "field 'start' (timestamp): 'soon' is not an ISO-8601 timestamp" in err
    assert "page 1, item 2 (data.items[2]): field 'customer.id' (account) is missing" in err
    assert "-1 is negative" in err
    assert "page 1, item 3 (data.items[3]): expected an object, got str" in err
    assert count(engine, "usage_points") == 0  # the good item was not stored either


def test_a_response_without_the_records_path_or_not_json_is_explained(engine: Engine) -> None:
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"items": []}))
        srv.route("/html", lambda r: (200, b"<html>login</html>", {"Content-Type": "text/html"}))
        r1 = poll_source(engine, _source(srv.url("/usage")), T0)
        r2 = poll_source(engine, _source(srv.url("/html")), T0)
    assert "has no 'data.items' (missing 'data'); check `records`" in (r1.error or "")
    assert "response is not JSON (content-type text/html)" in (r2.error or "")


def test_config_problems_are_named_with_file_line_and_field() -> None:
    toml = """
[[sources]]
id = "b"
type = "http_json"
url = "ftp://x"
incremental = "windw"
retries = -1
[sources.auth]
type = "bearer"
[sources.fields]
account = "a"
value = "v"
[sources.pagination]
type = "cursor"
"""
    problems = config_problems(toml)
    text = "\n".join(problems)
    assert "test.toml:5: sources[0].url: must start with http:// or https://" in text
    assert "sources[0].incremental: must be one of window, cursor, none (got 'windw'); did you mean 'window'?" in text
    assert "sources[0].retries: must be between 0 and 20" in text
    assert "sources[0].auth.token: is required" in text
    assert "sources[0].fields.timestamp: is required" in text
    assert "sources[0].fields.metric: give fields.metric" in text
    assert "sources[0].pagination.param: is required for pagination type 'cursor'" in text
    assert "sources[0].pagination.next: is required for cursor pagination" in text


def test_missing_secret_env_var_is_named_not_its_value() -> None:
    problems = config_problems(_toml("https://x.example/usage"), env={})
    assert any("sources[0].auth.token: environment variable API_TOKEN is not set" in p for p in problems)


def test_epoch_timestamps_and_metric_map(engine: Engine) -> None:
    toml = _toml("URL").replace('timestamp = "start"', 'timestamp = "start"\ntimestamp_format = "epoch_ms"')
    toml = toml.replace('records = "data.items"', 'records = ""\nmetric_map = { "API Calls" = "api_calls" }')
    with FakeHttp() as srv:
        srv.route("/u", lambda r: (200, [{"customer": {"id": 7}, "meter": "API Calls", "qty": "2.5",
                                          "start": (T0 + DAY) * 1000}]))
        src = HttpJsonSource(source_config(toml.replace("URL", srv.url("/u")), {"API_TOKEN": SECRET}))
        assert poll_source(engine, src, T0 + 2 * DAY).ok
    assert points(engine) == {("7", "api_calls", T0 + DAY): 2.5}


def test_a_bucket_whose_totals_overflow_is_refused_told_once_and_the_rest_stored(engine: Engine, caplog) -> None:
    """1e308 twice in acme's minute adds up past a float64: that bucket is refused (named with the
    source, the window and the bucket, told once), globex's rows of the same poll are stored, and
    the poll goes on; before, every poll failed at it and no later row was ever stored. After a
    restart the overlap reads the bucket again: refused again, not told again, the later rows stored."""
    page = [_item("acme", T0 + 5, 1e308), _item("acme", T0 + 10, 1e308), _item("globex", T0 + 5, 3)]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": page}}))
        first = poll_source(engine, _source(srv.url("/usage")), T0 + 60)
        assert first.ok and points(engine) == {("globex", "api_calls", T0): 3.0}
        assert first.rejections == 1  # one bucket refused (usagebot_source_rejected_total)
        [told] = first.rejected
        assert told.startswith(f"source 'billing': 1 page(s) of GET {srv.url('/usage')}, window "
                               "2026-10-31T00:01:00Z to 2026-11-01T00:01:00Z: 1 bucket(s) refused, not stored")
        assert "account 'acme', metric 'api_calls', bucket 2026-11-01T00:00:00Z" in told
        assert "add up to more than the largest number a float64 holds" in told and "nothing was" not in told
        state = get_source_state(engine, "billing")
        assert state.last_error == told and state.watermark == T0 + 5  # the stored rows' newest, not acme's refused T0 + 10
        [notice] = refusal_notices(engine, "billing")
        assert notice["details"]["account"] == "acme" and notice["details"]["bucket"] == "2026-11-01T00:00:00Z"
        assert notice["details"]["part"].endswith("window 2026-10-31T00:01:00Z to 2026-11-01T00:01:00Z")
        assert caplog.text.count("bucket(s) refused") == 1 and "Traceback" not in caplog.text
        page.append(_item("globex", T0 + 120, 4))  # a later row, read after the restart
        again = poll_source(engine, _source(srv.url("/usage")), T0 + 180)  # a new source object: a restart
    assert again.ok and again.rejected == [] and again.rejections == 0 and len(refusal_notices(engine, "billing")) == 1
    assert points(engine) == {("globex", "api_calls", T0): 3.0, ("globex", "api_calls", T0 + 120): 4.0}
    assert get_source_state(engine, "billing").last_error is None
    assert caplog.text.count("bucket(s) refused") == 1


def test_cursor_pages_with_a_refused_bucket_store_the_rest_and_move_on(engine: Engine) -> None:
    """Cursor mode: skipping the part would lose its good rows for good (the cursor moves past
    them), so only the refused bucket is left out; the cursor moves on, the part is not read again."""
    extra = 'incremental = "cursor"\n[sources.cursor]\nparam = "since"\nfield = "next_since"\ninitial = "0"\n'
    served = {"0": [_item("acme", T0, 1e308), _item("acme", T0 + 1, 1e308), _item("globex", T0, 3)],
              "10": [_item("acme", T0 + HOUR, 5)]}
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": served[r.q("since")]},
                                             "next_since": str(int(r.q("since")) + 10)}))
        first = poll_source(engine, _source(srv.url("/usage"), extra), T0 + 60)
        second = poll_source(engine, _source(srv.url("/usage"), extra), T0 + HOUR + 60)  # restarted
        assert [r.q("since") for r in srv.requests] == ["0", "10"]
    assert first.ok and "1 page(s) of GET" in first.rejected[0] and "from the start" in first.rejected[0]
    assert second.ok and second.rejected == []
    assert points(engine) == {("globex", "api_calls", T0): 3.0, ("acme", "api_calls", T0 + HOUR): 5.0}
    assert get_source_state(engine, "billing").cursor == "20"
    assert len(refusal_notices(engine, "billing")) == 1


def test_events_that_take_a_stored_bucket_past_a_float64_are_refused_the_rest_counted(engine: Engine) -> None:
    """An event feed: e2 would add 1e308 to acme's stored 1e308. Only the events of that bucket are
    left out (e2's id is not kept: a corrected re-send counts; e1, stored before, stays as it was);
    e3 of the same poll is counted, and after a restart the overlap's re-read tells nothing again."""
    page = [dict(_item("acme", T0 + 5, 1e308), id="e1")]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": {"items": page}}))
        assert poll_source(engine, _event_source(srv.url("/usage")), T0 + 60).ok
        page += [dict(_item("acme", T0 + 20, 1e308), id="e2"), dict(_item("globex", T0 + 20, 2), id="e3")]
        second = poll_source(engine, _event_source(srv.url("/usage")), T0 + 120)
        page.append(dict(_item("globex", T0 + 200, 7), id="e4"))
        third = poll_source(engine, _event_source(srv.url("/usage")), T0 + 260)  # restarted, overlap re-read
    # e1 (in the refused bucket, stored before) is a duplicate, not a refused event
    assert second.ok and (second.events_new, second.events_duplicate) == (1, 1)
    [told] = second.rejected
    assert "account 'acme', metric 'api_calls', bucket 2026-11-01T00:00:00Z" in told and "stored 1e+308" in told
    assert "usage write" not in told
    assert third.ok and third.rejected == [] and third.events_new == 1
    assert points(engine) == {("acme", "api_calls", T0): 1e308, ("globex", "api_calls", T0): 2.0,
                              ("globex", "api_calls", T0 + 180): 7.0}
    assert len(refusal_notices(engine, "billing")) == 1

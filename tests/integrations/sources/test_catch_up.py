"""A window that outgrew pagination.max_pages or poll_deadline is read in parts by the next polls and
the source catches up (integrations.sources.catch_up); before, every later poll failed for ever.

Real httpx client against a local fake API that pages the requested window, stored in SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from bot.service.polling import PollReport, poll_source
from integrations.sources.base import LimitError
from integrations.sources.catch_up import CatchUp, Span
from integrations.sources.http_fetch import Fetcher
from integrations.sources.http_json import HttpJsonSource
from storage.sources import get_source_state
from tests.integrations.sources.fake_http import FakeHttp, Seen
from tests.integrations.sources.helpers import DAY, HOUR, T0, iso_z, points, source_config


def _ts(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


class WindowApi:
    """GET /usage?from=&to=&page_token=: the items of [from, to), two per page; `tick` is added to
    the fake monotonic clock per request (a slow API)."""

    def __init__(self, items: list[tuple[str, int, float]], tick: float = 0.0) -> None:
        self.items, self.tick, self.clock, self.windows = items, tick, [0.0], []

    def __call__(self, req: Seen) -> tuple:
        self.clock[0] += self.tick
        lo, hi = _ts(req.q("from") or ""), _ts(req.q("to") or "")
        if req.q("page_token") is None:
            self.windows.append((lo, hi))
        inside = [i for i in self.items if lo <= i[1] < hi]
        at = int(req.q("page_token") or 0)
        nxt = at + 2 if at + 2 < len(inside) else None
        return 200, {"data": [{"acct": a, "qty": q, "at": iso_z(ts)} for a, ts, q in inside[at:at + 2]], "next": nxt}


def _source(url: str, api: WindowApi, limits: str = "", max_pages: int = 3) -> HttpJsonSource:
    cfg = source_config(f"""
[[sources]]
id = "billing"
type = "http_json"
url = "{url}"
records = "data"
metric = "api_calls"
backfill = "1d"
overlap = "1h"
retries = 0
{limits}
[sources.fields]
account = "acct"
value = "qty"
timestamp = "at"
[sources.window]
start_param = "from"
end_param = "to"
align = "1h"
[sources.pagination]
type = "cursor"
param = "page_token"
next = "next"
max_pages = {max_pages}
""")
    return HttpJsonSource(cfg, fetcher=Fetcher("billing", retry=cfg.options.retry, monotonic=lambda: api.clock[0]))


def _hourly() -> list[tuple[str, int, float]]:
    return [("acme", T0 + h * HOUR + 60, float(h + 1)) for h in range(24)]


def _until_caught_up(engine: Engine, src: HttpJsonSource, now: int, polls: int = 30) -> list[PollReport]:
    reports = []
    for _ in range(polls):
        reports.append(poll_source(engine, src, now))
        if reports[-1].ok and src.catch_up.span is None:
            break
    return reports


def test_a_window_past_max_pages_is_read_in_parts_and_the_source_catches_up(engine: Engine) -> None:
    """24 hourly items in the first window need 12 pages (max 3): the poll fails and says the next
    reads in parts of 12h; that fails too (6 pages) and halves again; 6h parts fit, each part read
    whole moves the watermark to its end, and the source reaches `now` and reads whole windows
    again. Every item is stored; nothing is read twice beyond the overlap."""
    api = WindowApi(_hourly())
    with FakeHttp() as srv:
        srv.route("/usage", api)
        src = _source(srv.url("/usage"), api)
        reports = _until_caught_up(engine, src, T0 + DAY)
        assert [r.ok for r in reports] == [False, False, True, True, True, True, True]  # docs/sources.md says so
        assert "more than 3 pages" in (reports[0].error or "")
        assert "the next poll reads the window in parts of 12h, from 2026-11-01T00:00:00Z" in (reports[0].error or "")
        assert "in parts of 6h" in (reports[1].error or "")
        assert api.windows[:4] == [(T0, T0 + DAY), (T0, T0 + 12 * HOUR), (T0, T0 + 6 * HOUR),
                                   (T0 + 5 * HOUR, T0 + 11 * HOUR)]  # on from the part's end, less the overlap
        assert reports[-1].ok and src.catch_up.span is None and api.windows[-1][1] == T0 + DAY
        assert points(engine) == {("acme", "api_calls", ts): q for _, ts, q in _hourly()}
        assert get_source_state(engine, "billing").watermark == T0 + 23 * HOUR + 60  # the newest data again
        api.items.append(("acme", T0 + DAY + 60, 99.0))
        after = poll_source(engine, src, T0 + DAY + HOUR)
    assert after.ok and api.windows[-1] == (T0 + 22 * HOUR, T0 + DAY + HOUR)  # a whole window again
    assert points(engine)[("acme", "api_calls", T0 + DAY + 60)] == 99.0


def test_catching_up_goes_on_after_a_restart(engine: Engine) -> None:
    """The span is kept in memory: a restarted source fails once more on the rest of the window,
    halves again, and still catches up from the stored watermark (nothing stored before is re-read
    beyond the overlap)."""
    api = WindowApi(_hourly())
    with FakeHttp() as srv:
        srv.route("/usage", api)
        src = _source(srv.url("/usage"), api)
        for _ in range(3):
            poll_source(engine, src, T0 + DAY)
        assert get_source_state(engine, "billing").watermark == T0 + 6 * HOUR
        restarted = _source(srv.url("/usage"), api)
        reports = _until_caught_up(engine, restarted, T0 + DAY)
        assert not reports[0].ok and api.windows[3] == (T0 + 5 * HOUR, T0 + DAY)
        assert reports[-1].ok and restarted.catch_up.span is None
    assert points(engine) == {("acme", "api_calls", ts): q for _, ts, q in _hourly()}


def test_a_window_past_poll_deadline_is_read_in_parts(engine: Engine) -> None:
    """Each request takes 10 s on the fake clock and poll_deadline is 25 s: a poll gets 3 requests.
    The first window (12 pages) stops at the deadline; the parts that fit are stored and the source
    catches up."""
    api = WindowApi(_hourly(), tick=10.0)
    with FakeHttp() as srv:
        srv.route("/usage", api)
        src = _source(srv.url("/usage"), api, limits='poll_deadline = "25s"', max_pages=1000)
        reports = _until_caught_up(engine, src, T0 + DAY)
    assert "poll_deadline (25s)" in (reports[0].error or "")
    assert "in parts of 12h" in (reports[0].error or "")
    assert reports[-1].ok and src.catch_up.span is None
    assert points(engine) == {("acme", "api_calls", ts): q for _, ts, q in _hourly()}


def test_a_single_bucket_past_the_limit_fails_saying_it_cannot_be_split(engine: Engine) -> None:
    api = WindowApi([(f"a{i}", T0 + 60 + i, 1.0) for i in range(10)])  # 10 items in one hour: 5 pages
    with FakeHttp() as srv:
        srv.route("/usage", api)
        src = _source(srv.url("/usage"), api)
        reports = [poll_source(engine, src, T0 + HOUR) for _ in range(8)]
    # the empty hours before it are read in parts and passed; the crowded hour itself fails, named
    assert get_source_state(engine, "billing").watermark == T0
    assert not reports[-1].ok and "the window 2026-11-01T00:00:00Z to 2026-11-01T01:00:00Z is a single bucket and " \
        "cannot be read in parts" in (reports[-1].error or "")
    assert points(engine) == {}


def test_the_span_halves_to_whole_buckets_and_a_part_moves_the_watermark_to_its_end() -> None:
    c = CatchUp()
    assert c.window(0, 10 * HOUR) == Span(0, 10 * HOUR, False)
    err = c.failed(Span(0, 7 * HOUR, False), HOUR, LimitError("x"))
    assert c.span == 3 * HOUR and "in parts of 3h" in str(err)
    part = c.window(0, 7 * HOUR)
    assert part == Span(0, 3 * HOUR, True)
    assert part.watermark(None) == 3 * HOUR and part.watermark(4 * HOUR) == 4 * HOUR
    c.done(part)
    assert c.span == 3 * HOUR  # still catching up
    c.done(c.window(5 * HOUR, 7 * HOUR))
    assert c.span is None
    c.span = 2 * HOUR  # an overlap (6h) longer than the part: the part starts at the watermark
    assert c.window(0, 20 * HOUR, watermark=6 * HOUR + 90, align=HOUR) == Span(6 * HOUR, 8 * HOUR, True)
    assert c.window(0, 7 * HOUR, watermark=6 * HOUR, align=HOUR) == Span(6 * HOUR, 7 * HOUR, False)


def test_stripe_a_window_past_max_pages_is_read_in_parts(engine: Engine) -> None:
    """Stripe pages a customer's summaries (has_more); 24 hourly summaries at 2 a page need 12 pages,
    max_pages is 3: the window is read in parts and every summary stored."""
    from integrations.sources.stripe_meter import StripeMeterSource

    hours = [(T0 + h * HOUR, float(h + 1)) for h in range(24)]

    def summaries(req: Seen) -> tuple:
        lo, hi = int(req.q("start_time") or 0), int(req.q("end_time") or 0)
        inside = [{"id": f"s{ts}", "aggregated_value": v, "start_time": ts} for ts, v in hours if lo <= ts < hi]
        after = req.q("starting_after")
        at = next(i + 1 for i, s in enumerate(inside) if s["id"] == after) if after else 0
        return 200, {"data": inside[at:at + 2], "has_more": at + 2 < len(inside)}

    with FakeHttp() as srv:
        srv.route("/v1/billing/meters/mtr_1/event_summaries", summaries)
        src = StripeMeterSource(source_config(f"""
[[sources]]
id = "stripe"
type = "stripe_meter"
url = "{srv.url()}"
api_key = "sk_test"
meters = {{ mtr_1 = "api_calls" }}
customers = {{ acme = "cus_A" }}
max_pages = 3
backfill = "1d"
overlap = "1h"
retries = 0
"""))
        reports = [poll_source(engine, src, T0 + DAY) for _ in range(30)]
    assert "more than 3 pages" in (reports[0].error or "") and "in parts of 12h" in (reports[0].error or "")
    assert reports[-1].ok and src.catch_up.span is None
    assert points(engine) == {("acme", "api_calls", ts): v for ts, v in hours}


def test_openmeter_a_window_past_poll_deadline_is_read_in_parts(engine: Engine) -> None:
    """A meter query that takes a (fake) second per row returned, poll_deadline 7 s: a day of hourly
    rows passes the deadline; parts of 6h (6 rows) fit, and the source catches up."""
    from integrations.sources.openmeter import OpenMeterSource

    clock = [0.0]
    rows = [(T0 + h * HOUR, float(h + 1)) for h in range(24)]

    def query(req: Seen) -> tuple:
        lo, hi = _ts(req.q("from") or ""), _ts(req.q("to") or "")
        data = [{"value": v, "windowStart": iso_z(ts), "subject": "acme"} for ts, v in rows if lo <= ts < hi]
        clock[0] += len(data)
        return 200, {"data": data}

    with FakeHttp() as srv:
        srv.route("/api/v1/meters/calls/query", query)
        cfg = source_config(f"""
[[sources]]
id = "om"
type = "openmeter"
url = "{srv.url()}"
meters = {{ calls = "api_calls" }}
backfill = "1d"
overlap = "1h"
retries = 0
poll_deadline = "7s"
""")
        src = OpenMeterSource(cfg, fetcher=Fetcher("om", retry=cfg.options.retry, monotonic=lambda: clock[0]))
        reports = [poll_source(engine, src, T0 + DAY - 1) for _ in range(30)]
    assert "poll_deadline (7s)" in (reports[0].error or "") and "in parts of 12h" in (reports[0].error or "")
    assert reports[-1].ok and src.catch_up.span is None
    assert points(engine) == {("acme", "api_calls", ts): v for ts, v in rows}

"""A window source that fell behind (its window needs more than max_pages pages) catches up by itself:
each poll reads and stores a shorter window and the next goes on from its end (base.read_window).
Real httpx against a local HTTP server, stored in SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from bot.service.polling import PollReport, poll_source
from integrations.sources.base import CatchUp, PollContext, Source, catching_up
from integrations.sources.http_json import HttpJsonSource
from integrations.sources.stripe_meter import StripeMeterSource
from storage.sources import get_source_state
from tests.dbs import migrated_engine
from tests.integrations.sources.fake_http import FakeHttp, Seen
from tests.integrations.sources.helpers import DAY, HOUR, T0, count, iso_z, points, source_config, source_toml

NOW = T0 + 10 * DAY + 17 * 60 + 5  # 10 days and a bit after the data starts
PAGE = 12  # items per page; 2 accounts x 24 hours = 4 pages a day


def _toml(url: str, max_pages: int, extra: str = "") -> str:
    fields = {"account": "account", "metric": "meter", "value": "qty", "timestamp": "start"}
    pagination = {"type": "page", "param": "p", "size_param": "limit", "size": PAGE, "max_pages": max_pages}
    head = source_toml(id="billing", type="http_json", url=url, records="items", overlap="2h", backfill="12d")
    return head + extra + "\n" + source_toml(
        {"fields": fields, "window": {"align": "1h"}, "pagination": pagination}).removeprefix("[[sources]]\n")


def _source(url: str, max_pages: int, extra: str = "") -> HttpJsonSource:
    return HttpJsonSource(source_config(_toml(url, max_pages, extra)))


def _serve(srv: FakeHttp, items: list[dict]) -> None:
    """The items whose `start` is in [start, end) of the request, in pages of PAGE (page p from 1)."""

    def handler(r: Seen) -> tuple:
        start, end, p = r.q("start") or "", r.q("end") or "", int(r.q("p") or 1)
        inside = sorted((i for i in items if start <= i["start"] < end), key=lambda i: (i["start"], i["account"]))
        return 200, {"items": inside[(p - 1) * PAGE:p * PAGE]}

    srv.route("/usage", handler)


def _hourly(days: int) -> list[dict]:
    """Two accounts' hourly totals for `days` days from T0 (values differ per hour and account)."""
    return [{"account": a, "meter": "api_calls", "qty": (h % 37) + 3 * k + 1, "start": iso_z(T0 + h * HOUR)}
            for h in range(days * 24) for k, a in enumerate(("acme", "globex"))]


def _until_caught_up(engine: Engine, src: Source, now: int | Callable[[int], int], most: int = 40) -> list[PollReport]:
    reports: list[PollReport] = []
    for n in range(most):
        report = poll_source(engine, src, now if isinstance(now, int) else now(n))
        reports.append(report)
        assert report.ok, report.error
        if report.behind is None:
            return reports
    raise AssertionError(f"still behind after {most} polls: {reports[-1].behind}")


def test_a_source_ten_days_behind_catches_up_over_polls_with_the_totals_of_one_big_poll(
        engine: Engine, tmp_path: Path) -> None:
    items = _hourly(10)
    with FakeHttp() as srv:
        _serve(srv, items)
        # 2 days are 8 full pages and the short page that ends them: max_pages = 9 fits 2 days, not 3
        reports = _until_caught_up(engine, _source(srv.url("/usage"), max_pages=9), NOW)
        with migrated_engine(f"sqlite:///{tmp_path / 'one-poll.db'}") as one:
            big = poll_source(one, _source(srv.url("/usage"), max_pages=1000), NOW)
            assert big.ok and big.behind is None
            expected = points(one)
    assert len(expected) == len(items) == 480
    assert points(engine) == expected
    assert 5 <= len(reports) <= 10  # 12 days of window (2 before the data) in windows of 1 to 2 days
    assert all(r.behind is not None and "read up to" in r.behind for r in reports[:-1])
    assert "more poll(s) behind" in reports[0].behind  # type: ignore[operator]
    state = get_source_state(engine, "billing")
    assert state is not None and state.cursor is None and state.watermark == T0 + 10 * DAY - HOUR
    assert state.last_error is None


def test_each_poll_goes_on_from_the_end_of_the_shorter_window_less_the_overlap(engine: Engine) -> None:
    with FakeHttp() as srv:
        _serve(srv, _hourly(10))
        src = _source(srv.url("/usage"), max_pages=9)
        first = poll_source(engine, src, NOW)
        state = get_source_state(engine, "billing")
        assert state is not None
        behind = CatchUp.parse(state.cursor)
        assert first.behind is not None and behind is not None
        assert f"read up to {iso_z(behind.read_to)}" in first.behind
        # the next window starts at where the last one ended minus the 2h overlap, aligned to the hour
        srv.requests.clear()
        second = poll_source(engine, src, NOW)
        assert second.ok
        assert srv.requests[0].q("start") == iso_z(behind.read_to - 2 * HOUR)
        assert behind.read_to % HOUR == 0  # shorter windows end on a bucket boundary
        # the catch-up cursor's span is tried first: no request reads past where that span ends
        assert max(r.q("end") or "" for r in srv.requests) <= iso_z(behind.read_to - 2 * HOUR + 2 * behind.span)


def test_an_event_in_the_overlap_of_two_shorter_windows_is_counted_once(engine: Engine) -> None:
    """Events (fields.id) are added up: the overlap re-read delivers one again, deduplicated by its id."""
    items = [dict(i, id=f"e{n}") for n, i in enumerate(_hourly(10))]
    with FakeHttp() as srv:
        _serve(srv, items)
        src = HttpJsonSource(source_config(_toml(srv.url("/usage"), 9).replace('timestamp = "start"',
                                                                               'timestamp = "start"\nid = "id"')))
        first = poll_source(engine, src, NOW)
        behind = CatchUp.parse(get_source_state(engine, "billing").cursor)  # type: ignore[union-attr]
        assert first.behind is not None and behind is not None
        # the events of the last hour of the first window are in the overlap the second one re-reads
        in_both = {i["id"] for i in items if i["start"] == iso_z(behind.read_to - HOUR)}
        second = poll_source(engine, src, NOW)
        reports = [first, second, *_until_caught_up(engine, src, NOW)]
    assert len(in_both) == 2 and second.events_duplicate >= len(in_both)
    assert sum(r.events_new for r in reports) == len(items)
    assert points(engine) == {(i["account"], "api_calls", T0 + n // 2 * HOUR): float(i["qty"])
                              for n, i in enumerate(items)}
    assert count(engine, "ingested_events") == len(items)


def test_a_late_item_in_the_overlap_replaces_its_bucket_total(engine: Engine) -> None:
    """Bucket totals re-read in the overlap of the next shorter window replace what is stored: an hour
    whose total grew between two polls holds the new total, not the sum."""
    items = _hourly(10)
    with FakeHttp() as srv:
        _serve(srv, items)
        src = _source(srv.url("/usage"), max_pages=9)
        first = poll_source(engine, src, NOW)
        behind = CatchUp.parse(get_source_state(engine, "billing").cursor)  # type: ignore[union-attr]
        assert first.behind is not None and behind is not None
        last_hour = behind.read_to - HOUR  # in the first window and in the overlap of the next
        before = points(engine)[("acme", "api_calls", last_hour)]
        grown = next(i for i in items if i["account"] == "acme" and i["start"] == iso_z(last_hour))
        grown["qty"] += 1000
        _until_caught_up(engine, src, NOW)
    assert points(engine)[("acme", "api_calls", last_hour)] == before + 1000


def test_one_bucket_needing_more_than_max_pages_fails_naming_it_and_stores_nothing(engine: Engine) -> None:
    crowded = [{"account": f"a{k}", "meter": "api_calls", "qty": 1, "start": iso_z(T0 + 3 * HOUR)}
               for k in range(5 * PAGE)]
    with FakeHttp() as srv:
        _serve(srv, _hourly(10)[:48] + crowded)
        src = _source(srv.url("/usage"), max_pages=4)
        reports = [poll_source(engine, src, NOW)]
        while reports[-1].ok and len(reports) < 40:
            reports.append(poll_source(engine, src, NOW))
        again = poll_source(engine, src, NOW)
    for report in reports[:-1]:  # the data before the crowded hour is read, then the polls stop at it
        assert report.ok and report.behind is not None
    failed = reports[-1]
    assert not failed.ok and again.error == failed.error
    assert failed.error == ("source 'billing': the window 2026-11-01T01:00:00Z to 2026-11-01T04:00:00Z (the "
                            "overlap re-read and the first 1h bucket not read yet) alone needs more than 4 pages; "
                            "raise pagination.max_pages or lower overlap (nothing was stored)"), failed.error
    assert set(points(engine)) == {(i["account"], "api_calls", T0 + h * HOUR) for h in range(3)
                                   for i in ({"account": "acme"}, {"account": "globex"})}  # up to the crowded hour
    state = get_source_state(engine, "billing")
    assert state is not None and state.last_error == failed.error
    assert CatchUp.parse(state.cursor).read_to == T0 + 3 * HOUR  # type: ignore[union-attr]


def test_the_first_bucket_of_a_first_poll_too_big_fails_naming_the_bucket(engine: Engine) -> None:
    start = NOW - 12 * DAY - (NOW - 12 * DAY) % HOUR
    crowded = [{"account": f"a{k}", "meter": "api_calls", "qty": 1, "start": iso_z(start + 60)}
               for k in range(5 * PAGE)]
    with FakeHttp() as srv:
        _serve(srv, crowded + _hourly(10))
        report = poll_source(engine, _source(srv.url("/usage"), max_pages=4), NOW)
    assert not report.ok
    assert report.error == (f"source 'billing': the bucket {iso_z(start)} to {iso_z(start + HOUR)} alone needs "
                            "more than 4 pages; raise pagination.max_pages (nothing was stored)")
    assert count(engine, "usage_points") == 0
    assert get_source_state(engine, "billing").cursor is None  # type: ignore[union-attr]


def test_a_source_whose_data_stopped_does_not_go_back_before_its_last_shorter_window(engine: Engine) -> None:
    """Once caught up, a source whose newest data is before the end of its last shorter window keeps that
    end as its floor: the next window starts there (less the overlap), not at the older watermark, so
    the polls do not fall behind again and again (and the cursor goes once the data passes it)."""
    items = _hourly(3)  # data for 3 days, then nothing
    with FakeHttp() as srv:
        _serve(srv, items)
        src = _source(srv.url("/usage"), max_pages=9)
        later = iter(range(NOW, NOW + 50 * HOUR, HOUR))
        _until_caught_up(engine, src, lambda n: next(later))
        state = get_source_state(engine, "billing")
        behind = CatchUp.parse(state.cursor)  # type: ignore[union-attr]
        assert behind is not None and state.watermark < behind.read_to  # type: ignore[union-attr,operator]
        srv.requests.clear()
        assert poll_source(engine, src, NOW + 60 * HOUR).behind is None
        assert srv.requests[0].q("start") == iso_z(behind.read_to - 2 * HOUR)
        items.append({"account": "acme", "meter": "api_calls", "qty": 5, "start": iso_z(NOW + 60 * HOUR)})
        assert poll_source(engine, src, NOW + 61 * HOUR).ok
    assert get_source_state(engine, "billing").cursor is None  # type: ignore[union-attr]


def test_a_cursor_source_never_sends_a_catch_up_cursor_as_its_position() -> None:
    extra = 'incremental = "cursor"\n[sources.cursor]\nparam = "since"\nfield = "next"\ninitial = "0"\n'
    with FakeHttp() as srv:
        _serve(srv, [])
        src = _source(srv.url("/usage"), max_pages=9, extra=extra)
        ctx = PollContext("billing", NOW, cursor=CatchUp(NOW - DAY, DAY, 3).cursor())
        batches = list(src.poll(ctx))
    assert srv.requests[0].q("since") == "0"
    # nor stores it again (its answer gave no next cursor): it would mark the source as behind for ever
    assert [b.cursor for b in batches] == [None] and not catching_up(batches[0].cursor)


# ------------------------------------------------------------------------ stripe_meter


def _stripe(url: str, max_pages: int) -> StripeMeterSource:
    return StripeMeterSource(source_config(source_toml(
        id="stripe", type="stripe_meter", url=url, api_key="sk_test_catch_up", meters={"mtr_1": "api_calls"},
        customers={"acme": "cus_A", "globex": "cus_G"}, max_pages=max_pages, overlap="2h", backfill="12d")))


def _serve_stripe(srv: FakeHttp, summaries: dict[str, list[tuple[int, int]]]) -> None:
    """Stripe's event summaries of a customer in [start_time, end_time), 24 a page, has_more/starting_after."""

    def handler(r: Seen) -> tuple:
        start, end = int(r.q("start_time") or 0), int(r.q("end_time") or 0)
        inside = [{"id": f"sum_{n}", "start_time": ts, "end_time": ts + HOUR, "aggregated_value": v}
                  for n, (ts, v) in enumerate(summaries[r.q("customer") or ""]) if start <= ts < end]
        after = r.q("starting_after")
        first = next(n + 1 for n, s in enumerate(inside) if s["id"] == after) if after else 0
        page = inside[first:first + 24]
        return 200, {"object": "list", "data": page, "has_more": first + 24 < len(inside)}

    srv.route("/v1/billing/meters/mtr_1/event_summaries", handler)


def test_stripe_ten_days_behind_catches_up_with_the_totals_of_one_big_poll(engine: Engine, tmp_path: Path) -> None:
    summaries = {c: [(T0 + h * HOUR, (h % 13) + k) for h in range(10 * 24)] for k, c in enumerate(("cus_A", "cus_G"))}
    with FakeHttp() as srv:
        _serve_stripe(srv, summaries)
        reports = _until_caught_up(engine, _stripe(srv.url(), max_pages=2), NOW)  # 2 pages: 2 days a customer
        with migrated_engine(f"sqlite:///{tmp_path / 'one-poll.db'}") as one:
            assert poll_source(one, _stripe(srv.url(), max_pages=100), NOW).ok
            expected = points(one)
    assert len(expected) == 480 and points(engine) == expected
    assert len(reports) >= 5 and all(r.behind for r in reports[:-1])
    assert get_source_state(engine, "stripe").cursor is None  # type: ignore[union-attr]


def test_a_window_too_long_for_poll_deadline_is_read_shorter_by_the_next_polls(engine: Engine, tmp_path: Path) -> None:
    """poll_deadline still fails the poll that passes it (nothing stored), but it stores half its window
    as the cursor's span: the next polls read shorter windows and catch up, with the totals of one big
    poll. (Each request takes 10 s of the fetcher's clock: a 65 s deadline is 6 requests a poll.)"""
    clock = [0.0]

    def slow(handler: Callable[[Seen], tuple]) -> Callable[[Seen], tuple]:
        def answer(r: Seen) -> tuple:
            clock[0] += 10
            return handler(r)
        return answer

    with FakeHttp() as srv:
        _serve(srv, _hourly(10))
        srv.route("/usage", slow(srv.routes["/usage"]))
        src = _source(srv.url("/usage"), max_pages=1000, extra='poll_deadline = "65s"\nbackoff = "0s"')
        src.fetcher.monotonic = lambda: clock[0]
        reports = []
        while not reports or not reports[-1].ok or reports[-1].behind:
            reports.append(poll_source(engine, src, NOW))
            assert len(reports) < 40, reports[-1].error or reports[-1].behind
        with migrated_engine(f"sqlite:///{tmp_path / 'one-poll.db'}") as one:
            assert poll_source(one, _source(srv.url("/usage"), max_pages=1000), NOW).ok
            expected = points(one)
    failed = [r for r in reports if not r.ok]
    assert failed and all("poll_deadline (65s)" in (r.error or "") and "the next poll reads a window half as long"
                          in (r.error or "") for r in failed)
    assert len(failed) <= 4  # halved each time until a window fits in 6 requests, then no more failures
    assert not any(not r.ok for r in reports[reports.index(failed[-1]) + 1:])
    assert points(engine) == expected and len(expected) == 480
    assert get_source_state(engine, "billing").cursor is None  # type: ignore[union-attr]


# ------------------------------------------------------------------------ answers past max_response_bytes


def test_an_unpaginated_window_past_max_response_bytes_is_read_shorter(engine: Engine, tmp_path: Path) -> None:
    """An API without pagination answers a long window in one body: past max_response_bytes the poll
    reads a shorter window at once, and the source catches up with the totals of one big poll."""
    items = _hourly(10)
    extra = 'max_response_bytes = 8192'

    def unpaged(url: str, extra: str) -> HttpJsonSource:
        return HttpJsonSource(source_config(_toml(url, 9, extra).replace('type = "page"', 'type = "none"')))

    with FakeHttp() as srv:
        _serve(srv, items)  # (without pagination every item of the window is on "page 1")
        srv.route("/usage", lambda r, h=srv.routes["/usage"]: (200, {"items": [
            i for i in items if (r.q("start") or "") <= i["start"] < (r.q("end") or "")]}))
        reports = _until_caught_up(engine, unpaged(srv.url("/usage"), extra), NOW)
        with migrated_engine(f"sqlite:///{tmp_path / 'one-poll.db'}") as one:
            assert poll_source(one, unpaged(srv.url("/usage"), ""), NOW).ok
            expected = points(one)
        # a first bucket whose answer alone is too large fails naming it, nothing stored
        first = NOW - 12 * DAY - (NOW - 12 * DAY) % HOUR
        items += [{"account": f"a{k}", "meter": "api_calls", "qty": 1, "start": iso_z(first + 60)} for k in range(20)]
        with migrated_engine(f"sqlite:///{tmp_path / 'crowded.db'}") as crowded:
            tiny = poll_source(crowded, unpaged(srv.url("/usage"), "max_response_bytes = 1024"), NOW)
            assert count(crowded, "usage_points") == 0
    assert len(reports) >= 5 and points(engine) == expected and len(expected) == 480
    assert not tiny.ok
    assert tiny.error == (f"source 'billing': GET {srv.url('/usage')} (page 1): the response is 1,701 bytes "
                          "(Content-Length), more than max_response_bytes (1,024 bytes); ask for smaller pages "
                          "(pagination.size) or raise max_response_bytes (even for the bucket "
                          f"{iso_z(first)} to {iso_z(first + HOUR)} alone; nothing was stored)")


def test_openmeter_ten_days_behind_catches_up_when_its_answers_pass_max_response_bytes(
        engine: Engine, tmp_path: Path) -> None:
    from integrations.sources.openmeter import OpenMeterSource

    def source(url: str, limit: int) -> OpenMeterSource:
        return OpenMeterSource(source_config(source_toml(
            id="om", type="openmeter", url=url, meters={"api_requests_total": "api_calls"}, overlap="2h",
            backfill="12d", max_response_bytes=limit)))

    rows = [(T0 + h * HOUR, s, (h % 11) + k) for h in range(10 * 24) for k, s in enumerate(("acme", "globex"))]

    def query(r: Seen) -> tuple:
        start, end = r.q("from") or "", r.q("to") or ""
        return 200, {"data": [{"value": v, "windowStart": iso_z(ts), "windowEnd": iso_z(ts + HOUR), "subject": s}
                              for ts, s, v in rows if start <= iso_z(ts) < end]}

    with FakeHttp() as srv:
        srv.route("/api/v1/meters/api_requests_total/query", query)
        reports = _until_caught_up(engine, source(srv.url(), 16_384), NOW)
        with migrated_engine(f"sqlite:///{tmp_path / 'one-poll.db'}") as one:
            assert poll_source(one, source(srv.url(), 10_000_000), NOW).ok
            expected = points(one)
    assert len(reports) >= 3 and points(engine) == expected and len(expected) == 480
    assert get_source_state(engine, "om").cursor is None  # type: ignore[union-attr]


def test_stripe_one_bucket_of_one_customer_needing_more_than_max_pages_fails_naming_both(engine: Engine) -> None:
    first = NOW - 12 * DAY - (NOW - 12 * DAY) % HOUR
    summaries = {"cus_A": [(first, 1)], "cus_G": [(first, n) for n in range(60)]}  # 60 a bucket: 3 pages of 24
    with FakeHttp() as srv:
        _serve_stripe(srv, summaries)
        report = poll_source(engine, _stripe(srv.url(), max_pages=2), NOW)
    assert not report.ok
    assert report.error == (f"source 'stripe': meter 'mtr_1', customer 'cus_G': the bucket {iso_z(first)} to "
                            f"{iso_z(first + HOUR)} alone needs more than 2 pages; raise max_pages (nothing was stored)")
    assert count(engine, "usage_points") == 0


# ------------------------------------------------------------------------ a sql query past statement_timeout


def _warehouse(path: Path, every: int, days: int = 10) -> str:
    """A SQLite warehouse: one row per `every` seconds for `days` days from T0, time indexed (so a
    shorter window reads fewer rows), values varying per row."""
    url = f"sqlite:///{path}"
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE events (acct TEXT, at INTEGER, qty REAL)")
        conn.exec_driver_sql("CREATE INDEX events_at ON events (at)")
        conn.exec_driver_sql(
            "INSERT INTO events WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r "
            f"WHERE i < {days * DAY // every - 1}) SELECT CASE i % 3 WHEN 0 THEN 'acme' ELSE 'globex' END, "
            f"{T0} + i * {every}, (i % 7) + 0.5 FROM r")
    eng.dispose()
    return url


def _sql(url: str, clock: Callable[[], float] | None = None) -> Source:
    """An hourly sql source over the warehouse, 12 days of backfill; with `clock`, its statement_timeout
    (1 s) is read from that clock (integrations.sources.sql.sqlite_deadline)."""
    import sqlalchemy as sa

    from integrations.sources.sql import SqlSource, sqlite_deadline

    cfg = source_config(source_toml(id="warehouse", type="sql", url=url, table="events", account_column="acct",
                                    time_column="at", time_type="epoch", metric="api_calls", value_column="qty",
                                    bucket="1h", backfill="12d", overlap="2h", statement_timeout="1s"))
    if clock is None:
        return SqlSource(cfg)
    eng = sa.create_engine(url)
    sqlite_deadline(eng, 1, clock)
    return SqlSource(cfg, engine=eng)


def _counted_sql(url: str) -> Source:
    """_sql with a deadline clock that counts its reads, 0.02 s each (one read per 10,000 SQLite
    instructions): the same instructions time out on a loaded machine as on a quiet one."""
    ticks = [0.0]

    def clock() -> float:
        ticks[0] += 0.02
        return ticks[0]

    return _sql(url, clock)


def _sql_caught_up(engine: Engine, url: str, src: Source | None = None) -> list[PollReport]:
    """The polls at NOW of the counted sql source until one read its whole window."""
    src = src or _counted_sql(url)
    reports: list[PollReport] = []
    while not reports or not reports[-1].ok or reports[-1].behind:
        reports.append(poll_source(engine, src, NOW))
        assert len(reports) < 40, reports[-1].error or reports[-1].behind
    return reports


def test_a_sql_window_past_statement_timeout_is_read_shorter_by_the_next_polls(engine: Engine, tmp_path: Path) -> None:
    """A query the database cancels at statement_timeout fails its poll (nothing stored) and stores half
    its window as the cursor's span: the next polls read shorter windows and catch up, with the totals
    of one big query. Before, every poll ran the same 12-day query and was cancelled, forever. The
    deadline's clock counts its reads (every 10,000 SQLite instructions, 0.02 s each): the same
    instructions time out on a loaded machine as on a quiet one."""
    url = _warehouse(tmp_path / "warehouse.db", every=10)  # 86,400 rows
    reports = _sql_caught_up(engine, url)
    with migrated_engine(f"sqlite:///{tmp_path / 'one-query.db'}") as one:
        assert poll_source(one, _sql(url), NOW).ok
        expected = points(one)
    failed = [r for r in reports if not r.ok]
    assert failed and all("ran past statement_timeout (1s)" in (r.error or "")
                          and "the next poll reads a window half as long" in (r.error or "") for r in failed)
    assert len(failed) <= 4 and any(r.behind for r in reports)
    assert not any(not r.ok for r in reports[reports.index(failed[-1]) + 1:])
    assert points(engine) == expected and len(expected) == 2 * 10 * 24
    assert get_source_state(engine, "warehouse").cursor is None  # type: ignore[union-attr]


def test_a_source_whose_data_stopped_reads_each_new_window_whole_after_its_catch_up(
        engine: Engine, tmp_path: Path) -> None:
    """The data stopped 4 days before the catch-up ended (its watermark stays before the last shorter
    window's end, so the catch-up cursor stays): each later scheduled poll reads its whole window in one
    poll. Before, the cursor kept the last window's span, so every poll read a span short of its window,
    said "behind" and polled again, for as long as no data came."""
    url = _warehouse(tmp_path / "warehouse.db", every=10, days=6)
    src = _counted_sql(url)
    _sql_caught_up(engine, url, src)
    assert CatchUp.parse(get_source_state(engine, "warehouse").cursor) is not None  # type: ignore[union-attr]
    later = [poll_source(engine, src, NOW + k * HOUR) for k in (1, 2, 3)]
    assert [(r.ok, r.behind) for r in later] == [(True, None)] * 3
    with migrated_engine(f"sqlite:///{tmp_path / 'one-query.db'}") as one:
        assert poll_source(one, _sql(url), NOW + 3 * HOUR).ok
        assert points(engine) == points(one) and len(points(one)) == 2 * 6 * 24

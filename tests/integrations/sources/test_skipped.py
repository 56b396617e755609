"""on_error = "skip" for the polled sources (http_json, openmeter, stripe_meter, sql): a malformed item
is left out, told once (keyed by its content, across restarts and a moving window), the rest stored.

Real httpx clients against the local fake servers, the sql source against a table of the test
database, stored in SQLite and PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.service.polling import poll_source
from integrations.sources.http_json import HttpJsonSource
from integrations.sources.openmeter import OpenMeterSource
from integrations.sources.skipped import SkippedItem, digest, identity
from integrations.sources.sql import SqlSource
from integrations.sources.stripe_meter import StripeMeterSource
from storage.sources import get_source_state
from tests.integrations.sources.fake_http import FakeHttp, Seen
from tests.integrations.sources.helpers import (
    HOUR,
    T0,
    config_problems,
    iso_z,
    points,
    skipped_notices,
    source_config,
)

SECRET = "tok-5f1e-very-secret"


def _http_json(url: str, on_error: str = "skip") -> HttpJsonSource:
    return HttpJsonSource(source_config(f"""
[[sources]]
id = "billing"
type = "http_json"
url = "{url}"
records = "data"
overlap = "2h"
backfill = "1d"
retries = 0
on_error = "{on_error}"
[sources.auth]
type = "bearer"
token = "${{API_TOKEN}}"
[sources.fields]
account = "customer"
metric = "meter"
value = "qty"
timestamp = "start"
""", {"API_TOKEN": SECRET}))


def _item(acct: str, ts: int, qty: object, meter: str = "api_calls") -> dict:
    return {"customer": acct, "meter": meter, "qty": qty, "start": iso_z(ts)}


def test_http_json_skip_stores_the_good_items_and_tells_each_bad_one_once_across_a_restart(engine: Engine) -> None:
    """Three malformed items (no account, a non-numeric value holding the API token, an unparseable
    timestamp) among good ones: the good ones are stored, the watermark moves, each bad item gets one
    admin notice (secret masked) in the poll's transaction, the report and the last error list them.
    Before (and with the default), every poll failed on them and nothing after them was ever stored.
    After a restart the window has moved and the bad items sit at other indexes: told nothing again,
    and the rows that arrived since are stored."""
    served = [_item("acme", T0 + 60, 5),
              {"meter": "api_calls", "qty": 1, "start": iso_z(T0 + 60)},
              _item("globex", T0 + 120, f"{SECRET} lots"),
              _item("initech", T0 + 60, 2) | {"start": "soon"},
              _item("globex", T0 + 180, 7)]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": served}))
        first = poll_source(engine, _http_json(srv.url("/usage")), T0 + HOUR)
        assert first.ok and first.skipped == 3 and first.rows == 2 and first.rejections == 0
        assert points(engine) == {("acme", "api_calls", T0 + 60): 5.0, ("globex", "api_calls", T0 + 180): 7.0}
        state = get_source_state(engine, "billing")
        assert state.watermark == T0 + 180
        [told] = first.rejected
        assert told.startswith(f"source 'billing': 1 page(s) of GET {srv.url('/usage')}, window ")
        assert "3 malformed item(s) skipped (on_error = \"skip\"), not stored; the rest was stored" in told
        assert "page 1, item 1 (data[1]): field 'customer' (account) is missing" in told
        assert "page 1, item 2 (data[2]): field 'qty' (value): expected a number, got '*** lots'" in told
        assert "page 1, item 3 (data[3]): field 'start' (timestamp): 'soon' is not an ISO-8601 timestamp" in told
        assert SECRET not in told and state.last_error == told
        notices = skipped_notices(engine, "billing")
        assert len(notices) == 3 and all(SECRET not in str(n) for n in notices)
        assert len({n["details"]["item"] for n in notices}) == 3  # keyed per item (content less value, problem)
        assert any("field 'qty' (value): expected a number, got '*** lots'" in n["message"] for n in notices)
        served.insert(0, _item("hooli", T0 + HOUR + 60, 1))  # the bad items move to other indexes
        served.append(_item("acme", T0 + HOUR + 120, 9))
        again = poll_source(engine, _http_json(srv.url("/usage")), T0 + 2 * HOUR)  # a restart
    assert again.ok and again.skipped == 3 and again.rejected == []
    assert len(skipped_notices(engine, "billing")) == 3
    assert points(engine)[("hooli", "api_calls", T0 + HOUR + 60)] == 1.0
    assert points(engine)[("acme", "api_calls", T0 + HOUR + 120)] == 9.0
    assert get_source_state(engine, "billing").last_error is None


def test_http_json_a_corrected_item_is_stored_and_a_new_bad_one_told(engine: Engine) -> None:
    """An item is known by its content: once fixed at the source it is stored; another bad item with
    the same page and index as a told one is told."""
    served = [_item("acme", T0 + 60, "n/a")]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": served}))
        src = _http_json(srv.url("/usage"))
        assert poll_source(engine, src, T0 + HOUR).skipped == 1
        served[0] = _item("acme", T0 + 60, 4)  # fixed
        fixed = poll_source(engine, src, T0 + HOUR + 60)
        served[0] = _item("acme", T0 + 60, -3)  # the same item broken again through its value: not told again
        again = poll_source(engine, src, T0 + HOUR + 120)
        served[0] = _item("globex", T0 + 60, -3)  # another bad item at the same index: told
        broken = poll_source(engine, src, T0 + HOUR + 180)
    assert fixed.ok and fixed.skipped == 0 and points(engine) == {("acme", "api_calls", T0 + 60): 4.0}
    assert again.skipped == 1 and again.rejected == []
    assert broken.skipped == 1 and "-3 is negative" in broken.rejected[0]
    assert len(skipped_notices(engine, "billing")) == 2
    assert points(engine) == {("acme", "api_calls", T0 + 60): 4.0}  # the bucket keeps what was stored


def test_http_json_default_still_rejects_the_whole_poll(engine: Engine) -> None:
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": [_item("acme", T0, 1), _item("x", T0, "bad")]}))
        report = poll_source(engine, _http_json(srv.url("/usage"), on_error="reject"), T0 + HOUR)
    assert not report.ok and "nothing was stored from this poll" in (report.error or "")
    assert points(engine) == {} and skipped_notices(engine, "billing") == []


def test_skipped_items_are_told_once_even_when_the_same_content_repeats_in_a_poll(engine: Engine) -> None:
    """Two identical bad items (a page served twice by a flaky API) are one notice: same content."""
    bad = _item("acme", T0, None)
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": [bad, dict(bad), _item("acme", T0 + 60, 1)]}))
        report = poll_source(engine, _http_json(srv.url("/usage")), T0 + HOUR)
    assert report.ok and report.skipped == 2 and len(skipped_notices(engine, "billing")) == 1
    assert "1 malformed item(s) skipped" in report.rejected[0]


def _openmeter(url: str) -> OpenMeterSource:
    return OpenMeterSource(source_config(f"""
[[sources]]
id = "om"
type = "openmeter"
url = "{url}"
meters = {{ api_requests_total = "api_calls" }}
backfill = "1d"
overlap = "2h"
backoff = "0s"
on_error = "skip"
"""))


def test_openmeter_skip_leaves_malformed_rows_out_told_once(engine: Engine) -> None:
    served = [{"value": 3, "windowStart": iso_z(T0), "subject": "acme"},
              {"value": "x", "windowStart": iso_z(T0), "subject": "globex"},
              {"value": 1, "windowStart": "yesterday", "subject": "acme"},
              {"value": 2, "windowStart": iso_z(T0)}]
    with FakeHttp() as srv:
        srv.route("/api/v1/meters/api_requests_total/query", lambda r: (200, {"data": served}))
        first = poll_source(engine, _openmeter(srv.url()), T0 + 1800)
        served.insert(0, {"value": 6, "windowStart": iso_z(T0 + HOUR), "subject": "globex"})
        again = poll_source(engine, _openmeter(srv.url()), T0 + HOUR + 1800)  # restarted, indexes moved
    assert first.ok and first.skipped == 3
    [told] = first.rejected
    assert "3 malformed item(s) skipped" in told and "meter 'api_requests_total', data[1]: expected a number" in told
    assert "data[3]: no subject (the account)" in told
    assert again.ok and again.rejected == [] and len(skipped_notices(engine, "om")) == 3
    assert points(engine) == {("acme", "api_calls", T0): 3.0, ("globex", "api_calls", T0 + HOUR): 6.0}


def _stripe(url: str) -> StripeMeterSource:
    return StripeMeterSource(source_config(f"""
[[sources]]
id = "stripe"
type = "stripe_meter"
url = "{url}"
api_key = "${{STRIPE_KEY}}"
meters = {{ mtr_123 = "api_calls" }}
customers = {{ acme = "cus_A" }}
backfill = "1d"
on_error = "skip"
""", {"STRIPE_KEY": "sk_test_secret"}))


def test_stripe_skip_leaves_malformed_summaries_out_told_once(engine: Engine) -> None:
    data = [{"id": "sum_1", "aggregated_value": 4, "start_time": T0},
            {"id": "sum_2", "aggregated_value": 1, "start_time": "noon"},
            {"id": "sum_3", "aggregated_value": None, "start_time": T0 + HOUR}]

    def summaries(req: Seen) -> tuple:
        return 200, {"object": "list", "data": data, "has_more": False}

    with FakeHttp() as srv:
        srv.route("/v1/billing/meters/mtr_123/event_summaries", summaries)
        first = poll_source(engine, _stripe(srv.url()), T0 + 2 * HOUR)
        data.append({"id": "sum_4", "aggregated_value": 8, "start_time": T0 + 2 * HOUR})
        again = poll_source(engine, _stripe(srv.url()), T0 + 3 * HOUR)  # restarted
    assert first.ok and first.skipped == 2
    assert "start_time must be epoch seconds, got 'noon'" in first.rejected[0]
    assert "aggregated_value: expected a number, got None" in first.rejected[0]
    assert "sk_test_secret" not in str(skipped_notices(engine, "stripe"))
    assert again.ok and again.rejected == [] and len(skipped_notices(engine, "stripe")) == 2
    assert points(engine) == {("acme", "api_calls", T0): 4.0, ("acme", "api_calls", T0 + 2 * HOUR): 8.0}


def _sql(db_url: str) -> SqlSource:
    return SqlSource(source_config("""
[[sources]]
id = "warehouse"
type = "sql"
url = "${WAREHOUSE_URL}"
table = "raw_events"
account_column = "acct"
metric_column = "kind"
value_column = "qty"
time_column = "at"
time_type = "epoch"
bucket = "1h"
overlap = "2h"
backfill = "1d"
on_error = "skip"
""", {"WAREHOUSE_URL": db_url}))


def test_sql_skip_leaves_bad_rows_out_told_once_per_bucket_as_its_sum_grows(engine: Engine, db_url: str) -> None:
    """An empty account id, a bad metric name and a negative sum are left out, the good rows stored.
    The negative bucket keeps filling (its SUM changes): it is known by account, metric and bucket,
    so it is not told again on the next poll, after a restart, and the later rows are stored."""
    md = sa.MetaData()
    t = sa.Table("raw_events", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("acct", sa.String),
                 sa.Column("kind", sa.String), sa.Column("qty", sa.Float), sa.Column("at", sa.BigInteger))
    md.create_all(engine)

    def insert(rows: list[tuple[str, str, float, int]]) -> None:
        with engine.begin() as conn:
            conn.execute(sa.insert(t), [{"acct": a, "kind": k, "qty": q, "at": ts} for a, k, q, ts in rows])

    insert([("acme", "api_calls", 2.0, T0 + 60), ("", "api_calls", 1.0, T0 + 60),
            ("globex", "api calls!", 1.0, T0 + 60), ("initech", "api_calls", -5.0, T0 + 60)])
    src = _sql(db_url)
    try:
        first = poll_source(engine, src, T0 + 1800)
    finally:
        src.close()
    insert([("initech", "api_calls", -1.0, T0 + 120), ("acme", "api_calls", 3.0, T0 + HOUR + 60)])
    src = _sql(db_url)  # a restart
    try:
        again = poll_source(engine, src, T0 + HOUR + 1800)
    finally:
        src.close()
    assert first.ok and first.skipped == 3 and "3 malformed item(s) skipped" in first.rejected[0]
    assert "account '', bucket 2026-11-01T00:00Z, metric api_calls: account is empty" in first.rejected[0]
    assert "metric 'api calls!' is not a metric name" in first.rejected[0]
    assert "account 'initech', bucket 2026-11-01T00:00Z, metric api_calls: value -5 is negative" in first.rejected[0]
    assert again.ok and again.skipped == 3 and again.rejected == []
    assert len(skipped_notices(engine, "warehouse")) == 3
    assert points(engine) == {("acme", "api_calls", T0): 2.0, ("acme", "api_calls", T0 + HOUR): 3.0}


@pytest.mark.parametrize("kind", ["http_json", "sql", "openmeter", "stripe_meter", "csv"])
def test_on_error_is_validated_with_file_line_and_field(kind: str) -> None:
    required = {"http_json": 'url = "https://x.example"\n[sources.fields]\naccount = "a"\nvalue = "v"\n'
                             'timestamp = "t"\nmetric = "m"',
                "sql": 'url = "sqlite://"\ntable = "t"\naccount_column = "a"\ntime_column = "t"\nmetric = "m"\n'
                       'value_column = "v"',
                "openmeter": 'meters = { m = "m" }',
                "stripe_meter": 'api_key = "sk"\nmeters = { m = "m" }\ncustomers = { a = "cus" }',
                "csv": 'path = "drops"'}[kind]
    toml = f'[[sources]]\nid = "s"\ntype = "{kind}"\non_error = "ignore"\n{required}\n'
    [problem] = config_problems(toml)
    assert problem == "test.toml:4: sources[0].on_error: must be one of reject, skip (got 'ignore')"


def test_the_key_of_an_item_is_its_content_not_its_position() -> None:
    a = SkippedItem("page 1, item 0", "bad", digest({"b": 1, "a": [1, 2]}))
    b = SkippedItem("page 3, item 7", "bad", digest({"a": [1, 2], "b": 1}))
    assert a.key("s") == b.key("s") != SkippedItem("", "", digest({"a": [2, 1], "b": 1})).key("s")
    assert a.key("s") != a.key("other")


def test_a_skipped_item_beside_a_refused_bucket_both_told_once_the_rest_stored(engine: Engine) -> None:
    """A batch with a bucket past a float64 (refused by the store) and a malformed item (skipped by
    the source): the store retries without the bucket and keeps the skipped item's notice."""
    served = [_item("acme", T0 + 5, 1e308), _item("acme", T0 + 10, 1e308), _item("globex", T0 + 5, 3),
              _item("initech", T0 + 5, "x")]
    with FakeHttp() as srv:
        srv.route("/usage", lambda r: (200, {"data": served}))
        first = poll_source(engine, _http_json(srv.url("/usage")), T0 + 60)
        again = poll_source(engine, _http_json(srv.url("/usage")), T0 + 120)
    assert first.ok and first.skipped == 1 and points(engine) == {("globex", "api_calls", T0): 3.0}
    [told] = first.rejected
    assert "1 bucket(s) refused" in told and "1 malformed item(s) skipped" in told
    assert len(skipped_notices(engine, "billing")) == 1
    assert again.ok and again.rejected == [] and len(skipped_notices(engine, "billing")) == 1


def test_a_malformed_item_whose_open_bucket_grows_is_told_once(engine: Engine) -> None:
    """OpenMeter, Stripe and most usage APIs re-serve the bucket that is still open with its running
    total: a malformed item (here: no subject) is the same item while its value grows, told once over
    four polls (keyed with its value, it was told at every poll). Broken another way, it is told again."""
    served = [{"value": 3, "windowStart": iso_z(T0), "subject": "acme"}, {"value": 2, "windowStart": iso_z(T0)}]
    with FakeHttp() as srv:
        srv.route("/api/v1/meters/api_requests_total/query", lambda r: (200, {"data": served}))
        src = _openmeter(srv.url())
        for i, minute in enumerate((10, 20, 30, 40)):
            served[1]["value"] = 2 + i * 3
            poll_source(engine, src, T0 + minute * 60)
    assert len(skipped_notices(engine, "om")) == 1


def test_a_malformed_value_that_grows_in_its_open_bucket_is_told_once(engine: Engine) -> None:
    """The value itself is what is wrong ("1,200", then "1,250" as the bucket fills): the problem's words
    quote it, so the key holds neither (a reviewer's repro: 4 polls, 4 notices)."""
    served = [{"value": "1,200", "windowStart": iso_z(T0), "subject": "globex"}]
    with FakeHttp() as srv:
        srv.route("/api/v1/meters/api_requests_total/query", lambda r: (200, {"data": served}))
        src = _openmeter(srv.url())
        for i, minute in enumerate((10, 20, 30, 40)):
            served[0]["value"] = f"1,{200 + 50 * i}"
            assert poll_source(engine, src, T0 + minute * 60).skipped == 1
    assert len(skipped_notices(engine, "om")) == 1


def test_an_items_key_leaves_its_value_out_at_any_depth() -> None:
    item = {"usage": {"qty": 5, "unit": "calls"}, "customer": "acme"}
    assert identity(item, "usage.qty") == {"usage": {"unit": "calls"}, "customer": "acme"}
    assert identity(item, "qty") == item and identity([1, 2], "qty") == [1, 2] and identity(item, "") == item
    listed = {"customer": "acme", "usage": [{"qty": 5, "unit": "calls"}], "start": "soon"}
    assert identity(listed, "usage.0.qty") == {"customer": "acme", "usage": [{"unit": "calls"}], "start": "soon"}
    assert identity({"v": [1, 2]}, "v.-1") == {"v": [1, None]} and identity({"v": [1]}, "v.3") == {"v": [1]}
    assert item["usage"]["qty"] == 5  # not changed in place

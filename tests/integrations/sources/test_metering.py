"""openmeter and stripe_meter sources against real local HTTP fakes of their APIs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine

from bot.service.polling import poll_source
from integrations.sources.base import PollContext, SourceError
from integrations.sources.openmeter import OpenMeterSource
from integrations.sources.stripe_meter import StripeMeterSource
from rules.model import AccountFacts
from tests.integrations.sources.fake_http import FakeHttp, Seen
from tests.integrations.sources.helpers import HOUR, T0, config_problems, points, source_config, told_once


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _openmeter(url: str, extra: str = "") -> OpenMeterSource:
    return OpenMeterSource(source_config(f"""
[[sources]]
id = "om"
type = "openmeter"
url = "{url}"
token = "${{OM_TOKEN}}"
meters = {{ api_requests_total = "api_calls", "tokens.used" = "tokens" }}
window_size = "HOUR"
backfill = "1d"
overlap = "2h"
backoff = "0s"
{extra}
""", {"OM_TOKEN": "om_secret"}))


def test_openmeter_meter_query_windows_become_usage(engine: Engine) -> None:
    def query(req: Seen) -> tuple:
        slug = req.path.split("/")[4]
        value = {"api_requests_total": 10, "tokens.used": 2500}[slug]
        return 200, {"from": req.q("from"), "to": req.q("to"), "windowSize": "HOUR", "data": [
            {"value": value, "windowStart": _iso(T0), "windowEnd": _iso(T0 + HOUR), "subject": "acme",
             "groupBy": {}},
            {"value": value * 2, "windowStart": _iso(T0 + HOUR), "windowEnd": _iso(T0 + 2 * HOUR),
             "subject": "acme", "groupBy": {}}]}

    with FakeHttp() as srv:
        srv.route("/api/v1/meters/api_requests_total/query", query)
        srv.route("/api/v1/meters/tokens.used/query", query)
        report = poll_source(engine, _openmeter(srv.url()), T0 + HOUR + 1800)
        req = srv.requests[0]
    assert report.ok
    assert req.headers["authorization"] == "Bearer om_secret"
    assert (req.q("from"), req.q("to")) == (_iso(T0 + HOUR - 86_400), _iso(T0 + 2 * HOUR))  # aligned to the hour
    assert req.q("windowSize") == "HOUR" and req.q("windowTimeZone") == "UTC"
    assert points(engine) == {("acme", "api_calls", T0): 10.0, ("acme", "api_calls", T0 + HOUR): 20.0,
                              ("acme", "tokens", T0): 2500.0, ("acme", "tokens", T0 + HOUR): 5000.0}


def test_openmeter_account_from_a_group_by_key_and_subject_filter() -> None:
    with FakeHttp() as srv:
        srv.route("/api/v1/meters/api_requests_total/query", lambda r: (200, {"data": [
            {"value": 3, "windowStart": _iso(T0), "subject": None, "groupBy": {"customer": "acme"}}]}))
        srv.route("/api/v1/meters/tokens.used/query", lambda r: (200, {"data": []}))
        src = _openmeter(srv.url(), 'account_group_by = "customer"\nsubjects = ["s1", "s2"]')
        [batch] = list(src.poll(PollContext("om", T0 + HOUR)))
        assert srv.requests[0].query["subject"] == ["s1", "s2"] and srv.requests[0].q("groupBy") == "customer"
    assert [(r.account, r.metric, r.value) for r in batch.totals] == [("acme", "api_calls", 3.0)]


def test_openmeter_malformed_rows_are_listed_and_nothing_is_stored(engine: Engine) -> None:
    with FakeHttp() as srv:
        srv.route("/api/v1/meters/api_requests_total/query", lambda r: (200, {"data": [
            {"value": 1, "windowStart": _iso(T0), "subject": "acme"},
            {"value": "NaN?", "windowStart": _iso(T0), "subject": "b"},
            {"value": 1, "windowStart": "yesterday", "subject": "c"},
            {"value": 1, "windowStart": _iso(T0)}]}))
        srv.route("/api/v1/meters/tokens.used/query", lambda r: (404, {"title": "meter not found"}))
        r1 = poll_source(engine, _openmeter(srv.url()), T0 + HOUR)
        srv.route("/api/v1/meters/tokens.used/query", lambda r: (200, {"data": []}))
        r2 = poll_source(engine, _openmeter(srv.url()), T0 + HOUR)
    assert "meter tokens.used): HTTP 404" in (r1.error or "") and "check the url (and the meter" in (r1.error or "")
    err = r2.error or ""
    assert "3 malformed row(s); nothing was stored" in err
    assert "meter 'api_requests_total', data[1]: expected a number, got 'NaN?'" in err
    assert "data[2]: 'yesterday' is not an ISO-8601 timestamp" in err
    assert "data[3]: no subject (the account)" in err
    assert points(engine) == {}


def _stripe(url: str, extra: str = 'customers = { acme = "cus_A", globex = "cus_G" }') -> StripeMeterSource:
    return StripeMeterSource(source_config(f"""
[[sources]]
id = "stripe"
type = "stripe_meter"
url = "{url}"
api_key = "${{STRIPE_KEY}}"
meters = {{ mtr_123 = "api_calls" }}
grouping = "hour"
backfill = "1d"
{extra}
""", {"STRIPE_KEY": "sk_test_secret"}))


def test_stripe_event_summaries_follow_has_more_per_customer(engine: Engine) -> None:
    def summaries(req: Seen) -> tuple:
        cus = req.q("customer")
        items = [{"id": f"sum_{cus}_{i}", "object": "billing.meter_event_summary", "aggregated_value": i + 1,
                  "start_time": T0 + i * HOUR, "end_time": T0 + (i + 1) * HOUR, "meter": "mtr_123"}
                 for i in range(3)]
        after = req.q("starting_after")
        start = 0 if after is None else int(after.rsplit("_", 1)[1]) + 1
        page = items[start:start + 2]
        return 200, {"object": "list", "data": page, "has_more": start + 2 < 3}

    with FakeHttp() as srv:
        srv.route("/v1/billing/meters/mtr_123/event_summaries", summaries)
        report = poll_source(engine, _stripe(srv.url()), T0 + 3 * HOUR + 600)
        first = srv.requests[0]
    assert report.ok and len(srv.requests) == 4  # 2 customers x 2 pages
    assert first.headers["authorization"] == "Bearer sk_test_secret"
    assert first.q("value_grouping_window") == "hour" and int(first.q("end_time") or 0) % HOUR == 0
    assert points(engine) == {(a, "api_calls", T0 + i * HOUR): float(i + 1)
                              for a in ("acme", "globex") for i in range(3)}


def test_stripe_customers_from_accounts_and_bad_items() -> None:
    with FakeHttp() as srv:
        srv.route("/v1/billing/meters/mtr_123/event_summaries", lambda r: (200, {"data": [
            {"id": "s1", "aggregated_value": "x", "start_time": T0}, {"id": "s2", "aggregated_value": 1,
                                                                      "start_time": "noon"}], "has_more": False}))
        src = _stripe(srv.url(), "customers_from_accounts = true")
        with pytest.raises(SourceError) as exc:
            list(src.poll(PollContext("stripe", T0 + HOUR, accounts=lambda: [AccountFacts("cus_Z", "Z")])))
        assert srv.requests[0].q("customer") == "cus_Z"
    assert "meter 'mtr_123', customer 'cus_Z', page 1, data[0]: aggregated_value: expected a number" in str(exc.value)
    assert "data[1]: start_time must be epoch seconds, got 'noon'" in str(exc.value)


def test_metering_config_problems() -> None:
    p = "\n".join(config_problems('[[sources]]\nid = "om"\ntype = "openmeter"\nwindow_size = "WEEK"\n'))
    assert "sources[0].meters: is required" in p and "sources[0].window_size: must be one of MINUTE, HOUR, DAY" in p
    p = "\n".join(config_problems('[[sources]]\nid = "s"\ntype = "stripe_meter"\nmeters = { m = "bad name" }\n'))
    assert "sources[0].api_key: is required" in p and "sources[0].customers: give customers" in p
    assert "'bad name' is not a metric name" in p


def test_openmeter_a_window_whose_rows_overflow_is_refused_told_once_and_the_rest_stored(engine: Engine) -> None:
    """Two rows of acme's hour (a group-by OpenMeter splits further) add up past a float64: that
    bucket is refused, named with the meters and the window, and every other window of the poll is
    stored; after a restart the overlap reads it again, tells nothing again, stores the later rows."""
    served = [{"value": 1e308, "windowStart": _iso(T0), "subject": "acme"},
              {"value": 1e308, "windowStart": _iso(T0), "subject": "acme"},
              {"value": 4, "windowStart": _iso(T0), "subject": "globex"}]
    with FakeHttp() as srv:
        srv.route("/api/v1/meters/api_requests_total/query", lambda r: (200, {"data": served}))
        srv.route("/api/v1/meters/tokens.used/query", lambda r: (200, {"data": []}))
        first = poll_source(engine, _openmeter(srv.url()), T0 + 1800)
        served.append({"value": 6, "windowStart": _iso(T0 + HOUR), "subject": "globex"})
        again = poll_source(engine, _openmeter(srv.url()), T0 + HOUR + 1800)  # restarted
    told_once(engine, first, again, "om", "2 meter(s), window 2026-10-31T00:00:00Z to 2026-11-01T01:00:00Z")
    assert points(engine) == {("globex", "api_calls", T0): 4.0, ("globex", "api_calls", T0 + HOUR): 6.0}


def test_stripe_summaries_whose_bucket_overflows_are_refused_told_once_and_the_rest_stored(engine: Engine) -> None:
    """Two summaries of acme's hour add up past a float64: that bucket is refused (named with the
    meters, customers and window), globex's summaries of the same poll are stored; after a restart
    the overlap's re-read tells nothing again and the later summaries are stored."""
    hours = {"cus_A": [(T0, 1e308), (T0, 1e308)], "cus_G": [(T0, 2)]}

    def summaries(req: Seen) -> tuple:
        data = [{"id": f"s{i}", "aggregated_value": v, "start_time": ts, "end_time": ts + HOUR}
                for i, (ts, v) in enumerate(hours[req.q("customer") or ""])]
        return 200, {"object": "list", "data": data, "has_more": False}

    with FakeHttp() as srv:
        srv.route("/v1/billing/meters/mtr_123/event_summaries", summaries)
        first = poll_source(engine, _stripe(srv.url()), T0 + 1800)
        hours["cus_G"].append((T0 + HOUR, 5))
        again = poll_source(engine, _stripe(srv.url()), T0 + HOUR + 1800)  # restarted
    told_once(engine, first, again, "stripe",
              "1 meter(s) x 2 customer(s), window 2026-10-31T00:00:00Z to 2026-11-01T01:00:00Z")
    assert points(engine) == {("globex", "api_calls", T0): 2.0, ("globex", "api_calls", T0 + HOUR): 5.0}

"""Fuzz: source responses. http_json, openmeter and stripe_meter poll a real local server that answers
random JSON (or not JSON), statuses and headers; each poll ends ok or with a SourceError message, the
poll runner never raises, and a failed poll stores nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.service.polling import poll_source
from integrations.sources.http_json import HttpJsonSource
from integrations.sources.openmeter import OpenMeterSource
from integrations.sources.stripe_meter import StripeMeterSource
from storage.db import make_engine, migrate
from tests.fuzz.strategies import cases, identifier, json_values, number_text, recent_times, timestamps
from tests.integrations.sources.fake_http import FakeHttp
from tests.integrations.sources.helpers import source_config

NOW = 1_795_000_000


@pytest.fixture(scope="module")
def env(tmp_path_factory):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzzsrc') / 'u.db'}")
    migrate(engine)
    with FakeHttp() as srv:
        srv.answer = (200, {"items": []})
        for path in ("/u", "/api/v1/meters/m/query", "/v1/billing/meters/m/event_summaries"):
            srv.route(path, lambda r: srv.answer)
        yield engine, srv
    engine.dispose()


def _stored(engine) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    with engine.connect() as c:
        return tuple(int(c.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one())
                     for t in ("usage_points", "ingested_events"))


item = st.fixed_dictionaries({}, optional={
    "a": identifier, "m": st.one_of(st.just("api_calls"), identifier), "v": st.one_of(st.integers(), number_text, json_values),
    "t": st.one_of(timestamps(), recent_times, st.integers(-(10**20), 10**20), st.floats()), "id": identifier,
    "subject": identifier, "windowStart": st.one_of(timestamps(), recent_times), "value": st.one_of(st.floats(), number_text),
    "start_time": st.one_of(st.integers(-(10**20), 10**20), st.floats(), number_text),
    "aggregated_value": st.one_of(st.floats(), st.integers(), number_text), "groupBy": json_values})


@st.composite
def answers(draw: st.DrawFn) -> tuple:
    status = draw(st.sampled_from([200, 200, 200, 200, 400, 401, 404, 429, 500, 503]))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        items = draw(st.lists(item, max_size=6))
        body: Any = {"items": items, "data": items, "has_more": draw(st.booleans()), "next": draw(json_values)}
    elif kind == 1:
        body = draw(json_values)
    elif kind == 2:
        body = draw(st.binary(max_size=300))
    else:
        body = b'{"items": ' + b"[" * draw(st.integers(1, 30_000)) + b"]"
    headers = draw(st.dictionaries(st.sampled_from(["Content-Type", "Retry-After", "Link", "Content-Encoding"]),
                                   st.sampled_from(["application/json", "text/html; charset=x-unknown", "0", "999999",
                                                    "soon", '<http://127.0.0.1:1/x>; rel="next"', "gzip"]), max_size=2))
    raw = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    return status, raw, headers


def _source(url: str, which: int) -> Any:
    common = 'retries = 1\nbackoff = "0s"\ntimeout = "2s"\nrequest_deadline = "5s"\npoll_deadline = "10s"'
    builders = [
        lambda: HttpJsonSource(source_config(f"""
[[sources]]
id = "hj"
type = "http_json"
url = "{url}/u"
records = "items"
{common}
[sources.pagination]
type = "cursor"
param = "page"
next = "next"
max_pages = 3
[sources.fields]
account = "a"
metric = "m"
value = "v"
timestamp = "t"
id = "id"
timestamp_format = "epoch"
""")),
        lambda: OpenMeterSource(source_config(f"""
[[sources]]
id = "om"
type = "openmeter"
url = "{url}"
meters = {{ m = "api_calls" }}
{common}
""")),
        lambda: StripeMeterSource(source_config(f"""
[[sources]]
id = "st"
type = "stripe_meter"
url = "{url}"
api_key = "sk_test_fuzz123456"
meters = {{ m = "api_calls" }}
customers = {{ acme = "cus_1" }}
max_pages = 3
{common}
""")),
    ]
    return builders[which]()


@settings(max_examples=cases(150))
@given(answer=answers(), which=st.integers(0, 2))
def test_any_answer_is_a_poll_report(env, answer, which) -> None:  # type: ignore[no-untyped-def]
    engine, srv = env
    srv.answer = answer
    src = _source(srv.url(""), which)
    src.fetcher.sleep = lambda s: None
    before = _stored(engine)
    try:
        report = poll_source(engine, src, NOW)
    finally:
        src.close()
    if not report.ok:
        assert report.error and report.error.startswith(f"source '{src.id}'"), report.error
        assert "unexpected" not in report.error, report.error  # a bug, not a source problem
        assert _stored(engine) == before

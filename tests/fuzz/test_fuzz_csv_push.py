"""Fuzz: usage and accounts CSV (read in both modes, and ingested with the CLI) and pushed events.
Every input ends in success or a clear error naming file:line / event index; a refused input stores
nothing."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.sources.csv_files import CsvInputError, read_accounts_csv, read_usage_csv
from integrations.sources.push import BATCH, JSON, STRUCTURED, PushConfig, PushIngest
from rules.config import Secret
from storage.db import make_engine, migrate
from tests.fuzz.strategies import (
    cases,
    identifier,
    json_values,
    nasty_text,
    number_text,
    recent_times,
    timestamps,
)

USAGE_HEADERS = ["timestamp,account,metric,value", "account,metric,value,timestamp", "timestamp,account,metric",
                 "Timestamp , Account,METRIC,value", "timestamp,account,metric,value,extra", ""]
ACCOUNT_HEADERS = ["id,name,owner_email,plan,crm_id", "id,name,owner_email,plan,crm_id,billing_day,timezone,quota.api_calls",
                   "id,name", "id,name,owner_email,plan,crm_id,quota.bad name"]


def _csv(header: str, rows: list[list[str]], raw_tail: str) -> str:
    out = io.StringIO()
    out.write(header + "\n")
    w = csv.writer(out, lineterminator="\n")
    for r in rows:
        w.writerow(r)
    return out.getvalue() + raw_tail


usage_rows = st.lists(st.tuples(st.one_of(timestamps(), recent_times), identifier,
                                st.one_of(st.just("api_calls"), identifier), number_text).map(list), max_size=8)
account_rows = st.lists(st.lists(st.one_of(identifier, number_text, st.sampled_from(["a@b.co", "Europe/Berlin", "15"])),
                                 min_size=1, max_size=9), max_size=6)


def _count(engine, table: str) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as c:
        return int(c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.fixture(scope="module")
def db(tmp_path_factory):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzzdb') / 'u.db'}"
    engine = make_engine(url)
    migrate(engine)
    yield url, engine
    engine.dispose()


@settings(max_examples=cases(250))
@given(header=st.sampled_from(USAGE_HEADERS), rows=usage_rows, tail=st.one_of(st.just(""), nasty_text),
       mode=st.sampled_from(["reject", "skip"]))
def test_usage_csv_reads_or_names_every_problem(tmp_path_factory, header, rows, tail, mode) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("csv") / "u.csv"
    path.write_text(_csv(header, rows, tail), encoding="utf-8", errors="surrogatepass")
    try:
        result = read_usage_csv(path, on_error=mode)
    except CsvInputError as exc:
        assert exc.errors and all(e.file == str(path) and e.line >= 1 for e in exc.errors)
        return
    for r in result.records:  # what is accepted is valid
        assert 0 < len(r.account) <= 256 and r.account.isprintable() and 0 <= r.ts < 4_102_444_800
        assert r.value >= 0 and r.value != float("inf")
    assert mode == "skip" or not result.errors


@settings(max_examples=cases(200))
@given(header=st.sampled_from(ACCOUNT_HEADERS), rows=account_rows, mode=st.sampled_from(["reject", "skip"]))
def test_accounts_csv_reads_or_names_every_problem(tmp_path_factory, header, rows, mode) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("csv") / "a.csv"
    path.write_text(_csv(header, rows, ""), encoding="utf-8", errors="surrogatepass")
    try:
        result = read_accounts_csv(path, on_error=mode)
    except CsvInputError as exc:
        assert exc.errors and all(e.line >= 1 for e in exc.errors)
        return
    for a in result.records:
        assert 0 < len(a.id) <= 256 and a.id.isprintable()


@settings(max_examples=cases(120))
@given(rows=usage_rows, header=st.sampled_from(USAGE_HEADERS[:2]))
def test_cli_ingest_stores_all_or_nothing(db, tmp_path_factory, rows, header) -> None:  # type: ignore[no-untyped-def]
    from bot.cli import main

    url, engine = db
    path = tmp_path_factory.mktemp("ingest") / "u.csv"
    path.write_text(_csv(header, rows, ""), encoding="utf-8", errors="surrogatepass")
    before = _count(engine, "usage_points")
    out, err = io.StringIO(), io.StringIO()
    code = main(["ingest", "--db", url, "--usage", str(path)], out=out, err=err)
    assert code in (0, 1), err.getvalue()
    assert "Traceback" not in err.getvalue()
    if code != 0:
        assert _count(engine, "usage_points") == before
        assert err.getvalue().strip()


NOW = 1_795_000_000
SECRET = "fuzz-push-secret-1"


@st.composite
def push_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    def event() -> object:
        ev = {"specversion": draw(st.sampled_from(["1.0", "1.0", "0.3", 1])), "id": draw(identifier),
              "source": draw(st.one_of(st.just("app"), identifier)), "type": draw(st.one_of(st.just("api_calls"), identifier)),
              "subject": draw(identifier), "time": draw(st.one_of(st.just(None), timestamps(), recent_times)),
              "data": {"value": draw(st.one_of(st.integers(-5, 10**20), st.floats(), number_text, json_values))}}
        for k in draw(st.lists(st.sampled_from(sorted(ev)), max_size=2, unique=True)):
            if draw(st.booleans()):
                del ev[k]
            else:
                ev[k] = draw(json_values)
        return ev
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return STRUCTURED, json.dumps(event()).encode()
    if kind == 1:
        return BATCH, json.dumps([event() for _ in range(draw(st.integers(0, 4)))]).encode()
    if kind == 2:
        return JSON, json.dumps(draw(json_values)).encode()
    if kind == 3:
        return draw(st.sampled_from([BATCH, JSON, "text/plain", ""])), draw(st.binary(max_size=200))
    return BATCH, b"[" * draw(st.integers(1, 50_000))


@settings(max_examples=cases(300))
@given(body=push_bodies())
def test_push_answers_a_status_and_stores_all_or_nothing(db, body) -> None:  # type: ignore[no-untyped-def]
    _, engine = db
    ingest = PushIngest(engine, PushConfig(secret=Secret(SECRET), max_age=10 * 365 * 86_400), clock=lambda: NOW)
    ctype, raw = body
    before = _count(engine, "usage_points"), _count(engine, "ingested_events")
    status, answer = ingest.handle({"Authorization": f"Bearer {SECRET}", "Content-Type": ctype}, raw)
    assert status in (200, 400, 413, 415), (status, answer)
    assert isinstance(answer, dict) and len(json.dumps(answer)) < 50_000
    if status != 200:
        assert "error" in answer
        assert (_count(engine, "usage_points"), _count(engine, "ingested_events")) == before


def test_fuzz_inputs_really_reach_the_validators(tmp_path: Path) -> None:
    """The strategies produce accepted inputs too (a fuzz suite that only sees garbage tests little)."""
    path = tmp_path / "u.csv"
    path.write_text(_csv(USAGE_HEADERS[0], [["2026-11-01T00:00:00Z", "acme", "api_calls", "1"]], ""))
    assert len(read_usage_csv(path).records) == 1

"""One validation of identifiers (account id, metric, event id: length, no control characters) and of
usage times (1970..2100) on every input path: usage and accounts CSV, push events, http_json,
openmeter, stripe_meter, sql, and the CLI's --from/--to/--at. Each refusal names the row and why,
and stores nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.service.polling import poll_source
from integrations.sources.base import PollContext, SourceError
from integrations.sources.csv_rows import CsvInputError, read_accounts_csv, read_usage_csv
from integrations.sources.http_json import HttpJsonSource
from integrations.sources.openmeter import OpenMeterSource
from integrations.sources.push import BATCH, PushConfig, PushIngest
from integrations.sources.records import MAX_ID_LENGTH, MAX_METRIC_LENGTH, id_problem, time_problem
from integrations.sources.sql import SqlSource
from integrations.sources.stripe_meter import StripeMeterSource
from rules.config import Secret
from tests.integrations.sources.fake_http import FakeHttp
from tests.integrations.sources.helpers import T0, count, source_config

BAD_IDS = {"newline": "acme\nevil", "tab": "ac\tme", "nul": "acme\x00", "zero width": "ac\u200bme",
           "bidi override": "acme\u202e", "too long": "a" * (MAX_ID_LENGTH + 1)}


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_identifier_rule() -> None:
    for name, bad in BAD_IDS.items():
        assert id_problem(bad) is not None, name
    assert id_problem("a" * MAX_ID_LENGTH) is None and id_problem("Acme Inc. (EMEA) #2 — ünïcode") is None
    assert "10,000 characters long" in (id_problem("x" * 10_000) or "")
    assert len(id_problem("x" * 100_000) or "") < 150  # the message does not quote it whole
    assert time_problem(0) is None and time_problem(4_102_444_799) is None
    assert "0001-01-01T00:00:00Z is outside" in (time_problem(-62_135_596_800) or "")
    assert "9999-12-31T00:00:00Z is outside" in (time_problem(253_402_214_400) or "")


# ----------------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("name", sorted(BAD_IDS))
def test_usage_csv_refuses_bad_account_ids(tmp_path: Path, name: str) -> None:
    p = tmp_path / "u.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        f.write("timestamp,account,metric,value\n2026-11-01T00:00:00Z,acme,api_calls,1\n")
        f.write('2026-11-01T00:00:00Z,"' + BAD_IDS[name] + '",api_calls,1\n')
    with pytest.raises(CsvInputError) as exc:
        read_usage_csv(p)
    (err,) = exc.value.errors
    assert err.column == "account" and "account" in err.message
    assert len(str(exc.value)) < 400


def test_usage_csv_refuses_long_metrics_and_times_outside_the_range(tmp_path: Path) -> None:
    p = tmp_path / "u.csv"
    p.write_text("timestamp,account,metric,value\n"
                 f"2026-11-01T00:00:00Z,acme,{'m' * (MAX_METRIC_LENGTH + 1)},1\n"
                 "0001-01-01T00:00:00Z,acme,api_calls,1\n"
                 "9999-12-31T23:59:59+05:00,acme,api_calls,1\n"
                 "1969-12-31T23:59:59Z,acme,api_calls,1\n"
                 f"2026-11-01T00:00:00Z,acme,{'m' * MAX_METRIC_LENGTH},1\n")
    result = read_usage_csv(p, on_error="skip")
    assert [(e.line, e.column) for e in result.errors] == [(2, "metric"), (3, "timestamp"), (4, "timestamp"),
                                                          (5, "timestamp")]
    assert "metric is 129 characters long" in result.errors[0].message
    assert "0001-01-01T00:00:00Z is outside the times usagebot accepts" in result.errors[1].message
    assert len(result.records) == 1


@pytest.mark.parametrize("reader", ["rows", "columns", "accounts", "ingest"])
def test_a_line_without_an_end_is_refused_before_it_fills_memory(tmp_path: Path, reader: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A file with a missing line break (here 3 MiB on one line) is an error naming the line, read
    at most ~1 MiB at a time (csv.reader and pyarrow held a whole line: a 300 MB line took 765 MB),
    and nothing is stored."""
    from bot.cli.main import main
    from integrations.sources.csv_rows import MAX_LINE_CHARS, iter_usage_csv_columns

    p = tmp_path / "u.csv"
    head = "id,name,owner_email,plan,crm_id\nacme,Acme,,,\n" if reader == "accounts" else \
        "timestamp,account,metric,value\n2026-11-01T00:00:00Z,acme,api_calls,1\n"
    p.write_text(head + "2026-11-01T00:00:00Z," + "a" * (3 * MAX_LINE_CHARS) + ",api_calls,1\n")
    said = f"{p}:3: line is longer than {MAX_LINE_CHARS:,} characters (a missing line break?); nothing was stored"
    if reader == "ingest":
        db = tmp_path / "u.db"
        assert main(["ingest", "--usage", str(p), "--db", f"sqlite:///{db}"]) != 0
        assert said in capsys.readouterr().err
        if db.exists():
            assert count(sa.create_engine(f"sqlite:///{db}"), "usage_points") == 0
        return
    read = {"rows": read_usage_csv, "accounts": read_accounts_csv,
            "columns": lambda path: list(iter_usage_csv_columns(path))}[reader]
    with pytest.raises(CsvInputError) as exc:
        read(p)
    assert str(exc.value).splitlines()[-1].strip() == said


def test_accounts_csv_refuses_bad_ids_crm_ids_and_control_characters(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        f.write("id,name,owner_email,plan,crm_id\n")
        f.write('"acme\nx",Acme,,growth,\n')
        f.write(f"globex,Globex,,growth,{'0' * 300}\n")
        f.write("initech,Init\x1bech,,growth,\n")
        f.write(f"hooli,{'h' * 600},,growth,\n")
        f.write("ok,Fine\nName,,growth,001OK\n".replace("Fine\nName", '"Fine\nName"'))
    result = read_accounts_csv(p, on_error="skip")
    assert [(e.column, e.line) for e in result.errors] == [("id", 2), ("crm_id", 4), ("name", 5), ("name", 6)]
    assert [a.id for a in result.records] == ["ok"]  # a line break in a name is text, not an identifier


# ---------------------------------------------------------------------------------- push


def _push(engine: Engine) -> PushIngest:
    return PushIngest(engine, PushConfig(secret=Secret("push-secret-123")), clock=lambda: T0 + 3600)


def _event(**kw: Any) -> dict[str, Any]:
    ev = {"specversion": "1.0", "id": "e1", "source": "app", "type": "api_calls", "subject": "acme",
          "time": _iso(T0), "data": {"value": 1}}
    ev.update(kw)
    return ev


@pytest.mark.parametrize("field,value", [("subject", "a" * 10_000), ("subject", "acme\nevil"),
                                         ("id", "e" * 100_000), ("id", "e\r1"), ("source", "s" * 5000),
                                         ("type", "t" * 200), ("time", "0001-01-01T00:30:00+01:00"),
                                         ("time", "9999-12-31T23:59:59-14:00")])
def test_push_refuses_bad_identifiers_and_times_with_a_400_naming_the_field(engine: Engine, field: str,
                                                                           value: str) -> None:
    p = _push(engine)
    status, body = p.handle({"Authorization": "Bearer push-secret-123", "Content-Type": BATCH},
                            json.dumps([_event(id="ok1"), _event(**{field: value})]).encode())
    assert status == 400, body
    (problem,) = body["problems"]
    assert problem["index"] == 1 and problem["field"] in (field, "subject", "type")
    assert len(json.dumps(body)) < 1000  # a 100,000-character id is not echoed back
    assert count(engine, "usage_points") == 0


def test_push_deeply_nested_json_is_a_400(engine: Engine) -> None:
    p = _push(engine)
    status, body = p.handle({"Authorization": "Bearer push-secret-123", "Content-Type": BATCH},
                            b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "nested too deeply" in body["error"]


LONG_INT = b"9" * 5000  # past the interpreter's 4,300-digit limit for reading an integer


@pytest.mark.parametrize("headers,body,needle", [
    ({"Content-Type": BATCH}, b'[{"specversion": "1.0", "data": {"value": ' + LONG_INT + b"}}]",
     "body is not valid JSON: a number has more than 4300 digits"),
    ({"Content-Type": BATCH}, b'[{"id": "\xff"}]', "body is not valid JSON: not UTF-8 text (byte 9)"),
    ({"Content-Type": BATCH}, b"[\xff]", "body is not valid JSON: not UTF-8 text (byte 1)"),
    ({"ce-specversion": "1.0", "ce-id": "e1", "ce-source": "s", "ce-type": "calls", "ce-subject": "acme",
      "Content-Type": "application/json"}, b'{"value": ' + LONG_INT + b"}",
     "binary-mode event body is not JSON: a number has more than 4300 digits"),
    ({"Content-Type": BATCH}, b'[{"specversion": "1.0", "data": {"value": 1, "value": 1000}}]',
     'body is not valid JSON: the key "value" appears twice in one object'),
    ({"Content-Type": BATCH}, b'[{"id": "e1", "subject": "acme", "id": "e2"}]',
     'body is not valid JSON: the key "id" appears twice in one object'),
    ({"ce-specversion": "1.0", "ce-id": "e1", "ce-source": "s", "ce-type": "calls", "ce-subject": "acme",
      "Content-Type": "application/json"}, b'{"value": 1, "value": 2}',
     'binary-mode event body is not JSON: the key "value" appears twice in one object'),
])
def test_push_json_it_cannot_read_is_a_400_in_the_senders_terms(engine: Engine, headers: dict[str, str],
                                                                  body: bytes, needle: str) -> None:
    """Never Python's wording: a 5,000-digit number made json.loads answer "Exceeds the limit (4300
    digits) for integer string conversion ... sys.set_int_max_str_digits()", which the 400 quoted."""
    status, answer = _push(engine).handle({"Authorization": "Bearer push-secret-123", **headers}, body)
    assert status == 400 and needle in answer["error"], answer
    assert "sys." not in answer["error"] and "int_max_str_digits" not in answer["error"]
    assert count(engine, "usage_points") == 0


def test_an_http_source_response_repeating_a_key_keeps_its_last_copy() -> None:
    """A peer's response (which the admin cannot fix) is read as its own JSON clients read it; only a
    pushed body, which the admin's own sender writes, is refused for a repeated key."""
    from integrations import json_text

    assert json_text.loads(b'{"v": 1, "v": 2}', unique_keys=False) == {"v": 2}
    with pytest.raises(json_text.JSONProblem, match='the key "v" appears twice'):
        json_text.loads(b'{"a": [{"v": 1, "v": 2}]}')


def _api_source(url: str, fields: str = "") -> HttpJsonSource:
    """An http_json source of `url`'s "items" (a, m, v, t), with `fields` added to its fields."""
    return HttpJsonSource(source_config(f"""
[[sources]]
id = "api"
type = "http_json"
url = "{url}"
records = "items"
[sources.fields]
account = "a"
metric = "m"
value = "v"
timestamp = "t"
{fields}"""))


def test_http_json_response_with_a_number_too_long_to_read(engine: Engine) -> None:
    with FakeHttp() as srv:
        srv.route("/u", lambda r: (200, b'{"items": [{"v": ' + LONG_INT + b"}]}"))
        src = _api_source(srv.url("/u"))
        report = poll_source(engine, src, T0 + 3600)
        src.close()
    assert not report.ok
    assert "response is not JSON" in (report.error or "") and "more than 4300 digits" in (report.error or "")
    assert "int_max_str_digits" not in (report.error or "")


# ------------------------------------------------------------------------- polled sources


def test_http_json_refuses_bad_ids_and_times(engine: Engine) -> None:
    items = [{"a": "acme\nx", "m": "c", "v": 1, "t": _iso(T0)},
             {"a": "b" * 10_000, "m": "c", "v": 1, "t": _iso(T0)},
             {"a": "ok", "m": "c", "v": 1, "t": "0001-01-01T00:00:00Z", "id": "x"},
             {"a": "ok", "m": "c", "v": 1, "t": 253_402_300_799},
             {"a": "ok", "m": "c", "v": 1, "t": _iso(T0), "id": "i" * 100_000}]
    with FakeHttp() as srv:
        srv.route("/u", lambda r: (200, {"items": items}))
        for fmt in ("iso", "epoch"):
            src = _api_source(srv.url("/u"), f'id = "id"\ntimestamp_format = "{fmt}"\n')
            report = poll_source(engine, src, T0 + 3600)
            src.close()
            assert not report.ok
            err = report.error or ""
            assert "item 0 (items[0]): field 'a' (account): account id 'acme\\nx' contains a control" in err
            assert "item 1 (items[1]): field 'a' (account): account id is 10,000 characters long" in err
            assert "outside the times usagebot accepts" in err
            assert "field 'id' (id): event id is 100,000 characters long" in err
            assert len(err) < 3000
    assert count(engine, "usage_points") == 0


def test_openmeter_and_stripe_refuse_bad_subjects_and_times() -> None:
    with FakeHttp() as srv:
        srv.route("/api/v1/meters/m/query", lambda r: (200, {"data": [
            {"subject": "acme\u202e", "windowStart": _iso(T0), "value": 1},
            {"subject": "ok", "windowStart": "0001-01-01T00:00:00Z", "value": 1}]}))
        srv.route("/v1/billing/meters/m/event_summaries", lambda r: (200, {"data": [
            {"id": "s1", "start_time": 253_402_300_799, "aggregated_value": 1}], "has_more": False}))
        om = OpenMeterSource(source_config(f"""
[[sources]]
id = "om"
type = "openmeter"
url = "{srv.url('')}"
meters = {{ m = "api_calls" }}
"""))
        st = StripeMeterSource(source_config(f"""
[[sources]]
id = "st"
type = "stripe_meter"
url = "{srv.url('')}"
api_key = "sk_test_abcdef123"
meters = {{ m = "api_calls" }}
customers = {{ acme = "cus_1" }}
"""))
        with pytest.raises(SourceError) as om_err:
            list(om.poll(PollContext("om", T0 + 3600)))
        with pytest.raises(SourceError) as st_err:
            list(st.poll(PollContext("st", T0 + 3600)))
    assert "data[0]: subject (the account) 'acme\\u202e' contains a control or invisible character" in str(om_err.value)
    assert "data[1]: 0001-01-01T00:00:00Z is outside" in str(om_err.value)
    assert "start_time: 9999-12-31T23:59:59Z is outside" in str(st_err.value)


def test_sql_refuses_bad_account_ids_and_times(tmp_path: Path) -> None:
    db = tmp_path / "src.db"
    eng = sa.create_engine(f"sqlite:///{db}")
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE ev (acct TEXT, at INTEGER, n REAL)"))
        c.execute(sa.text("INSERT INTO ev VALUES ('ok', :t, 1), ('bad\nid', :t, 1), ('ok', :far, 1)"),
                  {"t": T0, "far": 4_200_000_000})
    eng.dispose()
    src = SqlSource(source_config(f"""
[[sources]]
id = "wh"
type = "sql"
url = "sqlite:///{db}"
table = "ev"
account_column = "acct"
time_column = "at"
time_type = "epoch"
value_column = "n"
metric = "api_calls"
bucket = "1h"
backfill = "36500d"
"""))
    try:
        with pytest.raises(SourceError) as exc:
            list(src.poll(PollContext("wh", 4_300_000_000)))
    finally:
        src.close()
    assert "account 'bad\\nid'" in str(exc.value) and "contains a control" in str(exc.value)
    assert "2103-" in str(exc.value) and "outside the times usagebot accepts" in str(exc.value)


# -------------------------------------------------------------------------------- the CLI


def test_cli_times_and_the_backtest_span_are_bounded(tmp_path: Path) -> None:
    import io

    from bot.cli.main import main

    usage = tmp_path / "u.csv"
    usage.write_text("timestamp,account,metric,value\n1971-01-01T00:00:00Z,acme,api_calls,1\n"
                     "2099-12-31T00:00:00Z,acme,api_calls,1\n")
    err = io.StringIO()
    args = ["backtest", "--rules", "rules/examples/default.toml", "--usage", str(usage)]
    assert main(args, out=io.StringIO(), err=err) == 1
    assert "at most 3,660 days: narrow it with --from/--to" in err.getvalue()
    err = io.StringIO()
    assert main([*args, "--from", "0001-01-01"], out=io.StringIO(), err=err) != 0
    assert "--from: 0001-01-01T00:00:00Z is outside the times usagebot accepts" in err.getvalue()
    err = io.StringIO()
    assert main([*args, "--from", "2099-01-01", "--to", "9999-12-31T23:59:59-05:00"], out=io.StringIO(),
                err=err) != 0
    assert "--to:" in err.getvalue() and "outside the times usagebot accepts" in err.getvalue()
    assert "Traceback" not in err.getvalue()

"""Usage and account CSV inputs: parsing, error reporting with exact lines, modes, rejects."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from integrations.sources.csv_rows import (
    CsvInputError,
    RowError,
    iter_usage_csv_chunks,
    read_accounts_csv,
    read_usage_csv,
    write_accounts_csv,
    write_rejects,
    write_usage_csv,
)
from integrations.sources.records import UsageRecord
from rules.model import AccountFacts


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def write(tmp_path: Path, text: str, name: str = "usage.csv", bom: bool = False, crlf: bool = False) -> Path:
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8")
    if bom:
        data = b"\xef\xbb\xbf" + data
    path = tmp_path / name
    path.write_bytes(data)
    return path


def errors_of(path: Path, reader=read_usage_csv) -> list[RowError]:
    with pytest.raises(CsvInputError) as info:
        reader(path)
    return info.value.errors


# ------------------------------------------------------------------ usage: good input


def test_reads_usage_rows_and_converts_timestamps_to_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "timestamp,account,metric,value\n"
        "2026-11-03T14:00:00Z,acme,api_calls,12\n"
        "2026-11-03T16:00:00+02:00,acme,api_calls,3.5\n"
        "2026-11-03T14:00:00.999-05:30,globex,events,0\n"
        "2026-11-03,globex,events,1e3\n"
        "2026-11-03T14:00:00,initech,storage.gb,7\n",
    )
    result = read_usage_csv(path)
    assert result.errors == []
    assert result.rows_read == 5
    assert result.records == [
        UsageRecord("acme", "api_calls", ts("2026-11-03T14:00:00"), 12.0),
        UsageRecord("acme", "api_calls", ts("2026-11-03T14:00:00"), 3.5),
        UsageRecord("globex", "events", ts("2026-11-03T19:30:00"), 0.0),
        UsageRecord("globex", "events", ts("2026-11-03T00:00:00"), 1000.0),
        UsageRecord("initech", "storage.gb", ts("2026-11-03T14:00:00"), 7.0),
    ]
    assert all(isinstance(r.ts, int) for r in result.records)


def test_columns_in_any_order_case_and_whitespace_insensitive_header(tmp_path: Path) -> None:
    path = write(tmp_path, " Value ,METRIC,Account, timestamp\n5, api_calls , acme ,2026-11-03\n")
    (rec,) = read_usage_csv(path).records
    assert rec == UsageRecord("acme", "api_calls", ts("2026-11-03T00:00:00"), 5.0)


def test_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "timestamp,account,metric,value\n\n2026-11-03T00:00:00Z,acme,api_calls,1\n\n,,,\n"
        "2026-11-04T00:00:00Z,acme,api_calls,2\n",
        bom=True,
        crlf=True,
    )
    result = read_usage_csv(path)
    assert [r.value for r in result.records] == [1.0, 2.0]
    assert result.rows_read == 2


def test_header_only_gives_zero_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,account,metric,value\n", bom=True)
    result = read_usage_csv(path, on_error="skip")
    assert (result.records, result.errors, result.rows_read) == ([], [], 0)
    assert list(iter_usage_csv_chunks(path)) == []


def test_empty_file_is_a_clear_error_in_both_modes(tmp_path: Path) -> None:
    path = write(tmp_path, "", bom=True)
    for mode in ("reject", "skip"):
        with pytest.raises(CsvInputError, match="file is empty: expected a header row") as info:
            read_usage_csv(path, on_error=mode)
        assert info.value.errors[0].file == str(path)


# --------------------------------------------------------------- usage: header problems


def test_missing_and_unknown_columns_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,account,metrik,value,extra\n2026-11-03,a,m,1,2\n")
    for mode in ("reject", "skip"):
        with pytest.raises(CsvInputError) as info:
            read_usage_csv(path, on_error=mode)
        messages = [str(e) for e in info.value.errors]
        assert any("unknown column 'metrik'" in m for m in messages)
        assert any("unknown column 'extra'" in m for m in messages)
        assert any("missing required column 'metric'" in m for m in messages)
        assert all(e.line == 1 for e in info.value.errors)


def test_duplicate_header_column(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,account,metric,value,Value\n")
    (err,) = errors_of(path)
    assert "duplicate column 'Value'" in err.message


# ------------------------------------------------------------------ usage: row problems


BAD_USAGE = (
    "timestamp,account,metric,value\n"  # 1
    "2026-11-03T00:00:00Z,acme,api_calls,1\n"  # 2
    '2026-11-03T00:00:00Z,"multi\nline\naccount",api_calls,2\n'  # 3-5 (a line break in an id: issue 12)
    "2026-11-03T00:00:00Z,acme,api_calls,abc\n"  # 6
    "yesterday,acme,api_calls,1\n"  # 7
    "2026-11-03T00:00:00Z,,api_calls,1\n"  # 8
    "2026-11-03T00:00:00Z,acme,api calls,1\n"  # 9
    "2026-11-03T00:00:00Z,acme,api_calls,-1\n"  # 10
    "2026-11-03T00:00:00Z,acme,api_calls,nan\n"  # 11
    "2026-11-03T00:00:00Z,acme,api_calls,inf\n"  # 12
    "2026-11-03T00:00:00Z,acme,api_calls,\n"  # 13
    "2026-11-03T00:00:00Z,acme,api_calls\n"  # 14
    "2026-11-03T00:00:00Z,acme,,1\n"  # 15
    "2026-11-04T00:00:00Z,acme,api_calls,4\n"  # 16 (good)
)


def test_every_row_error_with_exact_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, BAD_USAGE)
    errs = errors_of(path)
    got = [(e.line, e.column, e.value) for e in errs]
    assert got == [
        (3, "account", "multi\nline\naccount"),
        (6, "value", "abc"),
        (7, "timestamp", "yesterday"),
        (8, "account", ""),
        (9, "metric", "api calls"),
        (10, "value", "-1"),
        (11, "value", "nan"),
        (12, "value", "inf"),
        (13, "value", ""),
        (14, None, None),
        (15, "metric", ""),
    ]
    by_line = {e.line: e for e in errs}
    assert "contains a control or invisible character (U+000A)" in by_line[3].message
    assert str(by_line[6]) == f"{path}:6: column 'value': 'abc' is not a number"
    assert "not an ISO-8601 timestamp" in by_line[7].message
    assert "account is empty" in by_line[8].message
    assert "not a valid metric name" in by_line[9].message
    assert "negative" in by_line[10].message
    assert "not a finite number" in by_line[11].message
    assert "not a finite number" in by_line[12].message
    assert "value is empty" in by_line[13].message
    assert str(by_line[14]) == f"{path}:14: expected 4 fields (timestamp,account,metric,value), found 3"
    assert "metric is empty" in by_line[15].message


def test_reject_lists_all_problems_and_returns_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, BAD_USAGE)
    with pytest.raises(CsvInputError) as info:
        read_usage_csv(path, on_error="reject")
    text = str(info.value)
    assert text.startswith(f"11 problems in {path}:")
    assert f"{path}:6: column 'value'" in text and f"{path}:15: column 'metric'" in text


def test_skip_returns_good_rows_and_errors_with_raw_text(tmp_path: Path) -> None:
    path = write(tmp_path, BAD_USAGE, crlf=True)
    result = read_usage_csv(path, on_error="skip")
    assert [(r.account, r.value) for r in result.records] == [
        ("acme", 1.0),
        ("acme", 4.0),
    ]
    assert result.rows_read == 13
    assert [e.line for e in result.errors] == [3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert result.errors[1].raw == "2026-11-03T00:00:00Z,acme,api_calls,abc"
    assert result.errors[0].header == ("timestamp", "account", "metric", "value")


def test_one_row_with_several_problems_reports_each(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,account,metric,value\nbad,,m,x\n")
    result = read_usage_csv(path, on_error="skip")
    assert [(e.line, e.column) for e in result.errors] == [(2, "timestamp"), (2, "account"), (2, "value")]
    assert result.rows_read == 1 and result.records == []


def test_long_values_are_truncated_in_messages(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,account,metric,value\n2026-11-03,acme,m," + "9x" * 500 + "\n")
    (err,) = errors_of(path)
    assert len(err.message) < 120
    assert "..." in err.message
    assert err.value == "9x" * 500  # the full value is still on the error


def test_unclosed_quote_names_the_span(tmp_path: Path) -> None:
    path = write(tmp_path, 'timestamp,account,metric,value\n2026-11-03,"acme,m,1\n2026-11-04,acme,m,2\n')
    (err,) = errors_of(path)
    assert err.line == 2
    assert "spans lines 2-3" in err.message and "unclosed quote" in err.message


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "usage.csv"
    path.write_bytes(b"timestamp,account,metric,value\n2026-11-03,acme,m,1\n2026-11-03,caf\xe9,m,1\n")
    (err,) = errors_of(path)
    assert err.line == 3 and "not valid UTF-8" in err.message


def test_bad_mode_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,account,metric,value\n")
    with pytest.raises(ValueError, match="on_error"):
        read_usage_csv(path, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_rows"):
        iter_usage_csv_chunks(path, chunk_rows=0)


# ---------------------------------------------------------------------- rejects file


def test_rejects_file_round_trip(tmp_path: Path) -> None:
    src = write(
        tmp_path,
        "timestamp,account,metric,value\n"
        "2026-11-03,acme,api_calls,1\n"
        '2026-11-03,"Acme, Inc. EMEA",api_calls,-5\n'
        "2026-11-03,acme,api_calls,1,surplus\n"
        "2026-11-03,acme\n"
        "nope,acme,api_calls,oops\n",
    )
    result = read_usage_csv(src, on_error="skip")
    out = tmp_path / "rejects.csv"
    write_rejects(out, result.errors)
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", "account", "metric", "value", "_extra1", "_error"]
    assert rows[1][:4] == ["2026-11-03", "Acme, Inc. EMEA", "api_calls", "-5"]
    assert rows[1][5] == f"{src}:3: column 'value': '-5' is negative; usage must be >= 0"
    assert rows[2][:5] == ["2026-11-03", "acme", "api_calls", "1", "surplus"]
    assert rows[3][:5] == ["2026-11-03", "acme", "", "", ""]
    assert rows[4][:4] == ["nope", "acme", "api_calls", "oops"]
    assert rows[4][5].count(f"{src}:6:") == 2 and "; " in rows[4][5]  # one row, both problems
    assert len(rows) == 5

    # Fix the rejected rows, drop the helper columns, and they load.
    fixed = tmp_path / "fixed.csv"
    with open(fixed, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0][:4])
        for r in rows[1:]:
            w.writerow(["2026-11-03", r[1], "api_calls", "1"])
    again = read_usage_csv(fixed)
    assert [r.account for r in again.records] == ["Acme, Inc. EMEA", "acme", "acme", "acme"]


def test_rejects_without_errors_and_header_errors(tmp_path: Path) -> None:
    out = tmp_path / "rejects.csv"
    write_rejects(out, [])
    assert out.read_text() == "_error\n"
    header_problem = RowError("u.csv", 1, "x", "x", "unknown column 'x'", "x")
    write_rejects(out, [header_problem])
    assert out.read_text() == "_error\n"


# ------------------------------------------------------------------------- chunking


def test_chunks_equal_whole_file(tmp_path: Path) -> None:
    base = ts("2026-11-01T00:00:00")
    records = [
        UsageRecord(f"acct-{a}", m, base + h * 3600, float(a * h % 97))
        for h in range(40)
        for a in range(25)
        for m in ("api_calls", "events")
    ]
    path = tmp_path / "big.csv"
    assert write_usage_csv(path, records) == 2000
    whole = read_usage_csv(path)
    assert whole.records == records
    chunks = list(iter_usage_csv_chunks(path, chunk_rows=300))
    assert [c.rows_read for c in chunks] == [300] * 6 + [200]
    assert [r for c in chunks for r in c.records] == whole.records


def test_chunks_skip_mode_keep_errors_with_their_chunk(tmp_path: Path) -> None:
    lines = ["timestamp,account,metric,value"]
    lines += [f"2026-11-03T{h:02d}:00:00Z,acme,api_calls,{h}" for h in range(10)]
    lines[5] = "2026-11-03T04:00:00Z,acme,api_calls,x"  # line 6
    path = write(tmp_path, "\n".join(lines) + "\n")
    chunks = list(iter_usage_csv_chunks(path, chunk_rows=4, on_error="skip"))
    assert [(c.rows_read, len(c.records), [e.line for e in c.errors]) for c in chunks] == [
        (4, 4, []),
        (4, 3, [6]),
        (2, 2, []),
    ]


def test_chunks_reject_mode_raises_with_all_errors(tmp_path: Path) -> None:
    lines = ["timestamp,account,metric,value"]
    lines += [f"2026-11-03T{h:02d}:00:00Z,acme,api_calls,{h}" for h in range(10)]
    lines[6] = "2026-11-03T05:00:00Z,acme,api_calls,-3"  # line 7
    lines[9] = "2026-11-03T08:00:00Z,,api_calls,1"  # line 10
    path = write(tmp_path, "\n".join(lines) + "\n")
    seen = []
    with pytest.raises(CsvInputError) as info:
        for chunk in iter_usage_csv_chunks(path, chunk_rows=3):
            seen.append(chunk.rows_read)
    assert seen == [3]  # the chunk ending before the first bad row; nothing after it
    assert [e.line for e in info.value.errors] == [7, 10]


# -------------------------------------------------------------------------- accounts


ACCOUNTS_HEADER = "id,name,owner_email,plan,crm_id,quota.api_calls,Quota.Events,billing_day,timezone\n"


def test_reads_accounts_with_quotas_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ACCOUNTS_HEADER
        + "acme,Acme Corp,ae@example.com,growth,0015g00000ABCDE,100000,,15,Europe/Berlin\n"
        + "globex,Globex,,starter,,,,,\n",
        name="accounts.csv",
        bom=True,
        crlf=True,
    )
    result = read_accounts_csv(path)
    assert result.rows_read == 2
    acme, globex = result.records
    assert acme == AccountFacts(
        id="acme",
        name="Acme Corp",
        plan="growth",
        owner_email="ae@example.com",
        crm_id="0015g00000ABCDE",
        quotas={"api_calls": 100000.0},
        billing_day=15,
        timezone="Europe/Berlin",
    )
    assert globex.quotas == {} and globex.billing_day == 1 and globex.timezone == "UTC"
    assert globex.owner_email == ""


def test_accounts_optional_columns_may_be_absent(tmp_path: Path) -> None:
    path = write(tmp_path, "crm_id,plan,owner_email,name,id\n,pro,,Initech,initech\n", name="accounts.csv")
    (acct,) = read_accounts_csv(path).records
    assert (acct.id, acct.name, acct.plan, acct.billing_day, acct.timezone) == (
        "initech",
        "Initech",
        "pro",
        1,
        "UTC",
    )


def test_account_row_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ACCOUNTS_HEADER
        + "acme,Acme,ae@example.com,growth,,1000,,,\n"  # 2 ok
        + 'globex,"Globex\nHoldings",not-an-email,starter,,,,,\n'  # 3-4
        + "initech,Initech,a@b@c.com,starter,,0,,,\n"  # 5
        + "acme,Acme again,,starter,,,,,\n"  # 6 duplicate of line 2
        + "hooli,Hooli,,starter,,-5,abc,29,Mars/Olympus\n"  # 7
        + "umbrella,Umbrella,,starter,,,,x,europe/berlin\n"  # 8
        + ",,,,,,,,\n"  # 9 blank: ignored
        + " ,NoId,,starter,,,,,\n"  # 10
        + "vandelay,,,starter,,,,,\n",  # 11
        name="accounts.csv",
    )
    errs = errors_of(path, read_accounts_csv)
    got = [(e.line, e.column) for e in errs]
    assert got == [
        (3, "owner_email"),
        (5, "owner_email"),
        (5, "quota.api_calls"),
        (6, "id"),
        (7, "quota.api_calls"),
        (7, "Quota.Events"),
        (7, "billing_day"),
        (7, "timezone"),
        (8, "billing_day"),
        (8, "timezone"),
        (10, "id"),
        (11, "name"),
    ]
    by = {(e.line, e.column): e for e in errs}
    assert str(by[(6, "id")]) == f"{path}:6: column 'id': duplicate id 'acme' (first defined on line 2)"
    assert "not a quota > 0" in by[(5, "quota.api_calls")].message
    assert "not a number" in by[(7, "Quota.Events")].message
    assert "1..28" in by[(7, "billing_day")].message
    assert "IANA timezone" in by[(7, "timezone")].message
    assert "did you mean 'Europe/Berlin'?" in by[(8, "timezone")].message

    skipped = read_accounts_csv(path, on_error="skip")
    assert [a.id for a in skipped.records] == ["acme"]
    assert skipped.rows_read == 8
    assert {e.line for e in skipped.errors} == {3, 5, 6, 7, 8, 10, 11}


def test_accounts_header_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "id,name,owner_email,plan,notes,quota.\n", name="accounts.csv")
    messages = [str(e) for e in errors_of(path, read_accounts_csv)]
    assert any("unknown column 'notes'" in m for m in messages)
    assert any("quota column needs a metric name" in m for m in messages)
    assert any("missing required column 'crm_id'" in m for m in messages)
    with pytest.raises(CsvInputError, match="file is empty"):
        read_accounts_csv(write(tmp_path, "", name="empty.csv"))


def test_accounts_write_read_round_trip(tmp_path: Path) -> None:
    accounts = [
        AccountFacts(
            "a1", "Alpha, Inc.", "growth", "x@example.com", "001A", {"api_calls": 5e4}, 15, "Asia/Tokyo"
        ),
        AccountFacts("a2", "Beta", "starter", "", "", {"events": 1234.5}),
    ]
    path = tmp_path / "accounts.csv"
    assert write_accounts_csv(path, accounts) == 2
    assert read_accounts_csv(path).records == accounts


def test_rejects_from_usage_and_accounts_in_one_file(tmp_path: Path) -> None:
    usage = write(tmp_path, "timestamp,account,metric,value\n2026-11-03,acme,api_calls,x\n")
    accounts = write(tmp_path, "id,name,owner_email,plan,crm_id\nacme,,,,\n", name="accounts.csv")
    errors = (
        read_accounts_csv(accounts, on_error="skip").errors + read_usage_csv(usage, on_error="skip").errors
    )
    out = tmp_path / "rejects.csv"
    write_rejects(out, errors)
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert rows[0]["id"] == "acme" and rows[0]["_file"] == str(accounts) and rows[0]["timestamp"] == ""
    assert "name is empty" in rows[0]["_error"]
    assert (rows[1]["timestamp"], rows[1]["value"], rows[1]["_file"]) == ("2026-11-03", "x", str(usage))
    assert rows[1]["id"] == "" and "is not a number" in rows[1]["_error"]

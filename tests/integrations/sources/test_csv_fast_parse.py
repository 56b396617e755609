"""The columnar reader's vectorised checks (integrations.sources.csv_rows): timestamps read by Arrow's
parser where the format allows and by parse_timestamp otherwise, values by Arrow's number parser and
float(), account ids by one regex; each gives exactly the row parser's answer, or hands the block to
the row parser (_NotPlain) exactly where the row parser refuses a text. And the parse imports no pandas."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.sources.csv_rows import (
    MAX_LINE_CHARS,
    _NotPlain,
    _parse_value,
    _plain_accounts,
    _plain_times,
    _plain_values,
    iter_usage_csv_columns,
    parse_timestamp,
)
from integrations.sources.records import is_identifier
from tests.integrations.sources.test_csv_columns import same_as_row_parser

ROOT = Path(__file__).resolve().parents[3]

# day, hour, minute and second fields that are valid, on the edge (leap days, the last second of a
# day) and invalid (Feb 29 of a common year, month 13, hour 24, minute or second 60)
_DATE_PARTS = st.tuples(st.integers(1960, 2110), st.integers(0, 13), st.integers(0, 32))
_TIME_PARTS = st.tuples(st.integers(0, 25), st.integers(0, 61), st.integers(0, 61))
_OFFSETS = st.one_of(st.integers(-23 * 60 - 59, 23 * 60 + 59), st.sampled_from([24 * 60, -24 * 60, 99 * 60 + 99]))


@st.composite
def timestamp_texts(draw: st.DrawFn) -> str:
    """ISO-8601 texts in every form parse_timestamp reads, and near misses of each."""
    kind = draw(st.integers(0, 9))
    if kind == 9:
        return draw(st.sampled_from(["", " ", "not a time", "1793714400", "2026-11-03T", "2026-11-03T14:00:00ZZ",
                                     "2026-11-03t14:00:00z", "2026-13-01", "0000-01-01", "2026-11-03T14:00:00 Z",
                                     "2026-11-03T14:00:00+0200", "2026-11-03T14:00:00+02", "9999-12-31",
                                     "2026-11-03T14:00:00+02:00:30", "2026-W45-2", "2026-307", "20261103T140000Z"]))
    if draw(st.booleans()):  # a real instant (leap days included), most texts valid
        dt = draw(st.datetimes(min_value=datetime(1965, 1, 1), max_value=datetime(2105, 12, 31)))
        y, mo, d, h, mi, s = dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second
    else:
        (y, mo, d), (h, mi, s) = draw(_DATE_PARTS), draw(_TIME_PARTS)
    date = f"{y:04d}-{mo:02d}-{d:02d}"
    clock = f"{h:02d}:{mi:02d}:{s:02d}"
    off = draw(_OFFSETS)
    zone = f"{'+' if off >= 0 else '-'}{abs(off) // 60:02d}:{abs(off) % 60:02d}"
    forms = [date, f"{date}T{clock}", f"{date}T{clock}Z", f"{date}T{clock}{zone}", f"{date} {clock}",
             f"{date}T{clock}.{draw(st.integers(0, 999999)):06d}Z", f"{date}T{h:02d}:{mi:02d}",
             f"{y:04d}{mo:02d}{d:02d}", f" {date}T{clock}Z "]
    return forms[kind]


def _row_parser_times(texts: list[str]) -> list[int] | None:
    try:
        return [parse_timestamp(t) for t in texts]
    except ValueError:
        return None


def _fast_times(texts: list[str]) -> list[int] | None:
    try:
        return _plain_times(pa.array(texts, pa.string()), {}).tolist()
    except _NotPlain:
        return None


@settings(max_examples=400, deadline=None)
@given(st.lists(timestamp_texts(), min_size=1, max_size=12))
def test_timestamps_read_by_arrow_are_parse_timestamps_instants(texts: list[str]) -> None:
    assert _fast_times(texts) == _row_parser_times(texts)
    for text in texts:  # one by one too: a text alone in its group
        assert _fast_times([text]) == _row_parser_times([text]), text


def test_timestamps_of_every_format_and_both_sides_of_the_range() -> None:
    day = 86_400
    cases = {
        "2024-02-29": 1_709_164_800, "2024-02-29T23:59:59Z": 1_709_251_199, "1970-01-01T00:00:00Z": 0,
        "2099-12-31T23:59:59Z": 4_102_444_799, "2026-11-03T16:00:00+02:00": 1_793_714_400,
        "2026-11-03T00:30:00+05:30": 1_793_664_000 - 5 * 3600, "2026-11-03T14:00:00": 1_793_714_400,
        "2026-11-03": 1_793_664_000, "2026-11-03T14:00:00.999Z": 1_793_714_400,
        "2026-11-03T14:00:00+02:60": 1_793_703_600,  # fromisoformat reads it; Arrow refuses it
    }
    texts = list(cases)
    assert _plain_times(pa.array(texts), {}).tolist() == list(cases.values()) == _row_parser_times(texts)
    assert cases["2026-11-03"] % day == 0
    for bad in ("2023-02-29", "1969-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "2026-11-03T24:00:00Z",
                "1970-01-01T00:00:00+00:01"):
        assert _row_parser_times([bad]) is None and _fast_times(["2026-11-03", bad]) is None, bad


@st.composite
def value_texts(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return repr(draw(st.floats(allow_nan=True, allow_infinity=True)))
    if kind == 1:
        return str(draw(st.integers(-10**20, 10**20)))
    if kind == 2:
        return draw(st.from_regex(r"\A[ +-]?[0-9_]{0,5}(\.[0-9]{0,4})?([eE][+-]?[0-9]{1,3})?[ \t]?\Z"))
    if kind == 3:
        return draw(st.sampled_from(["inf", "-inf", "Infinity", "nan", "NaN", "-nan", "-0", "+0", "1e400",
                                     "5e-400", "0x10", "1,5", ".", "1.", ".5", "", " ", "\u0663", "1e", "e5"]))
    return draw(st.text(st.sampled_from("0123456789.eE+- _"), max_size=8))


def _fast_values(texts: list[str]) -> list[float] | None:
    try:
        return _plain_values(pa.array(texts, pa.string())).tolist()
    except _NotPlain:
        return None


def _row_parser_values(texts: list[str]) -> list[float] | None:
    out = []
    for t in texts:
        v, why = _parse_value(t)
        if why is not None:
            return None
        out.append(v)
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(value_texts(), min_size=1, max_size=10))
def test_values_read_by_arrow_are_floats_of_the_row_parser(texts: list[str]) -> None:
    fast = _fast_values(texts)
    assert fast == _row_parser_values(texts)
    if fast is not None:  # the same floats, bit for bit (no -0.0 either)
        assert [v.hex() for v in fast] == [v.hex() for v in _row_parser_values(texts) or []]


@st.composite
def account_texts(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.from_regex(r"\A[a-z0-9-]{1,12}\Z"))
    if kind == 1:
        return draw(st.sampled_from(["", " ", " acme", "acme ", "\tacme", "ac me", 'ac"me', "a" * 256, "a" * 257,
                                     "ac\x00me", "ac\u200bme", "\u00e9t\u00e9", " \u00e9t\u00e9\u00a0", "acme\x7f"]))
    return draw(st.text(max_size=6))


@settings(max_examples=300, deadline=None)
@given(st.lists(account_texts(), min_size=1, max_size=8))
def test_account_ids_taken_as_columns_are_the_row_parsers_ids(texts: list[str]) -> None:
    stripped = [t.strip() for t in texts]
    taken = all(is_identifier(t) and '"' not in t for t in stripped)  # else the row parser reads the block
    try:
        got = _plain_accounts(pa.array(texts, pa.string())).to_pylist()
    except _NotPlain:
        got = None
    assert got == (stripped if taken else None)


def test_values_the_arrow_parser_refuses_stay_columnar(tmp_path: Path) -> None:
    """' 5', '1_000', '+2' are numbers to the row parser: the block is read as columns, with float()
    only for those texts (before, any of them sent the whole file to the row parser)."""
    path = tmp_path / "u.csv"
    path.write_text("timestamp,account,metric,value\n2026-11-03T14:00:00Z,acme,api_calls, 5\n"
                    "2026-11-03 15:00:00,acme,api_calls,1_000\n2026-11-03,acme,events,+2\n", encoding="utf-8")
    chunks = list(iter_usage_csv_columns(path))
    assert [type(c.records).__name__ for c in chunks] == ["UsageColumns"]
    cols = chunks[0].records
    assert cols.values.tolist() == [5.0, 1000.0, 2.0]
    assert cols.ts.tolist() == [1_793_714_400, 1_793_718_000, 1_793_664_000]


def test_the_parse_imports_no_pandas(tmp_path: Path) -> None:
    """pyarrow imports pandas for Array.to_numpy, pa.array of numpy and the like (0.8 s of a 7M-row
    parse): the columnar parse reads arrays from their buffers instead."""
    path = tmp_path / "u.csv"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [f"{(start + timedelta(days=i % 40)).isoformat()},acct-{i % 50},api_calls,{i * 0.5}"
            for i in range(2000)] + ["2026-03-01,  padded  ,events, 7"]
    path.write_text("timestamp,account,metric,value\n" + "\n".join(rows) + "\n", encoding="utf-8")
    code = ("import sys, json\nfrom integrations.sources.csv_rows import iter_usage_csv_columns\n"
            f"chunks = list(iter_usage_csv_columns({str(path)!r}))\n"
            "print(json.dumps([[type(c.records).__name__ for c in chunks], sum(c.rows_read for c in chunks),"
            " 'pandas' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    kinds, rows_read, pandas = json.loads(out.stdout)
    assert kinds == ["UsageColumns"] and rows_read == 2001
    assert pandas is False



@pytest.mark.parametrize("digits", [MAX_LINE_CHARS - 40, MAX_LINE_CHARS + 10, 3 * MAX_LINE_CHARS, 20 << 20])
@pytest.mark.parametrize("newline", [True, False])
def test_a_line_longer_than_the_row_parser_takes_is_its_error(tmp_path: Path, digits: int, newline: bool) -> None:
    """A row of one long number (float() reads it): under the cap both readers take it, over the cap
    (inside one Arrow block or longer than one) both name its line, with or without a last line break."""
    path = tmp_path / "u.csv"
    path.write_text("timestamp,account,metric,value\n2026-01-01,acme,api_calls,1\n2026-01-02,acme,api_calls,"
                    + "0" * digits + "7" + ("\n2026-01-03,acme,api_calls,2\n" if newline else ""), encoding="utf-8")
    same_as_row_parser(path, "reject")
    same_as_row_parser(path, "skip")

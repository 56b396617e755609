"""The columnar usage CSV reader (iter_usage_csv_columns): the same records, errors and line
numbers as the row parser on every input, columns (no object per row) on plain files, and a
bad row in a later block read again by the row parser without yielding a row twice."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import integrations.sources.csv_rows as csv_files
from integrations.sources.csv_rows import CsvInputError, iter_usage_csv_columns, read_usage_csv
from integrations.sources.records import UsageRecord
from storage.usage import UsageColumns
from tests.fuzz.strategies import cases, identifier, nasty_text, number_text, recent_times, timestamps
from tests.fuzz.test_fuzz_csv_push import USAGE_HEADERS, _csv

HEADER = "timestamp,account,metric,value\n"


def records_of(chunk_records: object) -> list[UsageRecord]:
    if isinstance(chunk_records, UsageColumns):
        return [UsageRecord(a, m, int(t), float(v)) for a, m, t, v in zip(
            chunk_records.accounts.to_pylist(), chunk_records.metrics.to_pylist(),
            chunk_records.ts.tolist(), chunk_records.values.tolist(), strict=True)]
    return list(chunk_records)  # type: ignore[call-overload]


def columnar(path: Path, on_error: str = "reject", chunk_rows: int = 50_000):  # type: ignore[no-untyped-def]
    """(records, errors, rows_read, chunk kinds) over every chunk of the columnar reader."""
    records, errors, rows, kinds = [], [], 0, []
    for chunk in iter_usage_csv_columns(path, on_error=on_error, chunk_rows=chunk_rows):  # type: ignore[arg-type]
        kinds.append(type(chunk.records).__name__)
        records += records_of(chunk.records)
        errors += chunk.errors
        rows += chunk.rows_read
    return records, errors, rows, kinds


def same_as_row_parser(path: Path, mode: str) -> list[str]:
    """Assert both readers agree on `path` in `mode`; returns the columnar chunk kinds."""
    try:
        want = read_usage_csv(path, on_error=mode)  # type: ignore[arg-type]
    except CsvInputError as exc:
        with pytest.raises(CsvInputError) as info:
            columnar(path, mode)
        assert info.value.errors == exc.errors
        assert str(info.value) == str(exc)
        return []
    records, errors, rows, kinds = columnar(path, mode)
    assert records == want.records
    assert [type(r.value) for r in records] == [float] * len(records)
    assert errors == want.errors
    assert rows == want.rows_read
    return kinds


GOOD = [
    "2026-11-03T14:00:00Z,acme,api_calls,12\n2026-11-03T16:00:00+02:00,acme,api_calls,3.5\n"
    "2026-11-03T14:00:00.999-05:30,globex,events,0\n2026-11-03,globex,events,1e3\n"
    "2026-11-03T14:00:00,initech,storage.gb,7\n",
    "2026-11-03T14:00:00Z,  acme  ,api_calls,12\n2026-11-03T14:00:00Z,acme,api_calls,.5\n",
    '2026-11-03T14:00:00Z,"acme",api_calls,"12"\n',
    "2026-11-03T14:00:00Z,ac me,api_calls,00012.50\n",
]
BAD = [
    "2026-11-03T14:00:00Z,acme,api_calls,-1\n",
    "2026-11-03T14:00:00Z,acme,api_calls,inf\n",
    "2026-11-03T14:00:00Z,acme,api_calls,nan\n",
    "2026-11-03T14:00:00Z,acme,api_calls, 5\n",
    "2026-11-03T14:00:00Z,acme,api_calls,1_000\n",
    "2026-11-03T14:00:00Z,acme,api_calls,-0\n",
    "2026-11-03T14:00:00Z,acme,api_calls,1e999\n",
    "2026-11-03T14:00:00Z,acme,api_calls,\n",
    "not a time,acme,api_calls,1\n",
    "1793714400,acme,api_calls,12\n",
    "2026-11-03T14:00:00Z,,api_calls,1\n",
    "2026-11-03T14:00:00Z,acme,bad metric,1\n",
    "2026-11-03T14:00:00Z,acme, api_calls,1\n",
    "2026-11-03T14:00:00Z,acme,api_calls\n",
    "2026-11-03T14:00:00Z,acme,api_calls,1,2\n",
    "\n,,,\n2026-11-03T14:00:00Z,acme,api_calls,1\n",
    '2026-11-03T14:00:00Z,"ac""me",api_calls,1\n',
    '2026-11-03T14:00:00Z,"ac\nme",api_calls,1\n2026-11-03T14:00:00Z,acme,api_calls,x\n',
    "2026-11-03T14:00:00Z,acme\tx,api_calls,1\n",
    # a field over csv.field_size_limit() (131,072 characters) under the line cap: the row parser's error
    "2026-11-03T14:00:00Z,acme,api_calls,5" + " " * 131_073 + "\n",
    "2026-11-03T14:00:00Z" + " " * 200_000 + ",acme,api_calls,5\n",
    "2026-11-03T14:00:00Z,acme,api_calls,0." + "0" * 200_000 + "1\n",
    '2026-11-03T14:00:00Z,acme,api_calls,"5' + "\n" * 70_000 + " " * 70_000 + '"\n',
]


@pytest.mark.parametrize("mode", ["reject", "skip"])
@pytest.mark.parametrize("body", GOOD + BAD)
@pytest.mark.parametrize("crlf", [False, True])
def test_columnar_reader_gives_the_row_parsers_records_and_errors(tmp_path: Path, body: str, mode: str,
                                                                   crlf: bool) -> None:
    text = HEADER + body
    if crlf:
        text = text.replace("\n", "\r\n")
    path = tmp_path / "u.csv"
    path.write_bytes(text.encode("utf-8"))
    same_as_row_parser(path, mode)


def test_a_field_of_exactly_the_field_limit_is_read_as_columns(tmp_path: Path) -> None:
    """The field limit check sends only longer fields to the row parser: 131,072 characters pass."""
    path = tmp_path / "u.csv"
    value = "0." + "0" * (131_072 - 3) + "1"
    path.write_text(HEADER + f"2026-11-03T14:00:00Z,acme,api_calls,{value}\n", encoding="utf-8")
    assert same_as_row_parser(path, "reject") == ["UsageColumns"]


@pytest.mark.parametrize("body", GOOD)
def test_plain_files_are_read_as_columns(tmp_path: Path, body: str) -> None:
    path = tmp_path / "u.csv"
    path.write_text("\ufeff" + HEADER.replace("timestamp,account", "account,timestamp")
                    + "".join(_swap(line) + "\n" for line in body.splitlines()), encoding="utf-8")
    assert same_as_row_parser(path, "reject") == ["UsageColumns"]


def _swap(line: str) -> str:
    ts, acc, rest = line.split(",", 2)
    return f"{acc},{ts},{rest}"


def _big(n: int, bad_at: int | None = None) -> str:
    rows = [f"2026-11-{1 + i % 28:02d}T00:00:00Z,acct-{i % 97},api_calls,{i}\n" for i in range(n)]
    if bad_at is not None:
        rows[bad_at] = "2026-11-03T00:00:00Z,acct-1,api_calls,-4\n"
    return HEADER + "".join(rows)


@pytest.mark.parametrize("mode", ["reject", "skip"])
@pytest.mark.parametrize("bad_at", [None, 0, 1500, 2999])
def test_a_bad_row_in_a_later_block_is_read_again_by_the_row_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     mode: str, bad_at: int | None) -> None:
    monkeypatch.setattr(csv_files, "ARROW_BLOCK_BYTES", 4096)  # ~90 rows a block: many blocks
    path = tmp_path / "u.csv"
    path.write_text(_big(3000, bad_at), encoding="utf-8")
    kinds = same_as_row_parser(path, mode)
    if bad_at is None:
        assert set(kinds) == {"UsageColumns"} and len(kinds) > 10
    elif mode == "skip":
        assert kinds[0] == ("list" if bad_at == 0 else "UsageColumns") and kinds[-1] == "list"


def test_reject_errors_name_the_line_of_a_bad_row_past_the_first_block(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_files, "ARROW_BLOCK_BYTES", 4096)
    path = tmp_path / "u.csv"
    path.write_text(_big(3000, 2500), encoding="utf-8")
    with pytest.raises(CsvInputError) as info:
        columnar(path)
    (e,) = info.value.errors
    assert (e.file, e.line, e.column) == (str(path), 2502, "value")
    assert "negative" in e.message


@settings(max_examples=cases(200))
@given(header=st.sampled_from(USAGE_HEADERS),
       rows=st.lists(st.tuples(st.one_of(timestamps(), recent_times), identifier,
                               st.one_of(st.just("api_calls"), identifier), number_text).map(list), max_size=8),
       tail=st.one_of(st.just(""), nasty_text), mode=st.sampled_from(["reject", "skip"]))
def test_fuzz_columnar_reader_agrees_with_the_row_parser(tmp_path_factory, header, rows, tail, mode) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("csv") / "u.csv"
    path.write_text(_csv(header, rows, tail), encoding="utf-8", errors="surrogatepass")
    same_as_row_parser(path, mode)


@pytest.mark.parametrize("mode", ["reject", "skip"])
def test_a_field_over_the_field_limit_is_named_as_such(tmp_path: Path, mode: str) -> None:
    """Not "a stray quote or NUL byte": the error says a field is too long, on its line."""
    path = tmp_path / "u.csv"
    path.write_text(HEADER + "2026-11-03T14:00:00Z,acme,api_calls,1\n"
                    + "2026-11-03T14:00:00Z,acme,api_calls,5" + " " * 200_000 + "\n", encoding="utf-8")
    with pytest.raises(CsvInputError) as info:
        read_usage_csv(path, on_error=mode)
    assert ":3: a field is longer than 131,072 characters" in str(info.value)


def test_a_file_replaced_between_the_readers_opens_is_refused_whole(tmp_path: Path) -> None:
    """The header read and Arrow's pass open the file separately: a version renamed into place
    between them is FileChanged (a CsvInputError: `usagebot ingest` stores nothing of it)."""
    path = tmp_path / "u.csv"
    path.write_text(HEADER + "2026-11-03T14:00:00Z,acme,api_calls,5\n", encoding="utf-8")
    opens = 0

    def swapping(name: str, flags: int) -> int:
        nonlocal opens
        fd = csv_files.open_drop(name, flags)
        opens += 1
        if opens == 1:
            (tmp_path / "new.csv").write_text("timestamp,metric,account,value\n2026-11-03T14:00:00Z,api_calls,x,7\n")
            os.replace(tmp_path / "new.csv", path)
        return fd

    with pytest.raises(csv_files.FileChanged) as info:
        list(iter_usage_csv_columns(path, opener=swapping))
    assert "u.csv:1: the file changed while it was read" in str(info.value)
    assert isinstance(info.value, CsvInputError)
    assert [c.rows_read for c in iter_usage_csv_columns(path)] == [1]  # settled: read as usual


class _Preempted:
    """Arrow's file, whose reads from Arrow's own read-ahead thread past the first `free` are held, as
    if the thread were preempted inside FileIO.read: it has taken the descriptor number and released
    the GIL, and reads once `go` is set. A file that gives no descriptor is read through its read()."""

    def __init__(self, f: object, free: int, go: threading.Event, done: threading.Event) -> None:
        self.f, self.free, self.go, self.done, self.reads = f, free, go, done, 0

    def read(self, n: int) -> bytes:
        if threading.current_thread() is threading.main_thread():
            return self.f.read(n)  # type: ignore[attr-defined, no-any-return]
        self.reads += 1
        if self.reads <= self.free:
            return self.f.read(n)  # type: ignore[attr-defined, no-any-return]
        try:
            fd = self.f.fileno()  # type: ignore[attr-defined]
        except (OSError, ValueError):
            fd = None
        try:
            self.go.wait(10)
            return os.read(fd, n) if fd is not None else self.f.read(n)  # type: ignore[attr-defined, no-any-return]
        finally:
            self.done.set()

    def __getattr__(self, name: str) -> object:
        return getattr(self.f, name)


@pytest.mark.parametrize("mode", ["reject", "skip"])
def test_arrows_late_read_after_a_bad_block_never_takes_the_row_parsers_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Arrow's CSV reader reads blocks ahead in a thread of its own. At a bad block the columnar reader
    closes its file and the row parser opens it again, most often under the same descriptor number; a
    read of that thread still under way (FileIO.read holds the number, preempted on a loaded machine)
    then took a block of the row parser's bytes: a full suite run lost 50 of a file's 712 rows so
    (test_csv_source_columns, seed 3). Forced: that read is held until the row parser has opened the
    file, before the row parser reads anything. The rows are the row parser's, all of them."""
    import pyarrow.csv as pacsv

    monkeypatch.setattr(csv_files, "ARROW_BLOCK_BYTES", 4096)  # ~90 rows a block, the bad row in the 2nd
    path = tmp_path / "u.csv"
    path.write_text(_big(3000, 120), encoding="utf-8")
    go, done = threading.Event(), threading.Event()
    real_open_csv = pacsv.open_csv
    monkeypatch.setattr(pacsv, "open_csv", lambda f, **kw: real_open_csv(_Preempted(f, 3, go, done), **kw))
    opened: list[int] = []

    def opener(name: str, flags: int) -> int:
        fd = csv_files.open_drop(name, flags)
        opened.append(fd)
        if len(opened) == 3:  # the row parser's, after the header's and Arrow's
            go.set()
            assert done.wait(10)  # the held read has run
        return fd

    def outcome(read: Callable[[], list]) -> tuple:  # type: ignore[type-arg]
        try:
            chunks = read()
        except CsvInputError as exc:  # reject: the bad row's error, nothing else
            return ("rejected", exc.errors)
        return ([r for c in chunks for r in records_of(c.records)], [e for c in chunks for e in c.errors])

    want = outcome(lambda: [read_usage_csv(path, on_error=mode)])  # type: ignore[arg-type]
    got = outcome(lambda: list(iter_usage_csv_columns(path, on_error=mode, opener=opener)))  # type: ignore[arg-type]
    assert len(opened) == 3 and opened[1] == opened[2]  # the row parser's descriptor is the number Arrow's had
    assert got == want and len(want[1]) == 1

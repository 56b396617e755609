"""Usage and account inputs read from CSV files, with row-level error reporting.

Usage file header: ``timestamp,account,metric,value`` (any column order).
Accounts file header: ``id,name,owner_email,plan,crm_id`` plus optional
``billing_day``, ``timezone``, ``csm_email``, ``arr`` (annual recurring revenue),
``renewal_date`` (YYYY-MM-DD) and ``quota.<metric>`` columns.

Header names match case-insensitively with surrounding whitespace ignored;
a missing required column or an unknown column is an error naming it. Files
may start with a UTF-8 byte-order mark and use CRLF line endings. Blank rows
are ignored.

Every problem is a :class:`RowError` naming the file, the physical line the
row starts on (header = line 1; quoted fields with embedded line breaks are
counted correctly), the column and the offending value. The caller picks a
mode:

* ``on_error="reject"``: any bad row raises :class:`CsvInputError` listing
  every problem in the file, and no records are returned.
* ``on_error="skip"``: good rows are returned as records, bad rows as
  :class:`RowError` objects carrying the raw row text; :func:`write_rejects`
  writes those rows to a rejects file with an ``_error`` column.

File-level problems (empty file, bad header, text that is not UTF-8, a
broken CSV structure) raise :class:`CsvInputError` in both modes.
"""

from __future__ import annotations

import csv
import difflib
import errno
import io
import math
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np

from integrations.sources.records import (
    MAX_ID_LENGTH,
    MAX_METRIC_LENGTH,
    MAX_TIME,
    METRIC_PATTERN,
    MIN_TIME,
    UsageRecord,
    check_time,
    id_problem,
    is_identifier,
    metric_problem,
    text_problem,
)
from rules.model import AccountFacts
from rules.periods import iso

OnError = Literal["reject", "skip"]
T = TypeVar("T")

USAGE_COLUMNS: tuple[str, ...] = ("timestamp", "account", "metric", "value")
ACCOUNT_COLUMNS: tuple[str, ...] = ("id", "name", "owner_email", "plan", "crm_id")
ACCOUNT_OPTIONAL_COLUMNS: tuple[str, ...] = ("billing_day", "timezone", "csm_email", "arr", "renewal_date")
_MONEY_COLUMNS: tuple[str, ...] = ("csm_email", "arr", "renewal_date")  # written only when an account has one
QUOTA_PREFIX = "quota."
ERROR_COLUMN = "_error"

_MAX_SHOWN = 60  # longest value quoted verbatim in a message
_MAX_LISTED = 25  # problems spelled out in a CsvInputError message
_TS_CACHE_LIMIT = 200_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_INF = math.inf
_TS_HINT = "use ISO-8601 such as 2026-11-03T14:00:00Z, 2026-11-03T16:00:00+02:00 or 2026-11-03"


# ----------------------------------------------------------------------- results


@dataclass(frozen=True)
class RowError:
    """One problem in one data row, or in the file itself.

    `raw` is the row's text exactly as in the file (without its final line
    break); `header` is the file's header row, so rejects can be written back
    with the original columns. File-level problems (empty file, bad header,
    unreadable text) have an empty `header`.
    """

    file: str
    line: int
    column: str | None
    value: str | None
    message: str
    raw: str
    header: tuple[str, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        if self.column is not None:
            return f"{self.file}:{self.line}: column '{self.column}': {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class CsvInputError(Exception):
    """A CSV file could not be accepted; `errors` lists every problem found."""

    def __init__(self, errors: Sequence[RowError]) -> None:
        self.errors: list[RowError] = list(errors)
        files = sorted({e.file for e in self.errors})
        n = len(self.errors)
        head = f"{n} problem{'s' if n != 1 else ''} in {', '.join(files) or 'CSV input'}"
        lines = [str(e) for e in self.errors[:_MAX_LISTED]]
        if n > _MAX_LISTED:
            lines.append(f"... and {n - _MAX_LISTED} more")
        super().__init__(head + ":\n  " + "\n  ".join(lines))


@dataclass
class ReadResult(Generic[T]):
    records: list[T]
    errors: list[RowError]
    rows_read: int  # data rows read (blank rows not counted) = good rows + rejected rows


# ------------------------------------------------------------------------ helpers


def _show(value: str) -> str:
    """A value quoted for a message, truncated when long."""
    if len(value) > _MAX_SHOWN:
        value = value[: _MAX_SHOWN - 3] + "..."
    return repr(value)


def _check_mode(on_error: str) -> None:
    if on_error not in ("reject", "skip"):
        raise ValueError(f"on_error must be 'reject' or 'skip', got {on_error!r}")


MAX_LINE_CHARS = 1 << 20  # a physical line longer than this is an error: csv.reader holds a whole line
# in memory (a 300 MB line took 765 MB), and no usage or accounts row needs more than a few hundred


class LineTooLong(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _capped_lines(f: Any) -> Iterator[str]:
    """The file's physical lines, read at most MAX_LINE_CHARS + 1 characters at a time, so a file
    without line breaks never reaches memory whole; LineTooLong names the first line over the cap."""
    n = 0
    while True:
        line = f.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE_CHARS:
            raise LineTooLong(n)
        yield line


def _tap(lines: Iterable[str], buf: list[str]) -> Iterator[str]:
    """Pass lines through to csv.reader while keeping those of the current record.

    csv.reader never reads past the end of the record it returns, so after
    each record `buf` holds exactly that record's physical lines.
    """
    append = buf.append
    for line in lines:
        append(line)
        yield line


def _raw(buf: list[str]) -> str:
    text = "".join(buf)
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text


def _is_blank(row: list[str]) -> bool:
    return not any(cell.strip() for cell in row)


Opener = Callable[[str, int], int]


class UnsafeFile(OSError):
    """A path refused before anything of it was read: a symbolic link, not a regular file, or a file
    with more than one hard link (any of which can make a file from elsewhere look like a drop)."""


def open_drop(path: str, flags: int) -> int:
    """An `opener` for open() that reads only a regular file, never through a symbolic link.

    O_NOFOLLOW refuses a link as the last part of the path; O_NONBLOCK keeps a FIFO from blocking the
    open; fstat() of the opened descriptor (not of the path, which may have changed since it was
    listed) checks what was opened.
    """
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path}: not a regular file (a FIFO, socket or device); refused")
        if st.st_nlink > 1:
            raise UnsafeFile(f"{path}: has {st.st_nlink} hard links (it may be a file from outside the folder); "
                             "refused: copy or move the file into the folder instead")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class FileChanged(CsvInputError):
    """The file was replaced or written to between two opens of one read (a drop tool renaming a new
    version into place): nothing of it may be stored, it is read again once it has settled."""


class _Pinned:
    """An opener that opens one file for every pass of a read: the first open's identity (device,
    inode, size, mtime) is kept and a later open that finds another raises FileChanged. The
    columnar reader opens a file up to three times (its header, Arrow's pass, the row parser's
    after a bad block): without this, two versions of a file renamed into place in between could
    be mixed (the header's column order of one, the rows of the other)."""

    def __init__(self, path: str | os.PathLike[str], inner: Opener | None) -> None:
        self.display = os.fspath(path)
        self.inner = inner
        self.identity: tuple[int, int, int, int] | None = None

    def __call__(self, path: str, flags: int) -> int:
        fd = self.inner(path, flags) if self.inner is not None else os.open(path, flags, 0o666)
        st = os.fstat(fd)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self.identity is None:
            self.identity = identity
        elif identity != self.identity:
            os.close(fd)
            raise FileChanged([RowError(self.display, 1, None, None, "the file changed while it was read (replaced"
                                        " or written to); nothing was stored from it", "")])
        return fd


def _first_non_utf8_line(path: str, opener: Opener | None = None) -> int | None:
    with open(path, "rb", opener=opener) as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return None


class _Source:
    """An open CSV file: csv.reader plus physical line numbers and raw row text."""

    def __init__(self, path: str | os.PathLike[str], opener: Opener | None = None) -> None:
        self.display = os.fspath(path)
        self.opener = opener
        try:
            self._file = open(path, encoding="utf-8-sig", newline="", opener=opener)
        except OSError as exc:
            if getattr(opener, "inner", opener) is not None and exc.errno == errno.ELOOP:  # O_NOFOLLOW: a link
                raise UnsafeFile(f"{self.display}: is a symbolic link; refused") from None
            raise
        self.buf: list[str] = []
        self.reader = csv.reader(_tap(_capped_lines(self._file), self.buf))
        self.end_line = 0  # physical line on which the last record read ended

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fatal(
        self, line: int, message: str, column: str | None = None, value: str | None = None
    ) -> CsvInputError:
        return CsvInputError([RowError(self.display, line, column, value, message, "")])

    def stream_error(self, exc: Exception) -> CsvInputError:
        line = self.end_line + 1
        if isinstance(exc, LineTooLong):
            return self.fatal(exc.line, f"line is longer than {MAX_LINE_CHARS:,} characters (a missing line break?);"
                                        " nothing was stored")
        if isinstance(exc, UnicodeDecodeError):
            line = _first_non_utf8_line(self.display, self.opener) or line
            return self.fatal(line, f"text is not valid UTF-8 ({exc.reason}); save the file as UTF-8")
        if "field larger than field limit" in str(exc):  # csv.Error's own words (CPython's _csv.c)
            return self.fatal(line, f"a field is longer than {csv.field_size_limit():,} characters (a stray"
                                    " quote that never closes, or a value padded with spaces?); nothing was stored")
        return self.fatal(line, f"unreadable CSV ({exc}); check for a stray quote or NUL byte near this line")

    def header(self, expected: str) -> tuple[int, list[str]]:
        """(line, cells) of the first non-blank row; an empty file is an error."""
        try:
            for row in self.reader:
                line = self.end_line + 1
                self.end_line = self.reader.line_num
                if _is_blank(row):
                    self.buf.clear()
                    continue
                self.buf.clear()
                return line, row
        except (csv.Error, UnicodeDecodeError, LineTooLong) as exc:
            raise self.stream_error(exc) from exc
        raise self.fatal(1, f"file is empty: expected a header row '{expected}'")

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """(start line, cells) of every non-blank data row; `self.buf` holds its raw lines."""
        reader = self.reader
        buf = self.buf
        try:
            for row in reader:
                line = self.end_line + 1
                self.end_line = reader.line_num
                if not _is_blank(row):
                    yield line, row
                buf.clear()
        except (csv.Error, UnicodeDecodeError, LineTooLong) as exc:
            raise self.stream_error(exc) from exc

    def row_error(
        self, line: int, header: tuple[str, ...], column: str | None, value: str | None, message: str
    ) -> RowError:
        raw = _raw(self.buf)
        if "\n" in raw and (column is None or (value is not None and "\n" in value)):
            last = line + raw.count("\n")
            message += f" (the row spans lines {line}-{last}: check for an unclosed quote)"
        return RowError(self.display, line, column, value, message, raw, header)


def _header_errors(
    src: _Source,
    line: int,
    cells: list[str],
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    quota_columns: bool = False,
) -> tuple[dict[str, int], dict[str, int]]:
    """Column positions by canonical name, plus quota metric -> position; raises on problems."""
    allowed = ", ".join(required + optional + ((QUOTA_PREFIX + "<metric>",) if quota_columns else ()))
    positions: dict[str, int] = {}
    quotas: dict[str, int] = {}
    problems: list[RowError] = []
    raw = ",".join(cells)

    def problem(column: str, message: str) -> None:
        problems.append(RowError(src.display, line, column, column, message, raw))

    for i, cell in enumerate(cells):
        name = cell.strip()
        key = name.lower()
        if quota_columns and key.startswith(QUOTA_PREFIX):
            metric = name[len(QUOTA_PREFIX) :].strip()
            if not METRIC_PATTERN.fullmatch(metric):
                problem(name, f"quota column needs a metric name like 'quota.api_calls', got {_show(name)}")
            elif metric in quotas:
                problem(name, f"duplicate column {_show(name)}")
            else:
                quotas[metric] = i
        elif key in required or key in optional:
            if key in positions:
                problem(name, f"duplicate column {_show(name)}")
            else:
                positions[key] = i
        elif not name:
            problem(name, f"header cell {i + 1} is empty (allowed columns: {allowed})")
        elif _looks_like_column(key, required + optional):
            problem(name, f"unknown column {_show(name)} (allowed columns: {allowed})")
        else:  # not a header at all (a file that is not a usage file): its content is not quoted
            problems.append(RowError(src.display, line, f"header cell {i + 1}", None,
                                     f"not a column name (not shown); allowed columns: {allowed}", ""))
    shown_header = ", ".join(c.strip() if _looks_like_column(c.strip().lower(), required + optional) else "?"
                             for c in cells)
    for name in required:
        if name not in positions:
            problems.append(
                RowError(
                    src.display,
                    line,
                    name,
                    None,
                    f"missing required column '{name}' (header has: {shown_header})",
                    raw if shown_header.count("?") == 0 else "",
                )
            )
    if problems:
        raise CsvInputError(problems)
    return positions, quotas


_COLUMN_WORD = re.compile(r"[a-z][a-z0-9_.]{0,23}")


def _looks_like_column(key: str, known: Sequence[str]) -> bool:
    """Whether a header cell may be quoted in a message: a lower-case word, or close to a known column.
    Anything else is content of a file that is no usage file (a key, a line of /etc/passwd) and is
    never echoed into a log or an admin notice."""
    return bool(_COLUMN_WORD.fullmatch(key) or key.startswith(QUOTA_PREFIX)
                or difflib.get_close_matches(key, list(known), n=1, cutoff=0.6))


def _field_count_message(n_fields: int, header: tuple[str, ...]) -> str:
    return f"expected {len(header)} fields ({','.join(h.strip() for h in header)}), found {n_fields}"


# -------------------------------------------------------------------------- usage


def parse_timestamp(text: str) -> int:
    """Epoch seconds UTC (floored) of an ISO-8601 timestamp; no offset means UTC.

    Raises ValueError with a message saying what is wrong.
    """
    s = text.strip()
    if not s:
        raise ValueError("timestamp is empty")
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{_show(text)} is not an ISO-8601 timestamp; {_TS_HINT}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return check_time((dt - _EPOCH) // _SECOND)


def _parse_value(text: str) -> tuple[float | None, str | None]:
    if not text.strip():
        return None, "value is empty"
    try:
        v = float(text)
    except ValueError:
        return None, f"{_show(text)} is not a number"
    if math.isnan(v) or math.isinf(v):
        return None, f"{_show(text)} is not a finite number"
    if v < 0:
        return None, f"{_show(text)} is negative; usage must be >= 0"
    return v + 0.0, None


def _discard(record: UsageRecord) -> None:
    return None


def _usage_chunks(
    path: str | os.PathLike[str], chunk_rows: int, on_error: OnError, opener: Opener | None = None
) -> Iterator[ReadResult[UsageRecord]]:
    _check_mode(on_error)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    skip = on_error == "skip"
    with _Source(path, opener) as src:
        hline, cells = src.header(",".join(USAGE_COLUMNS))
        header = tuple(cells)
        pos, _ = _header_errors(src, hline, cells, USAGE_COLUMNS)
        i_ts, i_acc, i_met, i_val = (pos[c] for c in USAGE_COLUMNS)
        ncols = len(cells)

        ts_cache: dict[str, int] = {}
        metrics_ok: set[str] = set()
        records: list[UsageRecord] = []
        errors: list[RowError] = []
        all_errors: list[RowError] = []  # reject mode
        rows = 0
        reader, buf = src.reader, src.buf
        append = records.append
        end_line = src.end_line
        try:
            for row in reader:
                line = end_line + 1
                end_line = reader.line_num
                if len(row) == ncols:
                    # Fast path: a known timestamp and metric, a plain non-negative number.
                    ts = ts_cache.get(row[i_ts])
                    met = row[i_met]
                    acc = row[i_acc].strip()
                    if ts is not None and met in metrics_ok and is_identifier(acc):
                        try:
                            v = float(row[i_val])
                        except ValueError:
                            v = -1.0
                        if 0.0 <= v < _INF:
                            append(UsageRecord(acc, met, ts, v + 0.0))
                            rows += 1
                            buf.clear()
                            if rows >= chunk_rows:
                                if not all_errors:
                                    yield ReadResult(records, errors, rows)
                                records, errors, rows = [], [], 0
                                append = _discard if all_errors else records.append
                            continue
                if _is_blank(row):
                    buf.clear()
                    continue

                # Slow path: validate every field, remember new timestamps and metrics.
                rows += 1
                src.end_line = end_line
                problems: list[tuple[str | None, str | None, str]] = []
                if len(row) != ncols:
                    problems.append((None, None, _field_count_message(len(row), header)))
                else:
                    ts_text = row[i_ts]
                    ts = ts_cache.get(ts_text)
                    if ts is None:
                        try:
                            ts = parse_timestamp(ts_text)
                        except ValueError as exc:
                            problems.append((header[i_ts].strip(), ts_text, str(exc)))
                        else:
                            if len(ts_cache) >= _TS_CACHE_LIMIT:
                                ts_cache.clear()
                            ts_cache[ts_text] = ts
                    acc = row[i_acc].strip()
                    why = id_problem(acc, "account")
                    if why is not None:
                        problems.append((header[i_acc].strip(), row[i_acc], why))
                    met_text = row[i_met]
                    met = met_text.strip()
                    if not met:
                        problems.append((header[i_met].strip(), met_text, "metric is empty"))
                    elif not METRIC_PATTERN.fullmatch(met):
                        problems.append(
                            (
                                header[i_met].strip(),
                                met_text,
                                metric_problem(met)
                                if len(met) > MAX_METRIC_LENGTH
                                else f"{_show(met_text)} is not a valid metric name "
                                "(letters, digits and _ . : - only)",
                            )
                        )
                    elif met == met_text:
                        metrics_ok.add(met)
                    v, why = _parse_value(row[i_val])
                    if why is not None:
                        problems.append((header[i_val].strip(), row[i_val], why))
                    if not problems:
                        assert ts is not None and v is not None
                        append(UsageRecord(acc, met, ts, v))
                if problems:
                    found = [src.row_error(line, header, c, val, msg) for c, val, msg in problems]
                    if skip:
                        errors.extend(found)
                    else:
                        all_errors.extend(found)
                        records.clear()
                        append = _discard  # reject mode: nothing from this file is returned
                buf.clear()
                if rows >= chunk_rows:
                    if not all_errors:
                        yield ReadResult(records, errors, rows)
                    records, errors, rows = [], [], 0
                    append = _discard if all_errors else records.append
        except (csv.Error, UnicodeDecodeError, LineTooLong) as exc:
            src.end_line = end_line
            raise src.stream_error(exc) from exc
        if all_errors:
            raise CsvInputError(all_errors)
        if rows:
            yield ReadResult(records, errors, rows)


def iter_usage_csv_chunks(
    path: str | os.PathLike[str], chunk_rows: int = 50_000, on_error: OnError = "reject"
) -> Iterator[ReadResult[UsageRecord]]:
    """Read a usage CSV in chunks of at most `chunk_rows` data rows (for big files).

    Validation is the same as :func:`read_usage_csv`. A file without data rows
    yields nothing. In "reject" mode, chunks that end before the first bad row
    have already been yielded when :class:`CsvInputError` (listing every
    problem in the file) is raised at the end, and no chunk is yielded after
    the first bad row: store the chunks in one transaction and roll it back
    on the error to keep "nothing stored".
    """
    _check_mode(on_error)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return _usage_chunks(path, chunk_rows, on_error)


def read_usage_csv(path: str | os.PathLike[str], on_error: OnError = "reject",
                   opener: Opener | None = None) -> ReadResult[UsageRecord]:
    """All usage records of a CSV file (see the module docstring for the format and modes).

    `opener=open_drop` reads only a regular file, never through a link (UnsafeFile otherwise)."""
    records: list[UsageRecord] = []
    errors: list[RowError] = []
    rows = 0
    for chunk in _usage_chunks(path, 1 << 62, on_error, opener):
        records, errors, rows = chunk.records, chunk.errors, chunk.rows_read
    return ReadResult(records, errors, rows)


# ------------------------------------------------------------- usage, columnar

ARROW_BLOCK_BYTES = 16 << 20  # CSV bytes per Arrow block (about 400k usage rows): memory ~ one block
# A value the fast path takes as is: digits with an optional fraction and exponent. float() reads
# every such text to the same float64 as Arrow's parser (both round correctly); anything else
# ("1_000", " 5", "-0", "inf") is left to the row parser.
_PLAIN_NUMBER = r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


class _NotPlain(Exception):
    """The columnar reader met a row it does not take as is; the row parser reads the file."""


def iter_usage_csv_columns(
    path: str | os.PathLike[str], on_error: OnError = "reject", chunk_rows: int = 50_000,
    opener: Opener | None = None, block_bytes: int | None = None,
) -> Iterator[ReadResult[Any]]:
    """Read a usage CSV with a columnar parser (pyarrow.csv): chunks whose `records` is a
    storage.usage.UsageColumns (columns, no Python object per row), for load_usage.

    Same validation, results and errors as :func:`iter_usage_csv_chunks`: the header is checked
    by the row code; data blocks are validated as whole columns with pyarrow.compute and numpy
    (each block's distinct timestamps read by Arrow's parser where the format allows, _ARROW_TIMES,
    the others by :func:`parse_timestamp`; the distinct account ids by one regex, odd ones by
    is_identifier; each metric once; values by Arrow's number parser, float() only for texts it
    refuses such as " 5" or "1_000", then checked finite and non-negative as arrays). At the first
    block holding anything the row parser would refuse or judge otherwise (a bad row, a blank row,
    an account id holding a quote, a file whose header is not on line 1) the row parser reads the
    file from the start, for its line-numbered errors, and its records for the rows already yielded
    here are left out: nothing is yielded twice.
    `chunk_rows` only sizes the row parser's chunks (a columnar chunk is one Arrow block of
    `block_bytes` CSV bytes, default ARROW_BLOCK_BYTES; the reader's memory grows with it, ~25x:
    16 MB blocks took ~450 MB).
    """
    _check_mode(on_error)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    opener = _Pinned(path, opener)  # every pass reads the same file (FileChanged otherwise)
    with _Source(path, opener) as src:
        hline, cells = src.header(",".join(USAGE_COLUMNS))
        pos, _ = _header_errors(src, hline, cells, USAGE_COLUMNS)
        plain = hline == 1 and src.end_line == 1
    yielded = 0
    if plain:
        try:
            for chunk in _arrow_chunks(path, len(cells), pos, opener, block_bytes or ARROW_BLOCK_BYTES):
                yielded += len(chunk.records)
                yield chunk
            return
        except _NotPlain:
            pass
    for chunk in _usage_chunks(path, chunk_rows, on_error, opener):
        if yielded:  # the rows the columnar reader yielded come first, all good: drop their records
            k = min(yielded, len(chunk.records))
            chunk = ReadResult(chunk.records[k:], chunk.errors, chunk.rows_read - k)
            yielded -= k
        if chunk.rows_read or chunk.errors:
            yield chunk


def _arrow_chunks(path: str | os.PathLike[str], n_cols: int, pos: dict[str, int],
                  opener: Opener | None, block_bytes: int) -> Iterator[ReadResult[Any]]:
    """The data blocks as UsageColumns, each column validated whole (pyarrow.compute and numpy over
    the column, Python only for each block's distinct texts that the vectorised checks do not take);
    _NotPlain at the first block holding anything the row parser must judge."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from storage.usage import UsageColumns

    names = [f"c{i}" for i in range(n_cols)]
    ts_cache: dict[str, int] = {}
    checked_metrics: set[str] = set()
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    with _ReadAheadFile(opener(os.fspath(path), flags) if opener else os.open(path, flags)) as f:
        try:  # a row longer than a block raises ArrowInvalid ("straddles"): memory stays ~8 blocks
            reader = pacsv.open_csv(
                f, read_options=pacsv.ReadOptions(skip_rows=1, column_names=names, block_size=block_bytes),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                     strings_can_be_null=False, quoted_strings_can_be_null=False))
            for batch in reader:
                if not batch.num_rows:
                    continue
                _short_lines(batch)
                ts_col, acc_col, met_col, val_col = (batch.column(pos[c]) for c in USAGE_COLUMNS)
                ts = _plain_times(ts_col, ts_cache)
                accounts = _plain_accounts(acc_col)
                _plain_metrics(met_col, checked_metrics)
                values = _plain_values(val_col)
                yield ReadResult(UsageColumns(accounts, met_col, ts, values), [], batch.num_rows)  # type: ignore[arg-type]
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:  # field counts, bad UTF-8, broken quoting,
            raise _NotPlain from exc  # a row longer than a block: the row parser says where


class _ReadAheadFile(io.RawIOBase):
    """The file Arrow's CSV reader reads, from a read-ahead thread of its own, which may still be
    reading when the columnar reader stops early (a bad block: the row parser reads the file next)
    and closes the file. A FileIO there let a read take the descriptor number, release the GIL and
    read after the close, when the row parser's open had most often got the same number: the late
    read took a block of the row parser's bytes (a file of 712 rows stored 662, once, on a loaded
    machine). Here a read and the close exclude each other, and a read after the close fails (Arrow
    keeps that error to a reader no one reads), so no read reaches a descriptor opened after it."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        with self._lock:
            if self._fd < 0:
                raise ValueError("I/O operation on closed file")
            if size is not None and size >= 0:
                return os.read(self._fd, size)
            parts = []
            while part := os.read(self._fd, 1 << 20):
                parts.append(part)
            return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        try:
            if fd >= 0:
                os.close(fd)
        finally:
            super().close()


def _short_lines(batch: Any) -> None:
    """_NotPlain unless every row of the block is surely shorter than MAX_LINE_CHARS, which the row
    parser refuses in a line, and every field no longer than csv.field_size_limit() (131,072
    characters by default), which it refuses in a field: a row's text is at most its fields' UTF-8
    bytes, twice over for quoting (two quotes and each quote doubled), plus the separators and the
    line break; a field's characters are at most its UTF-8 bytes. Checked per column on the longest
    field (the offsets, not the text)."""
    import pyarrow.compute as pc

    widest = [pc.max(pc.binary_length(col)).as_py() or 0 for col in batch.columns]
    if 2 * sum(widest) + 3 * batch.num_columns + 2 > MAX_LINE_CHARS or max(widest) > csv.field_size_limit():
        raise _NotPlain


# Arrays read from their buffers, not by Array.to_numpy or pa.array of numpy: those import pandas on
# their first call in a process where it is installed (0.8 s of a 7M-row parse on the bench machine).


def _np_view(arr: Any, dtype: Any) -> np.ndarray:
    """A read-only numpy view of a fixed-width Arrow array without nulls."""
    n = len(arr)
    if not n:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=n + arr.offset)[arr.offset:]


# The timestamp texts Arrow's own parser reads (pc.cast to a timestamp or a date), one pattern per
# target type, the patterns disjoint; every other text goes to parse_timestamp. Where a pattern
# matches and Arrow reads the text, it gives datetime.fromisoformat's instant
# (tests/integrations/sources/test_csv_fast_parse.py); a matching text Arrow refuses ("2023-02-29",
# "T25:00:00", "+02:60") sends its group to parse_timestamp, which gives the row parser's answer.
_ISO_SECONDS = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
_ARROW_TIMES = ((rf"^{_ISO_SECONDS}(?:Z|[+-][0-9]{{2}}:[0-9]{{2}})$", "zoned"),
                (rf"^{_ISO_SECONDS}$", "naive"),
                (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "date"))


def _arrow_seconds(texts: Any, kind: str) -> np.ndarray:
    """Epoch seconds of texts all matching the `kind` pattern of _ARROW_TIMES; ArrowInvalid if
    Arrow refuses one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "date":
        return _np_view(pc.cast(texts, pa.date32()), np.int32).astype(np.int64) * 86_400
    return _np_view(pc.cast(texts, pa.timestamp("s", "UTC" if kind == "zoned" else None)), np.int64)


def _plain_times(col: Any, cache: dict[str, int]) -> np.ndarray:
    """Epoch seconds of a timestamp column, each distinct text parsed once: by Arrow where its format
    allows (_ARROW_TIMES), the rest by parse_timestamp (cached across blocks); _NotPlain for a text
    parse_timestamp refuses or a time outside check_time's range (the row parser names the row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(col)
    texts = enc.dictionary
    out = np.full(len(texts), -1, dtype=np.int64)
    done = np.zeros(len(texts), dtype=bool)
    for pattern, kind in _ARROW_TIMES:
        where = pc.indices_nonzero(pc.match_substring_regex(texts, pattern))
        if not len(where):
            continue
        try:
            secs = _arrow_seconds(texts.take(where), kind)
        except pa.ArrowInvalid:
            continue  # parse_timestamp decides each of them
        at = _np_view(where, np.uint64)
        out[at] = secs
        done[at] = True
    rest = np.flatnonzero(~done)
    if rest.size:
        from storage.columnar import arrow_array

        odd = texts.take(arrow_array(rest.astype(np.int64))).to_pylist()
        for i, text in zip(rest.tolist(), odd, strict=True):
            ts = cache.get(text)
            if ts is None:
                try:
                    ts = parse_timestamp(text)
                except ValueError:
                    raise _NotPlain from None
                if len(cache) >= _TS_CACHE_LIMIT:
                    cache.clear()
                cache[text] = ts
            out[i] = ts
    if ((out < MIN_TIME) | (out >= MAX_TIME)).any():  # check_time's range: parse_timestamp refuses these
        raise _NotPlain
    return out[_np_view(enc.indices, np.int32)]


# An account id taken as is: printable ASCII without a quote, no space at either end, 1..MAX_ID_LENGTH
# characters (is_identifier of the id, which strip() leaves unchanged); any other id is checked in Python.
_PLAIN_ID = rf"^[\x21\x23-\x7e](?:[\x20\x21\x23-\x7e]{{0,{MAX_ID_LENGTH - 2}}}[\x21\x23-\x7e])?$"


def _plain_accounts(col: Any) -> Any:
    """The account column, each value stripped as the row parser strips it; each distinct id
    checked once (_PLAIN_ID over the distinct ids, is_identifier for the others), and ids holding
    a quote left to the row parser."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from storage.columnar import arrow_strings

    uniq = pc.unique(col)
    odd = pc.indices_nonzero(pc.invert(pc.match_substring_regex(uniq, _PLAIN_ID)))
    if not len(odd):
        return col
    texts = uniq.to_pylist()
    stripped = [t.strip() for t in texts]
    if not all(is_identifier(t) and '"' not in t for t in stripped):
        raise _NotPlain
    if stripped == texts:
        return col
    return pc.take(arrow_strings(stripped).cast(pa.string()), pc.index_in(col, value_set=uniq))


def _plain_metrics(col: Any, checked: set[str]) -> None:
    """_NotPlain unless every metric of the column is a metric name as is (checked once per name)."""
    import pyarrow.compute as pc

    for m in pc.unique(col).to_pylist():
        if m not in checked:
            if m != m.strip() or not METRIC_PATTERN.fullmatch(m):
                raise _NotPlain
            checked.add(m)


def _plain_values(col: Any) -> np.ndarray:
    """The value column as float64 (-0.0 as 0.0): Arrow's number parser over the column, and where it
    refuses a text (" 5", "1_000"), float() for the texts that are not _PLAIN_NUMBER; _NotPlain for a
    value the row parser refuses (not a number, not finite, negative)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from storage.columnar import arrow_strings

    try:
        values = _np_view(pc.cast(col, pa.float64()), np.float64) + 0.0
    except pa.ArrowInvalid:
        plain = pc.match_substring_regex(col, _PLAIN_NUMBER)
        zero = arrow_strings(["0"]).cast(pa.string())[0]  # not pa.scalar("0"): that imports pandas
        values = _np_view(pc.cast(pc.if_else(plain, col, zero), pa.float64()), np.float64) + 0.0
        odd = pc.indices_nonzero(pc.invert(plain))
        for i, text in zip(_np_view(odd, np.uint64).tolist(), col.take(odd).to_pylist(), strict=True):
            v, why = _parse_value(text)
            if why is not None:
                raise _NotPlain from None
            values[i] = v
    if not ((values >= 0.0) & (values < _INF)).all():  # NaN fails both: the row parser names the row
        raise _NotPlain
    return values


# ----------------------------------------------------------------------- accounts


@lru_cache(maxsize=512)
def _valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _zone_suggestion(name: str) -> str:
    folded = name.lower().replace(" ", "_")
    for candidate in sorted(available_timezones()):
        if candidate.lower() == folded:
            return f"; did you mean '{candidate}'?"
    return ""


def _email_problem(text: str) -> str | None:
    local, at, domain = text.partition("@")
    if (
        text.count("@") != 1
        or not local
        or "." not in domain
        or domain.startswith(".")
        or domain.endswith(".")
        or any(c.isspace() for c in text)
    ):
        return f"{_show(text)} is not an email address like 'name@example.com' (or leave it empty)"
    return None


def _revenue_cells(cell: Callable[[str], tuple[str, str, str]], pos: Mapping[str, int],
                   problems: list[tuple[str | None, str | None, str]]) -> tuple[str, float | None, int | None]:
    """The optional csm_email, arr and renewal_date (YYYY-MM-DD) of an accounts row."""
    csm, arr, renewal_at = "", None, None
    if "csm_email" in pos:
        col, raw, csm = cell("csm_email")
        why = (text_problem(csm, "csm_email") or _email_problem(csm)) if csm else None
        if why:
            problems.append((col, raw, why))
    if "arr" in pos:
        col, raw, text = cell("arr")
        if text:
            try:
                arr = float(text.replace(",", ""))
            except ValueError:
                arr = math.nan
            if not (math.isfinite(arr) and arr >= 0):
                problems.append((col, raw, f"{_show(raw)} is not an amount >= 0 (or leave it empty)"))
                arr = None
    if "renewal_date" in pos:
        col, raw, text = cell("renewal_date")
        if text:
            try:
                renewal_at = int(datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
            except ValueError:
                problems.append((col, raw, f"{_show(raw)} is not a date like 2027-03-31 (or leave it empty)"))
    return csm, arr, renewal_at


def read_accounts_csv(path: str | os.PathLike[str], on_error: OnError = "reject",
                      opener: Opener | None = None) -> ReadResult[AccountFacts]:
    """Account facts from a CSV file (see the module docstring for the format and modes)."""
    _check_mode(on_error)
    records: list[AccountFacts] = []
    errors: list[RowError] = []
    first_line: dict[str, int] = {}
    rows = 0
    with _Source(path, opener) as src:
        hline, cells = src.header(",".join(ACCOUNT_COLUMNS))
        header = tuple(cells)
        pos, quota_pos = _header_errors(
            src, hline, cells, ACCOUNT_COLUMNS, ACCOUNT_OPTIONAL_COLUMNS, quota_columns=True
        )
        names = {i: cells[i].strip() for i in range(len(cells))}
        for line, row in src.rows():
            rows += 1
            problems: list[tuple[str | None, str | None, str]] = []
            if len(row) != len(cells):
                problems.append((None, None, _field_count_message(len(row), header)))
            else:

                def cell(key: str, row: list[str] = row) -> tuple[str, str, str]:
                    i = pos[key]
                    return names[i], row[i], row[i].strip()

                col, raw_id, acc_id = cell("id")
                why = id_problem(acc_id, "id")
                if why is not None:
                    problems.append((col, raw_id, why))
                elif acc_id in first_line:
                    problems.append(
                        (
                            col,
                            raw_id,
                            f"duplicate id {_show(acc_id)} (first defined on line {first_line[acc_id]})",
                        )
                    )
                col, raw_name, name = cell("name")
                why = "name is empty" if not name else text_problem(name, "name")
                if why is not None:
                    problems.append((col, raw_name, why))
                col, raw_email, email = cell("owner_email")
                if email:
                    why = text_problem(email, "owner_email") or _email_problem(email)
                    if why:
                        problems.append((col, raw_email, why))
                col, raw_plan, plan = cell("plan")
                why = text_problem(plan, "plan")
                if why is not None:
                    problems.append((col, raw_plan, why))
                col, raw_crm, crm_id = cell("crm_id")
                why = id_problem(crm_id, "crm_id") if crm_id else None
                if why is not None:
                    problems.append((col, raw_crm, why))

                quotas: dict[str, float] = {}
                for metric, i in quota_pos.items():
                    text = row[i].strip()
                    if not text:
                        continue
                    try:
                        q = float(text)
                    except ValueError:
                        problems.append(
                            (names[i], row[i], f"{_show(row[i])} is not a number (or leave it empty)")
                        )
                        continue
                    if not (q > 0 and math.isfinite(q)):
                        problems.append(
                            (
                                names[i],
                                row[i],
                                f"{_show(row[i])} is not a quota > 0 (leave it empty for no quota)",
                            )
                        )
                        continue
                    quotas[metric] = q

                billing_day = 1
                if "billing_day" in pos:
                    col, raw_day, text = cell("billing_day")
                    if text:
                        try:
                            day = float(text)
                        except ValueError:
                            day = math.nan
                        if not (day.is_integer() and 1 <= day <= 28):
                            problems.append(
                                (col, raw_day, f"{_show(raw_day)} is not a billing day 1..28 (empty means 1)")
                            )
                        else:
                            billing_day = int(day)

                timezone = "UTC"
                if "timezone" in pos:
                    col, raw_tz, text = cell("timezone")
                    if text:
                        if _valid_zone(text):
                            timezone = text
                        else:
                            problems.append(
                                (
                                    col,
                                    raw_tz,
                                    f"{_show(raw_tz)} is not an IANA timezone name like 'Europe/Berlin'"
                                    f"{_zone_suggestion(text)}",
                                )
                            )
                csm, arr, renewal_at = _revenue_cells(cell, pos, problems)
                if not problems:
                    first_line[acc_id] = line
                    records.append(
                        AccountFacts(
                            id=acc_id,
                            name=name,
                            plan=plan,
                            owner_email=email,
                            crm_id=crm_id,
                            quotas=quotas,
                            billing_day=billing_day,
                            timezone=timezone,
                            csm_email=csm,
                            arr=arr,
                            renewal_at=renewal_at,
                        )
                    )
                elif acc_id and acc_id not in first_line:
                    first_line[acc_id] = line
            errors.extend(src.row_error(line, header, c, v, m) for c, v, m in problems)
    if errors and on_error == "reject":
        raise CsvInputError(errors)
    return ReadResult(records, errors, rows)


# ------------------------------------------------------------------------ writing


def write_rejects(path: str | os.PathLike[str], errors: Sequence[RowError]) -> None:
    """Write rejected rows to a CSV file: the original columns plus `_error`.

    One output row per rejected input row (its messages joined with "; "),
    fields exactly as read, under their original column names. Rows with
    more fields than their header keep the surplus in `_extra1`, `_extra2`...
    columns. When the rows come from several files (say usage and accounts),
    the columns are the union of their headers and a `_file` column says
    where each row came from. File-level problems (header, empty file) carry
    no row and are not written. With no row errors the file holds just the
    header (`_error` alone when no header is known).
    """
    grouped: dict[tuple[str, int], list[RowError]] = {}
    for err in errors:
        if err.raw and err.header and err.line > 0:
            grouped.setdefault((err.file, err.line), []).append(err)
    columns: dict[str, int] = {}  # output column name -> position
    files: dict[str, None] = {}
    rows: list[tuple[dict[str, str], list[str], str, str]] = []
    extra = 0
    for (file, _), errs in grouped.items():
        files[file] = None
        names = [h.strip() for h in errs[0].header]
        for name in names:
            columns.setdefault(name, len(columns))
        fields = next(csv.reader(io.StringIO(errs[0].raw, newline="")), [])
        surplus = fields[len(names) :]
        extra = max(extra, len(surplus))
        rows.append((dict(zip(names, fields, strict=False)), surplus, file, "; ".join(str(e) for e in errs)))
    header = list(columns) + [f"_extra{i + 1}" for i in range(extra)]
    several = len(files) > 1
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header + (["_file"] if several else []) + [ERROR_COLUMN])
        for by_name, surplus, file, message in rows:
            out = [by_name.get(name, "") for name in columns]
            out += surplus + [""] * (extra - len(surplus))
            writer.writerow(out + ([file] if several else []) + [message])


def _format_value(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def write_usage_csv(path: str | os.PathLike[str], records: Iterable[UsageRecord]) -> int:
    """Write usage records as `timestamp,account,metric,value` (UTC, Z suffix); returns rows written."""
    stamps: dict[int, str] = {}
    n = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(USAGE_COLUMNS)
        batch: list[tuple[str, str, str, str]] = []
        for r in records:
            stamp = stamps.get(r.ts)
            if stamp is None:
                stamp = stamps[r.ts] = iso(r.ts)
            batch.append((stamp, r.account, r.metric, _format_value(r.value)))
            if len(batch) >= 10_000:
                writer.writerows(batch)
                n += len(batch)
                batch.clear()
        writer.writerows(batch)
        n += len(batch)
    return n


def write_accounts_csv(path: str | os.PathLike[str], accounts: Iterable[AccountFacts]) -> int:
    """Write account facts in the format :func:`read_accounts_csv` reads; returns rows written."""
    accounts = list(accounts)
    metrics = sorted({m for a in accounts for m in a.quotas})
    money = any(a.csm_email or a.arr is not None or a.renewal_at is not None for a in accounts)
    optional = ACCOUNT_OPTIONAL_COLUMNS if money else tuple(c for c in ACCOUNT_OPTIONAL_COLUMNS
                                                          if c not in _MONEY_COLUMNS)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*ACCOUNT_COLUMNS, *optional, *(QUOTA_PREFIX + m for m in metrics)])
        for a in accounts:
            extra = [a.csm_email, "" if a.arr is None else _format_value(float(a.arr)),
                     "" if a.renewal_at is None else iso(a.renewal_at)[:10]] if money else []
            writer.writerow(
                [
                    a.id,
                    a.name,
                    a.owner_email,
                    a.plan,
                    a.crm_id,
                    a.billing_day,
                    a.timezone,
                    *extra,
                    *(_format_value(float(a.quotas[m])) if m in a.quotas else "" for m in metrics),
                ]
            )
    return len(accounts)

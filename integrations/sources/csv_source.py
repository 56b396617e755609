"""`csv` source: a usage CSV file, or a folder where CSV files are dropped.

Every poll reads the files that are new or changed since the last poll (by
size and modification time; the cursor remembers them), one batch per file,
so each file is stored whole or not at all. A file that is still being
written (modified less than `min_age` ago) waits for the next poll. Rows are
bucket totals (the format of `usagebot ingest`): reading a file again
replaces, never doubles.

A bad file is rejected as a whole (on_error = "reject", the default): it is
reported to the admin channel with file:line of every problem, remembered as
rejected, and read again once it changes. With on_error = "skip" the good
rows are stored and the bad ones reported.

An optional `accounts` CSV (id,name,owner_email,plan,crm_id,quota.<metric>...)
is re-read whenever it changes. Relative paths are relative to the config file.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.configbase import Section
from integrations.sources.base import (
    Batch,
    PollContext,
    SourceConfig,
    SourceError,
    SourceSettings,
    SourceType,
    newest,
    register_type,
)
from integrations.sources.csv_files import CsvInputError, read_accounts_csv, read_usage_csv

KEYS = ("path", "pattern", "accounts", "on_error", "min_age")


@dataclass(frozen=True)
class CsvOptions:
    path: str
    pattern: str = "*.csv"
    accounts: str | None = None
    on_error: str = "reject"
    min_age: int = 10


def parse(section: Section, settings: SourceSettings) -> CsvOptions | None:
    path = section.str("path", required=True)
    pattern = section.str("pattern", "*.csv") or "*.csv"
    accounts = section.str("accounts")
    on_error = section.str("on_error", "reject", choices=("reject", "skip")) or "reject"
    min_age = section.duration("min_age", 10)
    if path is None:
        return None
    base = Path(section.doc.file).resolve().parent  # relative paths are relative to the config file
    path = str(base / path)
    accounts = str(base / accounts) if accounts else None
    return CsvOptions(path=path, pattern=pattern, accounts=accounts, on_error=on_error,
                      min_age=10 if min_age is None else min_age)


def _fingerprint(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def _load_cursor(text: str | None) -> dict[str, dict[str, str]]:
    if not text:
        return {"files": {}, "accounts": {}}
    try:
        data = json.loads(text)
    except ValueError:
        return {"files": {}, "accounts": {}}
    files = data.get("files") if isinstance(data, dict) else None
    accounts = data.get("accounts") if isinstance(data, dict) else None
    return {"files": dict(files or {}), "accounts": dict(accounts or {})}


def _dump(cursor: dict[str, dict[str, str]]) -> str:
    return json.dumps(cursor, sort_keys=True, separators=(",", ":"))


class CsvSource:
    def __init__(self, config: SourceConfig, clock: Callable[[], float] | None = None) -> None:
        self.id = config.id
        self.options: CsvOptions = config.options
        self._wall = clock or time.time
        self.settling: list[tuple[str, int]] = []  # (file, when it is old enough) skipped by the last poll

    def close(self) -> None:
        return None

    def _files(self) -> list[Path]:
        root = Path(self.options.path)
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise SourceError(f"source {self.id!r}: path {root} does not exist (expected a CSV file or a folder)")
        return sorted(p for p in root.iterdir()
                      if p.is_file() and fnmatch.fnmatch(p.name, self.options.pattern)
                      and not p.name.startswith("."))

    def _settled(self, st: os.stat_result) -> bool:
        return self._wall() - st.st_mtime >= self.options.min_age

    def poll(self, ctx: PollContext) -> Iterator[Batch]:
        self.settling = []
        cursor = _load_cursor(ctx.cursor)
        saved = ctx.cursor
        for batch in self._batches(ctx, cursor):
            saved = batch.cursor
            yield batch
        if saved != _dump(cursor):  # files disappeared since the last poll: forget them
            yield Batch(cursor=_dump(cursor), watermark=ctx.watermark, label="(cursor)")

    def _batches(self, ctx: PollContext, cursor: dict[str, dict[str, str]]) -> Iterator[Batch]:
        watermark = ctx.watermark
        if self.options.accounts:
            batch = self._accounts(cursor, watermark)
            if batch is not None:
                yield batch
        files = self._files()
        present = {p.name for p in files}
        for gone in [name for name in cursor["files"] if name not in present]:
            del cursor["files"][gone]
        for path in files:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # moved away between listing and reading
            fp = _fingerprint(st)
            if cursor["files"].get(path.name) in (fp, f"rejected:{fp}"):
                continue
            if not self._settled(st):  # still being written? read it once it is min_age old
                self.settling.append((path.name, int(st.st_mtime + self.options.min_age) + 1))
                continue
            try:
                result = read_usage_csv(path, on_error=self.options.on_error)  # type: ignore[arg-type]
            except CsvInputError as exc:
                cursor["files"][path.name] = f"rejected:{fp}"
                yield Batch(cursor=_dump(cursor), watermark=watermark, label=path.name,
                            error=f"source {self.id!r}: file rejected, nothing stored from it: {exc}")
                continue
            except OSError as exc:
                raise SourceError(f"source {self.id!r}: cannot read {path}: {exc.strerror or exc}") from None
            cursor["files"][path.name] = fp
            watermark = newest(result.records, watermark, ctx.now)
            error = None
            if result.errors:
                shown = "\n  ".join(str(e) for e in result.errors[:25])
                more = f"\n  ... and {len(result.errors) - 25} more" if len(result.errors) > 25 else ""
                error = (f"source {self.id!r}: {len(result.errors)} bad row(s) skipped in {path.name}:\n  "
                         f"{shown}{more}")
            yield Batch(cursor=_dump(cursor), watermark=watermark, totals=result.records,
                        label=path.name, error=error)

    def _accounts(self, cursor: dict[str, dict[str, str]], watermark: int | None) -> Batch | None:
        path = Path(str(self.options.accounts))
        try:
            st = path.stat()
        except FileNotFoundError:
            raise SourceError(f"source {self.id!r}: accounts file {path} does not exist") from None
        fp = _fingerprint(st)
        if cursor["accounts"].get(path.name) in (fp, f"rejected:{fp}") or not self._settled(st):
            return None
        try:
            result = read_accounts_csv(path, on_error=self.options.on_error)  # type: ignore[arg-type]
        except CsvInputError as exc:
            cursor["accounts"] = {path.name: f"rejected:{fp}"}
            return Batch(cursor=_dump(cursor), watermark=watermark, label=path.name,
                         error=f"source {self.id!r}: accounts file rejected, nothing stored from it: {exc}")
        cursor["accounts"] = {path.name: fp}
        error = None
        if result.errors:
            error = (f"source {self.id!r}: {len(result.errors)} bad account row(s) skipped:\n  "
                     + "\n  ".join(str(e) for e in result.errors[:25]))
        return Batch(cursor=_dump(cursor), watermark=watermark, accounts=result.records, label=path.name,
                     error=error)


def build(config: SourceConfig) -> CsvSource:
    return CsvSource(config)


register_type(SourceType("csv", KEYS, parse, build))

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

Only regular files in the folder itself are read: a symbolic link, a FIFO,
socket or device, and a file with more than one hard link are refused with a
notice (once per change) and never opened, so nothing from outside the folder
(`ln -s /etc/passwd drops/x.csv`) is read or quoted. A configured file (`path`
naming one file, `accounts`) may be a link only to a file in its own folder
(a Kubernetes ConfigMap's `..data` links); the file is opened without
following links and checked after it is opened.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
from integrations.sources.csv_rows import (
    CsvInputError,
    FileChanged,
    RowError,
    UnsafeFile,
    iter_usage_csv_columns,
    open_drop,
    read_accounts_csv,
)
from integrations.sources.records import UsageRecord
from integrations.sources.skipped import parse_on_error
from rules.config import Section
from storage.usage_values import UsageColumns

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
    on_error = parse_on_error(section)
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

    def _files(self) -> tuple[list[Path], list[tuple[Path, str]]]:
        """(files to read, [(entry, why it is refused)]) of the folder, or the one configured file."""
        root = Path(self.options.path)
        if not root.is_dir():
            if root.exists() or root.is_symlink():
                return [_confined(root, self.id)], []
            raise SourceError(f"source {self.id!r}: path {root} does not exist (expected a CSV file or a folder)")
        root = root.resolve()  # the folder itself may be a link (the admin's choice); its entries may not
        files: list[Path] = []
        refused: list[tuple[Path, str]] = []
        with os.scandir(root) as entries:
            for e in entries:
                if e.name.startswith(".") or not fnmatch.fnmatch(e.name, self.options.pattern):
                    continue
                if e.is_symlink():
                    refused.append((root / e.name, "is a symbolic link"))
                elif e.is_file(follow_symlinks=False):
                    files.append(root / e.name)
                elif not e.is_dir(follow_symlinks=False):
                    refused.append((root / e.name, "is not a regular file (a FIFO, socket or device)"))
        return sorted(files), sorted(refused)

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
        # usage stored before its accounts would alert without owners, plans and quotas: while the
        # accounts file is still being written, the usage files wait for it too
        accounts_ready = self._accounts_ready_at() if self.options.accounts else None
        if self.options.accounts and accounts_ready is None:
            batch = self._accounts(cursor, watermark)
            if batch is not None:
                yield batch
        files, refused = self._files()
        present = {p.name for p in files} | {p.name for p, _ in refused}
        for gone in [name for name in cursor["files"] if name not in present]:
            del cursor["files"][gone]
        for path, why in refused:
            try:
                mark = f"refused:{_fingerprint(path.lstat())}"
            except FileNotFoundError:
                continue
            if cursor["files"].get(path.name) == mark:
                continue  # told once; told again when it changes
            cursor["files"][path.name] = mark
            yield Batch(cursor=_dump(cursor), watermark=watermark, label=path.name,
                        error=f"source {self.id!r}: {path.name} {why}: refused, not read (only regular files "
                              "in the folder itself are read; copy or move the file into the folder)")
        for path in files:
            try:
                st = path.lstat()  # a listed regular file, or the configured file with its links resolved
            except FileNotFoundError:
                continue  # moved away between listing and reading
            fp = _fingerprint(st)
            if cursor["files"].get(path.name) in (fp, f"rejected:{fp}", f"refused:{fp}"):
                continue
            if not self._settled(st) or accounts_ready is not None:  # still being written (or its accounts are)
                ready = int(st.st_mtime + self.options.min_age) + 1
                self.settling.append((path.name, max(ready, accounts_ready or ready)))
                continue
            try:
                columns, records, errors = _read_usage(path, self.options.on_error)
            except FileChanged:  # replaced or written to between the reader's passes: not settled yet
                self.settling.append((path.name, int(self._wall() + self.options.min_age) + 1))
                continue
            except CsvInputError as exc:
                cursor["files"][path.name] = f"rejected:{fp}"
                yield Batch(cursor=_dump(cursor), watermark=watermark, label=path.name,
                            error=f"source {self.id!r}: file rejected, nothing stored from it: {exc}")
                continue
            except UnsafeFile as exc:
                cursor["files"][path.name] = f"refused:{fp}"
                yield Batch(cursor=_dump(cursor), watermark=watermark, label=path.name,
                            error=f"source {self.id!r}: {_unsafe(exc, path)}: not read")
                continue
            except OSError as exc:
                raise SourceError(f"source {self.id!r}: cannot read {path}: {exc.strerror or exc}") from None
            cursor["files"][path.name] = f"rejected:{fp}"
            rejected_cursor = _dump(cursor)  # if its bucket totals overflow: rejected, not read again
            cursor["files"][path.name] = fp
            error = None
            if errors:
                shown = "\n  ".join(str(e) for e in errors[:25])
                more = f"\n  ... and {len(errors) - 25} more" if len(errors) > 25 else ""
                error = (f"source {self.id!r}: {len(errors)} bad row(s) skipped in {path.name}:\n  "
                         f"{shown}{more}")
            # how far THIS file reaches (the store keeps the later of it and the stored watermark): a
            # file the store refuses moves neither the watermark nor the later files' batches
            yield Batch(cursor=_dump(cursor), watermark=newest(records, watermark, ctx.now, columns),
                        totals=records, columns=columns, label=path.name, error=error,
                        rejected_cursor=rejected_cursor, skipped_rows=len(errors))

    def _accounts_ready_at(self) -> int | None:
        """When the accounts file will be old enough to read (min_age), if it is still being written."""
        try:
            st = Path(str(self.options.accounts)).stat()
        except FileNotFoundError:
            return None  # _accounts says so
        if self._settled(st):
            return None
        ready = int(st.st_mtime + self.options.min_age) + 1
        self.settling.append((Path(str(self.options.accounts)).name, ready))
        return ready

    def _accounts(self, cursor: dict[str, dict[str, str]], watermark: int | None) -> Batch | None:
        path = Path(str(self.options.accounts))
        try:
            real = _confined(path, self.id)
            st = real.stat()
        except FileNotFoundError:
            raise SourceError(f"source {self.id!r}: accounts file {path} does not exist") from None
        fp = _fingerprint(st)
        if cursor["accounts"].get(path.name) in (fp, f"rejected:{fp}", f"refused:{fp}"):
            return None
        try:
            result = read_accounts_csv(real, on_error=self.options.on_error,  # type: ignore[arg-type]
                                       opener=open_drop)
        except UnsafeFile as exc:
            cursor["accounts"] = {path.name: f"refused:{fp}"}
            return Batch(cursor=_dump(cursor), watermark=watermark, label=path.name,
                         error=f"source {self.id!r}: accounts file {_unsafe(exc, real)}: not read")
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


def _read_usage(path: Path, on_error: str) -> tuple[list[UsageColumns], list[UsageRecord], list[RowError]]:
    """The whole file through the columnar reader (csv_rows.iter_usage_csv_columns: the row parser's
    validation and errors): (its columnar chunks, the records of the rows the row parser read when
    the columnar reader handed over to it, the bad rows skipped), in file order. Read whole before
    anything is stored: in "reject" mode a bad row anywhere raises CsvInputError at the end."""
    columns: list[UsageColumns] = []
    records: list[UsageRecord] = []
    errors: list[RowError] = []
    for chunk in iter_usage_csv_columns(path, on_error=on_error,  # type: ignore[arg-type]
                                        chunk_rows=1 << 62, opener=open_drop):
        if isinstance(chunk.records, UsageColumns):
            columns.append(chunk.records)
        else:
            records.extend(chunk.records)
        errors.extend(chunk.errors)
    return columns, records, errors


def _confined(path: Path, source_id: str) -> Path:
    """A configured file with its links resolved, if it stays in its own folder (else SourceError)."""
    real = Path(os.path.realpath(path))
    folder = Path(os.path.realpath(path.parent))
    if not real.is_relative_to(folder):
        raise SourceError(f"source {source_id!r}: {path} is a link to a file outside its folder {folder}; "
                          "refused (copy the file into the folder, or configure the real path)")
    return real


def _unsafe(exc: UnsafeFile, path: Path) -> str:
    """The refusal without the path prefix open_drop puts on it."""
    text = str(exc)
    return f"{path.name}{text[len(str(path)):]}" if text.startswith(str(path)) else f"{path.name}: {text}"


def build(config: SourceConfig) -> CsvSource:
    return CsvSource(config)


register_type(SourceType("csv", KEYS, parse, build))

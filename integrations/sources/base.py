"""The usage-source Protocol, the settings every source shares, and the registry of source types.

A source is polled on its own schedule. `poll(ctx)` yields `Batch`es; the
poll runner (bot/service/polling.py) stores each batch atomically with the cursor
and watermark it carries, so a poll that fails half-way resumes after the
last stored batch and never stores a batch half-way.

- `ctx.watermark` is the newest data timestamp stored so far. Time-window
  sources re-read from `watermark - overlap` (the late-data overlap), aligned
  down to their bucket, so every bucket they touch is re-read whole; their
  rows are bucket totals and replace what is stored (idempotent). A window
  that needs more than max_pages pages is read shorter (`read_window`): the
  source stores a `CatchUp` cursor and the next poll goes on from its end.
- `ctx.cursor` is the opaque position a cursor-based source returned last.
- Event feeds (rows with an id) go to `Batch.events`: deduplicated by id and
  added up.

A source type registers a config parser and a factory with `register_type`;
`[[sources]]` tables of the config are parsed by `parse_source_config`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from integrations.sources.records import UsageRecord, is_metric_name
from integrations.sources.skipped import SkippedItem
from rules.config import Section, Table, redaction
from rules.durations import format_duration
from rules.model import AccountFacts
from rules.periods import iso
from storage.usage_values import UsageColumns, newest_ts

BUILTIN_TYPES = ("csv", "http_json", "sql", "openmeter", "stripe_meter")
_MODULES = {
    "csv": "integrations.sources.csv_source",
    "http_json": "integrations.sources.http_json",
    "sql": "integrations.sources.sql",
    "openmeter": "integrations.sources.openmeter",
    "stripe_meter": "integrations.sources.stripe_meter",
}
COMMON_KEYS = ("id", "type", "enabled", "every", "cron", "overlap", "backfill", "stale_after")
SOURCES = Table("sources", COMMON_KEYS)  # the keys every [[sources]] table has (each type adds its own)
DEFAULT_EVERY = 300
DEFAULT_OVERLAP = 3600
DEFAULT_BACKFILL = 7 * 86_400
DEFAULT_STALE_AFTER = 6 * 3600


class SourceError(Exception):
    """A poll failed. The message names the source and where (file:line, page and record, URL).

    Messages never contain credentials: URLs are shown without user info and
    query strings, and the message is masked (rules.config.redaction) when the error is made.
    """

    def __init__(self, message: str = "", cursor: str | None = None) -> None:
        super().__init__(redaction.mask(message))
        self.cursor = cursor  # the cursor to store although the poll failed (None: the stored one stays)


class PollDeadline(SourceError):
    """A poll ran past its poll_deadline (integrations.sources.http_fetch)."""


MAX_LISTED_PROBLEMS = 20


def malformed_error(source_id: str, problems: list[str], what: str) -> SourceError:
    """One error listing the first problems of a rejected poll (nothing of it is stored)."""
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return SourceError(f"source {source_id!r}: {len(problems)} {what}; nothing was stored from this poll:\n  "
                       + "\n  ".join(shown) + more)


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """A usage event with an id: counted once however often it is delivered."""

    account: str
    metric: str
    ts: int
    value: float
    id: str


@dataclass(frozen=True)
class PollContext:
    source_id: str
    now: int
    cursor: str | None = None
    watermark: int | None = None  # newest data timestamp stored so far
    accounts: Callable[[], Sequence[AccountFacts]] = lambda: ()


@dataclass
class Batch:
    """What one step of a poll delivers; stored in one transaction with its cursor and watermark.

    Bucket totals come as `totals` (records) or as `columns` (chunks of a columnar CSV read: no
    Python object per row), or both: a file the columnar reader read in part before the row parser
    took over is its columns first, then the records of its remaining rows, in file order (the
    totals of one key are summed in that order)."""

    cursor: str | None
    watermark: int | None
    totals: list[UsageRecord] = field(default_factory=list)
    columns: list[UsageColumns] = field(default_factory=list)
    events: list[UsageEvent] = field(default_factory=list)
    accounts: list[AccountFacts] = field(default_factory=list)
    label: str = ""  # e.g. the file name, for logs
    error: str | None = None  # a rejected part (e.g. a bad file): reported, none of its rows stored
    # the cursor to store instead when the store refuses this batch's values (bucket totals past a
    # float64): the part is then rejected whole and reported, and the poll goes on with the next part
    # (a csv file). None: the batch is stored without the refused buckets (integrations.sources.refused)
    rejected_cursor: str | None = None
    # malformed items left out (on_error = "skip"): each told once (integrations.sources.skipped)
    skipped: list[SkippedItem] = field(default_factory=list)
    # rows left out by on_error = "skip" and told in `error` itself (csv: a file read once, its bad rows
    # listed in one message): counted as skipped, and the part is not a rejected one
    skipped_rows: int = 0
    # a window source that read a shorter window than [start, now) (too many pages) says so here:
    # how far it read and how many polls it is behind (WindowRead.behind); the service polls it again soon
    behind: str | None = None

    @property
    def rows(self) -> int:
        """Usage rows and events the batch delivers."""
        return len(self.totals) + sum(len(c) for c in self.columns) + len(self.events)


class Source(Protocol):
    id: str

    def poll(self, ctx: PollContext) -> Iterator[Batch]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceSettings:
    """Keys every [[sources]] table has."""

    id: str
    type: str
    enabled: bool = True
    every: int | None = DEFAULT_EVERY  # seconds between polls (None when `cron` is given)
    cron: str | None = None  # crontab expression (UTC), instead of `every`
    overlap: int = DEFAULT_OVERLAP  # late-data overlap re-read on every poll
    backfill: int = DEFAULT_BACKFILL  # how far back the first poll reads
    stale_after: int = DEFAULT_STALE_AFTER  # no new data for this long -> "stale source" admin alert


@dataclass(frozen=True)
class SourceConfig:
    """A parsed [[sources]] table: the shared settings plus the type's own options."""

    settings: SourceSettings
    options: Any

    @property
    def id(self) -> str:
        return self.settings.id


@dataclass(frozen=True)
class SourceType:
    name: str
    keys: tuple[str, ...]  # the type's own keys (besides COMMON_KEYS), sub-tables included
    parse: Callable[[Section, SourceSettings], Any]  # -> options (problems go to the section)
    build: Callable[[SourceConfig], Source]
    tables: tuple[Table, ...] = ()  # its sub-tables with fixed keys (their parser checks them)

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


_TYPES: dict[str, SourceType] = {}


def register_type(source_type: SourceType) -> None:
    _TYPES[source_type.name] = source_type


def source_types() -> dict[str, SourceType]:
    for name, module in _MODULES.items():
        if name not in _TYPES:
            importlib.import_module(module)
    return dict(_TYPES)


def build_source(config: SourceConfig) -> Source:
    return source_types()[config.settings.type].build(config)


# ------------------------------------------------------------------------ config


def _check_cron(section: Section, expr: str) -> bool:
    from rules.config.cron import cron_trigger

    try:
        cron_trigger(expr)
    except ValueError as exc:
        section.problem("cron", f"invalid crontab expression {expr!r}: {exc} (e.g. '*/15 * * * *')")
        return False
    return True


def parse_settings(section: Section) -> SourceSettings | None:
    sid = section.str("id", required=True)
    types = source_types()
    stype = section.str("type", required=True, choices=sorted(types))
    if sid is not None and not is_metric_name(sid):
        section.problem("id", f"must be letters, digits and _ . : - only (got {sid!r})")
        sid = None
    every = section.duration("every", min=1)
    cron = section.str("cron")
    if every is not None and cron is not None:
        section.problem("cron", "give either every or cron, not both")
    if cron is not None and not _check_cron(section, cron):
        cron = None
    if sid is None or stype is None:
        return None
    return SourceSettings(
        id=sid, type=stype, enabled=bool(section.bool("enabled", True)),
        every=None if cron else (every or DEFAULT_EVERY), cron=cron,
        overlap=section.duration("overlap", DEFAULT_OVERLAP) or 0,
        backfill=section.duration("backfill", DEFAULT_BACKFILL, min=60) or DEFAULT_BACKFILL,
        stale_after=section.duration("stale_after", DEFAULT_STALE_AFTER, min=60) or DEFAULT_STALE_AFTER,
    )


def parse_source_config(section: Section) -> SourceConfig | None:
    """One [[sources]] table; every problem is recorded on the section's document (file:line: field)."""
    settings = parse_settings(section)
    stype = source_types().get(str(section.data.get("type", "")))
    if stype is not None:
        section.check_keys((*COMMON_KEYS, *stype.keys))
    if settings is None or stype is None:
        return None
    n_before = len(section.doc.problems)
    options = stype.parse(section, settings)
    if len(section.doc.problems) > n_before or options is None:
        return None
    return SourceConfig(settings, options)


# ------------------------------------------------------------------------ helpers for sources


def window(ctx: PollContext, overlap: int, backfill: int, align: int = 60) -> tuple[int, int]:
    """[start, end) to read this poll: from the watermark minus the overlap (first poll: backfill).

    `start` is aligned down to `align` (the source's bucket), so each bucket
    read is read whole and its total replaces the stored one. A source catching
    up (its cursor a `CatchUp`) starts from the later of the watermark and the
    end of the window it read last, minus the overlap.
    """
    end = ctx.now
    pos = _position(ctx)
    start = end - backfill if pos is None else min(pos, end) - overlap
    start -= start % align
    return start, end


def _position(ctx: PollContext) -> int | None:
    """How far a window source has read: the watermark, or the end of the shorter window it read last
    while catching up, if later (None: the first poll)."""
    behind = CatchUp.parse(ctx.cursor)
    known = [t for t in (ctx.watermark, behind.read_to if behind else None) if t is not None]
    return max(known) if known else None


CATCH_UP = "catch-up:"

_T = TypeVar("_T")


class WindowTooLarge(SourceError):
    """A window needs more than one poll may read: more pages than max_pages, or an answer larger than
    max_response_bytes; `read_window` then reads a shorter one. `needs` says what ("more than 1000
    pages"), `setting` which key to raise, `where` what overflowed (e.g. a meter and customer; "" for
    the window itself)."""

    def __init__(self, message: str, needs: str, setting: str, where: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.needs, self.setting, self.where = needs, setting, where
        self.detail = detail  # what the limit said (an answer cut off: its size), "" when `needs` says it all


@dataclass(frozen=True)
class CatchUp:
    """The cursor of a window source that read a shorter window than [start, now) because the whole
    one needed more than max_pages pages: everything before `read_to` is read, and the window of
    `span` seconds that fit took `pages` pages (the next poll tries that span, or twice it when it
    took at most half of max_pages and `grow`: not after a poll of this catch-up ran past
    poll_deadline; span 0: the last poll read its whole window, and the next tries its whole one)."""

    read_to: int
    span: int
    pages: int
    grow: bool = True

    def cursor(self) -> str:
        return (f"{CATCH_UP}read_to={self.read_to};span={self.span};pages={self.pages}"
                + ("" if self.grow else ";grow=0"))

    @staticmethod
    def parse(cursor: str | None) -> CatchUp | None:
        if not cursor or not cursor.startswith(CATCH_UP):
            return None
        try:
            parts = dict(p.split("=", 1) for p in cursor.removeprefix(CATCH_UP).split(";"))
            return CatchUp(int(parts["read_to"]), int(parts["span"]), int(parts["pages"]),
                           parts.get("grow", "1") != "0")
        except (KeyError, ValueError):
            return None


def catching_up(cursor: str | None) -> bool:
    """Whether a window source with this stored cursor is still behind: its last poll read a shorter
    window than its whole one, or failed leaving the next a shorter one (a CatchUp with a span). A
    CatchUp of span 0 only keeps the position of a source that read its whole window."""
    c = CatchUp.parse(cursor)
    return c is not None and c.span > 0


@dataclass(frozen=True)
class WindowRead:
    """The window a poll read: [start, end) of [start, full_end), in `pages` pages."""

    start: int
    end: int
    full_end: int
    pages: int
    overlap: int
    align: int
    previous: CatchUp | None  # the catch-up cursor the poll started with

    @property
    def shrunk(self) -> bool:
        return self.end < self.full_end

    def cursor(self, watermark: int | None) -> str | None:
        """The cursor to store after this read (with the batch's `watermark`): a `CatchUp` while the
        source is behind, or while the watermark is still before the end of the last shorter window
        read (the next window must not start before it again); else None."""
        prev = self.previous
        grow = prev is None or prev.grow
        if self.shrunk:
            return CatchUp(self.end, self.end - self.start, self.pages, grow).cursor()
        if prev is None or (watermark is not None and watermark >= prev.read_to):
            return None
        # the whole window was read: the next poll tries its whole window first (span 0). Keeping this
        # window's span made a source whose data stopped read a span short of each new window: two
        # polls every time and a false "behind", for as long as no data came.
        return CatchUp(prev.read_to, 0, self.pages, grow).cursor()

    def behind(self) -> str | None:
        """What a shorter read tells (the poll's log line), None when the whole window was read."""
        if not self.shrunk:
            return None
        step = max(self.align, self.end - self.start - self.overlap)
        polls = -(-(self.full_end - self.end) // step)
        return (f"caught up in part: read up to {iso(self.end)} of the window to {iso(self.full_end)} (a "
                f"shorter window: the whole needs too many pages or time); about {polls} more poll(s) behind")


def read_window(ctx: PollContext, overlap: int, backfill: int, align: int, max_pages: int,
                read: Callable[[int, int], tuple[_T, int]], *, full_end: int | None = None) -> tuple[_T, WindowRead]:
    """Read this poll's window with `read(start, end) -> (result, pages)`; when it raises WindowTooLarge,
    read a shorter window: [start, end) halved on `align` boundaries, down to the first bucket not read
    yet (with the overlap before it). The window that fits is returned with what to store after it
    (WindowRead.cursor); when even the shortest is too large, WindowTooLarge names it. When the poll
    passes poll_deadline, PollDeadline carries the cursor of a window half as long for the next poll.

    A catch-up cursor's span (doubled when its window took at most half of max_pages) is tried first,
    so a source catching up over many polls does not try the whole window on each."""
    start, end = window(ctx, overlap, backfill, align)
    if full_end is not None:
        end = full_end
    previous = CatchUp.parse(ctx.cursor)
    pos = _position(ctx)
    first = start if pos is None else max(start, pos - pos % align)
    shortest = min(end, first + align)
    at = end
    if previous is not None and previous.span > 0:  # span 0: the last read was a whole window
        guess = previous.span * (2 if previous.grow and 2 * previous.pages <= max_pages else 1)
        at = min(end, max(shortest, start + guess - guess % align))
    while True:
        try:
            result, pages = read(start, at)
        except WindowTooLarge as exc:
            if at <= shortest:
                raise _too_large(ctx.source_id, exc, start, shortest, align) from None
            at = _half(start, at, shortest, align)
            continue
        except PollDeadline as exc:
            if at <= shortest:
                raise
            # no time is left in this poll: the next one tries half this window (the failed poll stores
            # that as its cursor; nothing else of it is stored)
            half = _half(start, at, shortest, align)
            hint = CatchUp(start if pos is None else pos, half - start, max_pages, grow=False)
            raise PollDeadline(f"{exc}; the next poll reads a window half as long ({format_duration(hint.span)})",
                               cursor=hint.cursor()) from None
        return result, WindowRead(start, at, end, pages, overlap, align, previous)


def _half(start: int, end: int, shortest: int, align: int) -> int:
    """The end of the first half of [start, end) on an `align` boundary, not before `shortest`."""
    half = (end - start) // 2
    return max(shortest, start + half - half % align)


def _too_large(source_id: str, exc: WindowTooLarge, start: int, end: int, align: int) -> WindowTooLarge:
    what = (f"the bucket {iso(start)} to {iso(end)}" if end - start <= align else
            f"the window {iso(start)} to {iso(end)} (the overlap re-read and the first "
            f"{format_duration(align)} bucket not read yet)")
    lower = "" if end - start <= align else " or lower overlap"
    where = f"{exc.where}: " if exc.where else ""
    if exc.detail:
        message = f"{where}{exc.detail} (even for {what} alone{lower}; nothing was stored)"
    else:
        message = f"{where}{what} alone needs {exc.needs}; raise {exc.setting}{lower} (nothing was stored)"
    return WindowTooLarge(f"source {source_id!r}: {message}", exc.needs, exc.setting, exc.where, exc.detail)


def window_label(start: int, end: int) -> str:
    """A poll's time window as its batch label names it (the part a refused bucket belongs to)."""
    return f"window {iso(start)} to {iso(end)}"


def newest(records: Sequence[UsageRecord] | Sequence[UsageEvent], previous: int | None, now: int,
           columns: Sequence[UsageColumns] = ()) -> int | None:
    """The watermark after a batch: the newest data timestamp of its records and columns (never later
    than now)."""
    ts = newest_ts(columns, records)
    if ts is None:
        return previous
    ts = min(ts, now)
    return ts if previous is None else max(previous, ts)


def str_map(section: Section, key: str) -> dict[str, str]:
    """A table of strings (e.g. params = { granularity = "hour" }); values get ${ENV} substitution."""
    t = section.table(key)
    out: dict[str, str] = {}
    for k in t.data:
        v = t.str(k)
        if v is not None:
            out[k] = v
    return out

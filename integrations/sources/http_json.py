"""`http_json` source: any JSON HTTP API that lists usage.

Per poll: GET `url` (with `params`, auth, retries, timeout), follow the
pagination, take the list at `records` from each page and map each item's
fields (dotted paths) to account, metric, value and timestamp. Every page is
fetched and every item validated before anything is stored: a malformed
payload fails the poll with the page, item and field named, and stores
nothing; with `on_error = "skip"` a malformed item is left out and told once
(integrations.sources.skipped) and the other items are stored.

Incremental reading (`incremental`):
- "window" (default): the request carries [start, end) as query parameters;
  start is the newest data stored minus `overlap`, aligned down to
  `window.align`, so late data within the overlap is read again. Items are
  bucket totals and replace what is stored. A window that needs more than
  `pagination.max_pages` pages is read shorter and the next polls catch up
  (integrations.sources.base.read_window).
- "cursor": the request carries the cursor the previous poll ended with
  (`cursor.param`), the response says where to continue (`cursor.field`).
- "none": the whole list every time.

With `fields.id` set, items are events: deduplicated by id and added up
(for feeds that list individual usage events).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from integrations.sources.base import (
    Batch,
    CatchUp,
    PollContext,
    SourceConfig,
    SourceError,
    SourceSettings,
    SourceType,
    UsageEvent,
    WindowTooLarge,
    newest,
    read_window,
    register_type,
    str_map,
    window_label,
)
from integrations.sources.csv_rows import parse_timestamp
from integrations.sources.http_fetch import (
    AUTH,
    RETRY_KEYS,
    Auth,
    Fetcher,
    RetryPolicy,
    dig,
    dig_optional,
    display_url,
    parse_auth,
    parse_retry,
    register_url_secrets,
)
from integrations.sources.records import UsageRecord, check_time, id_problem, is_metric_name, shown
from integrations.sources.skipped import SkippedItem, digest, identity, parse_on_error
from rules.config import Section, Table
from rules.config.urls import url_problem

KEYS = ("url", "params", "headers", "auth", "records", "metric", "metric_map", "fields", "incremental",
        "window", "cursor", "pagination", "on_error", *RETRY_KEYS)
TABLES = (AUTH, Table("fields", ("account", "metric", "value", "timestamp", "id", "timestamp_format")),
          Table("pagination", ("type", "param", "next", "size_param", "size", "start", "max_pages")),
          Table("window", ("start_param", "end_param", "format", "align")), Table("cursor", ("param", "field", "initial")))
_TABLES = {t.name: t for t in TABLES}
TIME_FORMATS = ("iso", "epoch", "epoch_ms")
PAGINATION_TYPES = ("none", "cursor", "page", "offset", "link")
MAX_PROBLEMS = 20
_MISSING = object()


@dataclass(frozen=True)
class FieldMap:
    account: str
    value: str
    timestamp: str
    metric: str | None = None
    id: str | None = None
    timestamp_format: str = "iso"


@dataclass(frozen=True)
class WindowParams:
    start_param: str = "start"
    end_param: str = "end"
    format: str = "iso"
    align: int = 60


@dataclass(frozen=True)
class CursorParams:
    param: str
    field: str
    initial: str | None = None


@dataclass(frozen=True)
class Pagination:
    type: str = "none"
    param: str | None = None
    next: str | None = None
    size_param: str | None = None
    size: int | None = None
    start: int = 1
    max_pages: int = 1000


@dataclass(frozen=True)
class HttpJsonOptions:
    url: str
    fields: FieldMap
    records: str = ""
    metric: str | None = None
    metric_map: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: Auth = field(default_factory=Auth)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    incremental: str = "window"
    window: WindowParams = field(default_factory=WindowParams)
    cursor: CursorParams | None = None
    pagination: Pagination = field(default_factory=Pagination)
    on_error: str = "reject"  # "skip": leave a malformed item out (told once), store the rest


def _check_url(section: Section, url: str | None) -> str | None:
    if url is not None and not url.startswith(("http://", "https://")):
        section.problem("url", f"must start with http:// or https:// (got {url[:40]!r})")
        return None
    if url is not None and url_problem(url) is not None:
        section.problem("url", str(url_problem(url)))
        return None
    return url


def _parse_fields(section: Section, constant_metric: str | None) -> FieldMap | None:
    if not section.has("fields"):
        section.problem("fields", "is required: a table mapping account, value, timestamp (and metric) "
                                  "to dotted paths in each item")
        return None
    t = section.table("fields")
    t.check_keys(_TABLES["fields"])
    account = t.str("account", required=True)
    value = t.str("value", required=True)
    ts = t.str("timestamp", required=True)
    metric = t.str("metric")
    if metric is None and constant_metric is None:
        t.problem("metric", "give fields.metric (a path in each item) or metric = \"<name>\" for the whole source")
    if metric is not None and constant_metric is not None:
        t.problem("metric", "give either fields.metric or metric, not both")
    fmt = t.str("timestamp_format", "iso", choices=TIME_FORMATS) or "iso"
    if account is None or value is None or ts is None:
        return None
    return FieldMap(account=account, value=value, timestamp=ts, metric=metric, id=t.str("id"),
                    timestamp_format=fmt)


def _parse_pagination(section: Section) -> Pagination:
    if not section.has("pagination"):
        return Pagination()
    t = section.table("pagination")
    t.check_keys(_TABLES["pagination"])
    kind = t.str("type", "none", choices=PAGINATION_TYPES) or "none"
    p = Pagination(type=kind, param=t.str("param"), next=t.str("next"), size_param=t.str("size_param"),
                   size=t.int("size", min=1), start=t.int("start", 1, min=0) or 0,
                   max_pages=t.int("max_pages", 1000, min=1) or 1000)
    if kind in ("cursor", "page", "offset") and not p.param:
        t.problem("param", f"is required for pagination type {kind!r} (the query parameter to send)")
    if kind == "cursor" and not p.next:
        t.problem("next", "is required for cursor pagination: the path of the next-page token in the response")
    if p.size_param and p.size is None:
        t.problem("size", "is required with size_param (the page size to ask for)")
    return p


def parse(section: Section, settings: SourceSettings) -> HttpJsonOptions | None:
    url = _check_url(section, section.str("url", required=True))
    metric = section.str("metric")
    if metric is not None and not is_metric_name(metric):
        section.problem("metric", f"{metric!r} is not a metric name (letters, digits and _ . : -)")
    metric_map = str_map(section, "metric_map")
    for k, v in metric_map.items():
        if not is_metric_name(v):
            section.table("metric_map").problem(k, f"{v!r} is not a metric name")
    fields = _parse_fields(section, metric)
    incremental = section.str("incremental", "window", choices=("window", "cursor", "none")) or "window"
    win = WindowParams()
    if section.has("window"):
        t = section.table("window")
        t.check_keys(_TABLES["window"])
        win = WindowParams(start_param=t.str("start_param", "start") or "start",
                           end_param=t.str("end_param", "end") or "end",
                           format=t.str("format", "iso", choices=TIME_FORMATS) or "iso",
                           align=t.duration("align", 60, min=1) or 60)
    cursor = None
    if incremental == "cursor":
        t = section.table("cursor")
        t.check_keys(_TABLES["cursor"])
        param, fld = t.str("param", required=True), t.str("field", required=True)
        if param and fld:
            cursor = CursorParams(param, fld, t.str("initial"))
    elif section.has("cursor"):
        section.problem("cursor", "is only used with incremental = \"cursor\"")
    auth = parse_auth(section)
    retry = parse_retry(section)
    pagination = _parse_pagination(section)
    params, headers = str_map(section, "params"), str_map(section, "headers")
    if url is not None:
        register_url_secrets(url, params, headers)
    records = section.str("records", "") or ""
    if url is None or fields is None or auth is None:
        return None
    return HttpJsonOptions(url=url, fields=fields, records=records, metric=metric, metric_map=metric_map,
                           params=params, headers=headers, auth=auth, retry=retry, incremental=incremental,
                           window=win, cursor=cursor, pagination=pagination, on_error=parse_on_error(section))


# ------------------------------------------------------------------------ reading


def format_time(ts: int, fmt: str) -> str:
    if fmt == "epoch":
        return str(ts)
    if fmt == "epoch_ms":
        return str(ts * 1000)
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time_value(raw: Any, fmt: str) -> int:
    """Epoch seconds from an item's timestamp field; ValueError says what is wrong."""
    if fmt == "iso":
        if not isinstance(raw, str):
            raise ValueError(f"expected an ISO-8601 string, got {type(raw).__name__} {shown(raw)}")
        return parse_timestamp(raw)
    if isinstance(raw, bool):
        raise ValueError(f"expected epoch {'milliseconds' if fmt == 'epoch_ms' else 'seconds'}, got {shown(raw)}")
    try:
        x = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected epoch {'milliseconds' if fmt == 'epoch_ms' else 'seconds'}, "
                         f"got {shown(raw)}") from None
    if not math.isfinite(x):
        raise ValueError(f"timestamp {shown(raw)} is not a finite number")
    return check_time(math.floor(x / 1000 if fmt == "epoch_ms" else x))


def parse_value(raw: Any) -> float:
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"expected a number, got {shown(raw)}")
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {shown(raw)}") from None
    if not math.isfinite(v):
        raise ValueError(f"{shown(raw)} is not a finite number")
    if v < 0:
        raise ValueError(f"{shown(raw)} is negative; usage must be >= 0")
    return v + 0.0


class _Problems:
    def __init__(self, source_id: str) -> None:
        self.source_id = source_id
        self.items: list[str] = []
        self.total = 0
        self.bad_items = 0
        self.current: list[str] = []  # the problems of the item being read (without its "where")

    def add(self, text: str) -> None:
        self.total += 1
        self.current.append(text)
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(text)

    def raise_if_any(self, what: str) -> None:
        if not self.total:
            return
        more = f"\n  ... and {self.total - len(self.items)} more" if self.total > len(self.items) else ""
        raise SourceError(f"source {self.source_id!r}: {self.bad_items} malformed item(s) in {what} "
                          f"({self.total} problem(s)); nothing was stored from this poll:\n  "
                          + "\n  ".join(self.items) + more)


class HttpJsonSource:
    def __init__(self, config: SourceConfig, fetcher: Fetcher | None = None) -> None:
        self.id = config.id
        self.settings = config.settings
        self.o: HttpJsonOptions = config.options
        self.fetcher = fetcher or Fetcher(self.id, auth=self.o.auth, retry=self.o.retry, headers=self.o.headers)

    def close(self) -> None:
        self.fetcher.close()

    def _base_params(self, ctx: PollContext, span: tuple[int, int] | None) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.o.params)
        if span is not None:
            start, end = span
            params[self.o.window.start_param] = format_time(start, self.o.window.format)
            params[self.o.window.end_param] = format_time(end, self.o.window.format)
        elif self.o.incremental == "cursor" and self.o.cursor is not None:
            # (a window source's catch-up cursor is no position of the API's: start from the initial one)
            stored = ctx.cursor if CatchUp.parse(ctx.cursor) is None else None
            position = stored if stored is not None else self.o.cursor.initial
            if position is not None:
                params[self.o.cursor.param] = position
        return params

    def _part(self, ctx: PollContext, n_pages: int, span: tuple[int, int] | None) -> str:
        """What one poll read, for its batch label: the pages, the URL, and the window or cursor."""
        what = f"{n_pages} page(s) of GET {display_url(self.o.url)}"
        if span is not None:
            return f"{what}, {window_label(*span)}"
        if self.o.incremental == "cursor":
            return f"{what} from the stored cursor" if ctx.cursor is not None else f"{what} from the start"
        return what

    def pages(self, ctx: PollContext, span: tuple[int, int] | None = None) -> Iterator[tuple[int, Any, list[Any]]]:
        """(page number, decoded body, items) of every page of this poll (of the window `span`, with
        incremental = "window"). More than max_pages pages raise WindowTooLarge."""
        p = self.o.pagination
        params = self._base_params(ctx, span)
        url: str | None = self.o.url
        if p.size_param and p.size:
            params[p.size_param] = p.size
        page_no, offset, page_index = p.start, 0, 1
        if p.type == "page":
            params[str(p.param)] = page_no
        elif p.type == "offset":
            params[str(p.param)] = 0
        while url is not None:
            if page_index > p.max_pages:
                often = " or poll more often" if self.o.incremental == "cursor" else ""
                raise WindowTooLarge(f"source {self.id!r}: more than {p.max_pages} pages; raise "
                                     f"pagination.max_pages{often} (nothing was stored)",
                                     f"more than {p.max_pages} pages", "pagination.max_pages")
            body, resp = self.fetcher.get_json(url, params, what=f"page {page_index}")
            try:
                items = dig(body, self.o.records)
            except KeyError as exc:
                raise SourceError(f"source {self.id!r}: page {page_index}: the response has no "
                                  f"'{self.o.records}' (missing '{exc.args[0]}'); check `records`") from None
            if not isinstance(items, list):
                raise SourceError(f"source {self.id!r}: page {page_index}: '{self.o.records or '(top level)'}' "
                                  f"is {type(items).__name__}, expected a list of items; check `records`")
            yield page_index, body, items
            page_index += 1
            if p.type == "none" or not items:
                break
            if p.type == "cursor":
                token = dig_optional(body, str(p.next))
                if token in (None, "", False):
                    break
                params[str(p.param)] = token
            elif p.type == "page":
                if p.size and len(items) < p.size:
                    break
                page_no += 1
                params[str(p.param)] = page_no
            elif p.type == "offset":
                if p.size and len(items) < p.size:
                    break
                offset += len(items)
                params[str(p.param)] = offset
            elif p.type == "link":
                nxt = dig_optional(body, p.next) if p.next else (resp.links.get("next") or {}).get("url")
                if not nxt:
                    break
                url, params = str(resp.url.join(str(nxt))), {}

    def _item(self, item: Any, where: str, problems: _Problems) -> UsageRecord | UsageEvent | None:
        f = self.o.fields
        if not isinstance(item, Mapping):
            problems.add(f"{where}: expected an object, got {type(item).__name__}")
            return None
        bad = problems.total

        def get(path: str, name: str) -> Any:
            try:
                return dig(item, path)
            except KeyError:
                problems.add(f"{where}: field '{path}' ({name}) is missing")
                return _MISSING

        account = get(f.account, "account")
        if account is not _MISSING and (isinstance(account, bool) or not isinstance(account, str | int)
                                        or not str(account).strip()):
            problems.add(f"{where}: field '{f.account}' (account): expected a non-empty id, got "
                         f"{shown(account)}")
        elif account is not _MISSING and (why := id_problem(str(account).strip(), "account id")):
            problems.add(f"{where}: field '{f.account}' (account): {why}")
        metric = self.o.metric
        if f.metric is not None:
            raw = get(f.metric, "metric")
            if raw is not _MISSING:
                metric = self.o.metric_map.get(str(raw), str(raw))
                if not isinstance(raw, str) or not is_metric_name(metric):
                    problems.add(f"{where}: field '{f.metric}' (metric): {shown(raw)} is not a metric name "
                                 "(letters, digits and _ . : -; or map it with metric_map)")
        value = ts = None
        raw_value = get(f.value, "value")
        if raw_value is not _MISSING:
            try:
                value = parse_value(raw_value)
            except ValueError as exc:
                problems.add(f"{where}: field '{f.value}' (value): {exc}")
        raw_ts = get(f.timestamp, "timestamp")
        if raw_ts is not _MISSING:
            try:
                ts = parse_time_value(raw_ts, f.timestamp_format)
            except ValueError as exc:
                problems.add(f"{where}: field '{f.timestamp}' (timestamp): {exc}")
        event_id = ""
        if f.id is not None:
            raw_id = get(f.id, "id")
            if raw_id is not _MISSING:
                if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or not str(raw_id):
                    problems.add(f"{where}: field '{f.id}' (id): expected a non-empty string or integer, "
                                 f"got {shown(raw_id)}")
                elif why := id_problem(str(raw_id), "event id"):
                    problems.add(f"{where}: field '{f.id}' (id): {why}")
                event_id = str(raw_id)
        if problems.total > bad or value is None or ts is None or metric is None:
            return None
        acc = str(account).strip()
        if f.id is not None:
            return UsageEvent(acc, metric, ts, value, event_id)
        return UsageRecord(acc, metric, ts, value)

    def _read(self, ctx: PollContext, span: tuple[int, int] | None) -> _Read:
        """Every page of the poll (of the window `span`), every item validated."""
        problems = _Problems(self.id)
        out = _Read()
        for page, body, items in self.pages(ctx, span):
            out.pages, out.last_body = page, body
            for i, item in enumerate(items):
                where = f"page {page}, item {i} ({self.o.records or 'items'}[{i}])"
                problems.current = []
                rec = self._item(item, where, problems)
                if problems.current:
                    problems.bad_items += 1
                    out.skipped.append(_skipped(item, where, problems.current, self.o.fields.value))
                elif isinstance(rec, UsageEvent):
                    out.events.append(rec)
                elif rec is not None:
                    out.totals.append(rec)
        if self.o.on_error == "reject":
            problems.raise_if_any(f"{out.pages} page(s)")
        return out

    def poll(self, ctx: PollContext) -> Iterator[Batch]:
        self.fetcher.begin_poll()
        if self.o.incremental != "window":
            got = self._read(ctx, None)
            # a window mode's catch-up cursor left from before the source's mode changed is neither a
            # position of the API's nor kept: kept, it marked the source as catching up for ever
            # (evaluation mutes such a source's series) and it was stored again after every poll
            cursor = ctx.cursor if CatchUp.parse(ctx.cursor) is None else None
            if self.o.incremental == "cursor" and self.o.cursor is not None and got.last_body is not None:
                nxt = dig_optional(got.last_body, self.o.cursor.field)
                if nxt not in (None, ""):
                    cursor = str(nxt)
            yield Batch(cursor=cursor, watermark=newest(got.events or got.totals, ctx.watermark, ctx.now),
                        totals=got.totals, events=got.events, label=self._part(ctx, got.pages, None),
                        skipped=got.skipped)
            return
        got, read = read_window(ctx, self.settings.overlap, self.settings.backfill, self.o.window.align,
                                self.o.pagination.max_pages, lambda s, e: self._counted(ctx, (s, e)))
        watermark = newest(got.events or got.totals, ctx.watermark, ctx.now)
        yield Batch(cursor=read.cursor(watermark), watermark=watermark, totals=got.totals, events=got.events,
                    label=self._part(ctx, got.pages, (read.start, read.end)), skipped=got.skipped,
                    behind=read.behind())

    def _counted(self, ctx: PollContext, span: tuple[int, int]) -> tuple[_Read, int]:
        got = self._read(ctx, span)
        return got, got.pages


@dataclass
class _Read:
    """What the pages of one poll (or one window of it) delivered."""

    totals: list[UsageRecord] = field(default_factory=list)
    events: list[UsageEvent] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)
    last_body: Any = None
    pages: int = 0


def _skipped(item: Any, where: str, problems: list[str], value_path: str) -> SkippedItem:
    """A malformed item as `on_error = "skip"` leaves it out: its problems without the repeated
    "where" prefix, keyed by the item's content without its value (skipped.identity)."""
    text = "; ".join(p.removeprefix(f"{where}: ") for p in problems)
    return SkippedItem(where, text, digest(identity(item, value_path)))


def build(config: SourceConfig) -> HttpJsonSource:
    return HttpJsonSource(config)


register_type(SourceType("http_json", KEYS, parse, build, TABLES))

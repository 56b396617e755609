"""`openmeter` source: usage from OpenMeter's meter query API (Cloud or self-hosted).

Per poll and meter: ``GET {url}/api/v1/meters/{slug}/query?from=..&to=..&windowSize=HOUR&windowTimeZone=UTC``
(grouped by subject, or by `account_group_by`). Each returned window is the
meter's total for one subject: account = subject (or the group value),
metric = the name the meter is mapped to in `meters`, time = windowStart.
The window [newest stored - overlap, now] is aligned to the window size, so
windows are re-read whole and replace what is stored; the still-open window
is read too and replaced as it grows. A malformed row fails the poll (nothing
stored), or with `on_error = "skip"` is left out and told once
(integrations.sources.skipped).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from integrations.sources.base import (
    Batch,
    PollContext,
    SourceConfig,
    SourceError,
    SourceSettings,
    SourceType,
    malformed_error,
    newest,
    read_window,
    register_type,
    str_map,
    window_label,
)
from integrations.sources.csv_rows import parse_timestamp
from integrations.sources.http_fetch import (
    RETRY_KEYS,
    Auth,
    Fetcher,
    RetryPolicy,
    parse_retry,
    register_url_secrets,
)
from integrations.sources.http_json import format_time, parse_value
from integrations.sources.records import UsageRecord, id_problem, is_metric_name
from integrations.sources.skipped import Malformed, parse_on_error
from rules.config import Secret, Section
from rules.config.urls import url_problem

KEYS = ("url", "api_prefix", "token", "token_file", "meters", "window_size", "account_group_by", "subjects",
        "on_error", *RETRY_KEYS)
WINDOW_SIZES = {"MINUTE": 60, "HOUR": 3600, "DAY": 86_400}


@dataclass(frozen=True)
class OpenMeterOptions:
    meters: Mapping[str, str]  # meter slug -> usagebot metric
    url: str = "https://openmeter.cloud"
    api_prefix: str = "/api/v1"
    token: Secret | None = None
    window_size: str = "HOUR"
    account_group_by: str | None = None
    subjects: tuple[str, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_error: str = "reject"  # "skip": leave a malformed row out (told once), store the rest


def parse_meters(section: Section) -> dict[str, str]:
    meters = str_map(section, "meters")
    if not section.has("meters") or not meters:
        section.problem("meters", "is required: a table of meter -> usagebot metric, e.g. "
                                  "meters = { api_requests_total = \"api_calls\" }")
    for k, v in meters.items():
        if not is_metric_name(v):
            section.table("meters").problem(k, f"{v!r} is not a metric name (letters, digits and _ . : -)")
    return meters


def parse(section: Section, settings: SourceSettings) -> OpenMeterOptions | None:
    url = (section.str("url", "https://openmeter.cloud") or "").rstrip("/")
    register_url_secrets(url)
    if not url.startswith(("http://", "https://")):
        section.problem("url", "must start with http:// or https://")
    elif url_problem(url) is not None:
        section.problem("url", str(url_problem(url)))
    meters = parse_meters(section)
    size = (section.str("window_size", "HOUR", choices=tuple(WINDOW_SIZES)) or "HOUR")
    opts = OpenMeterOptions(
        meters=meters, url=url, api_prefix="/" + (section.str("api_prefix", "/api/v1") or "").strip("/"),
        token=section.secret("token"), window_size=size, account_group_by=section.str("account_group_by"),
        subjects=tuple(section.str_list("subjects")), retry=parse_retry(section), on_error=parse_on_error(section))
    return opts if meters else None


class OpenMeterSource:
    def __init__(self, config: SourceConfig, fetcher: Fetcher | None = None) -> None:
        self.id = config.id
        self.settings = config.settings
        self.o: OpenMeterOptions = config.options
        auth = Auth("bearer", token=self.o.token) if self.o.token else Auth()
        self.fetcher = fetcher or Fetcher(self.id, auth=auth, retry=self.o.retry)

    def close(self) -> None:
        self.fetcher.close()

    def _rows(self, slug: str, metric: str, body: Any, bad: Malformed) -> list[UsageRecord]:
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, list):
            raise SourceError(f"source {self.id!r}: meter {slug!r}: the response has no 'data' list "
                              f"(got {type(body).__name__}); is the url an OpenMeter API?")
        out: list[UsageRecord] = []
        for i, row in enumerate(data):
            where = f"meter {slug!r}, data[{i}]"
            if not isinstance(row, Mapping):
                bad.add(where, f"expected an object, got {type(row).__name__}", slug, row)
                continue
            if self.o.account_group_by:
                account = (row.get("groupBy") or {}).get(self.o.account_group_by)
                what = f"groupBy.{self.o.account_group_by}"
            else:
                account, what = row.get("subject"), "subject"
            if account is None or not str(account).strip():
                bad.add(where, f"no {what} (the account); set account_group_by if accounts are a group-by key",
                        slug, row)
                continue
            why = id_problem(str(account).strip(), f"{what} (the account)")
            if why is not None:
                bad.add(where, why, slug, row)
                continue
            try:
                ts = parse_timestamp(str(row.get("windowStart", "")))
                value = parse_value(row.get("value"))
            except ValueError as exc:
                bad.add(where, str(exc), slug, row)
                continue
            if not math.isfinite(value):
                bad.add(where, "value is not finite", slug, row)
                continue
            out.append(UsageRecord(str(account).strip(), metric, ts, value))
        return out

    def _read(self, start: int, end: int) -> tuple[tuple[list[UsageRecord], Malformed], int]:
        """Every meter's windows in [start, end) (one request a meter)."""
        records: list[UsageRecord] = []
        bad = Malformed(value_path="value")
        for slug, metric in self.o.meters.items():
            params: dict[str, Any] = {"from": format_time(start, "iso"), "to": format_time(end, "iso"),
                                      "windowSize": self.o.window_size, "windowTimeZone": "UTC"}
            if self.o.account_group_by:
                params["groupBy"] = self.o.account_group_by
            if self.o.subjects:
                params["subject"] = list(self.o.subjects)
            url = f"{self.o.url}{self.o.api_prefix}/meters/{quote(slug, safe='')}/query"
            body, _ = self.fetcher.get_json(url, params, what=f"meter {slug}")
            records += self._rows(slug, metric, body, bad)
        if bad.problems and self.o.on_error == "reject":
            raise malformed_error(self.id, bad.problems, "malformed row(s)")
        return (records, bad), 1

    def poll(self, ctx: PollContext) -> Iterator[Batch]:
        """One window for every meter; an answer past max_response_bytes or a poll past poll_deadline
        reads a shorter one (integrations.sources.base.read_window)."""
        self.fetcher.begin_poll()
        size = WINDOW_SIZES[self.o.window_size]
        (records, bad), read = read_window(ctx, self.settings.overlap, self.settings.backfill, size, 1, self._read,
                                           full_end=-(-ctx.now // size) * size)  # the open window too
        watermark = newest(records, ctx.watermark, ctx.now)
        yield Batch(cursor=read.cursor(watermark), watermark=watermark, totals=records,
                    label=f"{len(self.o.meters)} meter(s), {window_label(read.start, read.end)}", skipped=bad.items,
                    behind=read.behind())


def build(config: SourceConfig) -> OpenMeterSource:
    return OpenMeterSource(config)


register_type(SourceType("openmeter", KEYS, parse, build))

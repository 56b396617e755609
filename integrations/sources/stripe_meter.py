"""`stripe_meter` source: Stripe Billing meter event summaries.

Per poll, meter and customer:
``GET {url}/v1/billing/meters/{meter}/event_summaries?customer=..&start_time=..&end_time=..&value_grouping_window=hour``
following `has_more` / `starting_after`. Each summary is the meter's total
for one customer in one hour (or day): account = the account mapped to the
customer, metric = the name the meter is mapped to, time = start_time.
Stripe asks for one customer per request, so the customers are listed in
`customers` (account id -> Stripe customer id), or `customers_from_accounts =
true` takes every stored account id as its Stripe customer id. A malformed
summary fails the poll (nothing stored), or with `on_error = "skip"` is left
out and told once (integrations.sources.skipped).
"""

from __future__ import annotations

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
    WindowTooLarge,
    malformed_error,
    newest,
    read_window,
    register_type,
    str_map,
    window_label,
)
from integrations.sources.http_fetch import (
    RETRY_KEYS,
    Auth,
    Fetcher,
    RetryPolicy,
    parse_retry,
    register_url_secrets,
)
from integrations.sources.http_json import parse_value
from integrations.sources.openmeter import parse_meters
from integrations.sources.records import UsageRecord, time_problem
from integrations.sources.skipped import Malformed, parse_on_error
from rules.config import Secret, Section
from rules.config.urls import url_problem

KEYS = ("url", "api_key", "api_key_file", "meters", "customers", "customers_from_accounts", "grouping",
        "max_pages", "on_error", *RETRY_KEYS)
GROUPINGS = {"hour": 3600, "day": 86_400}


@dataclass(frozen=True)
class StripeOptions:
    api_key: Secret
    meters: Mapping[str, str]  # meter id -> usagebot metric
    customers: Mapping[str, str] = field(default_factory=dict)  # account id -> customer id
    customers_from_accounts: bool = False
    url: str = "https://api.stripe.com"
    grouping: str = "hour"
    max_pages: int = 100
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_error: str = "reject"  # "skip": leave a malformed summary out (told once), store the rest


def parse(section: Section, settings: SourceSettings) -> StripeOptions | None:
    key = section.secret("api_key", required=True)
    meters = parse_meters(section)
    customers = str_map(section, "customers")
    from_accounts = bool(section.bool("customers_from_accounts", False))
    if not customers and not from_accounts:
        section.problem("customers", "give customers = { <account id> = \"cus_...\" } or "
                                     "customers_from_accounts = true (Stripe summaries are per customer)")
    url = (section.str("url", "https://api.stripe.com") or "").rstrip("/")
    register_url_secrets(url)
    if not url.startswith(("http://", "https://")):
        section.problem("url", "must start with http:// or https://")
    elif url_problem(url) is not None:
        section.problem("url", str(url_problem(url)))
    grouping = section.str("grouping", "hour", choices=tuple(GROUPINGS)) or "hour"
    if key is None or not meters:
        return None
    return StripeOptions(api_key=key, meters=meters, customers=customers, customers_from_accounts=from_accounts,
                         url=url, grouping=grouping, max_pages=section.int("max_pages", 100, min=1) or 100,
                         retry=parse_retry(section), on_error=parse_on_error(section))


class StripeMeterSource:
    def __init__(self, config: SourceConfig, fetcher: Fetcher | None = None) -> None:
        self.id = config.id
        self.settings = config.settings
        self.o: StripeOptions = config.options
        self.fetcher = fetcher or Fetcher(self.id, auth=Auth("bearer", token=self.o.api_key), retry=self.o.retry)

    def close(self) -> None:
        self.fetcher.close()

    def _customers(self, ctx: PollContext) -> dict[str, str]:
        out = dict(self.o.customers)
        if self.o.customers_from_accounts:
            for a in ctx.accounts():
                out.setdefault(a.id, a.id)
        return out

    def _summaries(self, meter: str, customer: str, start: int, end: int) -> Iterator[tuple[int, str, Any]]:
        """(page, position, item) of every summary of [start, end) of a meter and customer."""
        url = f"{self.o.url}/v1/billing/meters/{quote(meter, safe='')}/event_summaries"
        params: dict[str, Any] = {"customer": customer, "start_time": start, "end_time": end,
                                  "value_grouping_window": self.o.grouping, "limit": 100}
        for page in range(1, self.o.max_pages + 1):
            body, _ = self.fetcher.get_json(url, params, what=f"meter {meter}, customer {customer}, page {page}")
            data = body.get("data") if isinstance(body, Mapping) else None
            if not isinstance(data, list):
                raise SourceError(f"source {self.id!r}: meter {meter!r}, customer {customer!r}: the response has "
                                  f"no 'data' list; is the url the Stripe API?")
            yield from ((page, f"page {page}, data[{i}]", item) for i, item in enumerate(data))
            if not body.get("has_more") or not data:
                return
            last = data[-1].get("id") if isinstance(data[-1], Mapping) else None
            if not last:
                raise SourceError(f"source {self.id!r}: meter {meter!r}: has_more without an id to continue after")
            params["starting_after"] = last
        where = f"meter {meter!r}, customer {customer!r}"
        raise WindowTooLarge(f"source {self.id!r}: {where}: more than {self.o.max_pages} pages; raise max_pages "
                             "(nothing was stored)", f"more than {self.o.max_pages} pages", "max_pages", where)

    def _read(self, customers: Mapping[str, str], start: int, end: int) -> tuple[tuple[list[UsageRecord], Malformed], int]:
        """The summaries of [start, end) of every meter and customer, and the most pages one of them took."""
        records: list[UsageRecord] = []
        bad = Malformed(value_path="aggregated_value")
        most = 0
        for meter, metric in self.o.meters.items():
            for account, customer in sorted(customers.items()):
                for page, pos, item in self._summaries(meter, customer, start, end):
                    most = max(most, page)
                    where = f"meter {meter!r}, customer {customer!r}, {pos}"
                    if not isinstance(item, Mapping):
                        bad.add(where, f"expected an object, got {type(item).__name__}", meter, customer, item)
                        continue
                    ts = item.get("start_time")
                    if isinstance(ts, bool) or not isinstance(ts, int):
                        bad.add(where, f"start_time must be epoch seconds, got {repr(ts)[:80]}", meter, customer,
                                item)
                        continue
                    if (why := time_problem(ts)) is not None:
                        bad.add(where, f"start_time: {why}", meter, customer, item)
                        continue
                    try:
                        value = parse_value(item.get("aggregated_value"))
                    except ValueError as exc:
                        bad.add(where, f"aggregated_value: {exc}", meter, customer, item)
                        continue
                    records.append(UsageRecord(account, metric, ts, value))
        if bad.problems and self.o.on_error == "reject":
            raise malformed_error(self.id, bad.problems, "malformed summary item(s)")
        return (records, bad), most

    def poll(self, ctx: PollContext) -> Iterator[Batch]:
        """One window for every meter and customer: when one of them needs more than max_pages pages, the
        poll reads a shorter window for all (integrations.sources.base.read_window)."""
        self.fetcher.begin_poll()
        size = GROUPINGS[self.o.grouping]
        customers = self._customers(ctx)
        (records, bad), read = read_window(ctx, self.settings.overlap, self.settings.backfill, size,
                                           self.o.max_pages, lambda s, e: self._read(customers, s, e),
                                           full_end=-(-ctx.now // size) * size)  # the open bucket too
        watermark = newest(records, ctx.watermark, ctx.now)
        yield Batch(cursor=read.cursor(watermark), watermark=watermark, totals=records,
                    label=f"{len(self.o.meters)} meter(s) x {len(customers)} customer(s), "
                          f"{window_label(read.start, read.end)}", skipped=bad.items, behind=read.behind())


def build(config: SourceConfig) -> StripeMeterSource:
    return StripeMeterSource(config)


register_type(SourceType("stripe_meter", KEYS, parse, build))

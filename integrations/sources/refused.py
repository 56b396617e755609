"""The buckets of a delivery the store refuses, and the delivery without them.

A bucket whose values add up past the largest float64 (1e308 twice in a minute: a wrong unit, a
corrupt row) cannot be stored. Used by the poll runner (bot.service.polling) and push ingest. A batch that says what skipping it means (`Batch.rejected_cursor`: a
csv file, a unit the admin fixes and drops again) is rejected whole by the poll runner. Every other
batch (a window, the pages of a cursor, an event feed) would lose the good rows of its whole part
if it were skipped, and fail every poll forever if it were not: so only the refused buckets are
left out, the rest of the batch is stored in its one transaction (with its cursor, so the poll
goes on, and a watermark that counts only the rows stored), and each refused bucket is told once to the admin channel (through the
outbox, in that transaction), in the poll report and in the log. A window source reads a refused
bucket again while it is within the overlap: it is refused again, not told again (its notice's
idempotency key, per source and bucket, is already in the outbox). The bucket keeps what was
stored for it before. A pushed request is stored the same way, without the events of its refused
buckets, and the answer lists them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TypeVar

from integrations.sources.base import Batch, UsageEvent
from integrations.sources.records import UsageRecord
from storage.outbox import idempotency_key
from storage.sources import BASE_STEP
from storage.usage_values import UsageValueError, newest_ts, overflow_error

Bucket = tuple[str, str, int]  # (account, metric, bucket start) as the store keys its totals
T = TypeVar("T")


@dataclass(frozen=True)
class Refusal:
    """One refused bucket: what it is, why, and the idempotency key of its notice."""

    bucket: Bucket
    reason: str  # the store's words, without the source's name

    def key(self, source_id: str) -> str:
        """Per source and bucket, its parts JSON-encoded (an account id or metric may hold ':')."""
        account, metric, start = self.bucket
        return idempotency_key("source-refused", source_id, account, metric, start)


def bucket_of(row: UsageRecord | UsageEvent) -> Bucket:
    ts = int(row.ts)
    return (row.account, row.metric, ts - ts % BASE_STEP)


def overflowing_totals(totals: Iterable[UsageRecord], source_id: str) -> dict[Bucket, Refusal]:
    """The buckets whose totals in this batch are not finite (totals replace what is stored, so
    the batch alone decides; one pass, as storage.sources._sums adds them)."""
    sums: dict[Bucket, float] = {}
    for r in totals:
        b = bucket_of(r)
        sums[b] = sums.get(b, 0.0) + float(r.value)
    return {b: refusal(overflow_error(f"source {source_id!r}", *b), source_id)
            for b, v in sums.items() if not math.isfinite(v)}


def refusal(exc: UsageValueError, source_id: str) -> Refusal:
    """The refusal of the bucket `exc` names (it must name one)."""
    assert exc.bucket is not None
    reason = str(exc).removeprefix(f"source {source_id!r}: ").removeprefix("usage write: ")
    return Refusal(exc.bucket, reason.replace("; nothing was stored", ""))  # the rest of the batch is


def without(batch: Batch, refused: Iterable[Bucket]) -> Batch:
    """The batch without the rows of the refused buckets (same cursor and label). Its watermark is
    the newest row it still stores (None: none, the stored watermark stays; store_batch keeps the
    later of the two), never a refused row's: the watermark says how far the stored data reach."""
    out = set(refused)
    totals = [r for r in batch.totals if bucket_of(r) not in out]
    events = [e for e in batch.events if bucket_of(e) not in out]
    newest = newest_ts((), [*totals, *events])
    watermark = None if newest is None or batch.watermark is None else min(newest, batch.watermark)
    return replace(batch, totals=totals, events=events, watermark=watermark, rejected_cursor=None)


def message(source_id: str, part: str, refusals: list[Refusal]) -> str:
    """The poll's words about the buckets it newly refused (for the log, the report, last_error)."""
    listed = "\n  ".join(r.reason for r in refusals)
    return (f"source {source_id!r}: {part}: {len(refusals)} bucket(s) refused, not stored (each keeps what was "
            f"stored for it before); the rest of this part was stored:\n  {listed}")


def refusing(store: Callable[[dict[Bucket, Refusal]], T], exc: UsageValueError, source_id: str,
             totals: Iterable[UsageRecord] = ()) -> T:
    """`store(refused)` (a write that leaves the refused buckets out) after the store refused the
    whole delivery with `exc`. Every bucket of `totals` that overflows is known before the first try;
    each try the store refuses names one more (events: a stored total plus new events). A refusal
    naming no bucket, or one already left out, is raised: the write fails, named, as before."""
    refused = overflowing_totals(totals, source_id)  # (a non-finite row value too)
    if exc.bucket is not None:
        refused.setdefault(exc.bucket, refusal(exc, source_id))
    if not refused:
        raise exc
    while True:
        try:
            return store(refused)
        except UsageValueError as again:
            if again.bucket is None or again.bucket in refused:
                raise
            refused[again.bucket] = refusal(again, source_id)

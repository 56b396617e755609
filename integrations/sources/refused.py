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
buckets, and the answer lists them. Every refused bucket of a delivery is found in one pass before
it is stored again (overflows(): 300 refused buckets were 301 store transactions, now 2), after
deduplication: an event of a refused bucket that was counted before stays a duplicate. An event id
is one event: the copy the store counts is its first one, and if that copy's bucket is refused,
every copy of the id in the delivery is left out with it (kept_events), push and poll alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from sqlalchemy.engine import Engine

from integrations.sources.base import Batch, UsageEvent
from integrations.sources.records import UsageRecord
from storage.outbox import idempotency_key, untold
from storage.sources import BASE_STEP, added_overflows
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


@dataclass(frozen=True)
class Overflows:
    """Every bucket of a delivery the store would refuse, found in one pass before storing, and the
    bucket of each new id's counted copy (an id stored before is not in it: a duplicate, never
    listed as refused)."""

    refused: dict[Bucket, Refusal]
    counted: Mapping[str, Bucket] = field(default_factory=dict)  # new id -> the bucket of its counted copy

    def refused_ids(self, refused: Container[Bucket]) -> set[str]:
        """The event ids refused with `refused`: those whose counted copy (the first) is in one of
        them. An id is one event: every copy of it in the delivery is left out with its first one,
        a later copy in another bucket too (kept, it would be counted there, and a corrected re-send
        of the event would then be a duplicate)."""
        return {i for i, b in self.counted.items() if b in refused}


def bucket_of(row: UsageRecord | UsageEvent) -> Bucket:
    ts = int(row.ts)
    return (row.account, row.metric, ts - ts % BASE_STEP)


def _total_sums(totals: Iterable[UsageRecord]) -> dict[Bucket, float]:
    """The batch's totals per bucket, summed in order as storage.sources._sums adds them."""
    sums: dict[Bucket, float] = {}
    for r in totals:
        b = bucket_of(r)
        sums[b] = sums.get(b, 0.0) + float(r.value)
    return sums


def overflows(engine: Engine, source_id: str, totals: Iterable[UsageRecord] = (),
              events: Iterable[UsageEvent] = ()) -> Overflows:
    """Every bucket of a delivery whose stored value would not be finite, in one pass and one read:
    a total of the batch's totals (they replace what is stored, so the batch alone decides), or the
    stored total (the batch's own, for a bucket it also has totals of) plus the events not seen
    before (storage.sources.added_overflows). 300 refused buckets were 301 store transactions,
    one more bucket found per try (12-17 s); now one read and one store."""
    sums = _total_sums(totals)
    refused = {b: refusal(overflow_error(f"source {source_id!r}", *b), source_id)
               for b, v in sums.items() if not math.isfinite(v)}
    event_list = list(events)
    if not event_list:
        return Overflows(refused)
    added, counted = added_overflows(engine, source_id, event_list, replaced=sums, base_step=BASE_STEP)
    for b, stored in added.items():
        refused.setdefault(b, refusal(overflow_error(f"source {source_id!r}", *b, stored=stored), source_id))
    return Overflows(refused, counted)


def refusal(exc: UsageValueError, source_id: str) -> Refusal:
    """The refusal of the bucket `exc` names (it must name one)."""
    assert exc.bucket is not None
    reason = str(exc).removeprefix(f"source {source_id!r}: ").removeprefix("usage write: ")
    return Refusal(exc.bucket, reason.replace("; nothing was stored", ""))  # the rest of the batch is


def newly_refused(engine: Engine, source_id: str, refused: Mapping[Bucket, Refusal]) -> list[Refusal]:
    """The refused buckets not told before (their notice's key is in no outbox row), in bucket order."""
    return untold(engine, [refused[b] for b in sorted(refused)], lambda r: r.key(source_id))


def kept_events(events: Iterable[UsageEvent], refused: Container[Bucket], found: Overflows) -> list[UsageEvent]:
    """The events stored beside the refused buckets: every copy of an id whose counted copy (its
    first) is not in a refused bucket (Overflows.refused_ids). So an event of a refused bucket
    stored before (not in `found.counted`) is kept (it adds nothing, the store counts it as a
    duplicate), a later copy in a refused bucket of an id counted in another bucket is kept (a
    duplicate within the delivery), and a later copy in a good bucket of an id counted in a refused
    one is left out with it (kept, the store would count it there and take the corrected re-send
    for a duplicate). Events of a refused bucket the store does not count at all (older than the
    pruning horizon) are kept: it counts them as expired."""
    out = found.refused_ids(refused)
    return [e for e in events if e.id not in out]


def without(batch: Batch, refused: Iterable[Bucket], found: Overflows) -> Batch:
    """The batch without the rows of the refused buckets and every copy of their events
    (kept_events; same cursor and label). Its
    watermark is the newest row it still stores (None: none, the stored watermark stays; store_batch
    keeps the later of the two), never a refused row's: the watermark says how far the stored data reach."""
    out = set(refused)
    totals = [r for r in batch.totals if bucket_of(r) not in out]
    events = kept_events(batch.events, out, found)
    newest = newest_ts((), [*totals, *events])
    watermark = None if newest is None or batch.watermark is None else min(newest, batch.watermark)
    return replace(batch, totals=totals, events=events, watermark=watermark, rejected_cursor=None)


def message(source_id: str, part: str, refusals: list[Refusal]) -> str:
    """The poll's words about the buckets it newly refused (for the log, the report, last_error)."""
    listed = "\n  ".join(r.reason for r in refusals)
    return (f"source {source_id!r}: {part}: {len(refusals)} bucket(s) refused, not stored (each keeps what was "
            f"stored for it before); the rest of this part was stored:\n  {listed}")


def refusing(store: Callable[[dict[Bucket, Refusal]], T], exc: UsageValueError, source_id: str,
             found: Overflows) -> T:
    """`store(refused)` (a write that leaves the refused buckets out) after the store refused the
    whole delivery with `exc`. Every overflowing bucket is known before the first try (`found`:
    overflows()); a try the store still refuses (a writer changed a stored total meanwhile) names
    one more: the loop is a safety net. A refusal naming no bucket, or one already left out, is
    raised: the write fails, named, as before."""
    refused = dict(found.refused)  # (a non-finite row value too)
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

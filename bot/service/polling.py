"""Poll one usage source and store what it delivers (one transaction per batch).

A failing poll keeps the source's cursor, counts the failure and records the
error (the source's message already names the file/page/field and never a
secret); the next poll resumes from the last stored batch. A rejected part of
a poll (a bad file in a drop folder) is stored as "seen", reported to the
admin channel, and the rest of the poll goes on. A bucket whose values add up
past a float64 is left out of its batch, told once, and the rest of the batch
is stored (integrations.sources.refused). So are the malformed items a source
with `on_error = "skip"` left out (integrations.sources.skipped): one notice per
item not told before, in the transaction that stores the rest. A window source
whose window needs too many pages reads and stores a shorter one and says how far
it read (PollReport.behind, logged); the next poll goes on from there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy.engine import Engine

from bot.service.alerts import admin_notice, refusal_notices, skipped_notices
from bot.service.notices import notice_items
from integrations.notice import AlertNotice
from integrations.sources import refused as refused_
from integrations.sources import skipped as skipped_
from integrations.sources.base import Batch, PollContext, Source, SourceError
from rules.config.redaction import mask
from storage.accounts import list_accounts
from storage.db import redact_url
from storage.outbox import idempotency_key, untold
from storage.sources import get_source_state, record_failure, store_batch
from storage.usage import UsageValueError

log = logging.getLogger(__name__)


@dataclass
class PollReport:
    source_id: str
    at: int
    ok: bool = True
    batches: int = 0
    rows: int = 0  # usage rows / events delivered by the source
    points_written: int = 0  # usage points inserted or changed
    events_new: int = 0
    events_duplicate: int = 0
    events_expired: int = 0  # older than the pruning horizon: not counted (their ids may be forgotten)
    changed: set[tuple[str, str]] = field(default_factory=set)  # (account, metric)
    # parts rejected (a bad file) and buckets refused (past a float64) newly told: usagebot_source_rejected_total
    # (`rejected` holds the words, skipped items' too: those count in `skipped`)
    rejections: int = 0
    rejected: list[str] = field(default_factory=list)
    skipped: int = 0  # malformed items left out (on_error = "skip"), told or not
    error: str | None = None
    seconds: float = 0.0
    settling: list[tuple[str, int]] = field(default_factory=list)  # (file, ready at) left for a later poll
    # a window source that read a shorter window (too many pages for the whole): how far, how many polls
    # behind (Batch.behind); the service polls it again at once
    behind: str | None = None


def _store(engine: Engine, source: Source, batch: Batch, now: int, admin_channel: str | None,
           report: PollReport, notifiers: Sequence[str]) -> str | None:
    """Store one batch; returns the cursor stored. When the store refuses the batch's values (a
    bucket total past a float64), a batch that says what to store then (Batch.rejected_cursor: a
    csv file) is stored as a rejected part, and any other is stored without the refused buckets
    (integrations.sources.refused), so one bad bucket neither loses its part's good rows nor stops every
    later poll."""
    try:
        _store_one(engine, source, batch, now, admin_channel, report, notifiers)
        return batch.cursor
    except UsageValueError as exc:
        if batch.rejected_cursor is None:
            if batch.columns:  # (csv columns always say what to store instead)
                raise
            _store_refusing(engine, source, batch, exc, now, admin_channel, report, notifiers)
            return batch.cursor
        # watermark None: the store keeps the stored one (nothing of the refused part was stored)
        rejected = Batch(cursor=batch.rejected_cursor, watermark=None, label=batch.label,
                         error=f"source {source.id!r}: {batch.label} rejected, nothing stored from it:"
                               f" {_unnamed(exc, source.id)}")
        _store_one(engine, source, rejected, now, admin_channel, report, notifiers)
        return rejected.cursor


def _store_refusing(engine: Engine, source: Source, batch: Batch, exc: UsageValueError, now: int,
                    admin_channel: str | None, report: PollReport, notifiers: Sequence[str]) -> None:
    """Store `batch` without the buckets the store refuses (integrations.sources.refused), in one
    transaction with the notices of those not told before and the batch's own error notice (if any).
    Every overflowing bucket is found in one read first (refused_.overflows), not one store per bucket."""
    found = refused_.overflows(engine, source.id, batch.totals, batch.events)

    def store(refused: dict[refused_.Bucket, refused_.Refusal]) -> None:
        new = refused_.newly_refused(engine, source.id, refused)
        kept = refused_.without(batch, refused, found)
        if new:
            told_now = refused_.message(source.id, batch.label, new)
            kept.error = f"{batch.error}\n{told_now}" if batch.error else told_now
        notices = refusal_notices(source.id, batch.label, new, now, admin_channel)
        if batch.error:  # the batch's own error (e.g. rows skipped) is told as without a refusal
            notices.append(_error_notice(source.id, batch.label, batch.error, now, admin_channel))
        _store_one(engine, source, kept, now, admin_channel, report, notifiers, notices,
                   rejections=len(new) + (1 if batch.error and not batch.skipped_rows else 0))

    refused_.refusing(store, exc, source.id, found)


def _unnamed(exc: UsageValueError, source_id: str) -> str:
    """The store's refusal without the source's name it may start with (store_batch names it)."""
    return str(exc).removeprefix(f"source {source_id!r}: ")


def _error_notice(source_id: str, label: str, error: str, now: int, admin_channel: str | None) -> AlertNotice:
    """The admin notice of a part's error (a rejected file, skipped rows), once per part and poll."""
    return admin_notice("rejected", source_id, mask(error), now, admin_channel, "warning",
                        details={"source": source_id, "part": mask(label)},
                        key=idempotency_key("source-rejected", source_id, label, now))


def _store_one(engine: Engine, source: Source, batch: Batch, now: int, admin_channel: str | None,
               report: PollReport, notifiers: Sequence[str], notices: Sequence[AlertNotice] | None = None,
               rejections: int | None = None) -> None:
    """Store one batch with its admin notices (default: one about `batch.error`, if any) and one per
    skipped item not told before, then report it. rejections: the parts and buckets it tells as
    rejected (default: 1 for a batch error, a rejected part)."""
    if rejections is None:  # (a batch whose error only lists its skipped rows stored the rest: not rejected)
        rejections = 1 if batch.error and not batch.skipped_rows else 0
    if batch.error:
        batch.error = mask(batch.error)
    if notices is None:
        notices = [_error_notice(source.id, batch.label, batch.error, now, admin_channel)] if batch.error else []
    if batch.skipped:
        batch, notices = _with_skipped(engine, source.id, batch, now, admin_channel, notices)
    outbox = [item for notice in notices for item in notice_items(notice, now, notifiers)]
    res = store_batch(engine, source.id, now, totals=batch.totals, columns=batch.columns, events=batch.events,
                      accounts=batch.accounts, cursor=batch.cursor, watermark=batch.watermark,
                      outbox=outbox, error=batch.error)
    if batch.error:  # reported once stored (a store that raises stored nothing, its notice included)
        report.rejected.append(batch.error)
        log.warning(batch.error, extra={"source": source.id, "event": "source_rejected", "part": batch.label})
    report.batches += 1
    report.rows += batch.rows
    report.skipped += len(batch.skipped) + batch.skipped_rows
    report.rejections += rejections
    report.points_written += res.points_written
    report.events_new += res.events_new
    report.events_duplicate += res.events_duplicate
    report.events_expired += res.events_expired
    if res.events_expired:
        log.warning("source %s: %d event(s) older than the deduplication horizon were not counted",
                    source.id, res.events_expired, extra={"source": source.id, "event": "events_expired"})
    report.changed |= set(res.changed)


def _with_skipped(engine: Engine, source_id: str, batch: Batch, now: int, admin_channel: str | None,
                  notices: Sequence[AlertNotice]) -> tuple[Batch, list[AlertNotice]]:
    """The batch with its error saying which skipped items are new, and the notices with one per new
    item (an item whose key is in the outbox was told by an earlier poll: integrations.sources.skipped)."""
    new = untold(engine, batch.skipped, lambda s: s.key(source_id))
    if not new:
        return batch, list(notices)
    said = mask(skipped_.message(source_id, batch.label, new))
    error = f"{batch.error}\n{said}" if batch.error else said
    return (replace(batch, error=error),
            [*notices, *skipped_notices(source_id, batch.label, new, now, admin_channel)])


def poll_source(engine: Engine, source: Source, now: int, admin_channel: str | None = None,
                timer: Callable[[], float] = time.perf_counter,
                notifiers: Sequence[str] = ("console",)) -> PollReport:
    """Run one poll of `source` at time `now`; never raises for a source problem (see the report).

    notifiers: who gets an admin notice about a rejected part (one outbox row each)."""
    started = timer()
    report = PollReport(source.id, now)
    state = get_source_state(engine, source.id)
    ctx = PollContext(source_id=source.id, now=now, cursor=state.cursor if state else None,
                      watermark=state.watermark if state else None, accounts=lambda: list_accounts(engine))
    failed_cursor: str | None = None  # a failing poll's own cursor to store (SourceError.cursor)
    try:
        for batch in source.poll(ctx):
            cursor = _store(engine, source, batch, now, admin_channel, report, notifiers)
            ctx = PollContext(source.id, now, cursor, batch.watermark, ctx.accounts)
            if batch.behind:
                report.behind = f"source {source.id!r}: {batch.behind}"
                log.info(report.behind, extra={"source": source.id, "event": "poll_behind"})
        if report.batches == 0:  # nothing new: still a successful poll (freshness, last success)
            store_batch(engine, source.id, now, cursor=ctx.cursor, watermark=ctx.watermark)
    except SourceError as exc:
        report.ok, report.error = False, mask(str(exc))
        failed_cursor = exc.cursor
    except UsageValueError as exc:  # the source's values overflow a bucket: its data, not a bug
        report.ok, report.error = False, mask(f"source {source.id!r}: {_unnamed(exc, source.id)}")
    except Exception as exc:  # a bug or a database problem: keep the service running, report it
        report.ok = False
        report.error = mask(redact_url(f"source {source.id!r}: unexpected {type(exc).__name__}: {exc}"))
        log.exception("poll of %s failed unexpectedly", source.id, extra={"source": source.id})
    if not report.ok and report.error:
        try:
            record_failure(engine, source.id, report.error, now, cursor=failed_cursor)
        except Exception:  # the database itself is down: nothing more to record
            log.exception("cannot record the failed poll of %s", source.id, extra={"source": source.id})
        log.warning(report.error, extra={"source": source.id, "event": "poll_failed"})
    report.settling = list(getattr(source, "settling", None) or [])
    report.seconds = timer() - started
    return report

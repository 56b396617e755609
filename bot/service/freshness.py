"""Source freshness: "stale source" notices to the admin channel instead of drop alerts to owners.

A source is stale when it has brought no new data for `stale_after` (polls
failing, or succeeding with nothing new). On the transition to stale one
notice goes to the admin channel (through the outbox, like every alert); on
recovery another. While a source is stale, the (metric, account) series it
feeds are muted in evaluation (bot.service.pipeline.run_cycle(muted=...)): no drop or
inactivity alert fires, and no open episode resolves, for data that is
missing because the pipe broke rather than because usage fell.

Admin notices are alert notices (integrations.notice, audience "admin") so every notifier
renders them: kind "source", routing to the admin channel only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from bot.service.alerts import admin_notice
from bot.service.notices import notice_items
from rules.durations import format_duration
from rules.periods import iso
from storage.sources import SourceState, list_source_states, series_of, set_stale

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watch:
    source_id: str
    stale_after: int


def stale_since(state: SourceState | None, stale_after: int, now: int) -> int | None:
    """When the source's data stopped (if that is more than `stale_after` ago), else None."""
    if state is None:
        return None
    ref = state.last_new_data_at if state.last_new_data_at is not None else state.registered_at
    if ref is None or now - ref <= stale_after:
        return None
    return ref


@dataclass
class FreshnessReport:
    stale: list[str] = field(default_factory=list)  # stale now
    became_stale: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)


def _stale_message(s: SourceState, ref: int, now: int, stale_after: int) -> str:
    last = f"new data last arrived {iso(ref)} ({format_duration(max(0, now - ref))} ago)" \
        if s.last_new_data_at is not None else f"no data at all since it was set up {iso(ref)}"
    err = f" Last poll error: {s.last_error}" if s.last_error else ""
    fails = f" {s.failures} poll(s) in a row failed." if s.failures else ""
    muted = f" Alerts on {', '.join(s.metrics)} for its accounts are paused until it recovers." if s.metrics else ""
    return (f"Usage source '{s.source_id}' is stale: {last}, more than stale_after "
            f"{format_duration(stale_after)}.{fails}{err}{muted}")


def check_freshness(engine: Engine, watches: Iterable[Watch], now: int, admin_channel: str | None,
                    notifiers: Sequence[str] = ("console",)) -> FreshnessReport:
    """Mark sources stale / fresh and enqueue the admin notices of the transitions (one row per notifier)."""
    report = FreshnessReport()
    states = {s.source_id: s for s in list_source_states(engine)}
    for w in watches:
        s = states.get(w.source_id)
        if s is None:
            continue
        ref = stale_since(s, w.stale_after, now)
        if ref is not None:
            report.stale.append(w.source_id)
            if s.stale_since is None:
                msg = _stale_message(s, ref, now, w.stale_after)
                notice = admin_notice("stale", w.source_id, msg, now, admin_channel, "warning", since=ref,
                                      metrics=s.metrics, details={"source": w.source_id,
                                                                  "last_data_at": s.last_data_at,
                                                                  "last_error": s.last_error},
                                      key=f"source-stale:{w.source_id}:{now}")
                set_stale(engine, w.source_id, now, now, notice_items(notice, now, notifiers))
                report.became_stale.append(w.source_id)
                log.warning(msg, extra={"source": w.source_id, "event": "source_stale"})
        elif s.stale_since is not None:
            down = format_duration(max(0, now - s.stale_since))
            msg = (f"Usage source '{w.source_id}' is delivering again (it was marked stale {iso(s.stale_since)}, "
                   f"{down} ago). Alerts on its data resume.")
            notice = admin_notice("recovered", w.source_id, msg, now, admin_channel, "info",
                                  since=s.stale_since, metrics=s.metrics, details={"source": w.source_id},
                                  key=f"source-recovered:{w.source_id}:{s.stale_since}")
            set_stale(engine, w.source_id, None, now, notice_items(notice, now, notifiers))
            report.recovered.append(w.source_id)
            log.info(msg, extra={"source": w.source_id, "event": "source_recovered"})
    return report


def muted_series(engine: Engine, stale_ids: Iterable[str]) -> dict[str, set[str]]:
    """metric -> accounts fed by the stale sources (for run_cycle(muted=...))."""
    return series_of(engine, stale_ids)

"""Inactivity detector: an account that used the metric stopped using it.

Evaluated at at = block.end; NaN means "not observed", never zero.

Window
    The last D = duration // bucket buckets (at least 1). A block with fewer
    than D columns -> undecided. If the missing fraction of the window is
    above `max_missing`, or no bucket of it is observed -> undecided.

Prior window
    The prior_window // bucket buckets immediately before the window (only
    the part the block holds; required_history asks storage for all of it).
    prior usage = nansum of it (missing buckets add nothing).

Condition
    Every observed bucket in the window is exactly 0 AND prior usage >=
    `min_prior_usage` (so accounts that never used the metric do not alert).

Finding
    value = window sum (0), baseline = mean per observed bucket of the prior
    window (None when none observed), threshold None, window_start = start of
    the prior window (clipped to the block), window_end = at; discriminator ""
    and once False. details: last_active (ISO START of the last bucket with
    usage > 0 in the block, or None; printed as that bucket, so a daily account
    last used on 02-09 reads "last active 2026-02-09"), prior_usage,
    inactive_since (ISO start of the window), missing_buckets (in the window).

Open episodes (given by the caller)
    An account that went silent stays inactive until it has usage again: the
    prior window only decides who may fire (it ages out while the account stays
    dead). Decided when the current bucket is observed; holds while it is 0;
    usage > 0 -> a Recovery ("has usage again").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rules.config import values as v
from rules.detectors import format as fmt
from rules.detectors.finding import make_finding
from rules.detectors.opened import open_rows
from rules.detectors.scan import Scanned, trailing_count
from rules.kind_spec import Ending, Field, Kind, Threshold
from rules.model import (
    DAY,
    AccountFacts,
    DetectorResult,
    Finding,
    FindingRows,
    MetricBlock,
    OpenEpisode,
    Recovery,
    Rule,
)
from rules.periods import iso


@dataclass(frozen=True)
class InactivityParams:
    """Fires when every observed bucket in the last `duration` is zero.

    Missing buckets are not zero: if more than `max_missing` (fraction) of the
    buckets in the window are missing, the account is undecided (no alert, no
    resolution). The account must have used at least `min_prior_usage` in the
    `prior_window` before the inactive window, so never-active accounts do not
    alert.
    """

    duration: int = 7 * DAY
    max_missing: float = 0.0
    prior_window: int = 30 * DAY
    min_prior_usage: float = 1.0


def _params(rule: Rule) -> InactivityParams:
    if not isinstance(rule.params, InactivityParams):
        raise TypeError(f"{fmt.rule_location(rule)}: inactivity rule has {type(rule.params).__name__} params")
    return rule.params


def required_history(rule: Rule) -> int:
    params = _params(rule)
    window = max(1, params.duration // rule.bucket)
    prior = params.prior_window // rule.bucket
    return (window + prior) * rule.bucket


def detect_inactivity(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts] = (),
                      open_episodes: Sequence[OpenEpisode] = ()) -> DetectorResult:
    params = _params(rule)
    values = block.values
    rows, n = values.shape
    step = block.step
    width = max(1, params.duration // step)
    if n < width or rows == 0:
        return DetectorResult([], np.zeros(rows, dtype=bool))

    window = values[:, n - width :]
    missing_mask = np.isnan(window)
    missing = np.count_nonzero(missing_mask, axis=1)
    observed = width - missing
    decided = (missing / width <= params.max_missing) & (observed > 0)
    all_zero = np.all((window == 0) | missing_mask, axis=1)

    prior_lo = max(0, n - width - params.prior_window // step)
    prior = values[:, prior_lo : n - width]
    prior_observed = np.count_nonzero(~np.isnan(prior), axis=1)
    prior_usage = np.where(np.isnan(prior), 0.0, prior).sum(axis=1)

    fire = decided & all_zero & (prior_usage >= params.min_prior_usage)
    opened = open_rows(block, open_episodes)
    if opened:
        fire[list(opened)] = False
    fired = np.flatnonzero(fire)
    result = DetectorResult([], decided)
    if opened:
        _judge_open(rule, block, opened, decided, result)
    if fired.size == 0:
        return result

    # Start of the last bucket with usage > 0, for the fired rows only.
    last = last_active_starts(block, fired)
    site, prior_start = block.stub(), block.start + prior_lo * step
    gone, before, seen = missing[fired], prior_usage[fired], prior_observed[fired]

    def build(k: int) -> Finding:
        return _finding(rule, site, int(fired[k]), width, int(gone[k]), float(before[k]), int(seen[k]), last[k],
                        prior_start)

    base = np.divide(before, seen, out=np.full(fired.size, np.nan), where=seen > 0)  # NaN: no baseline (None)
    result.found.append(FindingRows(rule.id, block.metric, rule.severity, block.end, block.account_ids, fired, "",
                                    build, (base,), base))
    return result


def scan_inactivity(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts] = ()) -> Scanned:
    """Rows that may go inactive at each bucket close (rules.detectors.scan): the exact window test
    (every observed bucket of the last `duration` zero, enough of them observed); the prior usage
    is left to the detector."""
    params = _params(rule)
    values = block.values
    width = max(1, params.duration // block.step)
    missing = np.isnan(values)
    n_missing = trailing_count(missing, width)
    active = trailing_count(~missing & (values != 0), width)
    decided = (n_missing < width) & (n_missing / width <= params.max_missing)  # the detector's, exactly
    decided[:, :width] = False  # fewer columns than the window: undecided
    return Scanned(decided & (active == 0), decided)


def last_active_starts(block: MetricBlock, rows: np.ndarray) -> list[int | None]:
    """Per row: the start of its last bucket with usage > 0 in the block, or None."""
    if rows.size == 0:
        return []
    active = block.values[rows] > 0  # NaN compares False
    has_active = active.any(axis=1)
    last_col = block.n_buckets - 1 - np.argmax(active[:, ::-1], axis=1)
    return [int(block.start + c * block.step) if h else None for c, h in zip(last_col, has_active, strict=True)]


def _judge_open(
    rule: Rule, block: MetricBlock, opened: dict[int, OpenEpisode], decided: np.ndarray, result: DetectorResult
) -> None:
    params = _params(rule)
    step = block.step
    width = max(1, params.duration // step)
    current = block.values[:, -1]
    silent = [i for i in opened if current[i] == 0]
    lasts = dict(zip(silent, last_active_starts(block, np.asarray(silent, dtype=np.intp)), strict=True))
    for i, episode in opened.items():
        value = float(current[i])
        if math.isnan(value):
            decided[i] = False
            continue
        decided[i] = True
        since = episode.started_at - width * step
        if value == 0:
            result.found.append(_still_inactive(rule, block, i, since, lasts.get(i)))
            continue
        message = (
            f"{block.metric} has usage again: {fmt.number(value)} in the {fmt.duration(step)} bucket starting"
            f" {fmt.moment(block.end - step, step)}, after no usage since {fmt.moment(since, step)}."
        )
        result.recoveries[(block.account_ids[i], "")] = Recovery(
            block.end, value, None, message, {"inactive_since": iso(since)})


def _still_inactive(rule: Rule, block: MetricBlock, i: int, since: int, last_active: int | None) -> Finding:
    step = block.step

    def message() -> str:
        days = fmt.duration(block.end - since)
        last = f"; last active {fmt.moment(last_active, step)}" if last_active is not None else ""
        return f"{block.metric} has had no usage since {fmt.moment(since, step)} ({days}{last})."

    return make_finding(
        rule, block, i, value=0.0, baseline=None, threshold=None, window_start=since, message=message,
        details={"last_active": iso(last_active) if last_active is not None else None,
                 "inactive_since": iso(since)},
    )


def _finding(
    rule: Rule,
    block: MetricBlock,
    i: int,
    width: int,
    missing: int,
    prior_usage: float,
    prior_observed: int,
    last_active: int | None,
    window_start: int,
) -> Finding:
    params = _params(rule)
    at = block.end
    step = block.step
    since = at - width * step
    baseline = prior_usage / prior_observed if prior_observed else None

    def message() -> str:
        notes = [] if missing == 0 else [f"{width - missing} of {width} buckets observed"]
        notes.append(
            f"last active {fmt.moment(last_active, step)}"
            if last_active is not None
            else "no usage anywhere in the loaded history"
        )
        # with prior_window = "0" no prior window was read: "after 0 in the previous 0" would be false
        after = (f", after {fmt.number(prior_usage)} in the previous {fmt.duration(params.prior_window)}"
                 if params.prior_window > 0 else "")
        return (f"{block.metric} had no usage in the {fmt.duration(width * step)} since {fmt.moment(since, step)}"
                f" ({'; '.join(notes)}){after}.")
    return make_finding(
        rule,
        block,
        i,
        value=0.0,
        baseline=baseline,
        threshold=None,
        window_start=window_start,
        message=message,
        details={
            "last_active": iso(last_active) if last_active is not None else None,
            "prior_usage": prior_usage,
            "inactive_since": iso(since),
            "missing_buckets": missing,
        },
    )


# ------------------------------------------------------------------------------- the kind


def _check(t: Threshold) -> None:
    max_missing = t.got.get("max_missing")
    if max_missing is not None and not 0 <= max_missing < 1:
        t.error("max_missing", f"must be a fraction >= 0 and < 1, e.g. 0.2 = up to 20% of buckets may be missing "
                               f"(got {t.shown('max_missing')})")
    t.multiple_of_bucket("duration")
    t.multiple_of_bucket("prior_window")
    params = t.params
    if params.prior_window == 0 and params.min_prior_usage > 0:
        where = "prior_window" if t.given("prior_window") else "min_prior_usage"
        t.error(where, f"min_prior_usage {v.show(params.min_prior_usage)} can never be met with prior_window ="
                       ' "0"; set a prior_window or min_prior_usage = 0')


KIND = Kind(
    name="inactivity",
    title="Inactive account",
    summary="an account that used the metric stopped: every observed bucket of the last `duration` is zero",
    params=InactivityParams,
    fields=(
        Field("duration", v.positive_duration, "duration > 0, multiple of `bucket`", '`"7d"`', "How long the account"
              " must have been silent."),
        Field("max_missing", v.number(), "number, 0 ≤ x < 1", "`0.0`", "Largest fraction of buckets in that window"
              " allowed to be missing. Above it (or when none is observed) the account is undecided — missing days"
              " are not silent days. `0.2` tolerates 1 missing day in 7."),
        Field("prior_window", v.any_duration, "duration, multiple of `bucket`", '`"30d"`', "The window just before"
              " the silent one in which the account must have been active."),
        Field("min_prior_usage", v.number(0), "number ≥ 0", "`1`", "Total usage needed in `prior_window`, so"
              " accounts that never used the metric do not alert. With `prior_window = \"0\"` it must be `0`."),
    ),
    detect=detect_inactivity,
    scan=scan_inactivity,
    required_history=required_history,
    endings=(Ending("inactivity", "the current bucket is 0 (the prior window only decides who may fire)",
                    "the account has usage again"),),
    check=_check,
    resolve_buckets=1,
    cohort="default",
    guards_hint="; use threshold.min_prior_usage",
    calendar=True,
)

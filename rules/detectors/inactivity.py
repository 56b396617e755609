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
    and once False. details: last_active (ISO time at which the last bucket
    with usage > 0 in the block ends, or None), prior_usage, inactive_since
    (ISO start of the window), missing_buckets (in the window).
"""

from __future__ import annotations

import numpy as np

from rules.detectors import format as fmt
from rules.detectors.finding import make_finding
from rules.model import DetectorResult, Finding, InactivityParams, MetricBlock, Rule
from rules.periods import iso


def _params(rule: Rule) -> InactivityParams:
    if not isinstance(rule.params, InactivityParams):
        raise TypeError(f"{fmt.rule_location(rule)}: inactivity rule has {type(rule.params).__name__} params")
    return rule.params


def required_history(rule: Rule) -> int:
    params = _params(rule)
    window = max(1, params.duration // rule.bucket)
    prior = params.prior_window // rule.bucket
    return (window + prior) * rule.bucket


def detect_inactivity(rule: Rule, block: MetricBlock) -> DetectorResult:
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
    fired = np.flatnonzero(fire)
    if fired.size == 0:
        return DetectorResult([], decided)

    # End of the last bucket with usage > 0, for the fired rows only.
    active = values[fired] > 0  # NaN compares False
    has_active = active.any(axis=1)
    last_col = n - 1 - np.argmax(active[:, ::-1], axis=1)

    findings = []
    for pos, i in enumerate(fired):
        last_active = int(block.start + (last_col[pos] + 1) * step) if has_active[pos] else None
        findings.append(
            _finding(
                rule,
                block,
                int(i),
                width,
                int(missing[i]),
                float(prior_usage[i]),
                int(prior_observed[i]),
                last_active,
                block.start + prior_lo * step,
            )
        )
    return DetectorResult(findings, decided)


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
    notes = [] if missing == 0 else [f"{width - missing} of {width} buckets observed"]
    notes.append(
        f"last active {fmt.moment(last_active, step)}"
        if last_active is not None
        else "no usage anywhere in the loaded history"
    )
    message = (
        f"{block.metric} had no usage in the {fmt.duration(width * step)} since {fmt.moment(since, step)}"
        f" ({'; '.join(notes)}), after {fmt.number(prior_usage)} in the previous"
        f" {fmt.duration(params.prior_window)}."
    )
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

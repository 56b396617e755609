"""The one place detectors build a Finding for row `i` of the evaluated block."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rules.model import Finding, MetricBlock, Reference, Rule


def make_finding(
    rule: Rule,
    block: MetricBlock,
    i: int,
    *,
    value: float,
    baseline: float | None,
    threshold: float | None,
    window_start: int,
    message: str | Callable[[], str],
    details: Mapping[str, Any],
    window_end: int | None = None,
    discriminator: str = "",
    once: bool = False,
    reference: Reference | None = None,
) -> Finding:
    """A finding at the block's end (the evaluation time) about its last bucket.

    message: the text, or a function giving it (called only if the message is read: Finding.message)."""
    at = block.end
    return Finding(
        rule_id=rule.id,
        account_id=block.account_ids[i],
        metric=block.metric,
        kind=rule.kind,
        severity=rule.severity,
        at=at,
        bucket_start=at - block.step,
        value=value,
        baseline=baseline,
        threshold=threshold,
        window_start=window_start,
        window_end=at if window_end is None else window_end,
        message=message,
        discriminator=discriminator,
        once=once,
        rule_hash=rule.rule_hash,
        details=details,
        reference=reference,
    )

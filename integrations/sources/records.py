"""Record types shared by the usage sources (CSV files, demo book, HTTP, SQL...).

Sources turn whatever they read into these plain records; storage buckets
them. Times are integer epoch seconds UTC, as everywhere in the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A metric name: letters, digits and _ . : - (no spaces), e.g. "api_calls" or "storage.gb".
METRIC_PATTERN = re.compile(r"[A-Za-z0-9_.:-]+")


def is_metric_name(text: str) -> bool:
    return METRIC_PATTERN.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One usage observation: `value` of `metric` for `account` at epoch second `ts` (UTC)."""

    account: str
    metric: str
    ts: int
    value: float

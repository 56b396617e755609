"""Billing periods in an account's timezone (pure; no clock reads)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

# The longest a billing period can be: 31 days and a daylight-saving change (up to 2h: Antarctica/Troll).
LONGEST_PERIOD = 31 * 86_400 + 2 * 3600


@dataclass(frozen=True)
class Period:
    start: int  # epoch seconds, inclusive (local midnight of the billing day)
    end: int  # epoch seconds, exclusive
    label: str  # local start date, e.g. "2026-11-01"

    @property
    def length(self) -> int:
        return self.end - self.start


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _local_midnight(year: int, month: int, day: int, tz: ZoneInfo) -> int:
    return int(datetime(year, month, day, tzinfo=tz).timestamp())


def _add_months(year: int, month: int, n: int) -> tuple[int, int]:
    idx = year * 12 + (month - 1) + n
    return idx // 12, idx % 12 + 1


def billing_period(at: int, billing_day: int = 1, timezone: str = "UTC") -> Period:
    """The billing period containing epoch second `at`.

    Periods run from local midnight on `billing_day` (1..28) of one month to
    local midnight on the same day of the next month, so a period spanning a
    DST change is an hour shorter or longer than whole days.
    """
    if not 1 <= billing_day <= 28:
        raise ValueError(f"billing_day must be 1..28, got {billing_day}")
    tz = _zone(timezone)
    local = datetime.fromtimestamp(at, UTC).astimezone(tz)
    y, m = local.year, local.month
    if local.day < billing_day:
        y, m = _add_months(y, m, -1)
    start = _local_midnight(y, m, billing_day, tz)
    ny, nm = _add_months(y, m, 1)
    end = _local_midnight(ny, nm, billing_day, tz)
    return Period(start, end, f"{y:04d}-{m:02d}-{billing_day:02d}")


def previous_period(period: Period, billing_day: int = 1, timezone: str = "UTC") -> Period:
    return billing_period(period.start - 1, billing_day, timezone)


def iso(ts: int | float) -> str:
    """ISO-8601 UTC with a Z suffix, second precision."""
    return _iso(int(ts))


@lru_cache(maxsize=4096)  # findings of one cycle share a few period bounds
def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

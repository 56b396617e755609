"""Crontab expressions keep crontab's weekday numbering (APScheduler 3 counts from Monday)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.crontab import cron_trigger

FRIDAY = datetime(2026, 11, 6, 10, 0, 30, tzinfo=UTC)


def _next(expr: str, after: datetime = FRIDAY) -> datetime:
    return cron_trigger(expr).get_next_fire_time(None, after)


@pytest.mark.parametrize("expr,expected", [
    ("0 9 * * 1-5", datetime(2026, 11, 9, 9, 0, tzinfo=UTC)),  # Monday, not Saturday
    ("0 9 * * 0", datetime(2026, 11, 8, 9, 0, tzinfo=UTC)),  # Sunday
    ("0 9 * * 7", datetime(2026, 11, 8, 9, 0, tzinfo=UTC)),  # Sunday too
    ("30 12 * * fri", datetime(2026, 11, 6, 12, 30, tzinfo=UTC)),
    ("0 0 * * 6/7", datetime(2026, 11, 7, 0, 0, tzinfo=UTC)),  # Saturday (step from 6)
    ("*/15 * * * *", datetime(2026, 11, 6, 10, 15, tzinfo=UTC)),
])
def test_weekdays_mean_what_they_mean_in_crontab(expr: str, expected: datetime) -> None:
    assert _next(expr) == expected


@pytest.mark.parametrize("expr,needle", [
    ("0 9 * *", "expected 5 fields"),
    ("0 9 * * funday", "unknown day of week 'funday'"),
    ("0 9 * * 5-2", "bad day-of-week range '5-2'"),
    ("61 * * * *", "61"),
])
def test_bad_expressions_say_what_is_wrong(expr: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        cron_trigger(expr)

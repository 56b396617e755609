"""Crontab expressions keep crontab's weekday numbering (APScheduler 3 counts from Monday)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rules.config.cron import cron_trigger

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


def _fires(expr: str, after: datetime, n: int) -> list[datetime]:
    trigger, out, prev = cron_trigger(expr), [], None
    now = after
    for _ in range(n):
        nxt = trigger.get_next_fire_time(prev, now)
        out.append(nxt)
        prev, now = nxt, nxt + timedelta(seconds=1)
    return out


def _d(day: int, month: int = 11, h: int = 0, m: int = 0) -> datetime:
    return datetime(2026, month, day, h, m, tzinfo=UTC)


@pytest.mark.parametrize("expr,expected", [
    # crontab(5): "30 4 1,15 * 5" runs at 4:30 on the 1st and 15th of each month, plus every Friday.
    ("30 4 1,15 * 5", [_d(6, h=4, m=30), _d(13, h=4, m=30), _d(15, h=4, m=30), _d(20, h=4, m=30),
                       _d(27, h=4, m=30), _d(1, 12, 4, 30)]),
    # both restricted: the 13th OR a Friday (not only Friday the 13th)
    ("0 0 13 * fri", [_d(6), _d(13), _d(20), _d(27), _d(4, 12), _d(11, 12), _d(13, 12)]),
    # a field starting with "*" is unrestricted: the two are ANDed (odd days that are Mondays)
    ("0 0 */2 * 1", [_d(9), _d(23), _d(7, 12), _d(21, 12)]),
    ("0 0 1 * *", [_d(1, 12), datetime(2027, 1, 1, tzinfo=UTC)]),
    ("0 12 * * sun,6", [_d(7, h=12), _d(8, h=12), _d(14, h=12)]),
    ("@daily", [_d(6), _d(7)]),
    ("@weekly", [_d(8), _d(15)]),
    ("@monthly", [_d(1, 12)]),
    ("@hourly", [_d(5, h=12), _d(5, h=13)]),
])
def test_crontab5_examples(expr: str, expected: list[datetime]) -> None:
    assert _fires(expr, _d(5, h=12), len(expected)) == expected

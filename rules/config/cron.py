"""Crontab expressions (UTC) as APScheduler 3 triggers, meaning what they mean in crontab(5).

Matching is APScheduler's CronTrigger; two things differ from crontab(5) and
are translated here:
- weekday numbers: APScheduler 3 numbers weekdays 0 = Monday, crontab 0 (or
  7) = Sunday. Passed through as is, "0 9 * * 1-5" would run Tuesday to
  Saturday, so the day-of-week field is expanded to day names first.
- day of month OR day of week: when both fields are restricted (neither
  starts with "*"), crontab runs on days matching EITHER ("30 4 1,15 * 5" =
  the 1st, the 15th and every Friday); CronTrigger requires both. Such an
  expression becomes an OrTrigger of a day-of-month and a day-of-week
  CronTrigger. With a "*" in either field the two are ANDed, as in crontab.
- crontab's @yearly, @annually, @monthly, @weekly, @daily, @midnight and
  @hourly are accepted.
"""

from __future__ import annotations

import re

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_ITEM = re.compile(r"^(\*|[0-7a-z]+)(?:-([0-7a-z]+))?(?:/(\d+))?$")


def _day(token: str) -> int:
    t = token.lower()
    if t.isdigit():
        n = int(t)
        if n > 7:
            raise ValueError(f"day of week {token!r} is out of range 0-7")
        return n % 7
    if t[:3] in _NAMES:
        return _NAMES.index(t[:3])
    raise ValueError(f"unknown day of week {token!r} (use 0-7 or sun..sat)")


def _days(field: str) -> list[int]:
    out: set[int] = set()
    for item in field.split(","):
        m = _ITEM.match(item.strip().lower())
        if m is None:
            raise ValueError(f"cannot read day-of-week item {item!r}")
        start, end, step = m.group(1), m.group(2), int(m.group(3) or 1)
        if step < 1:
            raise ValueError("a step must be at least 1")
        if start == "*":
            lo, hi = 0, 6
        else:
            lo = int(start) if start.isdigit() else _day(start)  # 7 = Sunday only as a single day / range end
            hi = lo if end is None else (int(end) if end.isdigit() else _day(end))
            if m.group(3) and end is None:
                hi = 6
        if lo > 7 or hi > 7 or hi < lo:
            raise ValueError(f"bad day-of-week range {item!r}")
        out.update(d % 7 for d in range(lo, hi + 1, step))
    return sorted(out)


MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


def cron_trigger(expr: str) -> BaseTrigger:
    """A UTC trigger from a 5-field crontab expression (or an @macro); ValueError says what is wrong."""
    text = MACROS.get(expr.strip().lower(), expr)
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, dow = fields
    days = ",".join(_NAMES[d] for d in _days(dow)) if dow != "*" else "*"
    if day.startswith("*") or dow.startswith("*"):
        return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=days, timezone="UTC")
    # crontab(5): "If both fields are restricted (i.e., don't start with *), the command will be run
    # when either field matches the current time."
    return OrTrigger([CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone="UTC"),
                      CronTrigger(minute=minute, hour=hour, month=month, day_of_week=days, timezone="UTC")])

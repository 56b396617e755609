"""Formatting of numbers, times and rule locations for detector messages.

Messages are read by people in Slack and CRM notes, so numbers are rounded
for reading (the exact values travel in Finding.value/baseline/threshold and
details):

- number(12345.6)  -> "12,346";  number(12.34) -> "12.3";  number(0.125) -> "0.125"
- ratio(3.14)      -> "3.1x";    ratio(2.0) -> "2x";       ratio(0.25) -> "0.25x"
- percent(0.82)    -> "82%"      (rounded DOWN, so 99.96% never reads as "100%"; 0.0004 -> "<0.1%", not "0.0%")
- change(0.1)      -> "+10%"
- moment(ts, step) -> "2026-11-03 14:00 UTC", or "2026-11-03" for daily buckets at midnight
- count(1, "day") -> "1 day";  count(0.3, "day") -> "0.3 days";  count(3, "billing period") -> "3 billing periods"
- last(1, "billing period") -> "the last billing period";  last(3, "window") -> "each of the last 3 windows"
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from rules.durations import format_duration
from rules.model import DAY, Rule


def _strip_zeros(text: str) -> str:
    """A decimal's trailing zeros and point dropped: "3.0" -> "3", "100.40" -> "100.4"."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def number(x: float | None) -> str:
    """A count or amount for reading: thousands separators, few decimals."""
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "infinity" if x > 0 else "-infinity"
    ax = abs(x)
    if ax == 0:
        return "0"
    if ax >= 100 or float(x).is_integer():
        return f"{x:,.0f}"
    if ax >= 1:
        return _strip_zeros(f"{x:,.1f}")
    if ax >= 0.001:
        return f"{x:.3g}"
    return f"{x:.1e}"


def apart(x: float, y: float) -> tuple[str, str]:
    """`number` of x and of y, with more decimals where they would read the same but differ, so a
    value strictly past a limit never reads as the limit ("100.4" above "100", not "100" above "100")."""
    a, b = number(x), number(y)
    if a != b or x == y or not (math.isfinite(x) and math.isfinite(y)):
        return a, b
    for digits in range(1, 16):
        a, b = f"{x:,.{digits}f}", f"{y:,.{digits}f}"
        if a != b:
            return _strip_zeros(a), _strip_zeros(b)
    return number(x), number(y)


def ratio(r: float | None) -> str:
    """A multiple of the baseline: 3.1x."""
    if r is None or math.isnan(r):
        return "n/a"
    if math.isinf(r):
        return "infinite"
    if r == 0:
        return "0x"
    if abs(r) >= 100:
        return f"{r:,.0f}x"
    if abs(r) < 1:
        return f"{r:.2g}x"
    return _strip_zeros(f"{r:.1f}") + "x"


def whole_percent(fraction: float) -> int:
    """A share as a whole percentage rounded down, as every alert text shows it: 0.8996 -> 89 (a level
    not reached never reads as reached), and 0.29 -> 29 although 0.29 * 100 is 28.999999999999996."""
    return math.floor(fraction * 100.0 + 1e-9)


def percent(fraction: float) -> str:
    """A share as a whole percentage, rounded down (0.999 -> "99%"); below 1% one decimal."""
    if not math.isfinite(fraction):
        return "n/a"  # (an infinite share raised in whole_percent's floor)
    p = fraction * 100.0
    if 0 < p < 0.1:
        return "<0.1%"  # not "0.0%": 1 call of a 1,000,000 quota is not none
    if 0 < abs(p) < 1:
        return f"{math.floor(p * 10 + 1e-9) / 10:.1f}%"
    return f"{whole_percent(fraction):,d}%"


def change(rate: float | None) -> str:
    """A relative change with a sign: 0.1 -> "+10%", -0.25 -> "-25%"."""
    if rate is None or math.isnan(rate):
        return "n/a"
    return f"{rate * 100:+,.0f}%"


def count(n: float, noun: str) -> str:
    """A number of things with the noun in the right number: only exactly 1 is singular ("0.5 days")."""
    shown = f"{n:,}" if isinstance(n, int) else number(n)  # (":g" wrote 1,000,000.0 as "1e+06")
    return f"{shown} {noun if n == 1 else noun + 's'}"


def last(n: int, noun: str, each: str = "each") -> str:
    """ "the last billing period" for 1, else "each of the last 3 billing periods" (`each`: "each" or "one")."""
    return f"the last {noun}" if n == 1 else f"{each} of the last {count(n, noun)}"


def moment(ts: int, step: int = 0) -> str:
    """A UTC instant; just the date when buckets are whole days and ts is a UTC midnight."""
    dt = datetime.fromtimestamp(int(ts), UTC)
    if step >= DAY and int(ts) % DAY == 0:
        return dt.strftime("%Y-%m-%d")
    return dt.strftime("%Y-%m-%d %H:%M UTC")


def when(end: int, step: int, smooth: int = 1) -> str:
    """Which buckets a value is: "in the 1d bucket starting 2026-11-03", or for a value smoothed over
    several buckets "(mean of the 2 1d buckets ending 2026-11-04)" (never one bucket's date for a mean)."""
    if smooth <= 1:
        return f"in the {duration(step)} bucket starting {moment(end - step, step)}"
    return f"(mean of the {smooth} {duration(step)} buckets ending {moment(end, step)})"


def local_date(ts: float, timezone: str) -> str:
    """ISO date (YYYY-MM-DD) of epoch second `ts` in an IANA timezone."""
    return datetime.fromtimestamp(int(ts), ZoneInfo(timezone)).date().isoformat()


def duration(seconds: int) -> str:
    """A duration for reading: whole days as days ("7d", "28d"), else "1h", "15m", "1h30m"."""
    seconds = int(seconds)
    if seconds > 0 and seconds % DAY == 0:
        return f"{seconds // DAY}d"
    return format_duration(seconds)


def rule_location(rule: Rule) -> str:
    """How error messages name a rule: "rule 'api-spike' (rules/usage.toml:12)"."""
    where = rule.source_file or "<no file>"
    if rule.source_line is not None:
        where += f":{rule.source_line}"
    return f"rule {rule.id!r} ({where})"

"""Parsing and formatting of durations such as "15m", "1h", "7d", "2w"."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PART = re.compile(r"(\d+)\s*([smhdw])")
_FULL = re.compile(r"^\s*(?:\d+\s*[smhdw]\s*)+$")
# The longest duration accepted: 100 years. Why: a duration is added to epoch seconds held as int64
# (numpy arrays, the database), and "99999999999999999999s" passed the check and could overflow
# there; no window, `for`, cooldown or retention is meaningful past a century.
MAX_SECONDS = 100 * 365 * 86_400


class DurationError(ValueError):
    pass


def parse_duration(text: str | int) -> int:
    """Seconds in a duration. Accepts "90s", "5m", "1h30m", "7d", "2w", or "0".

    Bare integers are rejected (ambiguous unit) except 0.
    """
    if isinstance(text, bool):
        raise DurationError(f"expected a duration like '7d', got {text!r}")
    if isinstance(text, int):
        if text == 0:
            return 0
        raise DurationError(f"expected a duration with a unit like '{text}d' or '{text}h', got {text}")
    if not isinstance(text, str):
        raise DurationError(f"expected a duration like '7d', got {text!r}")
    s = text.strip().lower()
    if s == "0":
        return 0
    if not _FULL.match(s):
        raise DurationError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w (e.g. '15m', '1h', '7d')"
        )
    parts = _PART.findall(s)
    if any(len(n) > 15 for n, _ in parts):  # past 100 years in any unit; int() of 4,300+ digits raises
        raise _too_long(text)
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds > MAX_SECONDS:
        raise _too_long(text)
    return seconds


def _too_long(text: str) -> DurationError:
    shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}..."
    return DurationError(f"duration {shown} is longer than 100 years, the longest usagebot accepts")


def format_duration(seconds: int) -> str:
    """Shortest exact form: 86400 -> '1d', 5400 -> '1h30m', 0 -> '0'."""
    if seconds == 0:
        return "0"
    out = []
    rest = seconds
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if unit == "w" and rest % size:
            continue
        n, rest = divmod(rest, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)

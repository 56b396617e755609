"""Record types shared by the usage sources (CSV files, demo book, HTTP, SQL...).

Sources turn whatever they read into these plain records; storage buckets
them. Times are integer epoch seconds UTC, as everywhere in the engine.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rules.model import MAX_METRIC_LENGTH, METRIC_PATTERN  # noqa: F401 (the sources' names for them)

MAX_ID_LENGTH = 256  # account ids, CRM ids, event ids (and the source of a pushed event)
MAX_TEXT_LENGTH = 512  # account names, plans, emails


# Usage times usagebot accepts (epoch seconds): a time outside is a unit or clock mistake (year 1 or
# 9999, milliseconds taken for seconds) and would make evaluation span millennia.
MIN_TIME = 0  # 1970-01-01T00:00:00Z
MAX_TIME = 4_102_444_800  # 2100-01-01T00:00:00Z
TIME_RANGE = "1970-01-01 .. 2100-01-01"


def is_metric_name(text: str) -> bool:
    return METRIC_PATTERN.fullmatch(text) is not None


def shown(value: Any, limit: int = 80) -> str:
    """repr() of an input value, cut for a message (a 100,000-character id is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _char(c: str) -> str:
    name = unicodedata.name(c, "")
    return f"U+{ord(c):04X} {name}" if name else f"U+{ord(c):04X}"


def _bad_char(text: str) -> str | None:
    return next((_char(c) for c in text if not c.isprintable()), None)


def id_problem(text: str, what: str = "account id", limit: int = MAX_ID_LENGTH) -> str | None:
    """Why `text` cannot be an identifier (account id, event id...), or None: one rule for every input.

    An identifier is 1..`limit` characters with no control, format or separator character (a newline,
    a tab, a zero-width space, a bidi override): it is shown in Slack, written to the CRM and used as a
    key, so it must look like what it is.
    """
    if not text:
        return f"{what} is empty"
    if len(text) > limit:
        return f"{what} is {len(text):,} characters long ({shown(text, 40)}); at most {limit}"
    if not text.isprintable():
        return f"{what} {shown(text, 40)} contains a control or invisible character ({_bad_char(text)})"
    return None


def is_identifier(text: str, limit: int = MAX_ID_LENGTH) -> bool:
    """`id_problem(text) is None`, fast (the CSV reader's hot path)."""
    return 0 < len(text) <= limit and text.isprintable()


def metric_problem(text: str) -> str | None:
    """Why `text` is not a metric name, or None."""
    if len(text) > MAX_METRIC_LENGTH:
        return f"metric is {len(text):,} characters long ({shown(text, 40)}); at most {MAX_METRIC_LENGTH}"
    if not is_metric_name(text):
        return f"{shown(text, 40)} is not a metric name (letters, digits and _ . : - only)"
    return None


def text_problem(text: str, what: str, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """Why a free text (an account name, a plan) cannot be stored, or None: too long, or a control
    character other than a tab or a line break (a NUL, an escape sequence); it is text, not a key, so
    line breaks and format characters (the joiners of an emoji) are fine."""
    if len(text) > limit:
        return f"{what} is {len(text):,} characters long ({shown(text, 40)}); at most {limit}"
    for c in text:
        if unicodedata.category(c) == "Cc" and c not in "\t\n\r":
            return f"{what} {shown(text, 40)} contains a control character ({_char(c)})"
    return None


def time_problem(ts: int | float) -> str | None:
    """Why epoch second `ts` is not a usage time usagebot accepts (outside 1970..2100), or None."""
    if MIN_TIME <= ts < MAX_TIME:
        return None
    try:
        dt = datetime.fromtimestamp(ts, UTC)
        when = f"{dt.year:04d}-{dt:%m-%dT%H:%M:%S}Z"
    except (OverflowError, OSError, ValueError):
        when = f"epoch second {ts:g}"
    return f"{when} is outside the times usagebot accepts ({TIME_RANGE}); check the year and the unit"


def check_time(ts: int) -> int:
    """`ts`, or ValueError saying why it is refused."""
    why = time_problem(ts)
    if why is not None:
        raise ValueError(why)
    return ts


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One usage observation: `value` of `metric` for `account` at epoch second `ts` (UTC)."""

    account: str
    metric: str
    ts: int
    value: float

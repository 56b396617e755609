"""Hostile values for every input surface: text with control, format and Slack-markup characters,
numbers at and past every limit, times from year 1 to 9999, identifiers 10,000 characters long."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st


def cases(n: int) -> int:
    """`n` examples, times $USAGEBOT_FUZZ_SCALE (default 1; e.g. 20 for a long hunt before a release)."""
    return n * max(1, int(os.environ.get("USAGEBOT_FUZZ_SCALE", "1") or 1))


MARKUP = ["<!here>", "<!channel|x>", "<@U0BOBBY01>", "<https://evil.example|click>", "&amp;", "*", "`", "\u202e",
          "\u200b", "\x00", "\n", "\r", "\t", "\x1b[31m", "${HOME}", "%s", "{0}", "\"", "'", ",", ";", "\\", "\ufeff"]

nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(MARKUP),
    st.lists(st.sampled_from(MARKUP + ["acme", "api_calls", "1", "2026-11-01"]), max_size=6).map("".join),
    st.integers(min_value=200, max_value=12_000).map(lambda n: "a" * n),
)
identifier = st.one_of(st.sampled_from(["acme", "globex", "api_calls", "e1", "Acme Corp"]), nasty_text)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 1e308, -1e308, 2**63, 2**64, 10**300]),
)
number_text = st.one_of(numbers.map(str), st.sampled_from(["", " ", "1e309", "nan", "-0", "0x10", "1_000", "１２", "9" * 5000]),
                        nasty_text)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """ISO-8601 times from year 1 to 9999, with and without offsets, and broken ones."""
    kind = draw(st.integers(0, 3))
    if kind == 3:
        return draw(st.one_of(nasty_text, st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00",
                                                             "2026-02-30", "2026-11-01T25:00:00Z", ""])))
    dt = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    if kind == 0:
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ") if dt.year >= 1000 else f"{dt.year:04d}" + dt.strftime("-%m-%dT%H:%M:%SZ")
    off = draw(st.integers(-14 * 60, 14 * 60))
    tz = timedelta(minutes=off)
    sign = "+" if off >= 0 else "-"
    return f"{dt.year:04d}-{dt:%m-%dT%H:%M:%S}{sign}{abs(off) // 60:02d}:{abs(off) % 60:02d}" if tz else \
        f"{dt.year:04d}-{dt:%m-%dT%H:%M:%S}+00:00"


recent_times = st.integers(min_value=1_790_000_000, max_value=1_800_000_000).map(
    lambda ts: datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
json_scalars = st.one_of(st.none(), st.booleans(), numbers.filter(lambda x: not isinstance(x, float) or x == x),
                         nasty_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                   st.dictionaries(nasty_text, inner, max_size=4)),
                           max_leaves=12)

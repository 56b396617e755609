"""Unicode sparklines for recent usage (missing buckets shown as a space).

The bars are scaled from ZERO (not from the smallest value): a bar's height is its value's share of
the largest one, so a 2% wiggle stays a row of full bars and only a real fall shows as one. Values
below zero (a refund, a correction) extend the scale downwards: zero is then the level of the
lowest value's bar.
"""

from __future__ import annotations

from collections.abc import Sequence

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return ""
    lo, hi = min(0.0, min(present)), max(0.0, max(present))
    span = hi - lo
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        elif span == 0:  # every value is zero
            out.append(_BARS[0])
        else:
            out.append(_BARS[min(7, int((v - lo) / span * 7 + 0.5))])
    return "".join(out)

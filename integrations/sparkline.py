"""Unicode sparklines for recent usage (missing buckets shown as a space)."""

from __future__ import annotations

from collections.abc import Sequence

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return ""
    lo, hi = min(present), max(present)
    span = hi - lo
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        elif span == 0:
            out.append(_BARS[3] if hi > 0 else _BARS[0])
        else:
            out.append(_BARS[min(7, int((v - lo) / span * 7 + 0.5))])
    return "".join(out)

"""What a usage chart shows, independent of how it is drawn (svg.py, png.py).

A chart has buckets of `step` seconds from `start`; every `Line` has one value per bucket (NaN =
not observed: drawn as a gap, never as zero). `Level`s are horizontal lines (a quota, a quota
threshold), `Marker`s vertical ones at a moment (an alert fired, resolved, was acknowledged...),
`span` shades a stretch (the episode a page is about). The y axis always includes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ROLES = ("usage", "baseline", "threshold", "quota")
MARKER_EVENTS = ("fired", "renotified", "resolved", "acknowledged", "snoozed", "other")


@dataclass(frozen=True)
class Line:
    label: str
    role: str  # one of ROLES: how it is drawn
    values: tuple[float, ...]  # one per bucket; NaN = no value
    breaks: tuple[int, ...] = ()  # buckets that start a new segment (a billing period's first bucket)
    color: str = ""  # "" = the role's colour (svg.COLORS); set to tell several rules' lines apart

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"line {self.label!r}: role must be one of {', '.join(ROLES)}, got {self.role!r}")


@dataclass(frozen=True)
class Level:
    label: str
    role: str  # "quota" or "threshold"
    value: float


@dataclass(frozen=True)
class Marker:
    at: int  # epoch seconds
    event: str  # one of MARKER_EVENTS
    label: str  # shown on hover (SVG) / in the legend
    severity: str = "warning"


@dataclass(frozen=True)
class Chart:
    title: str
    start: int
    step: int
    n: int  # buckets
    lines: tuple[Line, ...] = ()
    levels: tuple[Level, ...] = ()
    markers: tuple[Marker, ...] = ()
    span: tuple[int, int] | None = None  # [from, to) epoch seconds, shaded
    note: str = ""  # one line under the title (e.g. what the levels mean)
    legend: bool = field(default=True)

    def __post_init__(self) -> None:
        for line in self.lines:
            if len(line.values) != self.n:
                raise ValueError(f"chart {self.title!r}: line {line.label!r} has {len(line.values)} values "
                                 f"for {self.n} buckets")

    @property
    def end(self) -> int:
        return self.start + self.n * self.step

    def y_range(self) -> tuple[float, float]:
        """(low, high) of the y axis: from zero (or the lowest negative value) to a little above the
        highest value, level or line; (0, 1) when there is nothing to show."""
        finite = [v for line in self.lines for v in line.values if not math.isnan(v) and not math.isinf(v)]
        finite += [lv.value for lv in self.levels if math.isfinite(lv.value)]
        lo = min([0.0, *finite])
        hi = max([0.0, *finite])
        if hi == lo:
            return lo, lo + 1.0
        return lo, hi + (hi - lo) * 0.08


def nice_ticks(lo: float, hi: float, target: int = 4) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k apart) covering [lo, hi], zero among them when in range."""
    span = hi - lo
    if span <= 0 or not math.isfinite(span):
        return [lo]
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def short_number(x: float) -> str:
    """Axis labels: 1.2k, 3.4M, 950, 0.25."""
    a = abs(x)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{x / div:.3g}{suffix}"
    if a == 0 or a >= 1:
        return f"{x:.4g}"
    return f"{x:.2g}"

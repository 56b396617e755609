"""How a window source recovers from a window that outgrew a limit of one poll.

A time-window source reads `[watermark - overlap, now)` (base.window). While its polls fail the
watermark stays put and the window only grows; once it needs more than `max_pages` pages or takes
longer than `poll_deadline` (HTTP) or `statement_timeout` (sql), every later poll fails the same way,
for ever. So when a poll fails on such a limit (base.LimitError), the source halves the span it reads:
the next poll reads only the first half of its window (aligned to the source's bucket), and a sub-window
read whole moves the watermark to its end, so the poll after it goes on from there (less the overlap)
even when that stretch held no data. A part never ends before the watermark: when the overlap is
longer than a part, the part starts at the watermark (late data in that overlap is not read again). Polls keep reading sub-windows of that span until one reaches
`now`; then the span is forgotten and the source reads its whole window again.

The span is kept by the source object, not stored: after a restart the first poll fails on the limit
once more and halves again. A single bucket that still outgrows the limit cannot be split: its poll
fails as before, saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from integrations.sources.base import LimitError
from rules.periods import iso


@dataclass(frozen=True)
class Span:
    """The part of a poll's window that this poll reads."""

    start: int
    end: int
    partial: bool  # ends before the poll's window does (a catch-up step)

    def watermark(self, newest: int | None) -> int | None:
        """The watermark after reading this span whole: a catch-up step has read everything up to its
        end, so the next poll goes on from there; a whole window keeps the newest data timestamp."""
        if not self.partial:
            return newest
        return self.end if newest is None else max(newest, self.end)


class CatchUp:
    """The span a source reads per poll after a window outgrew a limit (None: the whole window)."""

    def __init__(self) -> None:
        self.span: int | None = None

    def window(self, start: int, end: int, watermark: int | None = None, align: int = 60) -> Span:
        """The part of the poll's window [start, end) to read. A part that would end at or before the
        watermark (an overlap longer than the part) would never move it: it starts at the watermark
        (aligned down to `align`) instead."""
        if self.span is None or end - start <= self.span:
            return Span(start, end, False)
        if watermark is not None and start + self.span <= watermark:
            start = max(start, watermark - watermark % align)
            if end - start <= self.span:
                return Span(start, end, False)
        return Span(start, start + self.span, True)

    @contextmanager
    def reading(self, span: Span, align: int) -> Iterator[None]:
        """Read `span`: a LimitError raised inside halves the span (`failed`) and says so."""
        try:
            yield
        except LimitError as exc:
            raise self.failed(span, align, exc) from None

    def done(self, span: Span) -> None:
        """A poll read `span` whole: a whole window ends the catch-up."""
        if not span.partial:
            self.span = None

    def failed(self, span: Span, align: int, exc: LimitError) -> LimitError:
        """The error of a poll of `span` stopped by a limit, after halving the span for the next poll
        (at least one bucket of `align` seconds; a single bucket cannot be split)."""
        width = span.end - span.start
        half = (width // 2) // align * align
        if half < align:
            return LimitError(f"{exc} (the window {iso(span.start)} to {iso(span.end)} is a single bucket "
                              "and cannot be read in parts)")
        self.span = half
        return LimitError(f"{exc}; the next poll reads the window in parts of {_duration(half)}, from "
                          f"{iso(span.start)}, and stores each part it reads whole")


def _duration(seconds: int) -> str:
    for unit, n in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"

"""Progress on long CLI operations: tqdm bars on stderr when it is a terminal, nothing otherwise.

    with progress("loading usage.csv", total=rows, unit="row") as bar:
        for chunk in chunks: ...; bar.update(len(chunk))
    with activity("evaluating 10 rules"):   # work without steps: a bar that shows the time so far
        run_cycle(...)

Output that a script reads (stdout) never changes: bars go to stderr and are
cleared when done; with stderr redirected (a file, a pipe, CI) they are off.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from tqdm import tqdm


def on_terminal(stream: TextIO | None = None) -> bool:
    s = stream or sys.stderr
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress(desc: str, total: int | None = None, unit: str = "it", stream: TextIO | None = None,
             enabled: bool | None = None) -> Iterator[tqdm]:
    """A progress bar; disabled when `stream` (default stderr) is not a terminal, or `enabled` is False."""
    s = stream or sys.stderr
    on = on_terminal(s) if enabled is None else enabled and on_terminal(s)
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=s, disable=not on,
               leave=False, dynamic_ncols=True, mininterval=0.2)
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def activity(desc: str, stream: TextIO | None = None, every: float = 0.5,
             enabled: bool | None = None) -> Iterator[tqdm]:
    """A bar for one long call without steps: shows what runs and the time so far, refreshed every `every` s."""
    with progress(desc, total=None, unit="", stream=stream, enabled=enabled) as bar:
        stop = threading.Event()
        ticker = None
        if not bar.disable:
            def tick() -> None:
                while not stop.wait(every):
                    bar.refresh()

            ticker = threading.Thread(target=tick, name="usagebot-progress", daemon=True)
            ticker.start()
        try:
            yield bar
        finally:
            stop.set()
            if ticker is not None:
                ticker.join(timeout=2)


def count_rows(path: str | Path) -> int:
    """Data rows of a CSV file (lines after the header), counted fast in binary; for a bar's total."""
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        n += 1  # a last line without a newline
    return max(0, n - 1)

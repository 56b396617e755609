"""Pause Python's cyclic garbage collector around bulk work.

A cycle at 100k accounts allocates millions of small objects (rows, facts, findings, episode
states) that hold no reference cycles. Each allocation burst triggers collections that walk the
whole, large and long-lived heap: measured at 100k accounts, a lifecycle step took 0.75 s with the
collector on and 0.33 s with it paused. Reference counting still frees everything as usual; cyclic
garbage made meanwhile is collected after the pause by the next ordinary collection.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block (or decorated function); nests safely."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

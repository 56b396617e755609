"""One evaluation cycle at a time per database, and a cycle that lost a race runs again.

Two evaluations running at once (two `usagebot evaluate`, the scheduler and a manual run, two
replicas that both think they lead) would each read "no open episode" and each start one. So
`serialised` runs the wrapped cycle under the database-wide "evaluation" lock (storage.locks:
an advisory lock on PostgreSQL, a lock file beside a SQLite file). The database enforces the
same thing on its own (one open episode per key, uq_alert_episodes_open), e.g. against a process
of an older version during a rolling upgrade: a cycle whose step hits it (EpisodeConflict,
nothing written) runs again, reading the states the other wrote; evaluating a time again is
idempotent (bot.service.pipeline).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from storage.episodes import EpisodeConflict
from storage.locks import exclusive

log = logging.getLogger(__name__)

LOCK_NAME = "evaluation"
LOCK_WAIT = 900.0  # seconds a cycle waits for one running elsewhere (a full cycle of a big book is minutes)
ATTEMPTS = 3

F = TypeVar("F", bound=Callable[..., Any])


def serialised(cycle: F) -> F:
    """Wrap `cycle(engine, ...)`: hold the evaluation lock around it; re-run it on EpisodeConflict."""

    @functools.wraps(cycle)
    def run(engine: Engine, *args: Any, **kwargs: Any) -> Any:
        with exclusive(engine, LOCK_NAME, wait=LOCK_WAIT):
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    return cycle(engine, *args, **kwargs)
                except EpisodeConflict as exc:
                    if attempt == ATTEMPTS:
                        raise
                    log.warning("evaluation raced another writer (attempt %d of %d), running it again: %s",
                                attempt, ATTEMPTS, exc, extra={"event": "evaluation_conflict"})
        raise AssertionError("unreachable")

    return run  # type: ignore[return-value]

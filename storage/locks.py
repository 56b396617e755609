"""Named exclusive locks shared by every process using one database (e.g. one evaluation cycle at a time).

- PostgreSQL: a session-level advisory lock (pg_try_advisory_lock) on a connection held for the
  duration; PostgreSQL releases it the moment that connection ends, so a process killed while
  holding it blocks nobody.
- SQLite file: an flock() on a file next to the database ("<db file>.<name>.lock"); the kernel
  releases it when the holder exits, however it exits. All users of a SQLite file are on its machine.
- SQLite in memory: a lock of this process (nobody else can open that database).

`exclusive(engine, name, wait)` waits up to `wait` seconds, then raises LockTimeout naming the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

POLL = 0.05  # seconds between tries while another holder has the lock
_local_locks: dict[tuple[int, str], threading.Lock] = {}
_local_guard = threading.Lock()


class LockTimeout(RuntimeError):
    """Another process held the lock for longer than the caller would wait."""


def lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key derived from a name (stable across versions; the leader
    election's lock uses it too, the locks here use the names "lock:<name>")."""
    return int.from_bytes(hashlib.sha256(f"usagebot:{name}".encode()).digest()[:8], "big", signed=True)


def _timeout(name: str, wait: float) -> LockTimeout:
    return LockTimeout(f"the {name!r} lock is held by another usagebot process (waited {wait:.0f} s); "
                       "it is released when that process finishes or exits")


@contextmanager
def _pg_lock(engine: Engine, name: str, wait: float) -> Iterator[None]:
    key = lock_key(f"lock:{name}")
    deadline = time.monotonic() + wait
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one():
            if time.monotonic() >= deadline:
                raise _timeout(name, wait)
            time.sleep(POLL)
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@contextmanager
def _file_lock(path: Path, name: str, wait: float) -> Iterator[None]:
    deadline = time.monotonic() + wait
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _timeout(name, wait) from None
                time.sleep(POLL)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _local_lock(engine: Engine, name: str, wait: float) -> Iterator[None]:
    with _local_guard:
        lock = _local_locks.setdefault((id(engine.pool), name), threading.Lock())
    if not lock.acquire(timeout=wait):
        raise _timeout(name, wait)
    try:
        yield
    finally:
        lock.release()


def exclusive(engine: Engine, name: str, wait: float = 900.0) -> AbstractContextManager[None]:
    """Hold the lock `name` for the database of `engine` (see the module docstring)."""
    if engine.dialect.name == "postgresql":
        return _pg_lock(engine, name, wait)
    database = engine.url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        return _local_lock(engine, name, wait)
    return _file_lock(Path(f"{Path(database).expanduser().resolve()}.{name}.lock"), name, wait)

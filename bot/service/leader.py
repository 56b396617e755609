"""Leader election: of several replicas, only the leader runs the scheduled jobs.

- `AdvisoryLockLeader` (PostgreSQL, the default there): the leader holds a
  session-level `pg_try_advisory_lock` on a dedicated connection. When the
  leader dies, or its connection is cut, PostgreSQL releases the lock at
  once and the next replica to check takes it. The leader checks its
  connection on every check and steps down when it is gone.
- `LeaseLeader` (any database, e.g. SQLite): a row in `leader_lease` renewed
  every check; taken over by another replica once it has expired (`ttl`
  seconds without renewal). Replicas' clocks must agree to well within `ttl`.
- `SoleLeader`: a single replica (`scheduler.leader = "none"`).

`check(now)` is called every `scheduler.leader_check` seconds by the
scheduler; `release()` on graceful shutdown lets another replica take over
without waiting.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from storage.locks import lock_key
from storage.sources import release_lease, try_lease

log = logging.getLogger(__name__)


class Leadership(Protocol):
    kind: str
    holder: str

    @property
    def is_leader(self) -> bool: ...

    def check(self, now: int) -> bool: ...

    def release(self) -> None: ...


def replica_id() -> str:
    """host:pid:random, unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SoleLeader:
    kind = "none"

    def __init__(self, holder: str | None = None) -> None:
        self.holder = holder or replica_id()

    @property
    def is_leader(self) -> bool:
        return True

    def check(self, now: int) -> bool:
        return True

    def release(self) -> None:
        return None


class LeaseLeader:
    kind = "lease"

    def __init__(self, engine: Engine, name: str = "usagebot", ttl: int = 30, holder: str | None = None) -> None:
        self.engine = engine
        self.name = name
        self.ttl = ttl
        self.holder = holder or replica_id()
        self._leader = False

    @property
    def is_leader(self) -> bool:
        return self._leader

    def check(self, now: int) -> bool:
        try:
            self._leader = try_lease(self.engine, self.name, self.holder, now, self.ttl)
        except SQLAlchemyError as exc:
            if self._leader:
                log.warning("lost leadership: cannot renew the lease (%s)", type(exc).__name__,
                            extra={"event": "leader_lost"})
            self._leader = False
        return self._leader

    def release(self) -> None:
        if self._leader:
            try:
                release_lease(self.engine, self.name, self.holder)
            except SQLAlchemyError:
                log.warning("could not release the leader lease; it expires in %ss", self.ttl)
        self._leader = False


class AdvisoryLockLeader:
    kind = "advisory_lock"

    def __init__(self, engine: Engine, name: str = "usagebot", holder: str | None = None) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("advisory-lock leader election needs PostgreSQL; use the lease on "
                             f"{engine.dialect.name}")
        self.name = name
        self.key = lock_key(name)
        self.holder = holder or replica_id()
        # A connection of its own, outside the pool: the lock lives exactly as long as it.
        self._engine = sa.create_engine(
            engine.url, poolclass=NullPool,
            connect_args={"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                          "keepalives_count": 3, "application_name": "usagebot-leader"})
        self._conn: Connection | None = None
        self._leader = False
        self._mutex = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self._leader

    def backend_pid(self) -> int | None:
        """The PostgreSQL backend holding (or trying for) the lock (for operators and tests)."""
        with self._mutex:
            if self._conn is None:
                return None
            try:
                return int(self._conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
            except SQLAlchemyError:
                return None

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except SQLAlchemyError:
                pass
        self._conn = None

    def check(self, now: int) -> bool:
        with self._mutex:
            if self._conn is not None:
                try:
                    self._conn.exec_driver_sql("SELECT 1")
                except SQLAlchemyError:
                    if self._leader:
                        log.warning("lost leadership: the lock connection is gone", extra={"event": "leader_lost"})
                    self._leader = False
                    self._drop()
            if self._leader:
                return True
            try:
                if self._conn is None:
                    self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                got = self._conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar_one()
            except SQLAlchemyError as exc:
                log.warning("leader check failed: %s", type(exc).__name__, extra={"event": "leader_check_failed"})
                self._drop()
                got = False
            self._leader = bool(got)
            return self._leader

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None and self._leader:
                try:
                    self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                except SQLAlchemyError:
                    pass
            self._leader = False
            self._drop()
            self._engine.dispose()


def make_leadership(kind: str, engine: Engine, name: str, ttl: int) -> Leadership:
    """"auto" = the advisory lock on PostgreSQL, the lease elsewhere."""
    if kind == "auto":
        kind = "advisory_lock" if engine.dialect.name == "postgresql" else "lease"
    if kind == "advisory_lock":
        return AdvisoryLockLeader(engine, name)
    if kind == "lease":
        return LeaseLeader(engine, name, ttl)
    return SoleLeader()

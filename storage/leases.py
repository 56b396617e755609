"""Named leases with a holder and an expiry: the leader election of replicas without advisory locks
(bot.service.leader)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage.db import write_transaction
from storage.dialect import dialect_insert as _insert
from storage.models import LeaderLease

lease_table: sa.Table = LeaderLease.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    acquired_at: int
    renewed_at: int
    expires_at: int


def get_lease(engine: Engine, name: str) -> Lease | None:
    with engine.connect() as conn:
        r = conn.execute(sa.select(lease_table).where(lease_table.c.name == name)).one_or_none()
    return None if r is None else Lease(r.name, r.holder, int(r.acquired_at), int(r.renewed_at), int(r.expires_at))


def try_lease(engine: Engine, name: str, holder: str, now: int, ttl: int) -> bool:
    """Take or renew the lease `name` for `holder` until now + ttl; True when `holder` holds it.

    The lease is taken over only once it has expired, so a replica that stops
    renewing (dead, or cut off from the database) loses it after `ttl`.
    """
    c = lease_table.c
    with write_transaction(engine) as conn:
        renewed = conn.execute(
            sa.update(lease_table).where(c.name == name, c.holder == holder)
            .values(renewed_at=now, expires_at=now + ttl)).rowcount
        if renewed:
            return True
        taken = conn.execute(
            sa.update(lease_table).where(c.name == name, c.expires_at <= now)
            .values(holder=holder, acquired_at=now, renewed_at=now, expires_at=now + ttl)).rowcount
        if taken:
            return True
        ins = _insert(conn, lease_table).values(name=name, holder=holder, acquired_at=now, renewed_at=now,
                                                expires_at=now + ttl)
        return conn.execute(ins.on_conflict_do_nothing(index_elements=[c.name]).returning(c.name)).first() is not None


def release_lease(engine: Engine, name: str, holder: str) -> bool:
    """Give the lease up (graceful shutdown) so another replica takes over at once."""
    with engine.begin() as conn:
        return bool(conn.execute(sa.delete(lease_table).where(
            lease_table.c.name == name, lease_table.c.holder == holder)).rowcount)

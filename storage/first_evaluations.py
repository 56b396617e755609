"""When each rule and each account was first evaluated (the first-run policy, bot.service.pipeline).

A condition that already holds the first time a rule runs, or the first time an account is
evaluated (a new book, a backfill into an empty database, a new rule), is recorded but does not
page people one by one. The marks are written in the transaction that records the cycle, and a
mark made at the same evaluation time still counts as "first" when that time is evaluated again
(a retried cycle is idempotent).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from storage.models import FirstEvaluation

table: sa.Table = FirstEvaluation.__table__  # type: ignore[attr-defined]
_c = table.c
RULE, ACCOUNT = "rule", "account"
_CHUNK = 1000


def first_times(engine: Engine, scope: str, subjects: Collection[str] | None = None) -> dict[str, int]:
    """subject -> first evaluation time, for every marked subject of `scope` (or only `subjects`)."""
    q = sa.select(_c.subject, _c.first_at).where(_c.scope == scope)
    with engine.connect() as conn:
        if subjects is None:
            return {s: int(t) for s, t in conn.execute(q)}
        wanted = sorted(set(subjects))
        out: dict[str, int] = {}
        for i in range(0, len(wanted), _CHUNK):
            out.update((s, int(t)) for s, t in conn.execute(q.where(_c.subject.in_(wanted[i:i + _CHUNK]))))
        return out


def firsts(known: dict[str, int], subjects: Iterable[str], at: int) -> frozenset[str]:
    """The subjects evaluated for the first time at `at` (no mark, or a mark made at `at`)."""
    return frozenset(s for s in subjects if known.get(s, at) == at)


def mark(conn: Connection, scope: str, subjects: Iterable[str], at: int) -> None:
    """Record `at` as the first evaluation of these subjects (existing marks are kept)."""
    rows = [{"scope": scope, "subject": s, "first_at": int(at)} for s in sorted(set(subjects))]
    if not rows:
        return
    ins = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)
    conn.execute(ins.on_conflict_do_nothing(index_elements=[_c.scope, _c.subject]), rows)

"""Account facts pulled from Salesforce (crm_account_facts) and the pull's cursor (crm_pull_cursor)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from storage.models import CrmAccountFacts, CrmPullCursor

facts_table: sa.Table = CrmAccountFacts.__table__  # type: ignore[attr-defined]
cursor_table: sa.Table = CrmPullCursor.__table__  # type: ignore[attr-defined]
ACCOUNTS_CURSOR = "salesforce:accounts"
_CHUNK = 1000


def _insert(conn: Connection, table: sa.Table) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def save_pulled(conn: Connection, rows: Sequence[tuple[str, str, Mapping[str, Any], str]], now: int) -> None:
    """Store (account id, record Id, facts, SystemModstamp) rows, replacing earlier pulls of those accounts."""
    if not rows:
        return
    ins = _insert(conn, facts_table)
    stmt = ins.on_conflict_do_update(index_elements=[facts_table.c.account_id],
                                     set_={k: ins.excluded[k] for k in ("sf_id", "facts", "modstamp", "pulled_at")})
    latest = {a: (a, s, f, m) for a, s, f, m in rows}  # one account twice in a pull: the later record
    values = [{"account_id": a, "sf_id": s, "facts": dict(f), "modstamp": m, "pulled_at": now}
              for a, s, f, m in (latest[k] for k in sorted(latest))]  # key order: one lock order for every writer
    for i in range(0, len(values), _CHUNK):
        conn.execute(stmt, values[i : i + _CHUNK])


def get_pull_cursor(engine: Engine, name: str = ACCOUNTS_CURSOR) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(cursor_table.c.modstamp).where(cursor_table.c.name == name)).scalar()


def save_pull_cursor(conn: Connection, modstamp: str, now: int, name: str = ACCOUNTS_CURSOR) -> None:
    ins = _insert(conn, cursor_table)
    conn.execute(ins.on_conflict_do_update(index_elements=[cursor_table.c.name],
                                           set_={"modstamp": ins.excluded.modstamp,
                                                 "updated_at": ins.excluded.updated_at}),
                 {"name": name, "modstamp": modstamp, "updated_at": now})

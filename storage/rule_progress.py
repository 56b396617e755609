"""How far each rule has been evaluated (the scheduler's catch-up after downtime, bot.service.evaluation)."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage.dialect import dialect_insert as _insert
from storage.models import RuleProgress

progress_table: sa.Table = RuleProgress.__table__  # type: ignore[attr-defined]


def get_rule_progress(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {r: int(t) for r, t in conn.execute(
            sa.select(progress_table.c.rule_id, progress_table.c.evaluated_through))}


def set_rule_progress(engine: Engine, through: Mapping[str, int], now: int) -> None:
    if not through:
        return
    with engine.begin() as conn:
        ins = _insert(conn, progress_table)
        stmt = ins.on_conflict_do_update(
            index_elements=[progress_table.c.rule_id],
            set_={"evaluated_through": ins.excluded.evaluated_through, "updated_at": ins.excluded.updated_at})
        conn.execute(stmt, [{"rule_id": r, "evaluated_through": int(t), "updated_at": now}
                            for r, t in sorted(through.items())])

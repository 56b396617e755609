"""Storage reads behind the charts (read only: nothing here writes, not even the usage tiles)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from integrations.charts.build import EpisodeMark, episode_chart, episode_window
from integrations.charts.model import Chart
from rules.model import AccountFacts
from storage.accounts import list_accounts
from storage.episodes import episodes_table, events_table
from storage.usage import load_block


def account_series(engine: Engine, account_id: str, metric: str, step: int, start: int, end: int) -> np.ndarray:
    """One account's usage of `metric` in buckets [start, end) of `step` (NaN = not observed)."""
    block = load_block(engine, metric, step, start, end, [account_id], cached=False)
    return block.values[0] if block.values.shape[0] else np.full((end - start) // step, np.nan)


def episode_marks(engine: Engine, rows: Sequence[Any]) -> list[EpisodeMark]:
    """EpisodeMarks of alert_episodes rows (mappings), with their manual actions from alert_events."""
    ids = [int(r["id"]) for r in rows]
    events: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    v = events_table.c
    with engine.connect() as conn:
        for i in range(0, len(ids), 1000):
            q = (sa.select(v.episode_id, v.event, v.at, v.actor)
                 .where(v.episode_id.in_(ids[i:i + 1000]), v.event.in_(["acknowledged", "snoozed", "unsnoozed"]))
                 .order_by(v.at, v.id))
            for r in conn.execute(q):
                events[int(r.episode_id)].append(dict(r._mapping))
    return [EpisodeMark.from_row(r, events[int(r["id"])]) for r in rows]


def chart_of_episode(engine: Engine, episode_id: int, now: int, account: AccountFacts | None = None) -> Chart | None:
    """The episode's chart (integrations.charts.build.episode_chart) from the stored episode and usage;
    None when the episode does not exist or its bucket size is unknown."""
    e = episodes_table.c
    with engine.connect() as conn:
        row = conn.execute(sa.select(episodes_table).where(e.id == episode_id)).one_or_none()
    if row is None:
        return None
    mark = episode_marks(engine, [dict(row._mapping)])[0]
    window = episode_window(mark, now)
    if window is None:
        return None
    start, end, step = window
    if account is None:
        found = list_accounts(engine, [mark_account(row)])
        account = found[0] if found else None
    values = account_series(engine, mark_account(row), mark.metric, step, start, end)
    return episode_chart(mark, values, start, step, account,
                         title=f"{account.name if account else mark_account(row)} · {mark.metric}")


def mark_account(row: Any) -> str:
    return str(row._mapping["account_id"] if hasattr(row, "_mapping") else row["account_id"])

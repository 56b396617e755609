"""Builders shared by the source tests."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from integrations.sources.base import SourceConfig, parse_source_config
from rules.config import ConfigError, document_from_text

T0 = 1_793_491_200  # 2026-11-01T00:00:00Z
HOUR = 3600
DAY = 86_400


def source_config(toml: str, env: Mapping[str, str] | None = None) -> SourceConfig:
    """The [[sources]] table in `toml` (exactly one), or ConfigError with every problem."""
    doc = document_from_text(toml, "test.toml", env)
    sections = doc.sections("sources")
    assert len(sections) == 1
    cfg = parse_source_config(sections[0])
    doc.raise_if_problems()
    assert cfg is not None
    return cfg


def config_problems(toml: str, env: Mapping[str, str] | None = None) -> list[str]:
    try:
        source_config(toml, env)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def points(engine: Engine, metric: str | None = None) -> dict[tuple[str, str, int], float]:
    q = sa.text("SELECT account_id, metric, bucket_start, value FROM usage_points"
                + (" WHERE metric = :m" if metric else ""))
    with engine.connect() as conn:
        return {(a, m, int(b)): float(v) for a, m, b, v in conn.execute(q, {"m": metric} if metric else {})}


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def refusal_notices(engine: Engine, source_id: str) -> list[dict]:
    """The payloads of the admin notices queued about refused buckets of a source (one per bucket
    and notifier; bot.service.refusals)."""
    from storage.outbox import list_outbox

    return [r.payload for r in list_outbox(engine, limit=10_000)
            if r.idempotency_key.startswith(f"source-refused:{source_id}:")]

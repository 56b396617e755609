"""Builders shared by the source tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from integrations.sources.base import SourceConfig, parse_source_config
from rules.config import ConfigError, document_from_text

T0 = 1_793_491_200  # 2026-11-01T00:00:00Z
HOUR = 3600
DAY = 86_400


def iso_z(ts: int) -> str:
    """Epoch second `ts` as the APIs write it: 2026-11-01T00:00:00Z."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def source_config(toml: str, env: Mapping[str, str] | None = None) -> SourceConfig:
    """The [[sources]] table in `toml` (exactly one), or ConfigError with every problem."""
    doc = document_from_text(toml, "test.toml", env)
    sections = doc.sections("sources")
    assert len(sections) == 1
    cfg = parse_source_config(sections[0])
    doc.raise_if_problems()
    assert cfg is not None
    return cfg


def source_toml(tables: Mapping[str, Mapping[str, Any]] | None = None, **keys: Any) -> str:
    """One [[sources]] table of `keys` (strings quoted, a dict an inline table) and its sub-tables."""

    def value(v: Any) -> str:
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return f'"{v}"' if isinstance(v, str) else str(v)

    lines = ["[[sources]]", *(f"{k} = {value(v)}" for k, v in keys.items())]
    for name, table in (tables or {}).items():
        lines += [f"[sources.{name}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


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
            if r.idempotency_key.startswith(f'source-refused:["{source_id}",')]


def told_once(engine: Engine, first: Any, again: Any, source_id: str, part: str) -> str:
    """What every source's refused-bucket test checks: the first poll (a PollReport) told acme's
    api_calls bucket of T0 refused, in `part`, once (one notice); the poll after a restart, which
    read the bucket again, told nothing. Returns what the first poll told."""
    assert first.ok and again.ok and again.rejected == []
    [told] = first.rejected
    assert told.startswith(f"source {source_id!r}: {part}: 1 bucket(s) refused, not stored"), told
    assert "account 'acme', metric 'api_calls', bucket 2026-11-01T00:00:00Z" in told
    assert len(refusal_notices(engine, source_id)) == 1
    return told


def skipped_notices(engine: Engine, source_id: str) -> list[dict]:
    """The payloads of the admin notices queued about malformed items a source skipped (on_error =
    "skip"; one per item content and notifier; integrations.sources.skipped)."""
    from storage.outbox import list_outbox

    return [r.payload for r in list_outbox(engine, limit=10_000)
            if r.idempotency_key.startswith(f"source-skipped:{source_id}:")]

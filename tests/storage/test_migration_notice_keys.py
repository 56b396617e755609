"""Migration 0015: a refused bucket's or a cohort event's notice stored under the old ':'-joined key
(before 097b084) is recognised as told after the upgrade; SQLite and PostgreSQL. Before the
migration, the notice of a bucket refused again within a window's overlap was queued once more."""

from __future__ import annotations

from dataclasses import replace

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from bot.service.alerts import cohort_notice, refusal_notices
from bot.service.notices import notice_items
from integrations.sources.refused import Refusal, newly_refused
from rules.engine import CohortEvent
from storage.db import alembic_config, migrate
from storage.outbox import enqueue, known_keys

START = 1_762_128_000  # 2025-11-03T00:00:00Z
SOURCE = "billing:eu"  # parts with ':' made the old key ambiguous; the payload is read, not the key
BUCKET = ("acme:x", "api:calls", START)


def _to_0014(engine: Engine) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0014_usage_bucket_major")


def _old(notice, old_key: str):  # the notice as an old version queued it: the same payload, the old key
    return replace(notice, key=old_key)


def _keys(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT idempotency_key FROM outbox")).scalars())


def test_old_refused_and_cohort_keys_are_told_after_the_upgrade(engine: Engine) -> None:
    migrate(engine)
    _to_0014(engine)
    refusal = Refusal(BUCKET, "the bucket's total passes the largest float64")
    (refused,) = refusal_notices(SOURCE, "window 2025-11-03", [refusal], START + 60, "#admin")
    old_refused = f"source-refused:{SOURCE}:{BUCKET[0]}:{BUCKET[1]}:{START}"
    up = CohortEvent("spike:calls", START, "plan pro", 40, 50, ("a", "b"), direction=1, firing=30)
    flat = CohortEvent("drop", START, "all accounts", 40, 50, ("a",))
    olds = [_old(refused, old_refused), _old(cohort_notice(up, "#admin"), f"cohort:spike:calls:plan pro:{START}:up"),
            _old(cohort_notice(flat, "#admin"), f"cohort:drop:all accounts:{START}")]
    enqueue(engine, [i for n in olds for i in notice_items(n, START, ["console", "slack"])], now=START)
    assert newly_refused(engine, SOURCE, {BUCKET: refusal}) == [refusal]  # before: told once more

    migrate(engine)

    assert newly_refused(engine, SOURCE, {BUCKET: refusal}) == []
    wanted = [refusal.key(SOURCE), cohort_notice(up, None).idempotency_key, cohort_notice(flat, None).idempotency_key]
    assert known_keys(engine, wanted) == set(wanted)
    assert _keys(engine) == sorted(wanted * 2)  # every row rewritten, one per notifier, none lost


def test_an_old_key_whose_new_key_is_already_queued_is_left_alone(engine: Engine) -> None:
    """Both forms of one bucket (told by the old code, then once more by the new code before this
    migration ran): the unique (kind, key) constraint is kept and neither row is lost."""
    migrate(engine)
    _to_0014(engine)
    refusal = Refusal(BUCKET, "too large")
    (refused,) = refusal_notices(SOURCE, "part", [refusal], START, None)
    old_key = f"source-refused:{SOURCE}:{BUCKET[0]}:{BUCKET[1]}:{START}"
    enqueue(engine, notice_items(_old(refused, old_key), START, ["console"])
            + notice_items(refused, START, ["console"]), now=START)
    migrate(engine)
    assert _keys(engine) == sorted([old_key, refusal.key(SOURCE)])
    assert newly_refused(engine, SOURCE, {BUCKET: refusal}) == []


def test_old_keys_past_one_page_are_all_rewritten(engine: Engine) -> None:
    """More old-form rows than the migration reads per page (its BATCH, 500), one of them whose new
    key is already queued: every other row is rewritten across the pages, none lost, none left."""
    migrate(engine)
    _to_0014(engine)
    refusals = [Refusal(("acme:x", "api:calls", START + i * 86_400), "too large") for i in range(1_203)]
    notices = refusal_notices(SOURCE, "part", refusals, START, None)
    old = [_old(n, f"source-refused:{SOURCE}:acme:x:api:calls:{r.bucket[2]}") for n, r in zip(notices, refusals, strict=True)]
    enqueue(engine, [i for n in old for i in notice_items(n, START, ["console"])]
            + notice_items(notices[700], START, ["console"]), now=START)  # bucket 700 told in both forms
    migrate(engine)
    keys = _keys(engine)
    assert len(keys) == 1_204
    assert sorted(k for k in keys if k.startswith("source-refused:[")) == sorted(r.key(SOURCE) for r in refusals)
    assert [k for k in keys if not k.startswith("source-refused:[")] == [old[700].key]
    assert newly_refused(engine, SOURCE, {r.bucket: r for r in refusals}) == []

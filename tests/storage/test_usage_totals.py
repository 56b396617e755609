"""Bucket totals that are not finite are refused at every write path, naming the bucket, storing
nothing of the write (issue 12, item 5: two 1e308 rows in one bucket stored inf)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from integrations.sources.base import UsageEvent
from integrations.sources.records import UsageRecord
from storage.sources import count_events, store_batch
from storage.usage import UsageValueError, load_usage, upsert_usage
from tests.storage.test_usage import T0, Rec, rows

BIG = 1e308
WHERE = r"account 'acme', metric 'calls', bucket 2026-10-2\dT00:01:00Z: the values of the bucket add up to more"


def test_upsert_refuses_a_bucket_whose_values_overflow(engine: Engine) -> None:
    with pytest.raises(UsageValueError, match=WHERE):
        upsert_usage(engine, [Rec("ok", "calls", T0, 1.0), Rec("acme", "calls", T0 + 60, BIG),
                              Rec("acme", "calls", T0 + 90, BIG)])
    assert rows(engine) == []  # nothing of the call
    # totals up to the largest float64 are fine
    upsert_usage(engine, [Rec("acme", "calls", T0 + 60, BIG), Rec("acme", "calls", T0 + 61, 7e307)])
    assert rows(engine) == [("acme", "calls", T0 + 60, BIG + 7e307)]


@pytest.mark.parametrize("first", ["empty", "staged"])
def test_load_usage_refuses_totals_that_overflow_across_chunks(engine: Engine, first: str) -> None:
    if first == "staged":  # a table with data takes the staged path
        upsert_usage(engine, [Rec("other", "calls", T0, 5.0)])
    before = rows(engine)
    chunks = [[Rec("ok", "calls", T0, 1.0), Rec("acme", "calls", T0 + 60, BIG)],
              [Rec("acme", "calls", T0 + 70, BIG)]]  # each chunk alone is fine
    with pytest.raises(UsageValueError, match=WHERE):
        load_usage(engine, iter(chunks))
    assert rows(engine) == before


def test_pushed_events_that_overflow_a_stored_bucket_are_refused(engine: Engine) -> None:
    store_batch(engine, "push", T0 + 100, events=[UsageEvent("acme", "calls", T0 + 60, BIG, "e1")], kind="push")
    with pytest.raises(UsageValueError, match=r"account 'acme', metric 'calls', bucket .*stored 1e\+308"):
        store_batch(engine, "push", T0 + 200, events=[UsageEvent("acme", "calls", T0 + 61, BIG, "e2"),
                                                      UsageEvent("acme", "calls", T0 + 62, 1.0, "e3")], kind="push")
    assert rows(engine) == [("acme", "calls", T0 + 60, BIG)]
    assert count_events(engine, "push") == 1  # e2 and e3 not recorded: a corrected resend counts
    with pytest.raises(UsageValueError, match=WHERE):  # within one batch too
        store_batch(engine, "push", T0 + 300, events=[UsageEvent("acme", "calls", T0 + 120 - 60, BIG, "e4"),
                                                      UsageEvent("acme", "calls", T0 + 61, BIG, "e5")], kind="push")


def test_polled_totals_that_overflow_are_refused(engine: Engine) -> None:
    with pytest.raises(UsageValueError, match=r"source 'billing': account 'acme'.*add up to more"):
        store_batch(engine, "billing", T0 + 100, totals=[UsageRecord("acme", "calls", T0 + 60, BIG),
                                                         UsageRecord("acme", "calls", T0 + 65, BIG)])
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM usage_points")).scalar_one() == 0


def test_accounts_and_usage_load_in_the_callers_transaction(engine: Engine) -> None:
    """What `usagebot ingest --usage --accounts` does: one transaction for both, all or nothing."""
    from rules.model import AccountFacts
    from storage.accounts import list_accounts, upsert_accounts
    from storage.db import write_transaction

    def chunks(bad: bool):
        yield [Rec("acme", "calls", T0, 1.0)]
        if bad:
            raise ValueError("row 3 of the file is bad")  # what a CSV reader does mid-file
        yield [Rec("acme", "calls", T0 + 60, 2.0)]

    with pytest.raises(ValueError, match="row 3"), write_transaction(engine) as conn:
        upsert_accounts(conn, [AccountFacts("acme", "Acme")])
        load_usage(conn, chunks(bad=True))
    assert list_accounts(engine) == [] and rows(engine) == []
    with write_transaction(engine) as conn:
        assert upsert_accounts(conn, [AccountFacts("acme", "Acme")]) == 1
        assert load_usage(conn, chunks(bad=False)) == 2
    assert [a.id for a in list_accounts(engine)] == ["acme"] and len(rows(engine)) == 2

"""Account facts round-trip, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from rules.model import AccountFacts
from storage.accounts import list_accounts, upsert_accounts

ACME = AccountFacts(id="acme", name="Acme Corp", plan="pro", owner_email="ae@example.com", crm_id="001A",
                    quotas={"api_calls": 1_000_000.0, "storage.gb": 50.5}, billing_day=15,
                    timezone="America/New_York")
INITECH = AccountFacts(id="initech", name="Initech")


def test_round_trip_and_defaults(engine: Engine) -> None:
    assert upsert_accounts(engine, [INITECH, ACME], now=1000) == 2
    got = list_accounts(engine)
    assert got == [ACME, INITECH]  # sorted by id, every field including quotas JSON
    assert got[0].quotas == {"api_calls": 1_000_000.0, "storage.gb": 50.5}
    assert got[1].timezone == "UTC" and got[1].billing_day == 1 and dict(got[1].quotas) == {}


def test_upsert_replaces_and_keeps_others(engine: Engine) -> None:
    upsert_accounts(engine, [ACME, INITECH])
    moved = AccountFacts(id="acme", name="Acme Inc", plan="enterprise", quotas={"api_calls": 5}, billing_day=1)
    assert upsert_accounts(engine, [moved]) == 1
    assert list_accounts(engine) == [
        AccountFacts(id="acme", name="Acme Inc", plan="enterprise", quotas={"api_calls": 5.0}), INITECH,
    ]
    # the same id twice in one call: the last one wins
    assert upsert_accounts(engine, [INITECH, AccountFacts(id="initech", name="Initrode")]) == 1
    assert list_accounts(engine, ["initech"])[0].name == "Initrode"


def test_list_by_ids_keeps_order_and_skips_unknown(engine: Engine) -> None:
    upsert_accounts(engine, [ACME, INITECH])
    assert [a.id for a in list_accounts(engine, ["initech", "nope", "acme"])] == ["initech", "acme"]
    assert list_accounts(engine, []) == []
    assert upsert_accounts(engine, []) == 0


def test_bad_quota_names_the_account(engine: Engine) -> None:
    bad = AccountFacts(id="bad", name="Bad", quotas={"api_calls": "lots"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"account 'bad': quota for metric 'api_calls'"):
        upsert_accounts(engine, [bad])
    assert list_accounts(engine) == []

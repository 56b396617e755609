"""API calls per CRM sync at scale: 10,000 accounts, 5% changed (docs/salesforce.md quotes these numbers)."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from bot.crm.sync import run_crm_sync
from integrations.salesforce.client import SalesforceClient
from rules.health import DEFAULT_MODEL
from rules.model import RuleSet
from tests.fakes.salesforce_server import FakeSalesforce, running
from tests.integrations.salesforce.helpers import NOW, password_config, seed_accounts, set_usage


@pytest.fixture
def fake() -> Iterator[FakeSalesforce]:
    yield from running()


def sync(engine, fake):
    cfg = password_config(fake)
    client = SalesforceClient(cfg, session=fake.session())
    report = run_crm_sync(engine, RuleSet(rules=()), cfg, DEFAULT_MODEL, NOW, dry_run=False, out=io.StringIO(),
                          client=client)
    return report, None, client


def test_ten_thousand_accounts_five_percent_changed_costs_ceil_changed_over_200_plus_one(tmp_path, fake):
    from storage.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'big.db'}")
    migrate(engine)
    try:
        ids = seed_accounts(engine, 10_000, days=2, fake=fake)
        t0 = time.perf_counter()
        report, _, client = sync(engine, fake)
        first = time.perf_counter() - t0
        assert report.written == 10_000 and client.calls == 1 + 50
        first_calls = client.calls
        changed = ids[::20]  # 5%
        set_usage(engine, changed, 0.0, days=1)
        fake.log.clear()
        t0 = time.perf_counter()
        report, _, client = sync(engine, fake)
        second = time.perf_counter() - t0
        second_calls = client.calls
        assert len(report.changes) == len(changed) == 500 and report.written == 500
        assert client.calls == len(fake.log) == math.ceil(500 / 200) + 1  # + the login
        with engine.connect() as conn:
            n = conn.execute(sa.text("SELECT count(*) FROM crm_record_state WHERE last_error IS NULL")).scalar()
        assert n == 10_000
        fake.log.clear()
        t0 = time.perf_counter()
        report, _, client = sync(engine, fake)
        third = time.perf_counter() - t0
        assert report.changes == [] and client.calls == 0
        print(f"\n10,000 accounts: first sync {first_calls} calls ({first:.1f} s); 500 changed: "
              f"{second_calls} calls ({second:.1f} s); nothing changed: 0 calls ({third:.1f} s)")
    finally:
        engine.dispose()

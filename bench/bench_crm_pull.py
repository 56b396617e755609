"""Salesforce API calls (and time) of pulling account facts, first and incremental.

    .venv/bin/python -m bench.bench_crm_pull --accounts 10000 100000

For each size, a fresh FakeSalesforce org (tests/fakes; pages of 2,000 records like Salesforce's
default query batch) holds that many Accounts (owner and CSM User lookups, plan, ARR, renewal,
billing day, two quotas) and 200 Users; a fresh SQLite database starts empty. Through the real
simple-salesforce client, `bot.crm.pull.run_crm_pull` runs
  1. the first pull (every Account),
  2. an incremental pull after 1% of the Accounts were changed in Salesforce (an hour later),
  3. an incremental pull with nothing changed.
Every request the fake org received is counted (logins apart) from its request log.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bot.crm.pull import run_crm_pull
from integrations.salesforce.client import SalesforceClient
from integrations.salesforce.config import AccountPullConfig, SalesforceConfig
from rules.config import Secret
from storage.db import make_engine, migrate

T0 = 1_795_478_400  # 2026-11-24T00:00:00Z
PULL = AccountPullConfig(owner="Owner.Email", csm="CSM__r.Email", plan="Plan__c", arr="ARR__c",
                         renewal="Renewal_Date__c", billing_day="Billing_Day__c",
                         quotas={"api_calls": "API_Quota__c", "seats": "Seats__c"})


def measure(n: int, workdir: Path) -> list[tuple[str, int, int, int, float]]:
    """[(phase, records read, accounts changed, API requests, seconds)] for a book of n accounts."""
    from tests.fakes.salesforce_server import FakeSalesforce

    rows = []
    with FakeSalesforce(page_size=2000, api_limit=10_000_000) as fake:
        fake.now = T0 - 60 * 86_400
        for u in range(200):
            fake.add_record("User", {"Email": f"user{u}@example.com"}, id=f"005{u:012d}AAA")
        ids = []
        for i in range(n):
            fake.now = T0 - 30 * 86_400 + i * (30 * 86_400 // n)  # last changed over the past 30 days
            ids.append(fake.add_record("Account", {
            "Name": f"Account {i}", "OwnerId": f"005{i % 150:012d}AAA", "CSM__c": f"005{150 + i % 50:012d}AAA",
            "Plan__c": ("starter", "growth", "enterprise")[i % 3], "ARR__c": 1000.0 * (1 + i % 97),
            "Renewal_Date__c": "2027-06-30", "Billing_Day__c": 1 + i % 28, "API_Quota__c": 100_000,
            "Seats__c": 25, "Usagebot_Id__c": f"acct{i:06d}"}))
        cfg = SalesforceConfig(auth="password", username=fake.username, password=Secret(fake.password),
                               security_token=Secret(fake.security_token), match="external_id",
                               external_id_field="Usagebot_Id__c", accounts=PULL)
        engine = make_engine(f"sqlite:///{workdir / f'pull-{n}.db'}")
        migrate(engine)

        def phase(name: str, now: int) -> None:
            fake.log.clear()
            client = SalesforceClient(cfg, session=fake.session())
            started = time.perf_counter()
            report = run_crm_pull(engine, cfg, now, False, client)
            assert report.ok, report.stopped
            rows.append((name, report.records, len(report.changed), len(fake.data_requests()),
                         time.perf_counter() - started))

        phase("first pull", T0 + 600)
        fake.now = T0 + 3600
        for rid in ids[:: 100]:  # 1% reassigned to another owner
            fake.modify("Account", rid, OwnerId="005000000000199AAA")
        phase("incremental, 1% changed", T0 + 7200)
        phase("incremental, nothing changed", T0 + 9000)
        engine.dispose()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, nargs="+", default=[10_000, 100_000])
    args = p.parse_args()
    print("| accounts | pull | records read | accounts changed | API requests (+1 login) | seconds |")
    print("|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for n in args.accounts:
            for name, read, changed, calls, secs in measure(n, Path(d)):
                print(f"| {n:,} | {name} | {read:,} | {changed:,} | {calls} | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()

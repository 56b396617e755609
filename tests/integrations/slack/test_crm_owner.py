"""An account reassigned in Salesforce: its next alert goes to the new owner's DM (through the
evaluation cycle, the outbox and the Slack notifier), and `/usage` owner-only access follows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from bot.crm.pull import run_crm_pull, show_change
from integrations.salesforce.client import SalesforceClient
from integrations.salesforce.config import AccountPullConfig
from integrations.slack.actions import EpisodeActions
from integrations.slack.usage_answers import UsageCommandHandler
from storage.accounts import upsert_accounts
from tests.fakes.salesforce_server import FakeSalesforce, running
from tests.integrations.salesforce.helpers import password_config
from tests.integrations.slack.scenario import ACCOUNTS, FIRED, SPIKE_DAY, T0, Scenario

ALICE, BOB = "U0ALICE01", "U0BOBBY01"


@pytest.fixture
def org() -> Iterator[FakeSalesforce]:
    yield from running()


def reassign_acme_to_bob(engine, org: FakeSalesforce) -> None:
    """Salesforce says Acme (001ACME) is Bob's; the accounts CSV still says Alice's."""
    org.add_record("User", {"Email": "Bob@Example.com"}, id="005BOB")
    org.add_record("Account", {"Name": "Acme Corp", "OwnerId": "005BOB"}, id="001ACME")
    cfg = password_config(org, accounts=AccountPullConfig(owner="Owner.Email"))
    report = run_crm_pull(engine, cfg, T0, False, SalesforceClient(cfg, session=org.session(), sleep=lambda s: None))
    assert [show_change(c) for ch in report.changed for c in ch.changes] == [
        "owner_email: alice@example.com -> bob@example.com"]


def test_the_next_alert_of_a_reassigned_account_goes_to_the_new_owner(engine, fake, config, clock, org):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    reassign_acme_to_bob(engine, org)
    upsert_accounts(engine, ACCOUNTS, now=T0)  # the CSV loaded again: the CRM's owner stays
    sc.cycle(SPIKE_DAY)
    report = sc.cycle(FIRED)
    assert [(t.event, t.state.account_id) for t in report.transitions] == [("fired", "acme")]
    sc.deliver(n)
    bob = fake.dm_with(BOB)
    assert bob is not None and len(bob.messages) == 1 and "Acme Corp" in bob.messages[0]["text"]
    assert fake.dm_with(ALICE) is None


def test_usage_owner_only_follows_the_crm_owner(engine, fake, config, clock, org):
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    h = UsageCommandHandler(replace(config, owner_only=True), engine, n.directory, n.renderer,
                            EpisodeActions(engine, clock), clock)
    assert "📊 Acme Corp" in str(h.handle(ALICE, "acme corp").blocks)
    reassign_acme_to_bob(engine, org)
    assert "No account of yours matches `acme corp`" in h.handle(ALICE, "acme corp").text
    assert "📊 Acme Corp" in str(h.handle(BOB, "acme corp").blocks)

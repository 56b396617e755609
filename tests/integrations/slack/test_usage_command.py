"""`/usage` answers from storage: account summary, alerts, top, snooze, access control."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from integrations.slack.actions import EpisodeActions
from integrations.slack.usage_answers import UsageCommandHandler
from integrations.slack.usage_args import match_account, parse_usage_command
from storage.episodes import find_episode
from storage.slack import account_snoozed_until
from tests.integrations.slack.scenario import (
    ACCOUNTS,
    FIRED,
    RENOTIFIED,
    SPIKE_DAY,
    Scenario,
    assert_valid_message,
)

ALICE, BOB = "U0ALICE01", "U0BOBBY01"


@pytest.mark.parametrize("text,action,extra", [
    ("", "help", {}), ("help", "help", {}), ("acme corp", "account", {"query": "acme corp"}),
    ("alerts", "alerts", {"query": ""}), ("alerts Acme Corp", "alerts", {"query": "Acme Corp"}),
    ("top", "top", {"direction": "growing"}), ("top declining", "top", {"direction": "declining"}),
    ("snooze Acme Corp 7d", "snooze", {"query": "Acme Corp", "seconds": 7 * 86_400}),
])
def test_parse(text, action, extra):
    cmd = parse_usage_command(text)
    assert cmd.action == action
    for k, v in extra.items():
        assert getattr(cmd, k) == v


@pytest.mark.parametrize("text,hint", [
    ("top fastest", "`growing` or `declining`"), ("snooze acme", "needs an account and a duration"),
    ("snooze acme soon", "not a duration"), ("snooze acme 1y", "not a duration"),
    ("snooze acme 100d", "between 1m and 90d"),
])
def test_parse_errors_are_helpful(text, hint):
    cmd = parse_usage_command(text)
    assert cmd.action == "error" and hint in cmd.error


def test_fuzzy_account_match():
    assert match_account("acme", ACCOUNTS).account.id == "acme"  # exact id
    assert match_account("ACME corp", ACCOUNTS).account.id == "acme"  # name, any case
    assert match_account("001GLOBEX", ACCOUNTS).account.id == "globex"  # CRM id
    assert match_account("glob", ACCOUNTS).account.id == "globex"  # unique prefix
    assert match_account("labs", ACCOUNTS).account.id == "acme-labs"  # unique word
    assert match_account("Globx", ACCOUNTS).account.id == "globex"  # typo
    amb = match_account("ac", ACCOUNTS)
    assert amb.account is None and {a.id for a in amb.candidates} == {"acme", "acme-labs"}
    none = match_account("zzz", ACCOUNTS)
    assert none.account is None and none.candidates == []



def test_a_long_query_is_no_match_without_fuzzy_matching_it(monkeypatch):
    """difflib compared a 40,000-character /usage query with every account name (72 s on 2,000
    accounts, in a worker thread per click); past MAX_QUERY only an exact id still matches."""
    import integrations.slack.usage_args as usage_args

    compared: list[int] = []
    real = usage_args.difflib.SequenceMatcher

    def counting(isjunk, a, b):  # type: ignore[no-untyped-def]
        compared.append(len(a))
        return real(isjunk, a, b)

    monkeypatch.setattr(usage_args.difflib, "SequenceMatcher", counting)
    assert match_account("Globx", ACCOUNTS).account.id == "globex" and compared  # short typos still fuzzy
    compared.clear()
    for query in ("globex " * 6000, "q" * 40_000, "ac " * 200):
        found = match_account(query, ACCOUNTS)
        assert found.account is None and found.candidates == [] and compared == [], len(query)
    long_id = replace(ACCOUNTS[0], id="x" * 256)
    assert match_account("x" * 256, [long_id, *ACCOUNTS]).account == long_id  # an id of 256 characters


@pytest.fixture
def setup(engine, fake, config, clock):
    fake.add_user("U0NOBODY1", "nobody@example.com")
    sc = Scenario(engine, clock)
    n = sc.notifier(config)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(n)
    clock.set_day(FIRED, 10 * 3600)

    def handler(cfg=config):
        return UsageCommandHandler(cfg, engine, n.directory, n.renderer, EpisodeActions(engine, clock), clock,
                                   refresh=n.refresh_episode)

    return sc, n, handler


def _flat(msg) -> str:
    return msg.text + json.dumps(msg.blocks, ensure_ascii=False)


def test_account_summary(setup):
    _, _, handler = setup
    m = handler().handle(ALICE, "Acme Corp")
    assert_valid_message({"text": m.text, "blocks": m.blocks})
    flat = _flat(m)
    assert "📊 Acme Corp" in flat and "<@U0ALICE01>" in flat and "2026-10-01" in flat
    # October so far: 600 + 650; September at the same point: 100 + 100
    assert "This period *1,250* vs 200 at this point last period (+525%)" in flat
    assert "*12%* of 10,000" in flat and "Growing" in flat
    assert "/100" in flat and "trend" in flat  # health score with its factors
    assert "*Open alerts*" in flat and "api_calls spiked to 600" in flat
    assert "https://crm.example.com/r/Account/001ACME/view" in flat


def test_unknown_and_ambiguous_accounts(setup):
    _, _, handler = setup
    h = handler()
    assert "No account matches `zzz`" in h.handle(ALICE, "zzz").text
    amb = h.handle(ALICE, "ac").text
    assert "More than one account" in amb and "Acme Labs" in amb and "Acme Corp" in amb
    assert "help" in h.quick_reply(h.parse("help")).text
    for query in ("<!channel> " + "z" * 10_000, "snooze " + "<@U0ALICE01> " * 900 + "1d"):
        # the whole query was echoed: the block text was cut at 3,000 characters, mid-sentence
        long = h.handle(ALICE, query)
        assert_valid_message({"text": long.text, "blocks": long.blocks})
        block = long.blocks[0]["text"]["text"]
        assert len(block) < 400 and block.endswith("biggest changes).") and "<!channel>" not in block, block
        assert "<@U0ALICE01>" not in block and "…`" in block


def test_alerts_of_my_accounts_and_of_one_account(setup):
    _, _, handler = setup
    h = handler()
    mine = _flat(h.handle(ALICE, "alerts"))
    assert "your accounts" in mine and "Acme Corp" in mine and "calls-spike" in mine
    assert "No open alerts" in _flat(h.handle(BOB, "alerts"))
    assert "Acme Corp" in _flat(h.handle(BOB, "alerts acme"))
    nobody = _flat(h.handle("U0NOBODY1", "alerts"))
    assert "You own no accounts" in nobody and "Acme Corp" in nobody


def test_top_growing_and_declining(setup):
    _, _, handler = setup
    h = handler()
    grow = h.handle(ALICE, "top growing")
    assert_valid_message({"text": grow.text, "blocks": grow.blocks})
    assert "1. *Acme Corp*" in _flat(grow)
    assert "No declining accounts" in _flat(h.handle(ALICE, "top declining"))


def test_snooze_account(setup, engine, fake, clock):
    sc, n, handler = setup
    m = handler().handle(ALICE, "snooze acme 7d", actor="U0ALICE01 (alice)")
    assert "Snoozed *Acme Corp* for 1w (until <!date^" in m.text and "1 alert episode(s) updated" in m.text
    until = clock.now + 7 * 86_400
    assert account_snoozed_until(engine, "acme", clock.now) == until
    ep = find_episode(engine, ("calls-spike", "acme", "api_calls", ""))
    assert ep["snoozed_until"] == until
    parent = fake.channel("#usage-alerts").messages[0]
    assert "Snoozed until" in json.dumps(parent["blocks"]) and parent["edits"] == 1
    report = sc.cycle(RENOTIFIED)
    assert [(t.event, t.notify, t.reason) for t in report.transitions] == [("renotified", False, "snoozed")]


def test_owner_only_limits_lookups(setup, config):
    _, _, handler = setup
    h = handler(replace(config, owner_only=True))
    assert "No account of yours matches `acme corp`" in h.handle(BOB, "acme corp").text
    assert "📊 Acme Labs" in _flat(h.handle(BOB, "acme"))  # the only "acme" Bob owns
    assert "📊 Acme Corp" in _flat(h.handle(ALICE, "acme"))
    assert "📊 Globex" in _flat(h.handle(BOB, "glob"))


def test_allow_list_by_user_group(setup, config, fake):
    fake.add_usergroup("S0CSTEAM1", [BOB])
    _, _, handler = setup
    h = handler(replace(config, allowed_usergroups=("S0CSTEAM1",)))
    assert "not on usagebot's list of allowed users" in h.handle(ALICE, "acme").text
    assert "📊 Acme Corp" in _flat(h.handle(BOB, "acme"))
    h2 = handler(replace(config, allowed_users=(ALICE,)))
    assert "📊 Acme Corp" in _flat(h2.handle(ALICE, "acme"))
    assert "not on usagebot's list" in h2.handle(BOB, "acme").text


def test_the_account_view_rounds_its_percentages_down_as_the_alerts_do():
    """Seen: a period 29% elapsed and a quota 29% used showed "28%" (int(0.29 * 100) is 28)."""
    from integrations.slack.config import SlackConfig
    from integrations.slack.render import SlackRenderer
    from integrations.slack.usage_summary import AccountSummary, MetricSummary
    from rules.periods import Period

    cfg = SlackConfig()
    handler = UsageCommandHandler(cfg, None, None, SlackRenderer(cfg), None)  # type: ignore[arg-type]
    m = MetricSummary("api_calls", 2_900.0, None, None, 10_000.0, 0.29, "Stable", None, [1.0])
    s = AccountSummary(replace(ACCOUNTS[0], owner_email=""), Period(0, 100 * 86_400, "2026-11-01"), 0.29, [m],
                       "api_calls", None, [])
    ctx = handler.account_context(s)
    assert ctx["period"]["elapsed_pct"] == 29 and ctx["metrics"][0]["util_pct"] == 29

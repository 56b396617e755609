"""Why it matters, as people receive it: through the evaluation cycle and the outbox, the Slack
message (and the console) opens with the plain-words headline, then the money and the rule's next
step; the detector's statistical sentence is the context line; a renewal raises the severity."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from bot.service.notices import Notices
from bot.service.pipeline import run_cycle
from integrations.console import ConsoleNotifier
from rules.impact import Pricing
from rules.model import DAY
from storage.accounts import upsert_accounts
from storage.episodes import load_states
from tests.integrations.slack.scenario import ACCOUNTS, FIRED, SPIKE_DAY, SPIKE_RULE, T0, Scenario

RULE = SPIKE_RULE.replace('severity = "warning"', 'severity = "warning"\n'
                          'action = "Ask {owner} to call {account_name} about the {metric} jump ({plan})"')


def test_the_slack_alert_says_why_it_matters_first(engine, fake, config, clock):
    sc = Scenario(engine, clock, rules=RULE)
    acme = replace(ACCOUNTS[0], arr=48_000.0, renewal_at=T0 + (FIRED + 20) * DAY, csm_email="cara@example.com")
    upsert_accounts(engine, [acme], now=T0)
    notices = Notices(("slack", "console"), first_run="notify", pricing=Pricing(renewal_within=30 * DAY))
    run_cycle(engine, sc.ruleset, T0 + SPIKE_DAY * DAY, notices=notices)
    report = run_cycle(engine, sc.ruleset, T0 + FIRED * DAY, notices=notices)
    (fired,) = [a for a in report.alerts if a.event == "fired"]
    assert fired.severity == "critical"  # the rule says warning; the renewal in 20 days raises it
    assert fired.headline == "api calls rose 6x vs the usual level" and fired.renewal_days == 20
    assert fired.action == "Ask alice@example.com to call Acme Corp about the api_calls jump (growth)"
    assert fired.csm_email == "cara@example.com" and fired.arr == 48_000.0
    # what is stored is what was sent (issue 17 note: the episode kept "warning"): /usage, the web
    # pages and the digest rank it as critical too
    (state,) = [s for s in load_states(engine).values() if s.rule_id == fired.rule]
    assert state.severity == "critical"

    delivered = sc.deliver(sc.notifier(config), at=T0 + FIRED * DAY)
    assert delivered.failed == 0, delivered
    (msg,) = fake.channel("#usage-alerts").messages
    assert msg["text"].startswith("🔔 [CRITICAL] Acme Corp: api calls rose 6x vs the usual level — api_calls spiked")
    section = msg["blocks"][1]["text"]["text"]
    assert section.splitlines() == ["*api calls rose 6x vs the usual level*", "Renews in 20 days",
                                    ":point_right: *Next step:* Ask alice@example.com to call Acme Corp about "
                                    "the api_calls jump (growth)", "API calls far above the usual level"]
    context = msg["blocks"][2]
    assert context["type"] == "context" and context["elements"][0]["text"].startswith("api_calls spiked to 600")
    assert "6x the baseline of 100" in json.dumps(context)

    text = ConsoleNotifier(out=io.StringIO()).render(fired)
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "🔔 [CRITICAL] FIRED · Acme Corp · api_calls · rule calls-spike"
    assert lines[2] == "api calls rose 6x vs the usual level" and lines[3].startswith("api_calls spiked to 600")
    assert lines[4] == "Why it matters: Renews in 20 days"
    assert lines[5] == "Next step: Ask alice@example.com to call Acme Corp about the api_calls jump (growth)"

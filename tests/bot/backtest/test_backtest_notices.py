"""The backtest's event notices (bot.service.alerts.alert_notice over a replay's transitions): built
from the lazy explanations a replay keeps, equal to those built from the eager explanations, and a
resolution's notice formats no message of when the episode fired (it states what is true now)."""

from __future__ import annotations

import dataclasses

import numpy as np

from bot.service.alerts import alert_notice
from integrations.sources.demo import generate_book
from rules.loader import load_rules_text
from rules.model import DAY, LazyExplanation
from rules.replay import replay
from tests.rules.test_replay_equivalence import END, LONG, _blocks


def test_a_resolution_notice_formats_no_fired_message_and_equals_the_eager_one(monkeypatch):
    import rules.detectors.finding as finding_module

    formatted = [0]
    real = finding_module.make_finding

    def counting(*args, message, **kwargs):
        def text() -> str:
            formatted[0] += 1
            return message if isinstance(message, str) else message()
        return real(*args, message=text, **kwargs)

    for module in ("spike_drop", "quota", "expansion", "inactivity", "threshold"):
        monkeypatch.setattr(f"rules.detectors.{module}.make_finding", counting)
    ruleset = load_rules_text(LONG.format(for_=1, renotify=0, cooldown=0, fraction=1.0))
    rules = list(ruleset.rules)
    by_id = ruleset.by_id()
    book = generate_book(n_accounts=25, days=130, end=END, seed=5)
    accounts = {a.id: a for a in book.accounts}
    resolved = [t for s in replay(rules, _blocks(book, rules), accounts, END - 95 * DAY, END)
                for t in s.transitions if t.event == "resolved"]
    lazy = [t for t in resolved if isinstance(t.state.last_explanation, LazyExplanation)]
    assert len(lazy) > 5
    before = formatted[0]
    notices = [alert_notice(t, by_id[t.state.rule_id], accounts.get(t.state.account_id)) for t in lazy]
    assert formatted[0] == before  # no fired-time message formatted for a resolution
    for t, got in zip(lazy, notices, strict=True):
        eager = dataclasses.replace(t, state=dataclasses.replace(t.state, last_explanation=dict(t.state.last_explanation)))
        assert got == alert_notice(eager, by_id[t.state.rule_id], accounts.get(t.state.account_id))
        assert got.message and got.window is not None and np.isfinite(got.threshold or 0.0)

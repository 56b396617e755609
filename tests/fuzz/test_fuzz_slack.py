"""Fuzz: Slack requests, signed with the signing secret, through the real bolt app (slash commands,
button clicks with any value and shape, unknown payload types, bodies that are not JSON or not UTF-8).
Every request is answered 200 (acked), 400 (malformed) or 404 (nothing handles it), never 500, and no
listener raises (the logs hold no traceback)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.slack.app import build_slack_app, dispatch_http
from integrations.slack.notifier import SlackNotifier
from storage.db import make_engine, migrate
from tests.fakes.slack_server import FakeSlack
from tests.fuzz.strategies import cases, identifier, json_values, nasty_text
from tests.integrations.slack.scenario import (
    FIRED,
    SIGNING_SECRET,
    SPIKE_DAY,
    Scenario,
    TestClock,
    slack_config,
)

ACTIONS = ["usagebot_ack", "usagebot_snooze", "usagebot_not_useful", "usagebot_open_crm", "usagebot_open_dashboard",
           "other_action"]


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def slack(tmp_path_factory):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzzslack') / 'u.db'}")
    migrate(engine)
    clock = TestClock()
    with FakeSlack.running(clock=clock) as fake:
        fake.add_user("U0ALICE01", "alice@example.com", "alice")
        fake.add_channel("usage-alerts", "C0ALERTS1")
        config = slack_config(fake)
        sc = Scenario(engine, clock)
        sc.cycle(SPIKE_DAY)
        sc.cycle(FIRED)
        sc.deliver(SlackNotifier(config, engine, clock=clock, interactive=True))
        app = build_slack_app(config, engine, clock=clock)
        catcher = _Tracebacks()
        logging.getLogger().addHandler(catcher)
        try:
            yield app, fake, catcher
        finally:
            time.sleep(0.5)  # the last listeners finish
            logging.getLogger().removeHandler(catcher)
    engine.dispose()
    assert not catcher.records, [r.getMessage() for r in catcher.records]


def _signed(body: bytes, ctype: str) -> dict[str, str]:
    ts = str(int(time.time()))
    sig = hmac.new(SIGNING_SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={sig}", "Content-Type": ctype}


values = st.one_of(st.none(), st.integers(min_value=-(10**25), max_value=10**25).map(str),
                   st.sampled_from(["1", "1:7d", "1:99999999999d", "1:-1d", "9" * 5000, "1:", ":", ""]), nasty_text,
                   json_values)


@st.composite
def requests(draw: st.DrawFn, fake: FakeSlack) -> tuple[bytes, str]:
    kind = draw(st.integers(0, 4))
    rid = f"f{draw(st.integers(0, 10**12))}"
    if kind == 0:  # a slash command with any text, from anyone
        form = {"command": "/usage", "text": draw(st.one_of(nasty_text, st.sampled_from(
            ["alerts acme", "top declining", "snooze acme 7d", "snooze acme 99999w", "help", "acme"]))),
            "user_id": draw(st.one_of(st.just("U0ALICE01"), identifier)), "team_id": "T0TEAM001",
            "response_url": fake.response_url(rid), "trigger_id": rid}
        return urlencode(form).encode(), "application/x-www-form-urlencoded"
    if kind in (1, 2):  # a button click, the value and the shape fuzzed
        action: dict = {"action_id": draw(st.sampled_from(ACTIONS)), "type": "button", "value": draw(values)}
        if draw(st.booleans()):
            action["selected_option"] = draw(st.one_of(json_values, st.fixed_dictionaries({"value": values})))
        payload = {"type": "block_actions", "team": {"id": "T0TEAM001"},
                   "user": draw(st.one_of(st.just({"id": "U0ALICE01", "username": "alice"}), json_values)),
                   "actions": draw(st.one_of(st.just([action]), json_values)), "trigger_id": rid,
                   "response_url": draw(st.one_of(st.just(fake.response_url(rid)), nasty_text))}
        return urlencode({"payload": json.dumps(payload)}).encode(), "application/x-www-form-urlencoded"
    if kind == 3:  # any JSON, any payload type
        return json.dumps({"type": draw(st.one_of(nasty_text, st.sampled_from(
            ["view_submission", "shortcut", "event_callback", "url_verification"]))), "x": draw(json_values)}).encode(), \
            "application/json"
    return draw(st.binary(max_size=300)), draw(st.sampled_from(["application/x-www-form-urlencoded", "application/json"]))


@settings(max_examples=cases(200))
@given(data=st.data())
def test_signed_requests_are_answered_never_a_500(slack, data) -> None:  # type: ignore[no-untyped-def]
    app, fake, catcher = slack
    body, ctype = data.draw(requests(fake))
    status, _, _ = dispatch_http(app, body, _signed(body, ctype))
    assert status in (200, 400, 404), (status, body[:200])

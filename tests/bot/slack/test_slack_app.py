"""The bolt app over real HTTP: signed slash commands and button clicks (forged or stale ones are
rejected), acks within 3 s with the slow work answered through response_url, and Socket Mode."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from bot.slack.app import build_slack_app, run_socket_mode, serve_http, slack_notifier
from integrations.console import ConsoleNotifier
from integrations.slack.config import SlackConfig
from integrations.slack.notifier import SlackNotifier
from rules.config import Secret
from storage.db import make_engine, migrate
from storage.episodes import episode_history, find_episode
from storage.slack import feedback_by_rule
from tests.fakes.slack_server import FakeSlack
from tests.integrations.drip import dripping
from tests.integrations.slack.scenario import (
    FIRED,
    SIGNING_SECRET,
    SPIKE_DAY,
    Scenario,
    TestClock,
    assert_valid_message,
    slack_config,
)

KEY = ("calls-spike", "acme", "api_calls", "")
NAMES = {"U0ALICE01": "alice", "U0BOBBY01": "bob", "U0EVE0001": "eve"}


@dataclass
class Served:
    fake: FakeSlack
    url: str
    engine: Any
    clock: TestClock
    episode_id: int
    config: SlackConfig


@pytest.fixture
def fake(clock) -> Iterator[FakeSlack]:
    with FakeSlack.running(clock=clock) as f:
        f.add_user("U0ALICE01", "alice@example.com", "alice")
        f.add_user("U0BOBBY01", "bob@example.com", "bob")
        f.add_user("U0EVE0001", "eve@example.com", "eve")
        f.add_channel("usage-alerts", "C0ALERTS1")
        yield f


@pytest.fixture
def clock() -> TestClock:
    return TestClock()


def _serve(engine, fake, clock, **cfg_kw) -> tuple[Served, Any]:
    config = slack_config(fake, **cfg_kw)
    sc = Scenario(engine, clock)
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    sc.deliver(SlackNotifier(config, engine, clock=clock, interactive=True))
    app = build_slack_app(config, engine, clock=clock)
    server = serve_http(app, config, host="127.0.0.1", port=0, block=False)
    url = f"http://127.0.0.1:{server.server_address[1]}{config.http_path}"
    ep = find_episode(engine, KEY)
    return Served(fake, url, engine, clock, int(ep["id"]), config), server


@pytest.fixture
def served(engine, fake, clock) -> Iterator[Served]:
    s, server = _serve(engine, fake, clock)
    try:
        yield s
    finally:
        server.shutdown()
        server.server_close()


def _sign(body: str, ts: int | None = None, secret: str = SIGNING_SECRET) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    sig = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={sig}",
            "Content-Type": "application/x-www-form-urlencoded"}


def _command(s: Served, text: str, user: str = "U0ALICE01", rid: str = "r1") -> str:
    return urlencode({
        "token": "unused", "team_id": "T0TEAM001", "team_domain": "fake", "channel_id": "C0ALERTS1",
        "channel_name": "usage-alerts", "user_id": user, "user_name": user.lower(), "command": "/usage",
        "text": text, "api_app_id": "A0APP0001", "response_url": s.fake.response_url(rid),
        "trigger_id": "1.2.3",
    })


def _click(s: Served, action_id: str, value: str | None = None, selected: str | None = None,
           user: str = "U0BOBBY01", rid: str = "c1") -> str:
    action: dict[str, Any] = {"action_id": action_id, "block_id": f"usagebot_actions:{s.episode_id}",
                              "action_ts": "1.2", "type": "static_select" if selected else "button"}
    if selected:
        action["selected_option"] = {"text": {"type": "plain_text", "text": selected}, "value": selected}
    else:
        action["value"] = value if value is not None else str(s.episode_id)
    parent = s.fake.channel("#usage-alerts").messages[0]
    payload = {
        "type": "block_actions", "team": {"id": "T0TEAM001", "domain": "fake"},
        "user": {"id": user, "username": NAMES[user], "name": NAMES[user], "team_id": "T0TEAM001"},
        "api_app_id": "A0APP0001", "token": "unused", "trigger_id": "1.2.3",
        "container": {"type": "message", "message_ts": parent["ts"], "channel_id": "C0ALERTS1",
                      "is_ephemeral": False},
        "channel": {"id": "C0ALERTS1", "name": "usage-alerts"}, "message": parent,
        "response_url": s.fake.response_url(rid), "actions": [action],
    }
    return urlencode({"payload": json.dumps(payload)})


def _post(s: Served, body: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(s.url, content=body, headers=headers if headers is not None else _sign(body), timeout=10)


# ---------------------------------------------------------------------------- signatures


def test_forged_stale_and_unsigned_requests_are_rejected(served):
    body = _command(served, "help")
    assert _post(served, body, _sign(body, secret="not-the-secret")).status_code == 401
    assert _post(served, body, _sign(body, ts=int(time.time()) - 600)).status_code == 401
    tampered = _sign(body)
    assert _post(served, body.replace("help", "acme"), tampered).status_code == 401
    assert _post(served, body, {"Content-Type": "application/x-www-form-urlencoded"}).status_code == 401
    assert _post(served, body).status_code == 200
    assert httpx.post(served.url.replace("/slack/events", "/other"), content=body, headers=_sign(body)).status_code == 404


def test_dispatch_http_for_any_server(served, engine, clock):
    from bot.slack.app import dispatch_http

    app = build_slack_app(served.config, engine, clock=clock)
    body = _command(served, "help")
    status, headers, text = dispatch_http(app, body.encode(), _sign(body))
    assert status == 200 and "/usage alerts" in json.loads(text)["text"]
    assert dispatch_http(app, body, _sign(body, secret="forged"))[0] == 401


# ----------------------------------------------------------------------- slash commands


def test_help_is_answered_in_the_ack(served):
    r = _post(served, _command(served, "help"))
    assert r.status_code == 200
    data = r.json()
    assert data["response_type"] == "ephemeral" and "/usage alerts [account]" in data["text"]
    bad = _post(served, _command(served, "top fastest")).json()
    assert "`growing` or `declining`" in bad["text"]


def test_slow_lookup_acks_at_once_and_answers_through_response_url(served):
    served.fake.fail("users.info", "delay", 4.0)  # Slack is slow to tell us the caller's email
    t0 = time.monotonic()
    r = _post(served, _command(served, "alerts", user="U0BOBBY01", rid="slow"))
    acked = time.monotonic() - t0
    assert r.status_code == 200 and acked < 3.0, f"ack took {acked:.2f}s"  # Slack's own limit
    (answer,) = served.fake.wait_response("slow", timeout=15)
    assert time.monotonic() - t0 >= 4.0
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    assert "No open alerts" in json.dumps(answer["blocks"])  # bob's accounts have none
    assert_valid_message(answer)


def test_account_lookup_through_response_url(served):
    assert _post(served, _command(served, "Acme Corp", rid="acme")).status_code == 200
    (answer,) = served.fake.wait_response("acme")
    assert "📊 Acme Corp" in json.dumps(answer["blocks"], ensure_ascii=False)
    assert_valid_message(answer)
    _post(served, _command(served, "nosuchaccount", rid="none"))
    (none,) = served.fake.wait_response("none")
    assert "No account matches `nosuchaccount`" in none["text"]


def test_an_answer_to_a_response_url_that_drips_is_cut_off_at_the_slack_timeout(engine, fake, clock, caplog):
    """bolt's `respond` posts with slack_sdk's WebhookClient, whose 30 s bound each socket read only: a
    response_url answering a byte every 0.05 s held a worker thread ~20 s. Now the post ends within
    [slack] timeout as a whole and the failure is logged."""
    s, server = _serve(engine, fake, clock, timeout=1.0)
    head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 400 + b"\r\nContent-Length: 2\r\n\r\nok"
    try:
        with dripping(b"", head, every=0.05) as drip, caplog.at_level(logging.WARNING, "bot.slack.app"):
            body = _command(s, "Acme Corp", rid="drip").replace(
                quote(s.fake.response_url("drip"), safe=""), quote(drip.url, safe=""))
            assert quote(drip.url, safe="") in body
            t0 = time.monotonic()
            assert _post(s, body).status_code == 200
            while time.monotonic() - t0 < 10 and not any("response_url" in r.message for r in caplog.records):
                time.sleep(0.05)
            took = time.monotonic() - t0
            assert drip.sent[0] >= 2  # it was dripping
        assert took < 4, f"the answer was still being sent after {took:.1f}s"
    finally:
        server.shutdown()
        server.server_close()


# -------------------------------------------------------------------------------- buttons


def test_acknowledge_updates_episode_message_and_records_who(served):
    assert _post(served, _click(served, "usagebot_ack", rid="ack")).status_code == 200
    (answer,) = served.fake.wait_response("ack")
    assert "Acknowledged" in answer["text"]
    ep = find_episode(served.engine, KEY)
    assert ep["acknowledged_by"] == "U0BOBBY01 (bob)" and ep["acknowledged_at"] == served.clock.now
    events = episode_history(served.engine, rule_id="calls-spike")[0]["events"]
    assert [(e["event"], e["actor"]) for e in events][-1] == ("acknowledged", "U0BOBBY01 (bob)")
    for ch in (served.fake.channel("#usage-alerts"), served.fake.dm_with("U0ALICE01")):
        parent = ch.messages[0]
        assert parent["edits"] == 1 and "Acknowledged by <@U0BOBBY01>" in json.dumps(parent["blocks"])
        assert "usagebot_ack" not in json.dumps(parent["blocks"])
        assert_valid_message(parent)
    _post(served, _click(served, "usagebot_ack", rid="again"))
    (again,) = served.fake.wait_response("again")
    assert "Already acknowledged by U0BOBBY01" in again["text"]


def test_snooze_select(served):
    _post(served, _click(served, "usagebot_snooze", selected=f"{served.episode_id}:7d", rid="sn"))
    (answer,) = served.fake.wait_response("sn")
    assert "Snoozed for 1w" in answer["text"]
    ep = find_episode(served.engine, KEY)
    assert ep["snoozed_until"] == served.clock.now + 7 * 86_400
    assert "Snoozed until" in json.dumps(served.fake.channel("#usage-alerts").messages[0]["blocks"])


def test_not_useful_is_stored_per_rule(served):
    _post(served, _click(served, "usagebot_not_useful", rid="nu"))
    (answer,) = served.fake.wait_response("nu")
    assert "feedback recorded for rule `calls-spike`" in answer["text"]
    _post(served, _click(served, "usagebot_not_useful", user="U0ALICE01", rid="nu2"))
    served.fake.wait_response("nu2")
    assert feedback_by_rule(served.engine) == {"calls-spike": 1}  # one episode, two users
    with served.engine.connect() as c:
        users = c.execute(sa.text("select user_id from slack_feedback order by user_id")).scalars().all()
    assert users == ["U0ALICE01", "U0BOBBY01"]
    parent = served.fake.channel("#usage-alerts").messages[0]
    assert "Not useful: <@U0BOBBY01>, <@U0ALICE01>" in json.dumps(parent["blocks"])


def test_crm_link_click_is_recorded(served):
    assert _post(served, _click(served, "usagebot_open_crm")).status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = episode_history(served.engine, rule_id="calls-spike")[0]["events"]
        if events[-1]["event"] == "opened_crm":
            break
        time.sleep(0.05)
    assert (events[-1]["event"], events[-1]["actor"]) == ("opened_crm", "U0BOBBY01 (bob)")


def test_bad_button_value_is_answered_not_crashed(served):
    _post(served, _click(served, "usagebot_ack", value="12; drop table", rid="bad"))
    (answer,) = served.fake.wait_response("bad")
    assert "cannot be used" in answer["text"]


def test_allow_list_applies_to_buttons(engine, fake, clock):
    s, server = _serve(engine, fake, clock, allowed_users=("U0ALICE01",))
    try:
        _post(s, _click(s, "usagebot_ack", user="U0EVE0001", rid="eve"))
        (answer,) = fake.wait_response("eve")
        assert "not on usagebot's list of allowed users" in answer["text"]
        assert find_episode(engine, KEY)["acknowledged_by"] is None
        _post(s, _click(s, "usagebot_ack", user="U0ALICE01", rid="alice"))
        fake.wait_response("alice")
        assert find_episode(engine, KEY)["acknowledged_by"].startswith("U0ALICE01")
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- socket mode


@pytest.fixture
def sqlite_engine(tmp_path):
    """Socket Mode and wiring do not depend on the database: SQLite only."""
    eng = make_engine(f"sqlite:///{tmp_path / 'u.db'}")
    migrate(eng)
    yield eng
    eng.dispose()


def test_socket_mode_commands(sqlite_engine, fake, clock):
    engine = sqlite_engine
    config = slack_config(fake, app_token=Secret("xapp-test-token"), mode="socket", signing_secret=None)
    sc = Scenario(engine, clock)
    sc.cycle(SPIKE_DAY)
    app = build_slack_app(config, engine, clock=clock)
    handler = run_socket_mode(app, config, block=False)
    try:
        body = {"token": "unused", "team_id": "T0TEAM001", "channel_id": "C0ALERTS1", "user_id": "U0ALICE01",
                "user_name": "alice", "command": "/usage", "api_app_id": "A0APP0001", "trigger_id": "1.2.3"}
        fake.socket_send({"envelope_id": "env-1", "type": "slash_commands", "accepts_response_payload": True,
                          "payload": {**body, "text": "help", "response_url": fake.response_url("sm1")}})
        ack = fake.wait_socket_ack("env-1")
        assert "/usage top" in ack["payload"]["text"]
        body = {**body, "trigger_id": "1.2.5"}  # every command has its own trigger_id
        fake.socket_send({"envelope_id": "env-2", "type": "slash_commands", "accepts_response_payload": True,
                          "payload": {**body, "text": "globex", "response_url": fake.response_url("sm2")}})
        fake.wait_socket_ack("env-2")
        (answer,) = fake.wait_response("sm2")
        assert "📊 Globex" in json.dumps(answer["blocks"], ensure_ascii=False)
        # Slack delivers the same payload again in a new envelope (a late ack, a reconnect): acknowledged,
        # not run again; a new command (a new trigger_id) runs
        again = {"envelope_id": "env-3", "type": "slash_commands", "accepts_response_payload": True,
                 "payload": {**body, "text": "globex", "response_url": fake.response_url("sm2")}}
        fake.socket_send(again)
        assert "payload" not in fake.wait_socket_ack("env-3")
        fake.socket_send({**again, "envelope_id": "env-4", "payload": {**again["payload"], "trigger_id": "1.2.4",
                                                                      "response_url": fake.response_url("sm4")}})
        fake.wait_socket_ack("env-4")
        (again_answer,) = fake.wait_response("sm4")  # the new command ran (and after the redelivery) ...
        assert fake.responses["sm2"] == [answer]  # ... which answered nothing
    finally:
        handler.client.auto_reconnect_enabled = False
        fake.socket_close()  # so the client's blocking read ends now, not at its 3 s timeout
        handler.close()
    assert fake.calls_of("apps.connections.open")


# ------------------------------------------------------------------------------ wiring


def test_notifier_is_console_without_a_token(sqlite_engine):
    engine = sqlite_engine
    assert isinstance(slack_notifier(SlackConfig(), engine), ConsoleNotifier)
    cfg = SlackConfig(bot_token=Secret("xoxb-1"))
    assert isinstance(slack_notifier(cfg, engine), SlackNotifier)
    with pytest.raises(ValueError, match="bot_token is not set"):
        build_slack_app(SlackConfig(), engine)
    with pytest.raises(ValueError, match="signing_secret"):
        build_slack_app(replace(cfg, mode="http"), engine)


# ------------------------------------------------------------------------------ hostile requests


def _episode_events(s: Served) -> list[str]:
    return [e["event"] for e in episode_history(s.engine, rule_id="calls-spike")[0]["events"]]


def test_link_buttons_go_through_the_allow_list(engine, fake, clock):
    s, server = _serve(engine, fake, clock, allowed_users=("U0ALICE01",))
    try:
        assert _post(s, _click(s, "usagebot_open_crm", user="U0EVE0001", rid="eve")).status_code == 200
        (answer,) = fake.wait_response("eve")
        assert "not on usagebot's list of allowed users" in answer["text"]
        _post(s, _click(s, "usagebot_open_dashboard", user="U0EVE0001", rid="eve2"))
        fake.wait_response("eve2")
        assert "opened_crm" not in _episode_events(s) and "opened_dashboard" not in _episode_events(s)
        _post(s, _click(s, "usagebot_open_crm", user="U0ALICE01", rid="alice"))
        deadline = time.monotonic() + 5
        while "opened_crm" not in _episode_events(s) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _episode_events(s).count("opened_crm") == 1
    finally:
        server.shutdown()
        server.server_close()


def test_user_text_is_escaped_in_the_top_level_text_and_the_blocks(served):
    from storage.accounts import upsert_accounts
    from tests.integrations.slack.scenario import ACCOUNTS, T0

    hostile = "<!here|here> <!channel> <https://evil.example/x|click me> <@U0BOBBY01> &amp;"
    upsert_accounts(served.engine, [replace(ACCOUNTS[0], name=hostile)], now=T0)
    for rid, text in (("alerts", "alerts acme"), ("acct", "acme"), ("top", "top <!here> growing"),
                      ("snz", "snooze acme <!everyone>")):
        r = _post(served, _command(served, text, rid=rid))
        assert r.status_code == 200
        answers = [r.json()] if r.text else served.fake.wait_response(rid)
        for a in answers:
            for field in (a["text"], *(_mrkdwn_texts(a.get("blocks") or []))):
                for raw in ("<!here", "<!channel", "<!everyone", "<https://evil", "<@U0BOBBY01>"):
                    assert raw not in field, (text, field)
    (alerts,) = served.fake.wait_response("alerts")
    assert "Open alerts · &lt;!here|here&gt;" in alerts["text"]


def _mrkdwn_texts(value) -> list[str]:  # type: ignore[no-untyped-def]
    out: list[str] = []
    if isinstance(value, list):
        for v in value:
            out += _mrkdwn_texts(v)
    elif isinstance(value, dict):
        if value.get("type") == "mrkdwn":
            out.append(value.get("text", ""))
        for v in value.values():
            out += _mrkdwn_texts(v) if isinstance(v, dict | list) else []
    return out


def test_malformed_payloads_are_400_or_401_never_500(served, caplog):
    caplog.set_level(logging.WARNING)
    bad_bodies = ["payload=%7Bnot+json", "payload=" + "%5B" * 5000, "payload=%5B1%2C2%5D",
                  '{"type": "block_actions", "team": 5}', "payload=%22just+a+string%22"]
    for body in bad_bodies:
        assert _post(served, body).status_code == 400, body
        assert _post(served, body, _sign(body, secret="forged")).status_code == 401, body
    raw = b"payload=\xff\xfe"
    sig = _sign(raw.decode("latin-1"))
    ts = sig["X-Slack-Request-Timestamp"]
    sig["X-Slack-Signature"] = "v0=" + hmac.new(SIGNING_SECRET.encode(), f"v0:{ts}:".encode() + raw,
                                                 hashlib.sha256).hexdigest()
    assert httpx.post(served.url, content=raw, headers=sig, timeout=10).status_code == 400
    assert "Traceback" not in caplog.text


def _raw_post(url: str, headers: bytes, body: bytes) -> int:
    """The status of a POST whose header bytes are sent as they are (httpx refuses non-ASCII ones)."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"POST {u.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
                  "Content-Type: application/x-www-form-urlencoded\r\n".encode() + headers + b"\r\n" + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("ts, sig", [("\u00b2", None), ("0" * 5000, None), ("\u0663" * 10, None),
                                     (None, "v0=\u00ff\u00fe"), (None, "v0=" + "A" * 64), (None, "v1=" + "a" * 64)])
def test_malformed_signature_headers_are_401_never_a_500(served, engine, clock, caplog, ts, sig):
    """A timestamp in non-ASCII digits ('²' is str.isdigit(), int('²') raises) or past Python's int
    digit limit, and a signature that is no v0 hex digest: 401 from every way the app is served
    (slack_sdk's verifier raised on these: a 500 before the body, or a 400 from bolt)."""
    caplog.set_level(logging.WARNING)
    body = _command(served, "help")
    headers = _sign(body)
    headers["X-Slack-Request-Timestamp"] = ts if ts is not None else headers["X-Slack-Request-Timestamp"]
    headers["X-Slack-Signature"] = sig if sig is not None else headers["X-Slack-Signature"]
    raw = b"".join(f"{k}: {v}\r\n".encode("latin-1" if v.isascii() or max(v) <= "\xff" else "utf-8")
                   for k, v in headers.items() if k != "Content-Type")
    assert _raw_post(served.url, raw, body.encode()) == 401
    from bot.slack.app import dispatch_http

    app = build_slack_app(served.config, engine, clock=clock)
    assert dispatch_http(app, body.encode(), headers)[0] == 401
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("value", ["9" * 30, "9" * 5000, "0", "-1", "1e9", "１２", "12:7d:x", None])
def test_altered_button_values_get_a_clear_answer(served, caplog, value):
    caplog.set_level(logging.WARNING)
    body = _click(served, "usagebot_ack", value="__" if value is None else value, rid="v")
    if value is None:  # no value at all, and actions of the wrong shape
        body = body.replace("%22value%22%3A+%22__%22", "%22value%22%3A+7")
    assert _post(served, body).status_code == 200
    (answer,) = served.fake.wait_response("v")
    assert "cannot be used" in answer["text"] or "no longer exists" in answer["text"]
    assert find_episode(served.engine, KEY)["acknowledged_by"] is None
    assert "Traceback" not in caplog.text


def test_huge_snooze_and_bad_shapes_are_answered(served, caplog):
    caplog.set_level(logging.WARNING)
    _post(served, _click(served, "usagebot_snooze", selected=f"{served.episode_id}:99999999999999d", rid="s"))
    (answer,) = served.fake.wait_response("s")
    assert "Unknown snooze duration" in answer["text"]
    payload = json.loads(parse_qs(_click(served, "usagebot_ack", rid="w"))["payload"][0])
    for shape in ({"actions": "x"}, {"actions": [5]}, {"user": "U0BOBBY01"}, {"actions": [{"action_id": "usagebot_ack",
                                                                                            "selected_option": 3}]}):
        body = urlencode({"payload": json.dumps({**payload, **shape})})
        assert _post(served, body).status_code in (200, 400, 404), shape
    assert find_episode(served.engine, KEY)["snoozed_until"] is None
    assert "Traceback" not in caplog.text


def test_a_replayed_signed_request_is_run_once(served):
    body = _command(served, "Acme Corp", rid="once")
    headers = _sign(body)
    assert _post(served, body, headers).status_code == 200
    assert _post(served, body, headers).status_code == 200  # the same signed request again
    served.fake.wait_response("once")
    click = _click(served, "usagebot_not_useful", rid="nu")
    h2 = _sign(click)
    for _ in range(3):
        assert _post(served, click, h2).status_code == 200
    served.fake.wait_response("nu")
    time.sleep(0.5)  # a second run would have answered by now
    assert len(served.fake.responses["once"]) == 1 and len(served.fake.responses["nu"]) == 1
    with served.engine.connect() as c:
        n = c.execute(sa.text("select count(*) from slack_requests_seen")).scalar_one()
    assert n == 2


def test_replay_records_are_shared_and_pruned_by_request_time(engine):
    from storage.slack import REPLAY_WINDOW, first_time_seen

    now = 1_800_000_000
    assert first_time_seen(engine, "k1", now, now) and not first_time_seen(engine, "k1", now, now + 10)
    assert first_time_seen(engine, "k2", now + 290, now + 10)  # a timestamp up to 5 min ahead is valid too
    later = now + REPLAY_WINDOW + 61
    assert first_time_seen(engine, "k3", later, later)  # prunes k1 (its signature can no longer verify)
    with engine.connect() as c:
        keys = set(c.execute(sa.text("select key from slack_requests_seen")).scalars())
    assert keys == {"k2", "k3"}


def test_an_answer_without_blocks_leaves_them_out_and_a_refused_answer_is_logged(fake, caplog):
    """As bolt's respond did: an answer of text only (a custom usage template can render one) is
    posted without a `blocks` key, not `"blocks": []`. A post Slack refuses (a response_url takes
    five posts) is logged with Slack's status, not dropped in silence."""
    from types import SimpleNamespace

    from bot.slack.app import _ephemeral
    from integrations.slack.render import SlackMessageContent

    respond = SimpleNamespace(response_url=fake.response_url("plain"), proxy=None, ssl=None)
    _ephemeral(respond, SlackMessageContent("just text", []), 5)
    (answer,) = fake.wait_response("plain")
    assert answer == {"response_type": "ephemeral", "replace_original": False, "text": "just text"}
    with caplog.at_level(logging.WARNING, "bot.slack.app"):
        for _ in range(4):
            _ephemeral(respond, SlackMessageContent("again", []), 5)
        assert not caplog.records
        _ephemeral(respond, SlackMessageContent("a sixth", []), 5)
    assert [r.getMessage() for r in caplog.records] == [
        "Slack refused the answer to a request through its response_url: HTTP 404 'used_url'"]
    assert len(fake.wait_response("plain", 5)) == 5

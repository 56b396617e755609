"""Who gets in: machine tokens, Sign in with Slack (OpenID Connect, against the fake Slack's OIDC
endpoints through slack_sdk and PyJWT), signed session cookies, and the /usage access rules."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import jwt
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.config.web import WebConfig
from bot.service.http_server import Request
from bot.web.auth import SignInError, SlackSignIn
from integrations.slack.config import SlackConfig
from rules.config import Secret
from tests.bot.web.conftest import NOW, TOKEN, Book, make_ui
from tests.bot.web.helpers import data, get, text
from tests.fakes.slack_server import FakeSlack
from tests.integrations.drip import dripping

PUBLIC = "https://usagebot.example.com"
CLIENT_ID, CLIENT_SECRET = "1111.2222", "oidc-client-secret-xyz"
SESSION_SECRET = "s" * 40


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack.running() as fake:
        fake.add_oidc_client(CLIENT_ID, CLIENT_SECRET, f"{PUBLIC}/auth/slack")
        fake.add_user("U0ALICE01", "Alice@Example.com", "Alice")
        fake.add_user("U0BOBBY01", "bob@example.com", "Bob")
        yield fake


def _web(**kw: object) -> WebConfig:
    base = dict(public_url=PUBLIC, session_secret=Secret(SESSION_SECRET), tokens=(Secret(TOKEN),),
                slack_client_id=CLIENT_ID, slack_client_secret=Secret(CLIENT_SECRET), slack_team_id="T0TEAM001")
    return WebConfig(**{**base, **kw})  # type: ignore[arg-type]


def _slack_cfg(fake: FakeSlack, **kw: object) -> SlackConfig:
    return SlackConfig(bot_token=Secret(fake.token), base_url=fake.api_url, **kw)  # type: ignore[arg-type]


def _cookie(set_cookie: str) -> tuple[str, str]:
    name, _, rest = set_cookie.partition("=")
    return name, rest.split(";", 1)[0]


def sign_in(ui, fake: FakeSlack, user: str, next_path: str = "/alerts") -> tuple[int, dict, str]:
    """The browser's walk through Sign in with Slack: our /login/slack, Slack's authorize page, our
    callback. Returns (callback status, callback headers, session cookie header or "")."""
    fake.oidc_user = user
    start = get(ui, f"/login/slack?next={next_path}")
    assert start.status == 302
    login_cookie = "=".join(_cookie(start.headers["Set-Cookie"]))
    at_slack = httpx.get(start.headers["Location"], follow_redirects=False)
    assert at_slack.status_code == 302, at_slack.text
    back = urlsplit(at_slack.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == f"{PUBLIC}/auth/slack"
    done = ui.handle(Request("GET", back.path, parse_qs(back.query), {"accept": "text/html", "cookie": login_cookie}))
    session = ""
    if "Set-Cookie" in done.headers and done.headers["Set-Cookie"].startswith("usagebot_session="):
        session = "=".join(_cookie(done.headers["Set-Cookie"]))
    return done.status, done.headers, session


def test_a_browser_without_a_session_is_sent_to_sign_in_and_a_machine_gets_401(book_engine: Engine,
                                                                              demo_book: Book) -> None:
    ui = make_ui(book_engine, demo_book.rules, _web(slack_client_id=None, slack_client_secret=None))
    resp = get(ui, "/episodes/3?x=1")
    assert resp.status == 302 and resp.headers["Location"] == "/login?next=/episodes/3%3Fx%3D1"
    api = ui.handle(Request("GET", "/alerts", {}, {"accept": "application/json"}))
    assert api.status == 401 and api.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = get(ui, "/alerts", {"authorization": "Bearer not-the-token-at-all"})
    assert wrong.status == 401
    assert get(ui, "/alerts", {"authorization": f"Bearer {TOKEN}"}).status == 200
    assert data(ui, "/alerts", {"authorization": f"Bearer {TOKEN}"})["count"] > 0
    assert "Sign in with Slack" not in text(get(ui, "/login"))


def test_sign_in_with_slack_sets_a_signed_httponly_secure_lax_session(book_engine: Engine, demo_book: Book,
                                                                      slack: FakeSlack) -> None:
    ui = make_ui(book_engine, demo_book.rules, _web(), slack=_slack_cfg(slack))
    start = get(ui, "/login/slack?next=/episodes/2")
    authorize = urlsplit(start.headers["Location"])
    q = parse_qs(authorize.query)
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == f"{slack.url}openid/connect/authorize"
    assert q["client_id"] == [CLIENT_ID] and q["team"] == ["T0TEAM001"] and "openid" in q["scope"][0]
    assert q["state"][0] and q["nonce"][0] and q["redirect_uri"] == [f"{PUBLIC}/auth/slack"]
    for attr in ("HttpOnly", "Secure", "SameSite=Lax", "Max-Age=600"):
        assert attr in start.headers["Set-Cookie"], attr
    status, headers, session = sign_in(ui, slack, "U0ALICE01", "/episodes/2")
    assert status == 303 and headers["Location"] == "/episodes/2"
    for attr in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
        assert attr in headers["Set-Cookie"], attr
    page = get(ui, "/episodes/2", {"cookie": session})
    assert page.status == 200 and "Alice" in text(page) and "Sign out" in text(page)
    assert len(slack.calls_of("openid.connect.token")) == 1
    # tampered, or signed with another secret: not a session
    name, value = session.split("=", 1)
    for bad in (f"{name}={value[:-3]}abc", f"{name}={value}x"):
        assert get(ui, "/alerts", {"cookie": bad}).status == 302
    other = make_ui(book_engine, demo_book.rules, _web(session_secret=Secret("t" * 40)), slack=_slack_cfg(slack))
    assert get(other, "/alerts", {"cookie": session}).status == 302


def test_a_session_ends_at_its_ttl_and_at_sign_out(book_engine: Engine, demo_book: Book, slack: FakeSlack) -> None:
    clock = {"now": NOW}
    ui = make_ui(book_engine, demo_book.rules, _web(session_ttl=3600), slack=_slack_cfg(slack))
    ui.clock = ui.sessions.clock = lambda: clock["now"]
    _, _, session = sign_in(ui, slack, "U0BOBBY01")
    assert get(ui, "/alerts", {"cookie": session}).status == 200
    clock["now"] += 3601
    assert get(ui, "/alerts", {"cookie": session}).status == 302
    out = ui.logout(Request("POST", "/logout", {}, {"cookie": session}))
    assert out.status == 303 and "Max-Age=0" in out.headers["Set-Cookie"]


def test_sign_in_refuses_forged_replayed_foreign_and_cancelled_answers(book_engine: Engine, demo_book: Book,
                                                                       slack: FakeSlack) -> None:
    ui = make_ui(book_engine, demo_book.rules, _web(), slack=_slack_cfg(slack))
    # the person cancels at Slack
    slack.oidc_user = None
    start = get(ui, "/login/slack")
    back = urlsplit(httpx.get(start.headers["Location"]).headers["location"])
    resp = ui.handle(Request("GET", back.path, parse_qs(back.query),
                             {"cookie": "=".join(_cookie(start.headers["Set-Cookie"]))}))
    assert resp.status == 400 and "cancelled" in text(resp)
    # an id_token signed with a key Slack never published
    slack.oidc_sign_with_other_key = True
    status, _, session = sign_in(ui, slack, "U0ALICE01")
    assert status == 400 and not session
    slack.oidc_sign_with_other_key = False
    # a callback whose state is not the one this browser started, or without the sign-in cookie
    slack.oidc_user = "U0ALICE01"
    start = get(ui, "/login/slack")
    cb = urlsplit(httpx.get(start.headers["Location"]).headers["location"])
    q = parse_qs(cb.query)
    cookie = "=".join(_cookie(start.headers["Set-Cookie"]))
    assert ui.handle(Request("GET", cb.path, {**q, "state": ["forged"]}, {"cookie": cookie})).status == 400
    for odd in ("é", "\x00", "s" * 10_000):  # compare_digest refuses non-ASCII text: was a 500
        odd_state = ui.handle(Request("GET", cb.path, {**q, "state": [odd]}, {"cookie": cookie}))
        assert odd_state.status == 400 and "state mismatch" in text(odd_state), odd[:5]
    assert ui.handle(Request("GET", cb.path, q, {})).status == 400
    ok = ui.handle(Request("GET", cb.path, q, {"cookie": cookie}))
    assert ok.status == 303
    replay = ui.handle(Request("GET", cb.path, q, {"cookie": cookie}))  # the code is used: Slack refuses it
    assert replay.status == 400 and "usagebot_session" not in replay.headers.get("Set-Cookie", "")
    # someone of another workspace
    slack.users["U0ALICE01"]["team_id"] = "T0OTHER99"
    status, _, session = sign_in(ui, slack, "U0ALICE01")
    assert status == 400 and not session


def test_allowed_users_and_owner_only_apply_as_for_usage(book_engine: Engine, demo_book: Book,
                                                         slack: FakeSlack) -> None:
    with book_engine.connect() as conn:
        owned = list(conn.execute(sa.text("SELECT id FROM accounts ORDER BY id LIMIT 2")).scalars())
    with book_engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET owner_email = 'ALICE@example.com' WHERE id IN (:a, :b)"),
                     {"a": owned[0], "b": owned[1]})
        episodes = conn.execute(sa.text("SELECT id, account_id FROM alert_episodes")).all()
    cfg = _slack_cfg(slack, allowed_users=("U0ALICE01",), owner_only=True)
    ui = make_ui(book_engine, demo_book.rules, _web(), slack=cfg)
    status, _, session = sign_in(ui, slack, "U0BOBBY01")
    assert status == 403 and not session  # not on the list
    status, _, session = sign_in(ui, slack, "U0ALICE01")
    assert status == 303
    mine = {i for i, a in episodes if a in owned}
    listed = {a["id"] for a in data(ui, "/alerts", {"cookie": session})["alerts"]}
    assert listed == mine
    theirs = next(i for i, a in episodes if a not in owned)
    assert get(ui, f"/episodes/{theirs}", {"cookie": session}).status == 404
    assert get(ui, f"/accounts/{next(a for _, a in episodes if a not in owned)}", {"cookie": session}).status == 404
    if mine:
        assert get(ui, f"/episodes/{min(mine)}", {"cookie": session}).status == 200
    assert get(ui, f"/accounts/{owned[0]}", {"cookie": session}).status == 200
    # a token (a machine) sees every account
    assert data(ui, "/alerts", {"authorization": f"Bearer {TOKEN}"})["count"] == len(episodes) > len(listed)


def test_next_after_sign_in_stays_on_this_site(book_engine: Engine, demo_book: Book, slack: FakeSlack) -> None:
    ui = make_ui(book_engine, demo_book.rules, _web(), slack=_slack_cfg(slack))
    for evil in ("https://evil.example.com/", "//evil.example.com/x", "/\\evil.example.com",
                 # browsers drop tabs and newlines from a Location: these were followed to //evil.example.com
                 "/\t/evil.example.com", "/\n/evil.example.com", "/\r\nSet-Cookie: x=1", "/\u3000/x"):
        status, headers, _ = sign_in(ui, slack, "U0ALICE01", quote(evil, safe=""))
        assert status == 303 and headers["Location"] == "/", evil
    start = get(ui, "/login/slack?next=/alerts%3Faccount%3D" + "a" * 10_000)  # the cookie was 13 KB: browsers
    assert len(start.headers["Set-Cookie"]) < 4096  # drop such a cookie, and the sign-in then "expired"
    status, headers, _ = sign_in(ui, slack, "U0ALICE01", quote("/accounts/café?x=1", safe=""))
    assert status == 303 and headers["Location"] == "/accounts/caf%C3%A9?x=1"
    login = get(ui, "/login?next=" + quote("/\t/evil.example.com", safe="") + "&problem=Call+555-0100+to+unlock")
    assert "evil.example.com" not in text(login) and "555-0100" not in text(login)  # no words from a link


@pytest.mark.parametrize("part", ["status line", "body"])
def test_a_jwks_server_that_drips_its_keys_is_cut_off_at_the_timeout(part: str) -> None:
    """PyJWT's own fetch of Slack's keys bounds each read only: a keys server sending a byte every
    0.05 s held the sign-in (and a web server thread) for as long as it liked. Now the whole fetch
    ends within the Slack timeout and the sign-in fails as for an unreachable Slack."""
    keys = b'{"keys": [' + b" " * 400 + b"]}"
    whole = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(keys), keys)
    upfront, dripped = (b"", whole) if part == "status line" else (whole[:-len(keys)], keys)
    id_token = jwt.encode({"sub": "U0ALICE01"}, "k" * 32, algorithm="HS256", headers={"kid": "slack-key-1"})
    with dripping(upfront, dripped, every=0.05) as drip:
        sign_in_with = SlackSignIn(_web(), drip.url.removesuffix("hook") + "api/", lambda: "T0TEAM001", timeout=1)
        started = time.monotonic()
        with pytest.raises(SignInError, match="could not be verified"):
            sign_in_with.verify(id_token, "nonce")
        took = time.monotonic() - started
    assert took < 2 and drip.sent[0] >= 2  # the drip lasts ~20 s; cut off at the 1 s timeout


def test_slacks_keys_are_fetched_once_and_an_unknown_kid_waits_for_the_cooldown(slack: FakeSlack) -> None:
    """The bounded fetch keeps PyJWT's bookkeeping: the key set is cached (a second lookup of a
    known key fetches nothing) and the fetch time is kept, so a token naming an unknown key right
    after a fetch is refused without fetching Slack's keys again (PyJWT's cooldown; without the
    fetch time every such token fetched them)."""
    keys = SlackSignIn(_web(), slack.api_url, lambda: "T0TEAM001", timeout=5).jwks
    assert keys.get_signing_key("fake-slack-1").key_id == "fake-slack-1"
    assert keys.get_signing_key("fake-slack-1").key_id == "fake-slack-1"
    with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
        keys.get_signing_key("rotated-away")
    assert len(slack.calls_of("openid.connect.keys")) == 1


def test_a_keys_answer_that_is_not_a_json_object_is_a_jwks_error(slack: FakeSlack) -> None:
    with dripping(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n", b"[]",
                  every=0.01) as drip:
        keys = SlackSignIn(_web(), drip.url.removesuffix("hook") + "api/", lambda: "T0TEAM001", timeout=5).jwks
        with pytest.raises(jwt.PyJWKClientError):
            keys.get_signing_key("fake-slack-1")

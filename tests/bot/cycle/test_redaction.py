"""rules.config.redaction: every configured secret is masked in every form before anything is cut or logged,
in source errors (from a hostile peer that echoes what it was sent), logs, notices and CLI output."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.engine import Engine

from bot.service.logs import setup_logging
from bot.service.polling import poll_source
from integrations.notice import AlertNotice
from integrations.sources.http_json import HttpJsonSource
from rules.config import Secret, redaction
from rules.config.redaction import FRAGMENT, clip, mask
from storage.sources import get_source_state
from tests.integrations.sources.fake_http import FakeHttp, Seen
from tests.integrations.sources.helpers import T0, source_config

TOKEN = "tok_live_9f8e7d6c5b4a39281706"
PASSWORD = "pa ss/wörd+&=8812"
API_KEY = "key_Q1w2E3r4T5y6U7i8"
URL_PASSWORD = "u$er:p@ss-7733"


def leaked(text: str, secret: str) -> list[str]:
    """The forms, prefixes and suffixes (>= FRAGMENT chars) of `secret` found in `text`."""
    found = [f for f in redaction.forms(secret) if f in text]
    for f in redaction.forms(secret):
        for k in range(FRAGMENT, len(f)):
            if f[:k] in text or f[-k:] in text:
                found.append(f[:k] if f[:k] in text else f[-k:])
    return found


def assert_clean(text: str, *secrets: str) -> None:
    for s in secrets:
        assert not leaked(text, s), f"{s!r} leaked in {text!r}: {leaked(text, s)}"


# ------------------------------------------------------------------------------- the masking


def test_every_form_of_a_secret_is_masked() -> None:
    Secret(PASSWORD)
    raw = PASSWORD.encode()
    forms = [PASSWORD, quote(PASSWORD, safe=""), quote_plus(PASSWORD), quote(PASSWORD, safe="").lower(),
             json.dumps(PASSWORD)[1:-1], json.dumps(PASSWORD, ensure_ascii=False)[1:-1], repr(PASSWORD)[1:-1],
             base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex()]
    for form in forms:
        assert mask(f"before {form} after") == "before *** after", form
    # inside the base64 of a longer string, at every alignment (Authorization: Basic base64(user:pass))
    for user in ("a", "ab", "abc", "someone@example.com"):
        b64 = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
        assert not leaked(mask(f"Authorization: Basic {b64}"), PASSWORD)
        assert PASSWORD[:4] not in base64.b64decode(_b64_left(mask(b64))).decode("latin-1")


def _b64_left(masked: str) -> str:
    left = masked.split("***")[0]
    return left[: len(left) - len(left) % 4]


def test_a_cut_secret_is_masked_at_both_ends_and_clip_masks_before_cutting() -> None:
    Secret(TOKEN)
    cut = ("x" * 190 + TOKEN)[:200]  # what `body[:200]` left of it before
    assert mask(cut) == "x" * 190 + "***"
    assert mask(TOKEN[-12:] + " tail") == "*** tail"
    assert mask("no secrets here, not even tok_liv") == "no secrets here, not even tok_liv"  # < FRAGMENT
    assert clip("x" * 190 + TOKEN + "y" * 50, 200) == "x" * 190 + "***" + "y" * 6 + "…"


def test_short_values_are_not_secrets_and_urls_register_only_their_secret_parts() -> None:
    Secret("abc")
    assert mask("abc abc") == "abc abc"
    redaction.register("postgresql://usagebot:" + quote(URL_PASSWORD, safe="") + "@db.internal:5432/usage")
    text = f"connecting to db.internal:5432/usage as usagebot with {URL_PASSWORD}"
    assert mask(text) == "connecting to db.internal:5432/usage as usagebot with ***"
    redaction.register_url("https://api.example.com/v1/usage?tenant=7&api_key=AKIA5566778899&sig=zzz9911")
    assert mask("tenant=7 api_key=AKIA5566778899 sig=zzz9911") == "tenant=7 api_key=*** sig=***"


@pytest.mark.parametrize(("text", "want"), [
    ("could not connect to postgresql://bot:pw@db:5432/x", "could not connect to postgresql://bot:***@db:5432/x"),
    ("sqlite:///a.db and https://u:p@x.io/a:b@c then mysql://r:a@b@h/d",
     "sqlite:///a.db and https://u:***@x.io/a:b@c then mysql://r:***@h/d"),
    ("http://user@host/ http://user:@host/ 'a://b:c'", "http://user@host/ http://user:@host/ 'a://b:c'"),
    # a database URL's password runs to the first "@", as SQLAlchemy reads it
    ("postgresql+psycopg://bot:p/w@db/x, sqlite:///x.db", "postgresql+psycopg://bot:***@db/x, sqlite:///x.db"),
    ("(mysql://r:a#b c@h/d)", "(mysql://r:a#b c@h/d)"),  # a space ends it: free text, not one URL
    ("_http://u:v@w HTTPS://u:v@w", "_http://u:***@w HTTPS://u:***@w"),
])
def test_a_url_password_is_masked_in_any_text_whatever_its_length(text: str, want: str) -> None:
    """A 1-3 character database password is too short to register, yet a driver's error echoing the URL
    showed it; its place in the URL says what it is."""
    assert mask(text) == want


@pytest.mark.parametrize("password", ["secret/pw", "se#cret", "se?cret1", "two words"])
def test_a_registered_database_url_password_with_url_characters_is_masked_anywhere(password: str) -> None:
    """SQLAlchemy reads "postgresql://bot:secret/pw@db/x" as the password "secret/pw"; the registry
    read its password as a web URL's (up to the "/") and masked nothing of it."""
    url = f"postgresql+psycopg://bot:{password}@db.internal/usage"
    redaction.register_url(url)
    assert password not in mask(f"connecting with {password!r} to {url}")
    assert mask(url) == "postgresql+psycopg://bot:***@db.internal/usage"


def test_secret_looking_env_vars_and_names() -> None:
    assert redaction.looks_secret("BILLING_API_KEY") and redaction.looks_secret("X-Api-Key")
    assert redaction.looks_secret("accessToken") and redaction.looks_secret("client_secret")
    assert not redaction.looks_secret("granularity") and not redaction.looks_secret("tenant")


# ------------------------------------------------------------------- a hostile peer echoes


def _echo(what: str) -> object:
    """An API whose 401 error quotes something it was sent, placed so that the 200 characters an error
    message shows end inside a raw key (what the old cut-then-mask leaked) or hold a header whole."""

    def handle(r: Seen) -> tuple:
        echoed = {"header": r.headers.get("x-auth") or r.headers.get("authorization", ""),
                  "api_key": f"api_key={r.q('api_key')}",
                  "userinfo": r.headers.get("authorization", ""),
                  "raw": r.q("api_key") or ""}[what]
        # a raw key is cut inside (its start is what old code showed); a header is shown whole
        pad = {"raw": 185, "api_key": 178}.get(what, max(0, 195 - len(echoed)))
        return 401, ("x" * pad + echoed + " and more").encode(), {"Content-Type": "text/plain"}

    return handle


def _hostile_source(url: str, auth: str) -> HttpJsonSource:
    toml = f"""
[[sources]]
id = "billing"
type = "http_json"
url = "{url}"
records = "items"
retries = 0
[sources.params]
api_key = "${{KEY}}"
[sources.auth]
{auth}
[sources.fields]
account = "a"
metric = "m"
value = "v"
timestamp = "t"
"""
    return HttpJsonSource(source_config(toml, {"KEY": API_KEY, "TOKEN": TOKEN, "PASSWORD": PASSWORD}))


@pytest.mark.parametrize("auth", ['type = "bearer"\ntoken = "${TOKEN}"',
                                  'type = "basic"\nusername = "svc"\npassword = "${PASSWORD}"',
                                  'type = "header"\nheader = "X-Auth"\nvalue = "${TOKEN}"'])
@pytest.mark.parametrize("what", ["header", "api_key", "userinfo", "raw"])
def test_http_json_error_echoing_a_credential_is_masked_in_errors_state_and_logs(engine: Engine, auth: str,
                                                                                 what: str) -> None:
    stream = io.StringIO()
    handler = setup_logging("json", "info", stream)
    try:
        with FakeHttp() as srv:
            srv.route("/usage", _echo(what))
            url = srv.url("/usage")
            if what == "userinfo":  # (then the client sends these credentials, not those of [auth])
                url = url.replace("http://", f"http://svc:{quote(URL_PASSWORD, safe='')}@")
            src = _hostile_source(url, auth)
            report = poll_source(engine, src, T0)
            src.close()
    finally:
        logging.getLogger().removeHandler(handler)
    assert not report.ok and "HTTP 401" in (report.error or "")
    state = get_source_state(engine, "billing")
    for text in (report.error or "", state.last_error if state else "", stream.getvalue()):
        assert_clean(text, TOKEN, PASSWORD, API_KEY, URL_PASSWORD)
    assert "poll_failed" in stream.getvalue() and "xxxxx" in (report.error or "")


def test_log_records_are_masked_in_message_args_extra_and_traceback() -> None:
    Secret(TOKEN)
    stream = io.StringIO()
    handler = setup_logging("json", "info", stream)
    log = logging.getLogger("tests.redaction")
    try:
        log.warning("call with %s", f"Bearer {TOKEN}", extra={"detail": TOKEN[:15], "items": [TOKEN]})
        try:
            raise RuntimeError(f"peer said {base64.b64encode(TOKEN.encode()).decode()}")
        except RuntimeError:
            log.exception("failed")
        setup_logging("text", "info", stream)
        log.error("text format too: %r", {"token": TOKEN})
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_usagebot", False):
                logging.getLogger().removeHandler(h)
    out = stream.getvalue()
    assert "RuntimeError" in out and "Bearer ***" in out
    assert_clean(out, TOKEN)
    assert handler is not None


def test_cli_output_is_masked_and_an_unexpected_error_is_one_masked_line(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import bot.cli.main as cli

    out, err = io.StringIO(), io.StringIO()
    url = f"postgresql://usagebot:{quote(URL_PASSWORD, safe='')}@127.0.0.1:1/usage"
    code = cli.main(["evaluate", "--rules", "rules/examples/default.toml", "--db", url], out=out, err=err)
    assert code == 1 and "cannot migrate database" in err.getvalue()
    assert_clean(out.getvalue() + err.getvalue(), URL_PASSWORD)

    Secret(TOKEN)

    def boom(args, out, err):  # type: ignore[no-untyped-def]
        print(f"calling with {TOKEN}", file=out)
        raise RuntimeError(f"the peer answered {quote(TOKEN)} and {base64.b64encode(TOKEN.encode()).decode()}")

    monkeypatch.setattr(cli, "cmd_check", boom)
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["check", "rules/examples/default.toml"], out=out, err=err) == 1
    assert "usagebot check: unexpected RuntimeError: the peer answered ***" in err.getvalue()
    assert "Traceback" not in err.getvalue() and out.getvalue() == "calling with ***\n"


def test_slack_api_errors_are_masked_before_they_are_cut() -> None:
    from slack_sdk import WebClient

    from integrations.slack.api import SlackApi
    from integrations.slack.errors import SlackDeliveryError

    Secret(TOKEN)
    with FakeHttp() as srv:
        srv.route("/api/chat.postMessage", lambda r: (200, {"ok": False, "error": "invalid_arguments",
                                                            "response_metadata": {"messages": ["y" * 490 + TOKEN]}}))
        api = SlackApi(WebClient(token=TOKEN, base_url=srv.url("/api/"), retry_handlers=[]), min_post_interval=0)
        with pytest.raises(SlackDeliveryError) as exc:
            api.post_message("C1", "hi")
    assert "invalid_arguments" in str(exc.value)
    assert_clean(str(exc.value), TOKEN)


def test_salesforce_error_texts_are_masked_before_they_are_cut() -> None:
    from integrations.salesforce.client import SalesforceRequestError, _errors_text

    Secret(TOKEN)
    text = _errors_text([{"statusCode": "INVALID_FIELD", "message": "z" * 600 + TOKEN}, "w" * 195 + TOKEN])
    assert text.startswith("INVALID_FIELD: zzz")
    assert_clean(text, TOKEN)
    assert_clean(str(SalesforceRequestError(f"login with {TOKEN[:20]}")), TOKEN)


def test_metric_labels_are_masked() -> None:
    from bot.service.metrics import Metrics

    Secret(TOKEN)
    m = Metrics()
    m.inc("usagebot_errors_total", component=f"poll:{TOKEN}")
    assert_clean(m.render(), TOKEN)


# ------------------------------------------------- a non-ASCII secret as bytes and as mis-decoded text

CYRILLIC = "ключ-секрет-123"


@pytest.mark.parametrize("secret", [CYRILLIC, PASSWORD, "it's\"a-sëcret"])
def test_a_non_ascii_secret_is_masked_as_its_bytes_and_as_mis_decoded_text(secret: str) -> None:
    """An exception or log line showing the UTF-8 bytes (b'\\xd0\\xba...'), and a peer's echo decoded
    with the charset it declared (ISO-8859-1, windows-1252: "ÐºÐ»Ñ..."), are forms of the secret
    too (before: shown whole, or all but its ASCII tail)."""
    Secret(secret)
    raw = secret.encode()
    shown = [repr(raw), str([raw]), repr(raw + b'"'), repr("x'\"" + secret), raw.decode("latin-1"),
             raw.decode("cp1252", "replace"), json.dumps(json.dumps({"k": secret}))]
    for form in shown:
        masked = mask(f"before {form} after")
        assert masked.startswith("before ") and masked.endswith(" after") and "***" in masked, form
        left = masked[len("before "):-len(" after")].replace("***", "")
        assert set(left) <= set("[]{}:kb'\"x\\ "), f"{form!r} left {left!r}"  # the quotes of b'', [b''], 'x\'"...'


def _poll_echoing(engine: Engine, answer: Callable[[Seen], tuple], credentials: str, env: dict[str, str]) -> str:
    """The error of one poll of an http_json source sending `credentials` (a TOML table: its
    params or headers) to a server answering `answer`."""
    with FakeHttp() as srv:
        srv.route("/usage", answer)
        toml = f"""
[[sources]]
id = "billing"
type = "http_json"
url = "{srv.url('/usage')}"
records = "items"
retries = 0
{credentials}
[sources.fields]
account = "a"
metric = "m"
value = "v"
timestamp = "t"
"""
        src = HttpJsonSource(source_config(toml, env))
        report = poll_source(engine, src, T0)
        src.close()
    assert not report.ok and "HTTP 401" in (report.error or "")
    return report.error or ""


def test_an_http_json_error_echoing_a_non_ascii_key_in_another_charset_is_masked(engine: Engine) -> None:
    def echo(r: Seen) -> tuple:
        return 401, f"bad key {r.q('api_key')}".encode(), {"Content-Type": "text/plain; charset=iso-8859-1"}

    error = _poll_echoing(engine, echo, '[sources.params]\napi_key = "${KEY}"', {"KEY": CYRILLIC})
    assert "bad key ***" in error and CYRILLIC.encode().decode("latin-1")[:4] not in error, error


# ------------------------------------------------------------- log fields that are not strings

def test_log_fields_that_are_objects_sets_or_dict_keys_are_masked() -> None:
    """`extra` values the JSON formatter shows as str(): an exception, a set, a dict's keys (before:
    only strings, lists, tuples and dict values were masked)."""
    Secret(TOKEN)
    stream = io.StringIO()
    handler = setup_logging("json", "info", stream)
    try:
        logging.getLogger("tests.redaction").warning(
            "failed", extra={"error": RuntimeError(f"peer said {TOKEN}"), "tokens": {TOKEN},
                             "by_token": {TOKEN: 1}, "nested": [{"at": (frozenset({TOKEN}),)}], "count": 3})
    finally:
        logging.getLogger().removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["error"] == "peer said ***" and line["tokens"] == ["***"] and line["by_token"] == {"***": 1}
    assert line["count"] == 3 and line["nested"] == [{"at": [["***"]]}]
    assert_clean(stream.getvalue(), TOKEN)


# ------------------------------------------------- an Authorization header given whole as a secret

@pytest.mark.parametrize("header, echoed", [
    ("Basic " + base64.b64encode(b"svc:pa55-w0rd!").decode(), "user svc with password pa55-w0rd! refused"),
    ("Bearer k3y-77", "token k3y-77 is not valid"),
    ("Token k3y-77", "k3y-77 is not valid"),
])
def test_the_credentials_inside_an_authorization_header_value_are_secrets(engine: Engine, header: str,
                                                                          echoed: str) -> None:
    """[sources.headers] Authorization = "${AUTH}": the header value was a secret whole, but a peer
    echoing only the credentials in it (a short bearer token, the password of a Basic pair, decoded)
    showed them."""
    error = _poll_echoing(engine, lambda r: (401, echoed.encode(), {"Content-Type": "text/plain"}),
                          '[sources.headers]\nAuthorization = "${AUTH}"', {"AUTH": header})
    assert "pa55-w0rd!" not in error and "k3y-77" not in error and "***" in error, error


def test_a_two_word_passphrase_is_one_secret_not_a_scheme_and_a_credential() -> None:
    Secret("correct horse")
    assert mask("a horse and a correct horse") == "a horse and a ***"


def test_an_admin_notice_masks_its_details_as_well_as_its_message() -> None:
    """A refused rule reload's notice carries its problems twice: in the message (masked) and in its
    details (the webhook payload's `details`: before, as they were)."""
    from bot.service.reload import invalid_notice

    Secret(TOKEN)
    items = invalid_notice([f"rules.toml:3: rule 'r': where: unknown name {TOKEN!r}"], "f" * 40, T0, "C1", 2,
                           notifiers=("console",))
    notice = AlertNotice.from_json(items[0].payload)
    assert "unknown name '***'" in notice.message and notice.details["problems"] == [
        "rules.toml:3: rule 'r': where: unknown name '***'"]


def test_logging_never_raises_on_fields_it_cannot_mask_as_they_are() -> None:
    """A dict key that is a tuple (masking made it a list: unhashable) and an object whose __str__
    fails raised out of log.warning() at the caller (logging does not guard its filters)."""

    class Broken:
        def __str__(self) -> str:
            raise ZeroDivisionError

    Secret(TOKEN)
    stream = io.StringIO()
    handler = setup_logging("json", "info", stream)
    try:
        logging.getLogger("tests.redaction").warning(
            "counted", extra={"counts": {("a", TOKEN): 1, 7: 2}, "thing": Broken(), "deep": {"x": [Broken()]}})
    finally:
        logging.getLogger().removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["counts"] == {"('a', '***')": 1, "7": 2}
    assert line["thing"] == "<unprintable Broken>" and line["deep"] == {"x": ["<unprintable Broken>"]}


def test_a_short_basic_password_is_not_masked_alone_but_its_header_is() -> None:
    """"Basic base64(admin:admin)": the password alone ("admin", 5 characters) would blank out the
    word everywhere ("*** notice: the *** channel"); the header value and the pair's base64 stay secret."""
    pair = base64.b64encode(b"admin:admin").decode()
    Secret("Basic " + pair)
    assert mask("admin notice: the admin channel") == "admin notice: the admin channel"
    assert mask(f"sent Authorization: Basic {pair}") == "sent Authorization: ***"
    assert pair not in mask(f"credentials {pair} refused") and "***" in mask(f"credentials {pair} refused")


def test_base64_percent_encoded_in_a_url_is_masked() -> None:
    """A basic-auth pair's base64 (an http source's username and password) inside a URL has its + /
    = percent-encoded: the pieces between %2B, %2F and %3D showed (before: "c3ZjOnA%2BPz4%2FPj8%2B***c%3D",
    the user and part of the password)."""
    pair = base64.b64encode(b"svc:p>?>?>?>?long-pw").decode()
    redaction.register_pair("svc", "p>?>?>?>?long-pw")
    assert mask(f"GET /cb?auth={quote(pair, safe='')}&x=1") == "GET /cb?auth=***&x=1"
    assert mask(f"GET /cb?auth={quote(pair, safe='').replace('%2B', '%2b').replace('%2F', '%2f').replace('%3D', '%3d')}&x=1") == "GET /cb?auth=***&x=1"

"""Who is asking: machine tokens, signed session cookies, and Sign in with Slack (OpenID Connect).

- A machine sends `Authorization: Bearer <token>` (one of [web] tokens; compared in constant time).
- A person signs in with Slack: /login/slack sends the browser to Slack's authorize endpoint with a
  random `state` and `nonce` kept in a short-lived signed cookie; Slack sends it back to
  /auth/slack?code=...&state=...; the code is exchanged (openid.connect.token, through slack_sdk's
  WebClient) for an id_token whose RS256 signature is checked against Slack's published keys
  (PyJWT), with its issuer, audience (our client id), expiry, nonce and workspace. The session is
  then a cookie holding a signed JWT (HS256, [web] session_secret) with the Slack user id and email,
  HttpOnly, Secure, SameSite=Lax (Lax: a link from a Slack message must arrive signed in).
- Who may see what: the rules of `/usage` (integrations.slack.usage_answers.AccessPolicy): only
  [slack] allowed_users / allowed_usergroups when set, and with owner_only only the accounts whose
  owner email is the person's Slack email. Tokens and anonymous access see every account.
"""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import secrets
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote

import jwt

from bot.config.web import WebConfig

log = logging.getLogger(__name__)

SESSION_COOKIE = "usagebot_session"
LOGIN_COOKIE = "usagebot_login"
LOGIN_TTL = 600  # seconds a sign-in may take at Slack
MAX_NEXT = 2000  # characters of the page to return to after sign-in
SLACK_ISSUER = "https://slack.com"
SLACK_SCOPES = ("openid", "email", "profile")
_CLAIM_USER = "https://slack.com/user_id"
_CLAIM_TEAM = "https://slack.com/team_id"


@dataclass(frozen=True)
class Principal:
    """Someone allowed in. owner_email set: only the accounts this person owns (owner_only)."""

    kind: str  # "slack" | "token" | "anonymous"
    user_id: str = ""
    email: str = ""
    name: str = ""
    owner_email: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "slack":
            return self.name or self.email or self.user_id
        return "machine token" if self.kind == "token" else "anonymous"


class SignInError(Exception):
    """A sign-in that cannot complete; the message is safe to show."""


def cookies(headers: Mapping[str, str]) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


def set_cookie(name: str, value: str, max_age: int, secure: bool) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Lax, Secure (unless served over http to this machine)."""
    attrs = [f"{name}={value}", "Path=/", f"Max-Age={max(0, max_age)}", "HttpOnly", "SameSite=Lax"]
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs)


def safe_next(target: str | None) -> str:
    """A path on this site to go to after sign-in ("/" unless `target` is a plain local path).

    No whitespace or control character: browsers drop tabs and newlines from a Location, so
    "/<TAB>/evil.com" was followed as "//evil.com" (another site). Other non-ASCII is percent-encoded
    (a Location header is latin-1 bytes)."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(c <= " " or c == "\x7f" or c.isspace() for c in target)):
        return "/"
    target = quote(target, safe="/?&=%#:@!$'()*+,;~-._[]")
    return target if len(target) <= MAX_NEXT else "/"  # it rides in the sign-in cookie (browsers keep <= 4 KB)


class Sessions:
    """Signed, expiring cookies (HS256 JWTs) for sessions and sign-ins in progress."""

    def __init__(self, config: WebConfig, clock: Callable[[], int]) -> None:
        self.config = config
        self.clock = clock
        self._key = config.session_secret.reveal() if config.session_secret is not None else ""

    def _sign(self, claims: dict[str, Any], ttl: int) -> str:
        now = self.clock()
        return jwt.encode({**claims, "iat": now, "exp": now + ttl}, self._key, algorithm="HS256")

    def _read(self, token: str, typ: str) -> dict[str, Any] | None:
        if not self._key or not token:
            return None
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"], options={"verify_exp": False})
        except jwt.PyJWTError:
            return None
        if claims.get("typ") != typ or not isinstance(claims.get("exp"), int) or claims["exp"] <= self.clock():
            return None
        return claims

    def session_cookie(self, p: Principal) -> str:
        value = self._sign({"typ": "session", "sub": p.user_id, "email": p.email, "name": p.name},
                           self.config.session_ttl)
        return set_cookie(SESSION_COOKIE, value, self.config.session_ttl, self.config.secure_cookies)

    def session(self, headers: Mapping[str, str]) -> dict[str, Any] | None:
        return self._read(cookies(headers).get(SESSION_COOKIE, ""), "session")

    def login_cookie(self, state: str, nonce: str, next_path: str) -> str:
        value = self._sign({"typ": "login", "state": state, "nonce": nonce, "next": next_path}, LOGIN_TTL)
        return set_cookie(LOGIN_COOKIE, value, LOGIN_TTL, self.config.secure_cookies)

    def login(self, headers: Mapping[str, str]) -> dict[str, Any] | None:
        return self._read(cookies(headers).get(LOGIN_COOKIE, ""), "login")

    def clear(self, name: str) -> str:
        return set_cookie(name, "", 0, self.config.secure_cookies)


def same_text(given: Any, expected: Any) -> bool:
    """Constant-time equality of two texts as UTF-8 bytes (compare_digest raises TypeError on str
    with non-ASCII characters: a callback's ?state=é was a 500)."""
    return hmac.compare_digest(str(given).encode("utf-8", "surrogatepass"),
                               str(expected).encode("utf-8", "surrogatepass"))


def bearer_ok(config: WebConfig, headers: Mapping[str, str]) -> bool | None:
    """True: a configured token; False: a wrong one; None: no bearer token sent."""
    auth = headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    given = auth[7:].strip()
    ok = False
    for t in config.tokens:  # every token compared (constant time each): no early exit to time
        ok |= same_text(given, t.reveal())
    return ok


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a redirect is an HTTPError, as in PyJWT
        return None


class DeadlineJWKClient(jwt.PyJWKClient):
    """PyJWT's JWKS client whose fetch of the keys ends within `timeout` as a whole, from connecting
    to the last byte: PyJWT gives urllib `timeout` for each socket operation, so a keys server (or a
    proxy) sending its answer a byte at a time held the sign-in, and a web server thread, as long as it
    liked. The same request as PyJWT's (its headers, its TLS context, no redirects) through
    integrations.http_deadline; a fetch cut off raises PyJWKClientConnectionError like any failed one.
    What PyJWT's own fetch_data does after the download is done here too, as PyJWT 2.15 does it (the
    floor in pyproject.toml): the payload checked to be a JSON object, the key-set cache filled, and
    the time of the fetch kept (an unknown kid right after a fetch does not fetch again within
    PyJWT's cooldown)."""

    def fetch_data(self) -> Any:
        from integrations import http_deadline

        request = urllib.request.Request(url=self.uri, headers=self.headers)
        try:
            with http_deadline.within(self.timeout), \
                    http_deadline.opener(_NoRedirect(), context=self.ssl_context).open(request, timeout=self.timeout) as resp:
                payload = json.load(resp)
        except (URLError, TimeoutError, http.client.HTTPException) as exc:
            if isinstance(exc, HTTPError):
                exc.close()
            raise jwt.PyJWKClientConnectionError(f"Fail to fetch data from the url, err: {exc}") from exc
        except ValueError as exc:  # not JSON (PyJWT let it escape)
            raise jwt.PyJWKClientError(f"The JWKS endpoint did not return JSON: {exc}") from exc
        payload = self._as_jwk_set_payload(payload)  # not a JSON object: PyJWKClientError
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(payload)
        self._last_successful_fetch = time.monotonic()
        return payload


class SlackSignIn:
    """Sign in with Slack (OpenID Connect) for one Slack app; `base_url` is Slack's Web API base
    ([slack] base_url: tests point it at the fake), the site's endpoints are derived from it."""

    def __init__(self, config: WebConfig, api_base: str | None, team_id: Callable[[], str | None],
                 timeout: int = 15) -> None:
        from integrations.slack.api import DeadlineWebClient  # each call bounded as a whole by `timeout`

        self.config = config
        api = api_base or "https://slack.com/api/"
        site = api[: -len("api/")] if api.endswith("/api/") else "https://slack.com/"
        self.authorize_url = site + "openid/connect/authorize"
        self.jwks = DeadlineJWKClient(site + "openid/connect/keys", cache_keys=True, lifespan=3600, timeout=timeout)
        self.client = DeadlineWebClient(base_url=api, timeout=timeout, retry_handlers=[])
        self.team_id = team_id
        self.redirect_uri = f"{config.public_url}/auth/slack"

    def start(self, sessions: Sessions, next_path: str) -> tuple[str, str]:
        """(URL to send the browser to, Set-Cookie of the sign-in in progress)."""
        from slack_sdk.oauth import OpenIDConnectAuthorizeUrlGenerator

        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        gen = OpenIDConnectAuthorizeUrlGenerator(client_id=str(self.config.slack_client_id),
                                                 scopes=list(SLACK_SCOPES), redirect_uri=self.redirect_uri,
                                                 authorization_url=self.authorize_url)
        url = gen.generate(state=state, nonce=nonce, team=self.team_id())
        return url, sessions.login_cookie(state, nonce, safe_next(next_path))

    def finish(self, sessions: Sessions, headers: Mapping[str, str], query: Mapping[str, str]) -> tuple[Principal, str]:
        """The signed-in person and where to go next, or SignInError."""
        if query.get("error"):
            raise SignInError("Sign-in was cancelled at Slack." if query["error"] == "access_denied"
                              else f"Slack did not sign you in ({query['error'][:80]}).")
        login = sessions.login(headers)
        if login is None:
            raise SignInError("This sign-in link has expired or was opened in another browser; please sign in again.")
        if not same_text(query.get("state", ""), login.get("state", "")):
            raise SignInError("This sign-in did not start here (state mismatch); please sign in again.")
        code = query.get("code", "")
        if not code:
            raise SignInError("Slack sent no authorization code; please sign in again.")
        from slack_sdk.errors import SlackApiError

        try:
            resp = self.client.openid_connect_token(
                client_id=str(self.config.slack_client_id), client_secret=self.config.slack_client_secret.reveal(),  # type: ignore[union-attr]
                code=code, redirect_uri=self.redirect_uri)
        except SlackApiError as exc:
            error = (exc.response.data or {}).get("error") if isinstance(exc.response.data, dict) else None
            log.warning("Sign in with Slack: openid.connect.token failed: %s", error or exc.response.status_code)
            raise SignInError("Slack refused the sign-in (the code was used or expired); please sign in again.") from None
        except OSError as exc:
            log.warning("Sign in with Slack: openid.connect.token: %s", type(exc).__name__)
            raise SignInError("Slack could not be reached to finish the sign-in; please try again.") from None
        claims = self.verify(str(resp.get("id_token") or ""), str(login.get("nonce", "")))
        uid = str(claims.get(_CLAIM_USER) or claims.get("sub") or "")
        email = str(claims.get("email") or "").strip().lower() if claims.get("email_verified", True) else ""
        return Principal("slack", uid, email, str(claims.get("name") or "")), safe_next(login.get("next"))

    def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The id_token's claims after every check (signature, issuer, audience, expiry, nonce, workspace)."""
        try:
            key = self.jwks.get_signing_key_from_jwt(id_token)
            claims: dict[str, Any] = jwt.decode(
                id_token, key.key, algorithms=["RS256"], audience=str(self.config.slack_client_id),
                issuer=SLACK_ISSUER, leeway=60, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except (jwt.PyJWTError, OSError) as exc:
            log.warning("Sign in with Slack: the id_token was refused: %s: %s", type(exc).__name__, exc)
            raise SignInError("Slack's answer could not be verified; please sign in again.") from None
        if not nonce or not same_text(claims.get("nonce", ""), nonce):
            raise SignInError("This sign-in was replayed (nonce mismatch); please sign in again.")
        team = self.team_id()
        if not team or claims.get(_CLAIM_TEAM) != team:
            log.warning("Sign in with Slack: user of workspace %s refused (expected %s)", claims.get(_CLAIM_TEAM), team)
            raise SignInError("You signed in with another Slack workspace than this usagebot's.")
        return claims


def login_path(next_path: str) -> str:
    return "/login?next=" + quote(safe_next(next_path), safe="/")


def now() -> int:
    return int(time.time())

"""The [web] section: the read-only web UI served by `usagebot serve` (off without it).

    [web]
    public_url = "https://usagebot.example.com"        # where people open it; Slack alerts link here
    session_secret = "${USAGEBOT_WEB_SESSION_SECRET}"   # signs the session cookies (32+ characters)
    session_ttl = "12h"
    tokens = ["${USAGEBOT_WEB_TOKEN}"]                  # machines: Authorization: Bearer <token>
    slack_client_id = "1234567890.1234567890"           # "Sign in with Slack" (the Slack app's
    slack_client_secret = "${SLACK_CLIENT_SECRET}"      #  Basic Information > App Credentials)
    slack_team_id = "T0123ABCD"                         # optional with [slack] bot_token (auth.test)

Nobody gets in without a way to sign in: Slack sign-in, a token, or `anonymous = true` (for a
UI behind an authenticating proxy). Who may see what follows [slack] allowed_users /
allowed_usergroups / owner_only, as for `/usage`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse

from rules.config import Secret, Section, Table, redaction
from rules.config.secrets import MIN_SECRET_CHARS
from rules.config.urls import url_problem

KEYS = ("enabled", "public_url", "session_secret", "session_secret_file", "session_ttl", "tokens",
        "slack_client_id", "slack_client_secret", "slack_client_secret_file", "slack_team_id", "anonymous",
        "page_size")
WEB = Table("web", KEYS)
MIN_SECRET = 32
_TEAM = re.compile(r"^[TE][A-Z0-9]{6,}$")


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True
    public_url: str | None = None  # "https://usagebot.example.com" (no trailing slash)
    session_secret: Secret | None = None
    session_ttl: int = 12 * 3600
    tokens: tuple[Secret, ...] = ()
    slack_client_id: str | None = None
    slack_client_secret: Secret | None = None
    slack_team_id: str | None = None
    anonymous: bool = False  # no sign-in (behind a proxy that authenticates; or `usagebot ui` locally)
    page_size: int = 50

    @property
    def slack_sign_in(self) -> bool:
        return bool(self.slack_client_id and self.slack_client_secret)

    def episode_url(self, episode_id: int | str) -> str | None:
        """The episode page's absolute URL (for Slack messages); None without public_url."""
        return f"{self.public_url}/episodes/{episode_id}" if self.public_url else None

    @property
    def secure_cookies(self) -> bool:
        """Cookies are Secure unless the UI is served over plain http to this machine (a local run)."""
        if not self.public_url:
            return True
        u = urlparse(self.public_url)
        return not (u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost", "::1"))


def parse_web_config(sec: Section, slack_bot_token: bool = False) -> WebConfig:
    """Read [web]; problems are recorded on the section's document. slack_bot_token: [slack] has one
    (then Sign in with Slack learns the workspace from auth.test when slack_team_id is not set)."""
    sec.check_keys(KEYS)
    d = WebConfig()
    public_url = sec.str("public_url")
    if public_url and url_problem(public_url) is not None:
        sec.problem("public_url", str(url_problem(public_url)))
        public_url = None
    if public_url:
        u = urlparse(public_url)
        if u.scheme not in ("https", "http") or not u.netloc or u.query or u.fragment:
            sec.problem("public_url", f"must be an absolute http(s) URL like https://usagebot.example.com, got "
                                      f"{public_url!r}")
            public_url = None
        elif u.path not in ("", "/"):
            sec.problem("public_url", "serve the UI at the root of its host name (no path); got "
                                      f"{u.path!r}")
            public_url = None
        else:
            public_url = f"{u.scheme}://{u.netloc}"
    secret = sec.secret("session_secret")
    if secret is not None and len(secret.reveal()) < MIN_SECRET:
        sec.problem("session_secret", f"must be at least {MIN_SECRET} characters (value not shown); e.g. "
                                      "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        secret = None
    tokens = []
    for t in sec.str_list("tokens"):
        redaction.register(t)
        if len(t) < MIN_SECRET_CHARS:
            sec.problem("tokens", f"each token must be at least {MIN_SECRET_CHARS} characters (value not shown)")
        else:
            tokens.append(Secret(t))
    client_id = sec.str("slack_client_id") or None
    client_secret = sec.secret("slack_client_secret")
    if bool(client_id) != bool(client_secret):
        sec.problem("slack_client_id" if not client_id else "slack_client_secret",
                    "Sign in with Slack needs both slack_client_id and slack_client_secret")
    team = sec.str("slack_team_id") or None
    if team is not None and not _TEAM.match(team):
        sec.problem("slack_team_id", f"{team!r} is not a Slack workspace id (like 'T0123ABCD')")
    cfg = WebConfig(
        enabled=bool(sec.bool("enabled", True)),
        public_url=public_url,
        session_secret=secret,
        session_ttl=sec.duration("session_ttl", d.session_ttl, min=300) or d.session_ttl,
        tokens=tuple(tokens),
        slack_client_id=client_id,
        slack_client_secret=client_secret,
        slack_team_id=team,
        anonymous=bool(sec.bool("anonymous", False)),
        page_size=sec.int("page_size", d.page_size, min=10, max=500) or d.page_size,
    )
    if cfg.enabled and not sec.dormant:
        if not (cfg.slack_sign_in or cfg.tokens or cfg.anonymous):
            sec.problem(None, "the web UI needs a way in: Sign in with Slack (slack_client_id, slack_client_secret), "
                              "tokens for machines, or anonymous = true behind an authenticating proxy")
        if cfg.slack_sign_in and (cfg.session_secret is None or not cfg.public_url):
            sec.problem("slack_client_id", "Sign in with Slack needs session_secret (signs the session cookie) "
                                           "and public_url (Slack redirects back to <public_url>/auth/slack)")
        if cfg.slack_sign_in and not cfg.slack_team_id and not slack_bot_token:
            sec.problem("slack_team_id", "Sign in with Slack needs the workspace people sign in with: set "
                                         "slack_team_id (or [slack] bot_token, whose workspace is used)")
    return cfg

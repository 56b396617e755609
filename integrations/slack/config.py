"""The [slack] section of usagebot's config file.

    [slack]
    bot_token = "${SLACK_BOT_TOKEN:-}"      # no token: alerts go to the console
    signing_secret = "${SLACK_SIGNING_SECRET:-}"   # HTTP mode (request signatures)
    app_token = "${SLACK_APP_TOKEN:-}"      # Socket Mode (no public URL)
    default_channel = "#usage-alerts"
    [slack.channels]                        # channel per severity (optional)
    critical = "#usage-critical"
    [slack.digest]                          # owner DMs as one daily digest (optional)
    enabled = true

Every problem is recorded on the config document with file, line and field;
secrets are held in `Secret` and never appear in messages.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rules.config import Secret, Section, Table
from rules.model import SEVERITIES

MODES = ("auto", "socket", "http")
URL_FIELDS = ("account", "account_name", "crm_id", "metric", "rule", "owner_email")
_CHANNEL = re.compile(r"^(#[a-z0-9][a-z0-9._\-]{0,79}|[CGD][A-Z0-9]{6,})$")
_USER = re.compile(r"^[UW][A-Z0-9]{6,}$")
_GROUP = re.compile(r"^S[A-Z0-9]{6,}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

SLACK = Table("slack", (
    "bot_token", "bot_token_file", "signing_secret", "signing_secret_file", "app_token", "app_token_file",
    "mode", "default_channel", "owner_dm", "allowed_users", "allowed_usergroups",
    "owner_only", "dashboard_url", "crm_url", "template_dir", "base_url", "command", "http_path",
    "request_url", "app_name", "min_post_interval", "max_inline_wait", "timeout", "user_cache_ttl",
    "negative_cache_ttl",
), (Table("channels", SEVERITIES), Table("digest", ("enabled", "at", "timezone", "immediate_severities"))))


@dataclass(frozen=True)
class DigestConfig:
    """Owner DMs collected into one message per owner and day (channels still get every alert)."""

    enabled: bool = False
    hour: int = 9
    minute: int = 0
    timezone: str = "UTC"
    immediate: tuple[str, ...] = ("critical",)  # severities still DM'd at once


@dataclass(frozen=True)
class SlackConfig:
    bot_token: Secret | None = None
    signing_secret: Secret | None = None
    app_token: Secret | None = None
    mode: str = "auto"
    default_channel: str | None = None
    severity_channels: Mapping[str, str] = field(default_factory=dict)
    owner_dm: bool = True
    digest: DigestConfig = field(default_factory=DigestConfig)
    allowed_users: tuple[str, ...] = ()
    allowed_usergroups: tuple[str, ...] = ()
    owner_only: bool = False
    dashboard_url: str | None = None  # e.g. "https://app.example.com/accounts/{account}?metric={metric}"
    crm_url: str | None = None  # e.g. "https://acme.lightning.force.com/lightning/r/Account/{crm_id}/view"
    template_dir: str | None = None  # admin templates: <dir>/slack/*.json.j2 override the built-in ones
    base_url: str | None = None  # Slack Web API base URL (tests point it at a local fake)
    command: str = "/usage"
    http_path: str = "/slack/events"
    request_url: str | None = None  # public URL of http_path (HTTP mode), for the app manifest
    app_name: str = "usagebot"
    min_post_interval: float = 1.0  # seconds between posts to one channel (Slack: ~1 message/s/channel)
    max_inline_wait: int = 5  # a 429 Retry-After up to this many seconds is waited out in place
    timeout: int = 15  # seconds per Slack API request
    user_cache_ttl: int = 86_400
    negative_cache_ttl: int = 3_600

    @property
    def enabled(self) -> bool:
        """Slack delivery is on (a bot token is configured)."""
        return self.bot_token is not None

    @property
    def interactive_mode(self) -> str | None:
        """"socket", "http", or None (alerts only: no buttons/commands receiver configured)."""
        if not self.enabled:
            return None
        if self.mode == "socket" or (self.mode == "auto" and self.app_token is not None):
            return "socket"
        if self.mode == "http" or (self.mode == "auto" and self.signing_secret is not None):
            return "http"
        return None

    @property
    def restricted(self) -> bool:
        return bool(self.allowed_users or self.allowed_usergroups)


def _url_template(sec: Section, key: str) -> str | None:
    tpl = sec.str(key)
    if not tpl:
        return None
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(tpl) if f is not None]
    except ValueError as exc:
        sec.problem(key, f"invalid URL template: {exc} (placeholders look like {{crm_id}})")
        return None
    bad = [n for n in names if n not in URL_FIELDS]
    if bad:
        sec.problem(key, f"unknown placeholder(s) {', '.join('{' + b + '}' for b in bad)}; "
                         f"allowed: {', '.join('{' + f + '}' for f in URL_FIELDS)}")
        return None
    if not tpl.startswith(("https://", "http://")):
        sec.problem(key, "must start with https:// (or http://)")
        return None
    return tpl


def _channel(sec: Section, key: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not _CHANNEL.match(value):
        sec.problem(key, f"{value!r} is not a channel: use '#name' (lower case) or a channel ID like 'C0123ABCD'")
        return None
    return value


def _token(sec: Section, key: str, prefixes: tuple[str, ...], what: str) -> Secret | None:
    tok = sec.secret(key)
    if tok is not None and not tok.reveal().startswith(prefixes):
        sec.problem(key, f"does not look like a {what} (expected it to start with {' or '.join(prefixes)}; "
                         "value not shown)")
        return None
    return tok


def _template_dir(sec: Section) -> str | None:
    """Admin template directory (holding slack/*.json.j2); relative paths are relative to the config file."""
    value = sec.str("template_dir")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(sec.doc.file).resolve().parent / path
    if not path.is_dir():
        sec.problem("template_dir", f"{path} is not a directory (it should contain slack/*.json.j2 templates)")
        return None
    return str(path)


def _digest(sec: Section) -> DigestConfig:
    d = sec.table("digest")
    d.check_keys(SLACK.table("digest"))
    enabled = bool(d.bool("enabled", False))
    at = d.str("at", "09:00") or "09:00"
    m = _HHMM.match(at)
    if m is None:
        d.problem("at", f"must be a time of day HH:MM (24h), got {at!r}")
        m = _HHMM.match("09:00")
    assert m is not None
    tz = d.str("timezone", "UTC") or "UTC"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        d.problem("timezone", f"unknown IANA timezone {tz!r} (e.g. 'Europe/Berlin', 'America/New_York')")
        tz = "UTC"
    immediate = d.str_list("immediate_severities", ["critical"])
    for s in immediate:
        if s not in SEVERITIES:
            d.problem("immediate_severities", f"unknown severity {s!r}; use {', '.join(SEVERITIES)}")
    return DigestConfig(enabled, int(m.group(1)), int(m.group(2)), tz,
                        tuple(s for s in immediate if s in SEVERITIES))


def parse_slack_config(section: Section) -> SlackConfig:
    """Read [slack]; problems are recorded on the section's document (doc.raise_if_problems())."""
    sec = section
    sec.check_keys(SLACK)
    bot_token = _token(sec, "bot_token", ("xoxb-", "xoxp-"), "Slack bot token")
    app_token = _token(sec, "app_token", ("xapp-",), "Slack app-level token")
    signing_secret = sec.secret("signing_secret")
    mode = sec.str("mode", "auto", choices=MODES) or "auto"
    if bot_token is not None:
        if mode == "socket" and app_token is None:
            sec.problem("mode", "Socket Mode needs app_token (an app-level token 'xapp-...' with connections:write)")
        if mode == "http" and signing_secret is None:
            sec.problem("mode", "HTTP mode needs signing_secret (Basic Information > App Credentials)")

    severity_channels: dict[str, str] = {}
    ch = sec.table("channels")
    ch.check_keys(SLACK.table("channels"))
    for sev in SEVERITIES:
        c = _channel(ch, sev, ch.str(sev))
        if c:
            severity_channels[sev] = c

    users = sec.str_list("allowed_users")
    for u in users:
        if not _USER.match(u):
            sec.problem("allowed_users", f"{u!r} is not a Slack user ID (like 'U0123ABCD'; "
                                         "Profile > More > Copy member ID)")
    groups = sec.str_list("allowed_usergroups")
    for g in groups:
        if not _GROUP.match(g):
            sec.problem("allowed_usergroups", f"{g!r} is not a Slack user group ID (like 'S0123ABCD')")

    command = sec.str("command", "/usage") or "/usage"
    if not re.match(r"^/[a-z0-9_\-]{1,31}$", command):
        sec.problem("command", f"must be a slash command like '/usage', got {command!r}")
        command = "/usage"
    http_path = sec.str("http_path", "/slack/events") or "/slack/events"
    if not http_path.startswith("/"):
        sec.problem("http_path", f"must start with '/', got {http_path!r}")
        http_path = "/slack/events"
    base_url = sec.str("base_url")
    if base_url and not base_url.endswith("/"):
        base_url += "/"

    return SlackConfig(
        bot_token=bot_token, signing_secret=signing_secret, app_token=app_token, mode=mode,
        default_channel=_channel(sec, "default_channel", sec.str("default_channel")),
        severity_channels=severity_channels,
        owner_dm=bool(sec.bool("owner_dm", True)),
        digest=_digest(sec),
        allowed_users=tuple(u for u in users if _USER.match(u)),
        allowed_usergroups=tuple(g for g in groups if _GROUP.match(g)),
        owner_only=bool(sec.bool("owner_only", False)),
        dashboard_url=_url_template(sec, "dashboard_url"),
        crm_url=_url_template(sec, "crm_url"),
        template_dir=_template_dir(sec),
        base_url=base_url or None,
        command=command,
        http_path=http_path,
        request_url=sec.str("request_url") or None,
        app_name=sec.str("app_name", "usagebot") or "usagebot",
        min_post_interval=float(sec.float("min_post_interval", 1.0, min=0.0, max=60.0) or 0.0),
        max_inline_wait=int(sec.duration("max_inline_wait", 5) or 0),
        timeout=int(sec.duration("timeout", 15, min=1) or 15),
        user_cache_ttl=int(sec.duration("user_cache_ttl", 86_400, min=60) or 86_400),
        negative_cache_ttl=int(sec.duration("negative_cache_ttl", 3_600, min=60) or 3_600),
    )

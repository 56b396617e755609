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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rules.config import Secret, Section, Table
from rules.config.urls import path_problem, url_problem
from rules.config.values import template_fields
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
), (Table("channels", SEVERITIES), Table("digest", ("enabled", "at", "timezone", "immediate_severities")),
      Table("attention", ("max_dms_per_day", "exempt_severities", "quiet_hours", "default_timezone",
                          "morning_digest", "escalate_after", "escalate_severities", "escalate_to"),
            (Table("managers", free=True),))))


@dataclass(frozen=True)
class DigestConfig:
    """Owner DMs collected into one message per owner and day (channels still get every alert)."""

    enabled: bool = False
    hour: int = 9
    minute: int = 0
    timezone: str = "UTC"
    immediate: tuple[str, ...] = ("critical",)  # severities still DM'd at once


@dataclass(frozen=True)
class AttentionConfig:
    """Each recipient's attention as a budget ([slack.attention], integrations.slack.attention):
    at most `max_dms_per_day` new alert DMs per local day (0: no limit; the rest go to that
    recipient's digest), none in quiet hours (local time; held until they end), a morning digest of
    the open alerts of the accounts they own, and an unacknowledged alert escalated to a manager
    after `escalate_after` seconds (None: off)."""

    max_dms_per_day: int = 0
    exempt_severities: tuple[str, ...] = ("critical",)  # never held back by the daily limit
    quiet_start: int | None = None  # minutes after local midnight; None: no quiet hours
    quiet_end: int | None = None
    default_timezone: str = "UTC"  # when Slack has no timezone for the user
    morning_digest: bool = False
    escalate_after: int | None = None
    escalate_severities: tuple[str, ...] = ("critical",)
    escalate_to: str | None = None  # a manager's email or a channel, for owners not in `managers`
    managers: Mapping[str, str] = field(default_factory=dict)  # owner email -> manager email

    @property
    def quiet_hours(self) -> bool:
        return self.quiet_start is not None and self.quiet_end is not None

    @property
    def active(self) -> bool:
        """Some per-recipient rule applies to DMs (the notifier looks up the recipient's timezone)."""
        return bool(self.max_dms_per_day or self.quiet_hours or self.morning_digest)


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
    attention: AttentionConfig = field(default_factory=AttentionConfig)
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
    crm_tasks: bool = False  # from [salesforce] (it can connect): alerts show the "Log task" button
    episode_url: str | None = None  # from [web] public_url: "https://.../episodes/{episode_id}" (alerts link to it)

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
        names = template_fields(tpl)
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
    if url_problem(tpl) is not None:
        sec.problem(key, str(url_problem(tpl)))
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


def _hhmm(sec: Section, key: str, text: str) -> int | None:
    m = _HHMM.match(text.strip())
    if m is None:
        sec.problem(key, f"{text!r} is not a time of day HH:MM (24h)")
        return None
    return int(m.group(1)) * 60 + int(m.group(2))


def _severities(sec: Section, key: str, default: list[str]) -> tuple[str, ...]:
    values = sec.str_list(key, default)
    for s in values:
        if s not in SEVERITIES:
            sec.problem(key, f"unknown severity {s!r}; use {', '.join(SEVERITIES)}")
    return tuple(s for s in values if s in SEVERITIES)


def _zone_name(sec: Section, key: str, default: str) -> str:
    tz = sec.str(key, default) or default
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        sec.problem(key, f"unknown IANA timezone {tz!r} (e.g. 'Europe/Berlin', 'America/New_York')")
        return default
    return tz


def _attention(sec: Section) -> AttentionConfig:
    a = sec.table("attention")
    a.check_keys(SLACK.table("attention"))
    start = end = None
    quiet = a.str("quiet_hours", "") or ""
    if quiet:
        parts = quiet.split("-")
        if len(parts) != 2:
            a.problem("quiet_hours", f"must be a range of local times like \"20:00-08:00\", got {quiet!r}")
        else:
            start, end = _hhmm(a, "quiet_hours", parts[0]), _hhmm(a, "quiet_hours", parts[1])
            if start is not None and start == end:
                a.problem("quiet_hours", "start and end are the same time (leave it out for no quiet hours)")
                start = end = None
    escalate_to = a.str("escalate_to") or None
    if escalate_to and not (escalate_to.startswith("#") or is_channel_id_text(escalate_to) or "@" in escalate_to):
        a.problem("escalate_to", f"{escalate_to!r} is neither an email nor a channel ('#name' or an ID)")
        escalate_to = None
    m = a.table("managers")
    managers = {}
    for owner, manager in m.data.items():
        if not isinstance(manager, str) or "@" not in manager:
            m.problem(owner, f"must be the manager's email, got {manager!r}")
            continue
        managers[str(owner).strip().lower()] = manager.strip().lower()
    return AttentionConfig(
        max_dms_per_day=int(a.int("max_dms_per_day", 0, min=0) or 0),
        exempt_severities=_severities(a, "exempt_severities", ["critical"]),
        quiet_start=start if end is not None else None, quiet_end=end if start is not None else None,
        default_timezone=_zone_name(a, "default_timezone", "UTC"),
        morning_digest=bool(a.bool("morning_digest", False)),
        escalate_after=a.duration("escalate_after", None, min=60) or None,
        escalate_severities=_severities(a, "escalate_severities", ["critical"]),
        escalate_to=escalate_to, managers=managers,
    )


def is_channel_id_text(value: str) -> bool:
    return re.match(r"^[CG][A-Z0-9]{6,}$", value) is not None


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
    elif path_problem(http_path) is not None:
        sec.problem("http_path", str(path_problem(http_path)))
        http_path = "/slack/events"
    request_url = sec.str("request_url") or None
    if request_url and (not request_url.startswith("https://") or url_problem(request_url) is not None):
        https = "must be an https:// URL (Slack calls no other), e.g. https://usagebot.example.com/slack/events"
        sec.problem("request_url", https if not request_url.startswith("https://") else str(url_problem(request_url)))
        request_url = None
    base_url = sec.str("base_url")
    if base_url and (not base_url.startswith(("https://", "http://")) or url_problem(base_url) is not None):
        sec.problem("base_url", url_problem(base_url) or "must start with https:// (or http://)")
        base_url = None
    if base_url and not base_url.endswith("/"):
        base_url += "/"

    return SlackConfig(
        bot_token=bot_token, signing_secret=signing_secret, app_token=app_token, mode=mode,
        default_channel=_channel(sec, "default_channel", sec.str("default_channel")),
        severity_channels=severity_channels,
        owner_dm=bool(sec.bool("owner_dm", True)),
        digest=_digest(sec),
        attention=_attention(sec),
        allowed_users=tuple(u for u in users if _USER.match(u)),
        allowed_usergroups=tuple(g for g in groups if _GROUP.match(g)),
        owner_only=bool(sec.bool("owner_only", False)),
        dashboard_url=_url_template(sec, "dashboard_url"),
        crm_url=_url_template(sec, "crm_url"),
        template_dir=_template_dir(sec),
        base_url=base_url or None,
        command=command,
        http_path=http_path,
        request_url=request_url,
        app_name=sec.str("app_name", "usagebot") or "usagebot",
        min_post_interval=float(sec.float("min_post_interval", 1.0, min=0.0, max=60.0) or 0.0),
        max_inline_wait=int(sec.duration("max_inline_wait", 5) or 0),
        timeout=int(sec.duration("timeout", 15, min=1) or 15),
        user_cache_ttl=int(sec.duration("user_cache_ttl", 86_400, min=60) or 86_400),
        negative_cache_ttl=int(sec.duration("negative_cache_ttl", 3_600, min=60) or 3_600),
    )

"""Render Slack messages from sandboxed Jinja2 templates into Block Kit.

Templates live in integrations/templates/slack/*.json.j2; an admin `template_dir` holding
`slack/<name>.json.j2` overrides them (and a rule's `template = "x"` picks `slack/x.json.j2`).
A template renders a JSON object {"text": fallback, "blocks": [...]}; strings are written with
the `json` filter (after `mrkdwn`, which escapes &, <, > in user data, for mrkdwn text), and a
trailing comma before ] or } is allowed so optional blocks are easy to write. The result is
trimmed to Block Kit's limits and validated with slack_sdk's block models. A broken admin
template is reported (template file and line) and the built-in one is used instead.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import (
    Template,
    TemplateNotFound,
    Undefined,
)
from jinja2.exceptions import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from integrations.console import format_number, progress_bar
from integrations.notice import AlertNotice, finite
from integrations.notice import parse_time as parse_iso
from integrations.slack.blocks import (
    MAX_TEXT,
    escape_mrkdwn,
    fit_blocks,
    neutralize,
    neutralize_blocks,
    truncate,
    validate_blocks,
)
from integrations.slack.config import SlackConfig
from integrations.slack.errors import TemplateProblem
from integrations.sparkline import sparkline
from integrations.templating import template_environment
from rules import kinds
from rules.detectors import format as fmt

log = logging.getLogger(__name__)

EVENT_ICONS = {"fired": "🔔", "renotified": "🔁", "resolved": "✅"}
SEVERITY_ICONS = {"info": "🔵", "warning": "🟠", "critical": "🔴"}
SNOOZE_CHOICES = (("1d", "1 day"), ("7d", "7 days"), ("30d", "30 days"))

ACK_ACTION = "usagebot_ack"
SNOOZE_ACTION = "usagebot_snooze"
NOT_USEFUL_ACTION = "usagebot_not_useful"
CRM_ACTION = "usagebot_open_crm"
DASHBOARD_ACTION = "usagebot_open_dashboard"
LOG_TASK_ACTION = "usagebot_log_task"
ASSIGN_ACTION = "usagebot_assign_csm"


@dataclass(frozen=True)
class SlackMessageContent:
    """A message as sent. Made safe on construction (blocks.neutralize): no broadcast from any text."""

    text: str
    blocks: list[dict[str, Any]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", neutralize(self.text, fallback=True))
        neutralize_blocks(self.blocks)


@dataclass(frozen=True)
class EpisodeView:
    """What a parent message shows about its episode's state now."""

    episode_id: int | None
    status: str  # pending | firing | resolved
    last_event: str  # fired | renotified | resolved
    last_event_at: int | None
    acknowledged_by: str | None = None
    acknowledged_at: int | None = None
    snoozed_until: int | None = None
    resolved_at: int | None = None
    not_useful_by: tuple[str, ...] = ()
    now: int | None = None
    assigned: tuple[str, str] | None = None  # (CSM email, who assigned it): "Assign to CSM"
    task_by: str | None = None  # who logged the Salesforce Task ("Log task"), once it is created

    @property
    def snoozed(self) -> bool:
        return self.snoozed_until is not None and (self.now is None or self.snoozed_until > self.now)

    def status_line(self) -> str:
        parts: list[str] = []
        if self.status == "resolved":
            parts.append(f"✅ Resolved {slack_date(self.resolved_at or self.last_event_at)}")
        elif self.last_event == "renotified":
            parts.append(f"🔁 Still firing (re-notified {slack_date(self.last_event_at)})")
        else:
            parts.append(f"🔔 Firing since {slack_date(self.last_event_at)}")
        if self.acknowledged_by:
            parts.append(f"👀 Acknowledged by {mention(self.acknowledged_by)} {slack_date(self.acknowledged_at)}")
        if self.snoozed:
            parts.append(f"💤 Snoozed until {slack_date(self.snoozed_until)}")
        if self.not_useful_by:
            parts.append("👎 Not useful: " + ", ".join(mention(u) for u in self.not_useful_by))
        if self.task_by:
            parts.append(f"📝 Salesforce Task logged by {mention(self.task_by)}")
        if self.assigned:
            parts.append(f"🤝 Assigned to {escape_mrkdwn(self.assigned[0])} by {mention(self.assigned[1])}")
        return " · ".join(parts)


def mention(actor: str) -> str:
    """'<@U123>' for a Slack user id (as recorded by button clicks), else the escaped text."""
    uid = actor.split(" ", 1)[0]
    if uid[:1] in ("U", "W") and uid[1:].isalnum():
        return f"<@{uid}>"
    return escape_mrkdwn(actor)


def slack_date(value: Any, fmt: str = "{date_short_pretty} {time}") -> str:
    """Slack's date formatting (shown in the reader's timezone) with a UTC fallback."""
    ts = parse_iso(value)
    if ts is None:
        return "—"
    fallback = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{ts}^{fmt}|{fallback}>"


def _json(value: Any) -> str:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return json.dumps(value, ensure_ascii=False, default=str)


def _pct(x: Any) -> str:
    if x is None:
        return "n/a"
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return fmt.percent(f) if math.isfinite(f) else "n/a"  # rounded down, as the alert's own sentence (89.96% is "89%", never "90%")


def _signed_pct(x: Any) -> str:
    if x is None:
        return "n/a"
    f = float(x)
    return "n/a" if math.isnan(f) else f"{f * 100:+.0f}%"


def strip_trailing_commas(text: str) -> str:
    """Remove commas directly before ] or } outside JSON strings (templates may leave them)."""
    out: list[str] = []
    in_str = esc = False
    pending: list[str] = []  # a comma and the whitespace after it, held until the next token
    for ch in text:
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if pending:
            if ch.isspace():
                pending.append(ch)
                continue
            if ch in "]}":
                out.extend(c for c in pending if c != ",")
            else:
                out.extend(pending)
            pending = []
        if ch == ",":
            pending = [ch]
            continue
        out.append(ch)
        if ch == '"':
            in_str = True
    out.extend(pending)
    return "".join(out)


def url_from_template(template: str | None, alert: Mapping[str, Any]) -> str | None:
    """Fill a URL template ({account}, {crm_id}, ...) with URL-quoted values; None if a value is empty."""
    if not template:
        return None
    values = {
        "account": alert.get("account", ""), "account_name": alert.get("account_name", ""),
        "crm_id": alert.get("crm_id", ""), "metric": alert.get("metric", ""), "rule": alert.get("rule", ""),
        "owner_email": alert.get("owner_email", ""),
    }
    needed = [k for k in values if "{" + k + "}" in template]
    if any(not values[k] for k in needed):
        return None
    return template.format_map({k: quote(str(v), safe="") for k, v in values.items()})


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if filename and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def make_environment(template_dir: str | Path | None = None) -> SandboxedEnvironment:
    """Slack's template environment (integrations.templating) with its filters and globals."""
    env = template_environment(template_dir, trim_blocks=True)
    env.filters.update({
        "num": format_number, "json": _json, "mrkdwn": escape_mrkdwn, "pct": _pct, "signed_pct": _signed_pct,
        "date": slack_date, "mention": mention, "truncate_text": truncate,
    })
    env.globals.update({"sparkline": sparkline, "progress_bar": progress_bar, "severity_icons": SEVERITY_ICONS,
                        "event_icons": EVENT_ICONS})
    return env


class SlackRenderer:
    """Renders the Slack templates; admin templates first, the built-in ones as the fallback."""

    def __init__(self, config: SlackConfig) -> None:
        self.config = config
        self.env = make_environment(config.template_dir)
        self.builtin = make_environment(None) if config.template_dir else self.env

    def _get(self, env: SandboxedEnvironment, names: Sequence[str]) -> Template:
        for name in names:
            try:
                return env.get_template(name)
            except TemplateNotFound:
                continue
        raise TemplateNotFound(names[-1])

    def _render_with(self, tpl: Template, ctx: Mapping[str, Any]) -> SlackMessageContent:
        where = tpl.filename or tpl.name or "?"
        try:
            raw = tpl.render(**ctx)
        except Exception as exc:  # TemplateError, SecurityError, or a filter failing on odd data
            line = getattr(exc, "lineno", None) or _template_line(exc, tpl.filename)
            raise TemplateProblem(f"{where}{f':{line}' if line else ''}: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(strip_trailing_commas(raw))
        except json.JSONDecodeError as exc:
            lines = raw.splitlines()
            near = lines[exc.lineno - 1].strip()[:120] if 0 < exc.lineno <= len(lines) else ""
            raise TemplateProblem(f"{where}: the rendered output is not JSON: {exc.msg} at output line "
                                  f"{exc.lineno} column {exc.colno} (near {near!r})") from None
        if not isinstance(data, dict) or not isinstance(data.get("blocks", []), list):
            raise TemplateProblem(f"{where}: must render an object {{\"text\": ..., \"blocks\": [...]}}")
        blocks = fit_blocks([b for b in data.get("blocks", []) if isinstance(b, dict)])
        problems = validate_blocks(blocks)
        if problems:
            raise TemplateProblem(f"{where}: invalid Block Kit: " + "; ".join(problems[:5]))
        text = str(data.get("text") or "").strip() or str(ctx.get("fallback_text") or "usagebot")
        return SlackMessageContent(truncate(text, MAX_TEXT), blocks)

    def render(self, names: Sequence[str], ctx: Mapping[str, Any]) -> SlackMessageContent:
        """Render the first of `names` that exists; an admin template that fails falls back to the built-in."""
        try:
            tpl = self._get(self.env, names)
        except TemplateSyntaxError as exc:
            if self.builtin is self.env:
                raise TemplateProblem(f"{exc.filename or exc.name}:{exc.lineno}: {exc.message}") from None
            log.error("Slack template %s:%s: %s; using the built-in template", exc.filename or exc.name,
                      exc.lineno, exc.message)
            return self._render_with(self._get(self.builtin, names), ctx)
        try:
            return self._render_with(tpl, ctx)
        except TemplateProblem as exc:
            if self.builtin is self.env or not self._is_admin(tpl):
                raise
            log.error("%s; using the built-in template", exc)
            return self._render_with(self._get(self.builtin, names), ctx)

    def _is_admin(self, tpl: Template) -> bool:
        if not self.config.template_dir or not tpl.filename:
            return False
        return Path(tpl.filename).resolve().is_relative_to(Path(self.config.template_dir).resolve())

    def check(self, names: Sequence[str], ctx: Mapping[str, Any]) -> list[str]:
        """Problems of the templates `names` resolves to (no fallback), for `usagebot slack check`."""
        try:
            self._render_with(self._get(self.env, names), ctx)
        except TemplateSyntaxError as exc:
            return [f"{exc.filename or exc.name}:{exc.lineno}: {exc.message}"]
        except TemplateProblem as exc:
            return [str(exc)]
        return []

    # ------------------------------------------------------------- messages

    def notice(self, alert: AlertNotice | Mapping[str, Any]) -> SlackMessageContent:
        """An admin notice (bot.service.alerts.admin_notice): one message, no thread, no buttons."""
        notice = AlertNotice.of(alert)
        icon = {"stale": "🟠", "recovered": "🟢", "rejected": "⛔", "first_run": "🗂️", "cohort": "🗓️",
                "invalid": "⛔"}.get(notice.event, "ℹ️")
        ctx = {"a": notice.record(), "icon": icon, "sev_icon": SEVERITY_ICONS.get(notice.severity, "•"),
               "fallback_text": notice.message or "usagebot notice"}
        return self.render(["slack/notice.json.j2"], ctx)

    def alert_context(self, alert: AlertNotice | Mapping[str, Any], view: EpisodeView, owner_mention: str,
                      interactive: bool) -> dict[str, Any]:
        """The template context of a parent message or reply (docs/slack.md, "Templates")."""
        notice = AlertNotice.of(alert)
        record = notice.record()
        util = finite(notice.details.get("utilization"))
        event = view.last_event or notice.event or "fired"
        icon = "✅" if view.status == "resolved" else EVENT_ICONS.get(event, "🔔")
        links = {"crm": url_from_template(self.config.crm_url, record),
                 "dashboard": url_from_template(self.config.dashboard_url, record),
                 "episode": episode_link(self.config, view.episode_id)}
        return {
            "a": record, "details": record["details"], "view": asdict(view), "status_line": view.status_line(),
            "owner_mention": owner_mention, "links": links, "spark": sparkline(list(notice.recent)),
            "bar": progress_bar(min(util or 0.0, 1.0)),
            "util_pct": None if util is None else fmt.whole_percent(util),
            "kind_title": kinds.title(notice.kind or ""),
            "icon": icon, "sev_icon": SEVERITY_ICONS.get(notice.severity, "⚪"),
            "actions": interactive and view.episode_id is not None,
            "resolved": view.status == "resolved", "acknowledged": bool(view.acknowledged_by),
            "episode_id": "" if view.episode_id is None else str(view.episode_id),
            "snooze_choices": [{"value": v, "label": label} for v, label in SNOOZE_CHOICES],
            "action_ids": {"ack": ACK_ACTION, "snooze": SNOOZE_ACTION, "not_useful": NOT_USEFUL_ACTION,
                           "crm": CRM_ACTION, "dashboard": DASHBOARD_ACTION, "log_task": LOG_TASK_ACTION,
                           "assign": ASSIGN_ACTION},
            "crm_tasks": self.config.crm_tasks,
            "fallback_text": fallback_text(notice),
        }

    def alert(self, alert: AlertNotice | Mapping[str, Any], view: EpisodeView, owner_mention: str = "",
              interactive: bool = True) -> SlackMessageContent:
        """The parent message of an episode (first post, and chat.update when its state changes)."""
        notice = AlertNotice.of(alert)
        names = [f"slack/{notice.template}.json.j2"] if notice.template else []
        return self.render([*names, "slack/alert.json.j2"],
                           self.alert_context(notice, view, owner_mention, interactive))

    def followup(self, alert: AlertNotice | Mapping[str, Any], view: EpisodeView,
                 owner_mention: str = "") -> SlackMessageContent:
        """A thread reply: re-notification or resolution."""
        notice = AlertNotice.of(alert)
        names = [f"slack/{notice.template}.followup.json.j2"] if notice.template else []
        return self.render([*names, "slack/followup.json.j2"],
                           self.alert_context(notice, view, owner_mention, interactive=False))

    def digest(self, owner_email: str, items: Sequence[AlertNotice | Mapping[str, Any]],
               day: str, open_alerts: Sequence[Any] = ()) -> SlackMessageContent:
        """An owner's digest: the alerts held back for it (`items`) and, in a morning digest, the open
        alerts of the accounts they own (storage.slack.OpenAlert, most important first)."""
        rows = []
        for notice in map(AlertNotice.of, items):
            record = notice.record()
            rows.append({"a": record, "icon": EVENT_ICONS.get(notice.event, "🔔"),
                         "sev_icon": SEVERITY_ICONS.get(notice.severity, "⚪"),
                         "links": {"crm": url_from_template(self.config.crm_url, record),
                                   "dashboard": url_from_template(self.config.dashboard_url, record)}})
        opened = [{"account_name": o.account_name, "rule": o.rule_id, "metric": o.metric, "severity": o.severity,
                   "sev_icon": SEVERITY_ICONS.get(o.severity, "⚪"), "message": o.message, "since": o.fired_at,
                   "util_pct": fmt.whole_percent(o.utilization) if o.utilization else None,
                   "arr_text": format_number(o.arr) if o.arr else "",
                   "acknowledged": o.acknowledged} for o in open_alerts]
        return self.render(["slack/digest.json.j2"], {
            # Slack allows 50 blocks: 2 per held item, 1 per open alert, 5 headers and notes
            "owner_email": owner_email, "items": rows, "day": day, "max_items": 12 if opened else 20,
            "open_alerts": opened, "max_open": 10,
            "fallback_text": f"usagebot digest for {day}: {len(rows)} alert(s)"
                             + (f", {len(opened)} open" if opened else "")})

    def usage_reply(self, name: str, ctx: Mapping[str, Any]) -> SlackMessageContent:
        """`/usage` answers: slack/account.json.j2, slack/alerts.json.j2, slack/top.json.j2."""
        return self.render([f"slack/{name}.json.j2"], {"fallback_text": "usagebot", **ctx})


def episode_link(config: SlackConfig, episode_id: int | None) -> str | None:
    """The episode's page in the web UI ([web] public_url), or None."""
    if not config.episode_url or episode_id is None:
        return None
    return config.episode_url.replace("{episode_id}", str(int(episode_id)))


def fallback_text(notice: AlertNotice) -> str:
    icon = EVENT_ICONS.get(notice.event, "🔔")
    name = escape_mrkdwn(notice.account_name or notice.account)
    return f"{icon} [{notice.severity.upper()}] {name}: {escape_mrkdwn(notice.message)}".strip()

"""`/usage` answers: account summary, open alerts, top accounts, account snooze, help.

Access control: when [slack] allowed_users / allowed_usergroups are set, only those users get
answers (and may click alert buttons); with owner_only = true, lookups are limited to accounts
whose owner email is the caller's Slack email (users:read.email).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from integrations.console import progress_bar
from integrations.slack.actions import EpisodeActions
from integrations.slack.blocks import escape_mrkdwn
from integrations.slack.config import SlackConfig
from integrations.slack.lookups import SlackDirectory
from integrations.slack.render import (
    SEVERITY_ICONS,
    SlackMessageContent,
    SlackRenderer,
    slack_date,
    url_from_template,
)
from integrations.slack.usage_args import (
    AccountMatch,
    UsageCommand,
    echo_back,
    help_text,
    match_account,
    parse_usage_command,
)
from integrations.slack.usage_summary import AccountSummary, kind_of, rank_by_trend, summarize_account
from integrations.sparkline import sparkline
from rules.detectors import format as fmt
from rules.durations import format_duration
from rules.health import DEFAULT_MODEL, HealthModel
from rules.lifecycle import EpisodeState
from rules.model import AccountFacts
from rules.periods import iso
from storage import slack as store
from storage.accounts import list_accounts

log = logging.getLogger(__name__)

MAX_ALERTS = 25
TREND_ARROWS = {"Growing": "↗", "Stable": "→", "Declining": "↘"}


def text_message(text: str) -> SlackMessageContent:
    return SlackMessageContent(text, [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}])


class AccessPolicy:
    def __init__(self, config: SlackConfig, directory: SlackDirectory) -> None:
        self.config = config
        self.directory = directory

    def allowed(self, user_id: str) -> bool:
        if not self.config.restricted:
            return True
        if user_id in self.config.allowed_users:
            return True
        return any(user_id in self.directory.usergroup_members(g) for g in self.config.allowed_usergroups)

    def denied_message(self) -> SlackMessageContent:
        return text_message("Sorry, you are not on usagebot's list of allowed users. Ask your usagebot admin to "
                            "add you (or your user group) to `[slack] allowed_users` / `allowed_usergroups`.")

    def caller_email(self, user_id: str) -> str | None:
        return self.directory.email_of(user_id)

    def visible_accounts(self, user_id: str, accounts: Sequence[AccountFacts]) -> list[AccountFacts]:
        if not self.config.owner_only:
            return list(accounts)
        email = self.caller_email(user_id)
        return [a for a in accounts if email and a.owner_email.strip().lower() == email]


@dataclass
class UsageReply:
    content: SlackMessageContent
    refreshed_episodes: list[int]


class UsageCommandHandler:
    def __init__(self, config: SlackConfig, engine: Engine, directory: SlackDirectory, renderer: SlackRenderer,
                 actions: EpisodeActions, clock: Callable[[], int] = lambda: int(time.time()),
                 refresh: Callable[[int], Any] | None = None, health_model: HealthModel = DEFAULT_MODEL) -> None:
        self.config = config
        self.engine = engine
        self.directory = directory
        self.renderer = renderer
        self.actions = actions
        self.clock = clock
        self.access = AccessPolicy(config, directory)
        self.refresh = refresh  # re-renders an episode's Slack messages (after a snooze)
        self.health_model = health_model

    def parse(self, text: str) -> UsageCommand:
        return parse_usage_command(text, self.config.command)

    def quick_reply(self, cmd: UsageCommand) -> SlackMessageContent | None:
        """Answers that need no data (sent with the ack itself)."""
        if cmd.action == "help":
            return text_message(help_text(self.config.command))
        if cmd.action == "error":
            return text_message(f"{cmd.error}\n\n{help_text(self.config.command)}")
        return None

    def handle(self, user_id: str, text: str, actor: str | None = None) -> SlackMessageContent:
        """The full answer to `/usage <text>` from `user_id` (may take seconds: runs after the ack)."""
        cmd = self.parse(text)
        quick = self.quick_reply(cmd)
        if quick is not None:
            return quick
        if not self.access.allowed(user_id):
            return self.access.denied_message()
        accounts = self.access.visible_accounts(user_id, list_accounts(self.engine))
        if cmd.action == "account":
            m = self._match(cmd.query, accounts)
            return m if isinstance(m, SlackMessageContent) else self.account_reply(m)
        if cmd.action == "alerts":
            return self.alerts_reply(user_id, cmd.query, accounts)
        if cmd.action == "top":
            return self.top_reply(user_id, cmd.direction, accounts)
        if cmd.action == "snooze":
            m = self._match(cmd.query, accounts)
            if isinstance(m, SlackMessageContent):
                return m
            return self.snooze_reply(m, cmd.seconds, actor or user_id)
        return text_message(help_text(self.config.command))

    # ------------------------------------------------------------- helpers

    def _match(self, query: str, accounts: Sequence[AccountFacts]) -> AccountFacts | SlackMessageContent:
        found: AccountMatch = match_account(query, accounts)
        if found.account is not None:
            return found.account
        q = echo_back(query)  # 10,000 characters echoed whole pushed the answer past the block's 3,000
        scope = "of yours " if self.config.owner_only else ""
        if found.candidates:
            names = "\n".join(f"• {escape_mrkdwn(a.name)} (`{escape_mrkdwn(a.id)}`)" for a in found.candidates)
            return text_message(f"More than one account {scope}matches `{q}`. Did you mean:\n{names}\n"
                                f"Try again with the name or the id, e.g. `{self.config.command} "
                                f"{escape_mrkdwn(found.candidates[0].id)}`.")
        return text_message(f"No account {scope}matches `{q}`. Use the account's name or id "
                            f"(`{self.config.command} top` lists your accounts with the biggest changes).")

    def _own_accounts(self, user_id: str, accounts: Sequence[AccountFacts]) -> tuple[list[AccountFacts], str]:
        email = self.access.caller_email(user_id)
        own = [a for a in accounts if email and a.owner_email.strip().lower() == email]
        if own or self.config.owner_only:
            return own, ""
        return list(accounts), "You own no accounts in usagebot, so this covers all accounts."

    # ------------------------------------------------------------- replies

    def account_reply(self, account: AccountFacts) -> SlackMessageContent:
        s = summarize_account(self.engine, account, self.clock(), self.health_model)
        return self.renderer.usage_reply("account", self.account_context(s))

    def account_context(self, s: AccountSummary) -> dict[str, Any]:
        a = s.account
        record = {"account": a.id, "account_name": a.name, "crm_id": a.crm_id, "metric": s.primary_metric or "",
                  "rule": "", "owner_email": a.owner_email}
        metrics = []
        for m in s.metrics:
            change = m.change
            metrics.append({
                "metric": m.metric, "ptd": m.period_to_date, "last_same": m.last_period_same_point,
                "last_total": m.last_period_total,
                "change": None if change is None or math.isnan(change) else change,
                "quota": m.quota, "util_pct": None if m.utilization is None else fmt.whole_percent(m.utilization),
                "bar": progress_bar(min(m.utilization or 0.0, 1.0)), "trend": m.trend,
                "arrow": TREND_ARROWS.get(m.trend, ""), "spark": sparkline(m.recent), "days": len(m.recent),
            })
        h = s.health
        return {
            "acct": {"id": a.id, "name": a.name, "plan": a.plan, "owner_email": a.owner_email, "crm_id": a.crm_id},
            "owner_mention": self._mention(a.owner_email),
            "period": {"label": s.period.label, "elapsed_pct": fmt.whole_percent(s.period_elapsed),
                       "start": iso(s.period.start), "end": iso(s.period.end)},
            "metrics": metrics, "primary_metric": s.primary_metric,
            "health": None if h is None else {
                "score": h.score, "band": h.band, "trend": h.trend,
                "factors": [{"name": f.name, "points": round(f.points, 1), "max": f.max_points, "note": f.note}
                            for f in h.factors]},
            "alerts": [self._alert_row(e, a) for e in s.open_alerts[:MAX_ALERTS]],
            "more_alerts": max(0, len(s.open_alerts) - MAX_ALERTS),
            "links": {"crm": url_from_template(self.config.crm_url, record),
                      "dashboard": url_from_template(self.config.dashboard_url, record)},
            "fallback_text": f"Usage of {escape_mrkdwn(a.name)}",
        }

    def _mention(self, email: str) -> str:
        if not email:
            return ""
        try:
            uid = self.directory.user_id(email)
        except Exception as exc:  # a lookup failure must not break the answer
            log.warning("owner lookup for /usage failed: %s", exc)
            uid = None
        return f"<@{uid}>" if uid else escape_mrkdwn(email)

    def _alert_row(self, e: EpisodeState, a: AccountFacts | None) -> dict[str, Any]:
        return {
            "account_name": a.name if a else e.account_id, "account": e.account_id, "rule": e.rule_id,
            "metric": e.metric, "kind": kind_of(e), "severity": e.severity,
            "sev_icon": SEVERITY_ICONS.get(e.severity, "⚪"),
            "message": str(e.last_explanation.get("message", "")), "since": iso(e.fired_at or e.started_at),
            "acknowledged_by": e.acknowledged_by,
            "snoozed_until": iso(e.snoozed_until) if e.snoozed_until and e.snoozed_until > self.clock() else None,
        }

    def alerts_reply(self, user_id: str, query: str, accounts: Sequence[AccountFacts]) -> SlackMessageContent:
        note = ""
        if query:
            m = self._match(query, accounts)
            if isinstance(m, SlackMessageContent):
                return m
            scope, title = [m], f"Open alerts · {m.name}"
        else:
            scope, note = self._own_accounts(user_id, accounts)
            title = "Open alerts · your accounts" if not note else "Open alerts · all accounts"
        by_id = {a.id: a for a in scope}
        firing = [e for e in store.account_episodes(self.engine, list(by_id)) if e.status == "firing"]
        firing.sort(key=lambda e: ({"critical": 0, "warning": 1}.get(e.severity, 2), -(e.fired_at or 0)))
        return self.renderer.usage_reply("alerts", {
            "title": title, "note": note, "alerts": [self._alert_row(e, by_id.get(e.account_id))
                                                     for e in firing[:MAX_ALERTS]],
            "more": max(0, len(firing) - MAX_ALERTS), "command": self.config.command,
            "fallback_text": f"{escape_mrkdwn(title)}: {len(firing)}"})

    def top_reply(self, user_id: str, direction: str, accounts: Sequence[AccountFacts]) -> SlackMessageContent:
        scope, note = self._own_accounts(user_id, accounts)
        if not scope:
            return text_message("You own no accounts in usagebot (accounts are matched on the owner email "
                                "from your Slack profile).")
        rows = rank_by_trend(self.engine, scope, self.clock(), direction)
        title = f"Top {direction} accounts · last 30 days vs the 30 before"
        return self.renderer.usage_reply("top", {
            "title": title, "note": note, "direction": direction, "command": self.config.command,
            "rows": [{"name": r.account.name, "id": r.account.id, "metric": r.metric, "last30": r.last30,
                      "prev30": r.prev30, "change": (r.ratio or 0.0) - 1.0} for r in rows],
            "fallback_text": title})

    def snooze_reply(self, account: AccountFacts, seconds: int, actor: str) -> SlackMessageContent:
        n, until = self.actions.snooze_account(account.id, actor, seconds)
        if self.refresh is not None:
            for e in store.account_episodes(self.engine, [account.id]):
                if e.episode_id is not None:
                    try:
                        self.refresh(e.episode_id)
                    except Exception as exc:  # the snooze is stored; a stale message is not fatal
                        log.warning("could not update the Slack message of episode %s: %s", e.episode_id, exc)
        return text_message(
            f"💤 Snoozed *{escape_mrkdwn(account.name)}* for {format_duration(seconds)} (until "
            f"{slack_date(until)}): no Slack alerts for it until then; "
            f"{n} alert episode(s) updated.")

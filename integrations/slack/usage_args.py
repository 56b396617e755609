"""Parsing `/usage` arguments and finding accounts by (fuzzy) name or id."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from integrations.slack.blocks import escape_mrkdwn
from rules.durations import DurationError, parse_duration
from rules.model import AccountFacts

MAX_SNOOZE = 90 * 86_400


def help_text(command: str = "/usage") -> str:
    return "\n".join([
        f"*{command}* — account usage from usagebot",
        f"• `{command} &lt;account name or id&gt;` — usage per metric this period vs last, quota, trend, health, "
        "open alerts",
        f"• `{command} alerts [account]` — open alerts (of your accounts, or of one account)",
        f"• `{command} top [growing|declining]` — your accounts with the strongest 30-day trend",
        f"• `{command} snooze &lt;account&gt; &lt;duration&gt;` — no alerts for an account for a while (e.g. `7d`, max 90d)",
        f"• `{command} help` — this message",
    ])


@dataclass(frozen=True)
class UsageCommand:
    action: str  # help | account | alerts | top | snooze | error
    query: str = ""
    direction: str = "growing"
    seconds: int = 0
    error: str = ""


def parse_usage_command(text: str, command: str = "/usage") -> UsageCommand:
    words = text.strip().split()
    if not words or words[0].lower() in ("help", "-h", "--help", "?"):
        return UsageCommand("help")
    head, rest = words[0].lower(), words[1:]
    if head == "alerts":
        return UsageCommand("alerts", query=" ".join(rest))
    if head == "top":
        if len(rest) > 1 or (rest and rest[0].lower() not in ("growing", "declining")):
            return UsageCommand("error", error=f"`{command} top` takes `growing` or `declining` "
                                               f"(got `{echo_back(' '.join(rest))}`), e.g. `{command} top declining`")
        return UsageCommand("top", direction=rest[0].lower() if rest else "growing")
    if head == "snooze":
        usage = f"e.g. `{command} snooze Acme 7d`"
        if len(rest) < 2:
            return UsageCommand("error", error=f"`{command} snooze` needs an account and a duration, {usage}")
        try:
            seconds = parse_duration(rest[-1])
        except DurationError:
            return UsageCommand("error", error=f"`{echo_back(rest[-1])}` is not a duration: use a number and a unit "
                                               f"(m, h, d, w), {usage}")
        if seconds <= 0 or seconds > MAX_SNOOZE:
            return UsageCommand("error", error=f"snooze for between 1m and 90d (got `{echo_back(rest[-1])}`), {usage}")
        return UsageCommand("snooze", query=" ".join(rest[:-1]), seconds=seconds)
    return UsageCommand("account", query=" ".join(words))


def echo_back(text: str) -> str:
    """A user's words quoted back in mrkdwn: escaped (no links, mentions or broadcasts), cut short
    (cut before escaping, so no "&lt;" is split)."""
    return escape_mrkdwn(text if len(text) <= 60 else text[:59] + "…")


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


@dataclass(frozen=True)
class AccountMatch:
    account: AccountFacts | None
    candidates: list[AccountFacts] = field(default_factory=list)  # when ambiguous or only close


MAX_QUERY = 300  # characters of a query matched loosely (an id, up to 256, still matches exactly when longer)


def match_account(query: str, accounts: Sequence[AccountFacts], max_candidates: int = 5) -> AccountMatch:
    """Exact id / CRM id / name first, then a unique prefix or substring, then close spellings."""
    q = query.strip()
    if not q:
        return AccountMatch(None)
    ql, qn = q.lower(), _norm(q)
    for a in accounts:
        if ql in (a.id.lower(), a.crm_id.lower()) or (qn and qn == _norm(a.name)):
            return AccountMatch(a)
    if not qn or len(q) > MAX_QUERY:  # past an exact id: no prefix, word or spelling match is that long,
        return AccountMatch(None)  # and difflib on it took 6 s at 4,000 characters (72 s at 40,000)
    prefix = [a for a in accounts if _norm(a.name).startswith(qn) or a.id.lower().startswith(ql)]
    if len(prefix) == 1:
        return AccountMatch(prefix[0])
    words = qn.split()
    contains = [a for a in accounts if all(w in _norm(a.name) or w in a.id.lower() for w in words)]
    if len(contains) == 1:
        return AccountMatch(contains[0])
    if prefix or contains:
        pool = prefix or contains
        pool.sort(key=lambda a: (-difflib.SequenceMatcher(None, qn, _norm(a.name)).ratio(), a.name))
        return AccountMatch(None, pool[:max_candidates])
    scored = sorted(((difflib.SequenceMatcher(None, qn, _norm(a.name)).ratio(), a.name, a) for a in accounts),
                    key=lambda t: (-t[0], t[1]))
    close = [a for r, _, a in scored if r >= 0.6]
    if len(close) == 1 or (len(close) > 1 and scored[0][0] >= 0.85 and scored[0][0] - scored[1][0] >= 0.15):
        return AccountMatch(close[0])
    return AccountMatch(None, close[:max_candidates])

"""Turn lifecycle transitions into alert records (the payload every output uses).

The same record is printed by `usagebot backtest --format json`, stored in
the outbox for delivery, and rendered by the console (and later Slack)
notifier, so what a backtest shows is what a user would receive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rules.config.redaction import mask
from rules.detectors.format import moment
from rules.engine import CohortEvent
from rules.lifecycle import FirstRun, Transition
from rules.model import AccountFacts, MetricBlock, Rule
from rules.periods import iso

PUBLISHED_EVENTS = ("fired", "renotified", "resolved")


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def recent_values(block: MetricBlock | None, account_id: str, at: int, n: int = 14) -> list[float | None]:
    """The last `n` bucket values of an account ending at `at` (None = missing)."""
    if block is None:
        return []
    try:
        row = block.account_ids.index(account_id)
    except ValueError:
        return []
    end_col = min(block.n_buckets, max(0, (at - block.start) // block.step))
    vals = block.values[row, max(0, end_col - n):end_col]
    return [None if math.isnan(v) else float(v) for v in vals]


def alert_record(
    t: Transition,
    rule: Rule | None,
    account: AccountFacts | None,
    recent: Sequence[float | None] = (),
) -> dict[str, Any]:
    """JSON-ready description of one transition."""
    s = t.state
    expl: Mapping[str, Any] = t.finding.explanation() if t.finding is not None else s.last_explanation
    severity = t.finding.severity if t.finding is not None else s.severity
    msg = str(expl.get("message", ""))
    details = dict(expl.get("details", {}) or {})
    value, baseline, threshold = expl.get("value"), expl.get("baseline"), expl.get("threshold")
    if t.event == "resolved":  # what is true now, never the numbers of when it fired
        msg, value, baseline, threshold, details = _resolution(t, rule, details)
    return {
        "event": t.event,
        "at": iso(t.at),
        "rule": s.rule_id,
        "kind": rule.kind if rule else expl.get("kind"),
        "account": s.account_id,
        "account_name": account.name if account else s.account_id,
        "owner_email": account.owner_email if account else "",
        "plan": account.plan if account else "",
        "crm_id": account.crm_id if account else "",
        "metric": s.metric,
        "severity": severity,
        "value": _num(value),
        "baseline": _num(baseline),
        "threshold": _num(threshold),
        "window": [iso(w) for w in expl.get("window", [])] if expl.get("window") else None,
        "message": msg,
        "discriminator": s.discriminator,
        "notified": t.notify,
        "suppressed_reason": t.reason if not t.notify else "",
        "started_at": iso(s.started_at),
        "fired_at": iso(s.fired_at) if s.fired_at is not None else None,
        "rule_hash": expl.get("rule_hash", rule.rule_hash if rule else ""),
        "description": rule.description if rule else "",
        "routing": {
            "owner": rule.routing.owner if rule else True,
            "channels": list(rule.routing.channels) if rule else [],
        },
        "template": rule.template if rule else None,
        "details": details,
        "recent": list(recent),
        "quiet": t.quiet,  # closed without a message to people: notifiers only update what they showed
        "grouped": [_also(g) for g in t.grouped],  # the account's other alerts of this cycle, in this message
    }


def _also(t: Transition) -> dict[str, Any]:
    """A grouped alert as its message shows it (the alert itself is recorded on its own episode)."""
    expl: Mapping[str, Any] = t.finding.explanation() if t.finding is not None else t.state.last_explanation
    return {"rule": t.state.rule_id, "kind": expl.get("kind"), "metric": t.state.metric,
            "discriminator": t.state.discriminator, "severity": t.state.severity,
            "message": str(expl.get("message", "")), "value": _num(expl.get("value")),
            "baseline": _num(expl.get("baseline")), "threshold": _num(expl.get("threshold"))}


def _resolution(t: Transition, rule: Rule | None, fired: Mapping[str, Any]) -> tuple[str, Any, Any, Any, dict[str, Any]]:
    """(message, value, baseline, threshold, details) of a resolution: the detector's account of
    what is true now, and since when the condition has not held."""
    s = t.state
    since = s.recovering_since if s.recovering_since is not None else t.at
    step = rule.bucket if rule is not None else 0
    held = f" This has held since {moment(since - step, step)}." if since < t.at and step else ""
    rec = t.recovery
    threshold = s.last_explanation.get("threshold")  # the level that was crossed / had to be recovered
    if rec is None:
        why = "the rule was removed or disabled" if t.reason == "rule removed" else "the condition no longer holds"
        return f"Resolved: {why}.", None, None, threshold, {"since": iso(since)}
    details = dict(rec.details) | {"since": iso(since)}
    if "quota" in fired and "quota" not in details:
        details["quota"] = fired["quota"]
    return f"{rec.message}{held}", rec.value, rec.baseline, threshold, details


def idempotency_key(t: Transition) -> str:
    s = t.state
    return f"notify:{s.rule_id}:{s.account_id}:{s.metric}:{s.discriminator}:{t.event}:{t.at}"


# ------------------------------------------------------------------ admin notices


def admin_notice(event: str, source_id: str, message: str, at: int, channel: str | None,
                 severity: str = "warning", since: int | None = None, metrics: Sequence[str] = (),
                 details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An alert-record-shaped payload for the admin channel (never routed to account owners)."""
    return {
        "event": event, "at": iso(at), "rule": f"source:{source_id}", "kind": "source",
        "account": source_id, "account_name": f"source {source_id}", "owner_email": "", "plan": "",
        "crm_id": "", "metric": ", ".join(metrics) or "-", "severity": severity, "value": None,
        "baseline": None, "threshold": None, "window": None, "message": mask(message), "discriminator": "",
        "notified": True, "suppressed_reason": "", "started_at": iso(since if since is not None else at),
        "fired_at": iso(at), "rule_hash": "", "description": "usage source health",
        "routing": {"owner": False, "channels": [channel] if channel else []}, "template": "source",
        "details": dict(details or {}), "recent": [],
    }


def first_run_summary(held: Sequence[Transition], first: FirstRun, at: int, channel: str | None) -> dict[str, Any]:
    """One admin notice for the conditions found already true at a first evaluation (recorded,
    visible in /usage, CRM fields and history, but not sent to account owners one by one)."""
    per_rule: dict[str, int] = {}
    for t in held:
        per_rule[t.state.rule_id] = per_rule.get(t.state.rule_id, 0) + 1
    accounts = {t.state.account_id for t in held}
    what = []
    if first.rules:
        what.append(f"{len(first.rules)} rule(s)")
    if first.accounts:
        what.append(f"{len(first.accounts)} account(s)")
    listing = ", ".join(f"{rule} {n}" for rule, n in sorted(per_rule.items(), key=lambda kv: (-kv[1], kv[0])))
    where = ("They show in /usage, the CRM fields and the alert history; new conditions from now on are sent as"
             " usual. ([evaluation] first_run = \"notify\" sends them one by one instead.)")
    if what:
        message = (f"First evaluation of {' and '.join(what)}: {len(held)} condition(s) already true on"
                   f" {len(accounts)} account(s) were recorded without paging their owners ({listing}). {where}")
    else:  # episodes that were pending at the first evaluation and have now lasted `for` buckets
        message = (f"{len(held)} condition(s) already holding at the first evaluation have now lasted long enough"
                   f" to fire ({listing}, on {len(accounts)} account(s)); recorded without paging their owners."
                   f" {where}")
    return admin_notice("first_run", "evaluation", message, at, channel, "info",
                        details={"conditions": len(held), "accounts": len(accounts), "rules": per_rule,
                                 "example_accounts": sorted(accounts)[:10]}) | {
        "rule": "first-run", "kind": "first_run", "account_name": "first evaluation", "template": "notice",
        "description": "first evaluation of a book, a rule or an account"}


def cohort_notice(ev: CohortEvent, channel: str | None) -> dict[str, Any]:
    """One admin notice for a cohort event (many accounts meeting a rule's condition at once)."""
    message = (
        f"Rule {ev.rule_id}: {ev.accounts} of {ev.decided} accounts ({ev.share:.0%}, {ev.cohort}) met the"
        f" condition at once in the bucket ending {iso(ev.at)}. That is a calendar or data-pipeline event"
        " (a holiday, a broken export), not an account problem: no account alert was sent for that bucket."
        f" Examples: {', '.join(ev.examples)}. Mute known days with [calendar] in the rules; tune [rule.cohort]."
    )
    return admin_notice("cohort", "evaluation", message, ev.at, channel, "warning",
                        details={"rule": ev.rule_id, "cohort": ev.cohort, "accounts": ev.accounts,
                                 "decided": ev.decided, "share": ev.share,
                                 "example_accounts": list(ev.examples)}) | {
        "rule": f"cohort:{ev.rule_id}", "kind": "cohort", "account_name": f"cohort event ({ev.cohort})",
        "template": "notice", "description": "many accounts at once: held as a cohort event"}

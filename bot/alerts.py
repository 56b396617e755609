"""Turn lifecycle transitions into alert records (the payload every output uses).

The same record is printed by `usagebot backtest --format json`, stored in
the outbox for delivery, and rendered by the console (and later Slack)
notifier, so what a backtest shows is what a user would receive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rules.lifecycle import Transition
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
    if t.event == "resolved":
        msg = f"Resolved ({t.reason}): {expl.get('message', '')}".strip()
    else:
        msg = str(expl.get("message", ""))
    details = dict(expl.get("details", {}) or {})
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
        "value": _num(expl.get("value")),
        "baseline": _num(expl.get("baseline")),
        "threshold": _num(expl.get("threshold")),
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
    }


def idempotency_key(t: Transition) -> str:
    s = t.state
    return f"notify:{s.rule_id}:{s.account_id}:{s.metric}:{s.discriminator}:{t.event}:{t.at}"

"""The alert notice: what every notifier receives, one frozen value per notification.

A notice is built once, by bot.service.alerts inside the transaction that records the lifecycle step (so it
carries its episode id), and crosses every boundary typed:

- `to_json()` is the outbox payload (times as epoch seconds, `"v": 2`); `AlertNotice.from_json`
  reads it back, and also the untyped alert records queued before notices existed (ISO times, no
  episode id, no version), so rows already in an outbox still deliver;
- `record()` is the alert record people see: the `usagebot backtest --format json` lines
  (docs/backtest.md), the template context `a` of the Slack and console templates, and the
  `alert` object of the webhook payload (docs/webhook.md): ISO-8601 times, the same fields as ever;
- `idempotency_key` is the key of its outbox row and of every delivery step a notifier makes for it.

Admin notices (stale or recovered sources, rejected files, first-run summaries, cohort events, refused
reloads) are notices too, with `audience = "admin"` and an explicit `key`: they go to the admin
channel, never to an account owner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from rules.config.redaction import mask, mask_deep
from rules.impact import finite
from rules.periods import iso

ALERT_EVENTS = ("fired", "renotified", "resolved")  # the lifecycle events that reach people
ADMIN, ACCOUNT = "admin", "account"
WIRE_VERSION = 2  # of to_json(); version 1 = the untyped alert record (ISO times)


def parse_time(value: Any) -> int | None:
    """Epoch seconds of an ISO-8601 time as written by rules.periods.iso ("...Z"), or of a number."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    text = str(value).replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


@dataclass(frozen=True)
class Routing:
    """Who a notice is for: the account owner (DM) and/or channels."""

    owner: bool = True
    channels: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: Any) -> Routing:
        d = d if isinstance(d, Mapping) else {}
        return cls(owner=bool(d.get("owner", True)), channels=tuple(str(c) for c in d.get("channels") or () if c))

    def to_json(self) -> dict[str, Any]:
        return {"owner": self.owner, "channels": list(self.channels)}


@dataclass(frozen=True)
class GroupedAlert:
    """Another alert of the same account and cycle, shown in this notice's message."""

    rule: str
    kind: str | None
    metric: str
    discriminator: str
    severity: str
    message: str
    value: float | None = None
    baseline: float | None = None
    threshold: float | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupedAlert:
        return cls(rule=str(d.get("rule") or ""), kind=d.get("kind"), metric=str(d.get("metric") or ""),
                   discriminator=str(d.get("discriminator") or ""), severity=str(d.get("severity") or ""),
                   message=str(d.get("message") or ""), value=finite(d.get("value")),
                   baseline=finite(d.get("baseline")), threshold=finite(d.get("threshold")))

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "kind": self.kind, "metric": self.metric, "discriminator": self.discriminator,
                "severity": self.severity, "message": self.message, "value": self.value,
                "baseline": self.baseline, "threshold": self.threshold}


@dataclass(frozen=True)
class AlertNotice:
    """One notification: an alert event of an episode, or an admin notice.

    Times are epoch seconds. `details` and `recent` are the detector's extras and the last bucket
    values (None = missing); `grouped` the account's other alerts of the cycle shown in this message;
    `quiet` a close without a message to people (notifiers only update what they showed).
    """

    event: str
    at: int
    rule: str
    account: str
    metric: str
    severity: str = "info"
    message: str = ""
    kind: str | None = None
    account_name: str = ""
    owner_email: str = ""
    plan: str = ""
    crm_id: str = ""
    value: float | None = None
    baseline: float | None = None
    threshold: float | None = None
    window: tuple[int, int] | None = None
    discriminator: str = ""
    notified: bool = True
    suppressed_reason: str = ""
    started_at: int = 0
    fired_at: int | None = None
    rule_hash: str = ""
    description: str = ""
    routing: Routing = field(default_factory=Routing)
    template: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    recent: tuple[float | None, ...] = ()
    quiet: bool = False
    grouped: tuple[GroupedAlert, ...] = ()
    episode_id: int | None = None
    audience: str = ACCOUNT  # "admin": the admin channel only
    key: str = ""  # an admin notice's idempotency key (alert events derive theirs)
    # Why it matters (rules.impact): plain words first, the money, the next step.
    headline: str = ""  # e.g. "api calls fell 87% vs a normal Tuesday"; `message` is the statistical detail
    csm_email: str = ""
    arr: float | None = None
    currency: str = "$"
    overage_units: float | None = None
    overage_projected: bool = False  # overage_units is a forecast to the period end (else: so far)
    overage_cost: float | None = None  # overage_units x the plan's per-unit price
    revenue_at_risk: float | None = None  # share of ARR
    next_plan: str = ""  # the plan that fits the usage
    next_plan_price: float | None = None
    renewal_days: int | None = None  # days to the renewal, when within [pricing] renewal_within
    action: str = ""  # the rule's next step, filled in

    @property
    def why(self) -> str:
        """The money in words ("Projected overage 30,000 ≈ $1,500 · renews in 21 days"; "" when none)."""
        from rules.impact import Impact, Pricing

        impact = Impact("", self.severity, self.overage_units, self.overage_cost, self.revenue_at_risk,
                        self.next_plan or None, self.next_plan_price, self.renewal_days, self.overage_projected)
        return impact.money_line(Pricing(currency=self.currency), self.arr)

    # ------------------------------------------------------------------ identity

    @property
    def is_admin(self) -> bool:
        return self.audience == ADMIN

    @property
    def episode_key(self) -> tuple[str, str, str, str]:
        return (self.rule, self.account, self.metric, self.discriminator)

    @property
    def idempotency_key(self) -> str:
        """The outbox row's key; notifiers derive their delivery steps from it."""
        if self.key:
            return self.key
        return (f"notify:{self.rule}:{self.account}:{self.metric}:{self.discriminator}:{self.event}:"
                f"{self.at}")

    def first_message_key(self) -> str | None:
        """The idempotency key of this episode's `fired` notice (a follow-up waits for it), if known."""
        if self.fired_at is None or self.is_admin:
            return None
        return replace(self, event="fired", at=self.fired_at, key="").idempotency_key

    # ------------------------------------------------------------------ views

    def record(self) -> dict[str, Any]:
        """The alert record (ISO times): backtest JSON, template context `a`, the webhook's `alert`."""
        return {
            "event": self.event, "at": iso(self.at), "rule": self.rule, "kind": self.kind, "account": self.account,
            "account_name": self.account_name, "owner_email": self.owner_email, "plan": self.plan,
            "crm_id": self.crm_id, "metric": self.metric, "severity": self.severity, "value": self.value,
            "baseline": self.baseline, "threshold": self.threshold,
            "window": [iso(w) for w in self.window] if self.window else None, "message": self.message,
            "discriminator": self.discriminator, "notified": self.notified,
            "suppressed_reason": self.suppressed_reason, "started_at": iso(self.started_at),
            "fired_at": iso(self.fired_at) if self.fired_at is not None else None, "rule_hash": self.rule_hash,
            "description": self.description, "routing": self.routing.to_json(), "template": self.template,
            "details": dict(self.details), "recent": list(self.recent), "quiet": self.quiet,
            "grouped": [g.to_json() for g in self.grouped],
        } | self._impact_record()

    def _impact_record(self) -> dict[str, Any]:
        """Why it matters, when there is something to say (records of notices without it stay as they were)."""
        out = {"headline": self.headline, "csm_email": self.csm_email, "arr": self.arr, "currency": self.currency,
               "overage_units": self.overage_units, "overage_projected": self.overage_projected,
               "overage_cost": self.overage_cost, "revenue_at_risk": self.revenue_at_risk,
               "next_plan": self.next_plan, "next_plan_price": self.next_plan_price,
               "renewal_days": self.renewal_days, "action": self.action, "why": self.why}
        blank = {"headline": "", "csm_email": "", "arr": None, "currency": "$", "overage_units": None,
                 "overage_projected": False, "overage_cost": None, "revenue_at_risk": None, "next_plan": "",
                 "next_plan_price": None, "renewal_days": None, "action": "", "why": ""}
        return {} if out == blank else out

    def to_json(self) -> dict[str, Any]:
        """The outbox payload: every field, times as epoch seconds."""
        out = self.record() | {"v": WIRE_VERSION, "at": self.at, "started_at": self.started_at,
                               "fired_at": self.fired_at, "window": list(self.window) if self.window else None,
                               "episode_id": self.episode_id, "audience": self.audience}
        if self.key:
            out["key"] = self.key
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AlertNotice:
        """A notice from its payload: `to_json()`'s, or an alert record queued by an older version
        (ISO times; the audience follows from the event). Missing fields take their defaults."""
        event = str(d.get("event") or "")
        at = parse_time(d.get("at")) or 0
        window = d.get("window")
        bounds = [parse_time(w) for w in window] if isinstance(window, list | tuple) and len(window) == 2 else []
        eid = d.get("episode_id")
        audience = d.get("audience") or (ACCOUNT if event in ALERT_EVENTS else ADMIN)
        return cls(
            event=event, at=at, rule=str(d.get("rule") or ""), account=str(d.get("account") or ""),
            metric=str(d.get("metric") or ""), severity=str(d.get("severity") or "info"),
            message=str(d.get("message") or ""), kind=d.get("kind"), account_name=str(d.get("account_name") or ""),
            owner_email=str(d.get("owner_email") or ""), plan=str(d.get("plan") or ""),
            crm_id=str(d.get("crm_id") or ""), value=finite(d.get("value")), baseline=finite(d.get("baseline")),
            threshold=finite(d.get("threshold")),
            window=(bounds[0], bounds[1]) if len(bounds) == 2 and None not in bounds else None,  # type: ignore[arg-type]
            discriminator=str(d.get("discriminator") or ""), notified=bool(d.get("notified", True)),
            suppressed_reason=str(d.get("suppressed_reason") or ""),
            started_at=parse_time(d.get("started_at")) or 0, fired_at=parse_time(d.get("fired_at")),
            rule_hash=str(d.get("rule_hash") or ""), description=str(d.get("description") or ""),
            routing=Routing.from_json(d.get("routing")), template=d.get("template") or None,
            details=dict(d.get("details") or {}) if isinstance(d.get("details"), Mapping) else {},
            recent=tuple(finite(v) for v in d.get("recent") or ()), quiet=bool(d.get("quiet", False)),
            grouped=tuple(GroupedAlert.from_json(g) for g in d.get("grouped") or () if isinstance(g, Mapping)),
            episode_id=int(eid) if isinstance(eid, int) and not isinstance(eid, bool) else None,
            audience=str(audience), key=str(d.get("key") or ""),
            headline=str(d.get("headline") or ""), csm_email=str(d.get("csm_email") or ""), arr=finite(d.get("arr")),
            currency=str(d.get("currency") or "$"), overage_units=finite(d.get("overage_units")),
            overage_projected=bool(d.get("overage_projected", False)),
            overage_cost=finite(d.get("overage_cost")), revenue_at_risk=finite(d.get("revenue_at_risk")),
            next_plan=str(d.get("next_plan") or ""), next_plan_price=finite(d.get("next_plan_price")),
            renewal_days=int(d["renewal_days"]) if isinstance(d.get("renewal_days"), int) else None,
            action=str(d.get("action") or ""),
        )

    @classmethod
    def of(cls, value: AlertNotice | Mapping[str, Any]) -> AlertNotice:
        """`value` itself, or the notice of a payload / stored alert record (read once, at the edge)."""
        return value if isinstance(value, AlertNotice) else cls.from_json(value)


def admin_notice(event: str, key: str, rule: str, account: str, account_name: str, message: str, at: int,
                 channel: str | None, severity: str = "warning", since: int | None = None,
                 metrics: Sequence[str] = (), details: Mapping[str, Any] | None = None, kind: str = "source",
                 description: str = "usage source health", template: str = "source") -> AlertNotice:
    """A notice for the admin channel (never routed to account owners); `key` is its idempotency key.
    Its message and details are masked (rules.config.redaction): they quote errors and problems."""
    return AlertNotice(
        event=event, at=at, rule=rule, account=account, account_name=account_name,
        metric=", ".join(metrics) or "-", severity=severity, message=mask(message), kind=kind,
        started_at=since if since is not None else at, fired_at=at, description=description,
        routing=Routing(owner=False, channels=(channel,) if channel else ()), template=template,
        details=mask_deep(dict(details or {})), audience=ADMIN, key=key,
    )

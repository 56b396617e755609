"""Turn lifecycle transitions into alert notices (integrations.notice: what every output uses).

The same notice is printed by `usagebot backtest --format json` (its record), stored in the outbox
for delivery (its JSON) and rendered by every notifier, so what a backtest shows is what a user
would receive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from integrations.notice import ALERT_EVENTS, AlertNotice, GroupedAlert, Routing, finite
from integrations.notice import admin_notice as make_admin_notice
from integrations.sources.refused import Refusal
from integrations.sources.skipped import SkippedItem
from rules.config.redaction import mask
from rules.detectors.format import moment
from rules.engine import CohortEvent
from rules.impact import Pricing, assess, render_action
from rules.lifecycle import FirstRun, Transition
from rules.model import AccountFacts, MetricBlock, Rule
from rules.periods import iso
from storage.outbox import idempotency_key

PUBLISHED_EVENTS = ALERT_EVENTS


def recent_values(block: MetricBlock | None, account_id: str, at: int, n: int = 14,
                  row_of: Mapping[str, int] | None = None) -> list[float | None]:
    """The last `n` bucket values of an account ending at `at` (None = missing).

    row_of: account id -> row of `block`, when the caller looks up many accounts of one block."""
    if block is None:
        return []
    row = row_of.get(account_id) if row_of is not None else (
        block.account_ids.index(account_id) if account_id in block.account_ids else None)
    if row is None:
        return []
    end_col = min(block.n_buckets, max(0, (at - block.start) // block.step))
    # tolist() makes the Python floats in one call; `v != v` is NaN (3x the per-element isnan/float loop)
    return [None if v != v else v for v in block.values[row, max(0, end_col - n):end_col].tolist()]


def alert_notice(
    t: Transition,
    rule: Rule | None,
    account: AccountFacts | None,
    recent: Sequence[float | None] = (),
    episode_id: int | None = None,
    pricing: Pricing | None = None,
) -> AlertNotice:
    """The notice of one transition (episode_id: its episode's row, once recorded), with why it
    matters (rules.impact: the headline, the money, a renewal's raised severity, the rule's action)."""
    s = t.state
    expl: Mapping[str, Any] = t.finding.explanation() if t.finding is not None else s.last_explanation
    severity = t.finding.severity if t.finding is not None else s.severity
    if t.event == "resolved":  # what is true now, never the numbers (nor the message) of when it fired
        msg, value, baseline, threshold, details = _resolution(t, rule, expl.get("details", {}) or {})
    else:
        msg = str(expl.get("message", ""))
        details = dict(expl.get("details", {}) or {})
        value, baseline, threshold = expl.get("value"), expl.get("baseline"), expl.get("threshold")
    window = expl.get("window")
    why = _why(t, rule, account, pricing or Pricing(), severity, value, baseline, details, expl)
    severity = why.pop("severity", severity)  # the finding's, raised for a renewal by rules.engine ([pricing])
    return AlertNotice(
        event=t.event, at=t.at, rule=s.rule_id, kind=rule.kind if rule else expl.get("kind"),
        account=s.account_id, account_name=account.name if account else s.account_id,
        owner_email=account.owner_email if account else "", plan=account.plan if account else "",
        crm_id=account.crm_id if account else "", metric=s.metric, severity=severity,
        value=finite(value), baseline=finite(baseline), threshold=finite(threshold),
        window=(int(window[0]), int(window[1])) if window else None, message=msg,
        discriminator=s.discriminator, notified=t.notify, suppressed_reason=t.reason if not t.notify else "",
        started_at=s.started_at, fired_at=s.fired_at,
        rule_hash=expl.get("rule_hash", rule.rule_hash if rule else ""),
        description=rule.description if rule else "",
        routing=Routing(rule.routing.owner, tuple(rule.routing.channels)) if rule else Routing(True, ()),
        template=rule.template if rule else None, details=details, recent=tuple(recent),
        quiet=t.quiet,  # closed without a message to people: notifiers only update what they showed
        grouped=tuple(_also(g) for g in t.grouped),  # the account's other alerts of this cycle, in this message
        episode_id=episode_id,
        **why,
    )


def _why(t: Transition, rule: Rule | None, account: AccountFacts | None, pricing: Pricing, severity: str,
         value: Any, baseline: Any, details: Mapping[str, Any], expl: Mapping[str, Any]) -> dict[str, Any]:
    """The notice fields of rules.impact.assess (a resolution states what is true now: no money)."""
    s = t.state
    kind = rule.kind if rule else expl.get("kind")
    out: dict[str, Any] = {"csm_email": account.csm_email if account else "",
                           "arr": account.arr if account else None, "currency": pricing.currency}
    if t.event == "resolved":
        return out
    bucket_start = expl.get("bucket_start")
    impact = assess(kind, s.metric, severity, finite(value), finite(baseline), details, account, pricing, t.at,
                    bucket_start)
    action = render_action(
        rule.action if rule else None, account=s.account_id, account_name=account.name if account else s.account_id,
        owner=account.owner_email if account else "", csm=account.csm_email if account else "", metric=s.metric,
        plan=account.plan if account else "", next_plan=impact.next_plan or "next", rule=s.rule_id,
        severity=impact.severity)
    return out | {"headline": impact.headline, "severity": impact.severity, "overage_units": impact.overage_units,
                  "overage_projected": impact.overage_projected,
                  "overage_cost": impact.overage_cost, "revenue_at_risk": impact.revenue_at_risk,
                  "next_plan": impact.next_plan or "", "next_plan_price": impact.next_plan_price,
                  "renewal_days": impact.renewal_days, "action": action}


def _also(t: Transition) -> GroupedAlert:
    """A grouped alert as its message shows it (the alert itself is recorded on its own episode)."""
    expl: Mapping[str, Any] = t.finding.explanation() if t.finding is not None else t.state.last_explanation
    return GroupedAlert(rule=t.state.rule_id, kind=expl.get("kind"), metric=t.state.metric,
                        discriminator=t.state.discriminator, severity=t.state.severity,
                        message=str(expl.get("message", "")), value=finite(expl.get("value")),
                        baseline=finite(expl.get("baseline")), threshold=finite(expl.get("threshold")))


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


# ------------------------------------------------------------------ admin notices


def admin_notice(event: str, source_id: str, message: str, at: int, channel: str | None,
                 severity: str = "warning", since: int | None = None, metrics: Sequence[str] = (),
                 details: Mapping[str, Any] | None = None, key: str = "") -> AlertNotice:
    """A usage source's notice for the admin channel (never routed to account owners); `key`: its
    idempotency key (one notice per key and notifier)."""
    return make_admin_notice(event, key, f"source:{source_id}", source_id, f"source {source_id}", mask(message), at,
                             channel, severity, since, metrics, details)


def refusal_notices(source_id: str, part: str, refusals: Sequence[Refusal], at: int,
                    channel: str | None) -> list[AlertNotice]:
    """One admin notice per bucket the store refused (integrations.sources.refused), under the
    bucket's own idempotency key: told once, however often the part is read again."""
    return [admin_notice("rejected", source_id, f"source {source_id!r}: {part}: bucket refused, not stored: {r.reason}",
                         at, channel, "warning", key=r.key(source_id),
                         details={"source": source_id, "part": mask(part), "account": r.bucket[0],
                                  "metric": r.bucket[1], "bucket": iso(r.bucket[2])})
            for r in refusals]


def skipped_notices(source_id: str, part: str, items: Sequence[SkippedItem], at: int,
                    channel: str | None) -> list[AlertNotice]:
    """One admin notice per malformed item a poll left out (on_error = "skip",
    integrations.sources.skipped), under the item's own idempotency key (its content): told once,
    however often a window reads it again. The text is masked (admin_notice) like every notice."""
    return [admin_notice("rejected", source_id, f"source {source_id!r}: {part}: malformed item skipped, not "
                                                f"stored: {s.where}: {s.problems}",
                         at, channel, "warning", key=s.key(source_id),
                         details={"source": source_id, "part": mask(part), "where": mask(s.where), "item": s.digest})
            for s in items]


def first_run_summary(held: Sequence[Transition], first: FirstRun, at: int, channel: str | None) -> AlertNotice:
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
    return make_admin_notice(
        "first_run", f"first-run:{at}", "first-run", "evaluation", "first evaluation", mask(message), at, channel,
        "info", details={"conditions": len(held), "accounts": len(accounts), "rules": per_rule,
                         "example_accounts": sorted(accounts)[:10]},
        kind="first_run", template="notice", description="first evaluation of a book, a rule or an account")


def cohort_notice(ev: CohortEvent, channel: str | None) -> AlertNotice:
    """One admin notice for a cohort event (many accounts meeting a rule's condition at once)."""
    way = "up" if ev.direction > 0 else "down" if ev.direction < 0 else None
    if way:  # the share test of movers (rules.engine._settle_moves): only the movers are held
        message = (
            f"Rule {ev.rule_id}: {ev.accounts} of {ev.decided} accounts ({ev.share:.0%}, {ev.cohort}) moved {way}"
            f" together by the rule's recovery score or more ({ev.firing} of them past its firing score) in the"
            f" bucket ending {iso(ev.at)}. That is a calendar or data-pipeline event (a holiday, a broken"
            f" export), not an account problem: no alert was sent for the accounts that moved {way} in that"
            " bucket; the others were judged as usual."
            f" Examples: {', '.join(ev.examples)}. Mute known days with [calendar] in the rules; tune [rule.cohort]."
        )
    else:
        message = (
            f"Rule {ev.rule_id}: {ev.accounts} of {ev.decided} accounts ({ev.share:.0%}, {ev.cohort}) met the"
            f" condition at once in the bucket ending {iso(ev.at)}. That is a calendar or data-pipeline event"
            " (a holiday, a broken export), not an account problem: no account alert was sent for that bucket."
            f" Examples: {', '.join(ev.examples)}. Mute known days with [calendar] in the rules; tune [rule.cohort]."
        )
    # one notice per event: a bucket can hold an up and a down event of one rule and cohort (the outbox
    # keeps the first notice of a key); the parts JSON-encoded: a rule id or a cohort may hold ':'
    key = idempotency_key("cohort", ev.rule_id, ev.cohort, ev.at, *([way] if way else []))
    return make_admin_notice(
        "cohort", key, f"cohort:{ev.rule_id}", "evaluation",
        f"cohort event ({ev.cohort})", mask(message), ev.at, channel, "warning",
        details={"rule": ev.rule_id, "cohort": ev.cohort, "accounts": ev.accounts, "decided": ev.decided,
                 "share": ev.share, "example_accounts": list(ev.examples),
                 **({"direction": way, "firing": ev.firing} if way else {})},
        kind="cohort", template="notice", description="many accounts at once: held as a cohort event")

"""Semantic checks of a valid rule set, against what the data holds (pure; `usagebot check`).

The loader (rules.loader) refuses rules that cannot be read. These checks find rules that are
valid but cannot work, or work twice:

- without data: two rules that detect the same thing (same fingerprint: duplicates), and rules
  of one kind on the same metric whose segments overlap (both can alert on one condition);
- with the data's facts (DataFacts, gathered by the caller from a database or CSV files): a
  metric no data has, a rule reading quotas (quota, expansion utilization, threshold of quota) on a
  metric no account has a quota for, a
  segment naming plans or accounts the data does not have, data coarser than the rule's
  bucket, and blocks whose memory would exceed the bound (an error, with the estimate).

Every finding is a rules.loader.Problem naming file, line and rule; `level` is "warning"
(the rule set still runs) or "error" (refused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rules.detectors import required_history
from rules.durations import format_duration
from rules.kinds import KINDS
from rules.loader import Problem
from rules.model import Rule, RuleSet, Segment

# Bytes per cell of an evaluation block: the float64 values plus the working copies the detectors
# make of a block (about one more), so a block of N cells needs about 16 N bytes.
BYTES_PER_CELL = 16
DEFAULT_MAX_MEMORY = 4 * 2**30


@dataclass(frozen=True)
class MetricFacts:
    accounts: int  # accounts with at least one point
    first: int  # first bucket start with data
    last: int  # last bucket start with data
    resolution: int | None  # smallest gap between two buckets with data (seconds), None if one bucket


@dataclass(frozen=True)
class DataFacts:
    """What the data holds, as far as the rules care."""

    source: str  # for messages: "the database", "usage.csv"
    accounts: int  # accounts with usage or an account record
    metrics: Mapping[str, MetricFacts] = field(default_factory=dict)
    quota_metrics: Mapping[str, int] = field(default_factory=dict)  # metric -> accounts with a quota for it
    plans: Mapping[str, int] = field(default_factory=dict)  # plan -> accounts
    account_ids: frozenset[str] = frozenset()


def lint(ruleset: RuleSet, facts: DataFacts | None = None, max_memory: int = DEFAULT_MAX_MEMORY) -> list[Problem]:
    """Every warning and error about `ruleset` (sorted by file and line)."""
    out = _duplicates(ruleset.rules) + _overlaps(ruleset.rules)
    if facts is not None:
        for rule in ruleset.rules:
            out += _against_data(rule, facts, max_memory)
    return sorted(out, key=lambda p: (p.file, p.line or 0, p.message))


def _problem(rule: Rule, field_name: str | None, message: str, level: str = "warning") -> Problem:
    return Problem(rule.source_file, rule.source_line, rule.id, field_name, message, level)


def _where(rule: Rule) -> str:
    return f"{rule.source_file}:{rule.source_line}" if rule.source_line else rule.source_file


def _duplicates(rules: Sequence[Rule]) -> list[Problem]:
    first: dict[tuple, Rule] = {}
    out = []
    for r in rules:
        original = first.setdefault(r.fingerprint, r)
        if original is not r:
            out.append(_problem(r, None, f"detects exactly what rule {original.id!r} ({_where(original)}) detects: "
                                         "both would alert on every condition (the later one is only recorded "
                                         "as a duplicate); delete one, or change what it watches"))
    return out


def _segments_overlap(a: Segment, b: Segment) -> bool:
    if a.plans and b.plans and not set(a.plans) & set(b.plans):
        return False
    if a.accounts and b.accounts and not set(a.accounts) & set(b.accounts):
        return False
    if a.accounts and set(a.accounts) <= set(b.exclude_accounts):
        return False
    return not (b.accounts and set(b.accounts) <= set(a.exclude_accounts))


def _overlaps(rules: Sequence[Rule]) -> list[Problem]:
    out = []
    for i, a in enumerate(rules):
        for b in rules[i + 1:]:
            if a.fingerprint == b.fingerprint or (a.kind, a.metric, a.bucket) != (b.kind, b.metric, b.bucket):
                continue
            if KINDS[a.kind].modes and a.params.mode != b.params.mode:
                continue  # a quota threshold and a forecast (expansion growth and utilization) say different things
            if _segments_overlap(a.segment, b.segment):
                out.append(_problem(b, None, f"overlaps rule {a.id!r} ({_where(a)}): both are {a.kind} rules on "
                                             f"{a.metric} for some of the same accounts, so one condition can "
                                             "alert twice; split them with [rule.segment], or add an [[inhibit]]"))
    return out


def _needs_quota(rule: Rule) -> bool:
    return KINDS[rule.kind].needs_quota(rule.params)


def _against_data(rule: Rule, facts: DataFacts, max_memory: int) -> list[Problem]:
    out = []
    m = facts.metrics.get(rule.metric)
    if m is None:
        have = ", ".join(sorted(facts.metrics)) or "no metric at all"
        out.append(_problem(rule, "metric", f"{facts.source} has no data for metric {rule.metric!r} (it has: "
                                            f"{have}); this rule can never fire"))
    elif m.resolution is not None and m.resolution > rule.bucket:
        out.append(_problem(rule, "bucket", f"{rule.metric} arrives every {format_duration(m.resolution)} in "
                                            f"{facts.source} but the rule's bucket is {format_duration(rule.bucket)}:"
                                            " most buckets hold no data, so the rule can rarely decide; use a bucket"
                                            f" of {format_duration(m.resolution)} or longer"))
    if _needs_quota(rule) and not facts.quota_metrics.get(rule.metric):
        out.append(_problem(rule, "metric", f"no account in {facts.source} has a quota for {rule.metric!r} "
                                            f"(quota.{rule.metric} in the accounts); this rule can never fire"))
    seg = rule.segment
    unknown_plans = [p for p in seg.plans if p not in facts.plans]
    if unknown_plans and facts.plans:
        out.append(_problem(rule, "segment.plans", f"no account in {facts.source} is on plan(s) "
                                                   f"{', '.join(unknown_plans)} (plans: {', '.join(sorted(facts.plans))})"))
    unknown = [a for a in seg.accounts if a not in facts.account_ids]
    if unknown and facts.account_ids:
        out.append(_problem(rule, "segment.accounts", f"{facts.source} has no account(s) {', '.join(unknown[:5])}"))
    history = required_history(rule)
    cells = facts.accounts * (history // rule.bucket)
    need = cells * BYTES_PER_CELL
    if need > max_memory:
        out.append(_problem(rule, None, f"an evaluation needs about {_gib(need)} of memory ({facts.accounts:,} "
                                        f"accounts x {history // rule.bucket:,} buckets of history); the bound is "
                                        f"{_gib(max_memory)}: shorten its windows or use a longer bucket", "error"))
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**28 else f"{n / 2**20:,.0f} MiB"


def facts_from(records: Sequence[object], accounts: Sequence[object], source: str) -> DataFacts:
    """DataFacts of usage records (.account, .metric, .ts) and AccountFacts (the CSV path)."""
    per: dict[str, tuple[set[str], set[int]]] = {}
    for r in records:
        ids, stamps = per.setdefault(r.metric, (set(), set()))  # type: ignore[attr-defined]
        ids.add(r.account)  # type: ignore[attr-defined]
        stamps.add(int(r.ts) - int(r.ts) % 60)  # type: ignore[attr-defined]
    metrics = {}
    for metric, (ids, stamps) in per.items():
        ordered = sorted(stamps)
        gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
        metrics[metric] = MetricFacts(len(ids), ordered[0], ordered[-1], min(gaps) if gaps else None)
    return _with_accounts(source, metrics, {a for ids, _ in per.values() for a in ids}, accounts)


def _with_accounts(source: str, metrics: Mapping[str, MetricFacts], with_usage: set[str],
                   accounts: Sequence[object]) -> DataFacts:
    quota: dict[str, int] = {}
    plans: dict[str, int] = {}
    for a in accounts:
        for metric, q in (a.quotas or {}).items():  # type: ignore[attr-defined]
            if q and q > 0:
                quota[metric] = quota.get(metric, 0) + 1
        plan = a.plan  # type: ignore[attr-defined]
        if plan:
            plans[plan] = plans.get(plan, 0) + 1
    ids = frozenset(with_usage | {a.id for a in accounts})  # type: ignore[attr-defined]
    return DataFacts(source, len(ids), dict(metrics), quota, plans, ids)


def facts_of(source: str, metrics: Mapping[str, MetricFacts], with_usage: set[str],
             accounts: Sequence[object]) -> DataFacts:
    """DataFacts from per-metric facts the caller computed (the database path)."""
    return _with_accounts(source, metrics, with_usage, accounts)

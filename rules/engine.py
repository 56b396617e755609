"""Pure evaluation: rules x usage blocks x account facts at time `now` -> findings.

The caller hands in one MetricBlock per (metric, bucket) that the rules need,
covering at least `history_needed(rule)` seconds before `now`. For each rule
the block is truncated to the buckets that have ENDED by `now` (so a
detector cannot see the future or a half-filled bucket), restricted to the
rule's segment, and passed to the rule kind's detector.

Bad data is contained to its account: a row with a value that is not a finite
number (a bucket total past the largest float64 reads as inf), or a finding
whose numbers are not finite, leaves that account undecided for the rule (no
finding, its episode unchanged) and is listed in `EvaluationResult.contained`;
every other account is evaluated as usual.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from rules.detectors import detect, required_history
from rules.gcpause import gc_paused
from rules.model import AccountFacts, Finding, MetricBlock, Rule

BlockKey = tuple[str, int]  # (metric, bucket seconds)


@dataclass
class EvaluationResult:
    findings: list[Finding] = field(default_factory=list)
    decided: set[tuple[str, str]] = field(default_factory=set)  # (rule_id, account_id)
    evaluated_rules: set[str] = field(default_factory=set)
    contained: list[tuple[str, str, str]] = field(default_factory=list)  # (rule_id, account_id, why)


def non_finite_rows(values: np.ndarray) -> np.ndarray:
    """Per row: whether it holds +-inf (NaN is "not observed", a legitimate value)."""
    if values.size == 0:
        return np.zeros(values.shape[0], dtype=bool)
    return np.isinf(values).any(axis=1)  # type: ignore[no-any-return]


def _finite_finding(f: Finding) -> bool:
    return all(x is None or not math.isinf(x) for x in (f.value, f.baseline, f.threshold))


def block_keys(rules: Iterable[Rule]) -> set[BlockKey]:
    return {(r.metric, r.bucket) for r in rules}


def history_needed(rules: Iterable[Rule]) -> dict[BlockKey, int]:
    """Seconds of history per (metric, bucket) the given rules need."""
    need: dict[BlockKey, int] = {}
    for r in rules:
        k = (r.metric, r.bucket)
        need[k] = max(need.get(k, 0), required_history(r))
    return need


def due(rule: Rule, now: int) -> bool:
    """A rule is evaluated when one of its buckets has just closed."""
    return now % rule.bucket == 0


def facts_for(account_ids: Sequence[str], accounts: Mapping[str, AccountFacts]) -> list[AccountFacts]:
    """Facts per row; usage of an account not in the account list gets neutral facts."""
    return [accounts.get(a) or AccountFacts(id=a, name=a) for a in account_ids]


def evaluate_rule(
    rule: Rule, block: MetricBlock, accounts: Mapping[str, AccountFacts], now: int,
    block_facts: list[AccountFacts] | None = None,
) -> tuple[list[Finding], list[str]]:
    """Findings of one rule at `now`, and the account ids it could decide.

    block_facts: facts_for(block.account_ids, accounts) when the caller already has them.
    """
    findings, decided, _ = _evaluate_rule(rule, block, accounts, now, block_facts)
    return findings, decided


def _evaluate_rule(
    rule: Rule, block: MetricBlock, accounts: Mapping[str, AccountFacts], now: int,
    block_facts: list[AccountFacts] | None = None,
) -> tuple[list[Finding], list[str], list[tuple[str, str, str]]]:
    """evaluate_rule, plus the (rule, account, why) left undecided because of non-finite data."""
    if block.step != rule.bucket or block.metric != rule.metric:
        raise ValueError(
            f"rule {rule.id!r} needs {rule.metric}@{rule.bucket}s, got {block.metric}@{block.step}s"
        )
    n = (now - block.start) // block.step
    n = max(0, min(int(n), block.n_buckets))
    view = block.truncated(n)
    facts = block_facts if block_facts is not None else facts_for(view.account_ids, accounts)
    seg = rule.segment
    if not (seg.plans or seg.accounts or seg.exclude_accounts):  # no restriction
        mask = np.ones(len(facts), dtype=bool)
    else:
        mask = np.fromiter((seg.matches(f) for f in facts), dtype=bool, count=len(facts))
    contained: list[tuple[str, str, str]] = []
    bad = mask & non_finite_rows(view.values)
    if bad.any():
        contained = [(rule.id, a, f"a {rule.metric} bucket total in the rule's window is not a finite number")
                     for a in np.asarray(view.account_ids, dtype=object)[bad]]
        mask &= ~bad
    if not mask.all():
        view = view.rows(mask)
        facts = [f for f, keep in zip(facts, mask, strict=True) if keep]
    if not facts:
        return [], [], contained
    result = detect(rule, view, facts)
    findings = result.findings
    decided_ids = [a for a, d in zip(view.account_ids, result.decided, strict=True) if d]
    if not all(map(_finite_finding, findings)):  # e.g. sums of huge values overflowing in a detector
        odd = {f.account_id for f in findings if not _finite_finding(f)}
        contained += [(rule.id, a, "the rule's computation on its usage overflowed (not a finite number)")
                      for a in sorted(odd)]
        findings = [f for f in findings if f.account_id not in odd]
        decided_ids = [a for a in decided_ids if a not in odd]
    return findings, decided_ids, contained


@gc_paused()
def evaluate(
    rules: Sequence[Rule],
    blocks: Mapping[BlockKey, MetricBlock],
    accounts: Mapping[str, AccountFacts],
    now: int,
    only_due: bool = True,
) -> EvaluationResult:
    """Evaluate every rule (or only those whose bucket closed at `now`)."""
    out = EvaluationResult()
    facts: dict[BlockKey, list[AccountFacts]] = {}  # rules on the same block share its facts
    for rule in rules:
        if only_due and not due(rule, now):
            continue
        block = blocks.get((rule.metric, rule.bucket))
        if block is None:
            raise KeyError(f"no usage block for rule {rule.id!r} ({rule.metric} @ {rule.bucket}s)")
        key = (rule.metric, rule.bucket)
        if key not in facts:
            facts[key] = facts_for(block.account_ids, accounts)
        findings, decided_ids, contained = _evaluate_rule(rule, block, accounts, now, block_facts=facts[key])
        out.contained.extend(contained)
        out.findings.extend(findings)
        out.decided.update(zip(repeat(rule.id), decided_ids))
        out.evaluated_rules.add(rule.id)
    return out

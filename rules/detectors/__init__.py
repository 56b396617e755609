"""Pure detectors: one rule, one metric block, a verdict per account.

    detect(rule, block, accounts) -> DetectorResult
    required_history(rule) -> int   # seconds of data before the evaluated bucket's end

`detect` evaluates the LAST column of `block` only (evaluation time
at = block.end); the caller truncates the block to the bucket being
evaluated, so no detector can look ahead. `accounts[i]` describes
`block.account_ids[i]`. NaN in the block means "not observed" and is never
read as zero. Rows with too little data are undecided: no finding and
decided[i] False. Work is vectorised over rows with numpy; Python loops only
build the (few) findings and walk groups of accounts sharing
(billing_day, timezone).

The semantics of each kind are documented in its module:
spike / drop -> rules.detectors.spike_drop, inactivity ->
rules.detectors.inactivity, quota -> rules.detectors.quota, expansion ->
rules.detectors.expansion. Message formatting is in rules.detectors.format.
"""

from __future__ import annotations

from collections.abc import Sequence

from rules.detectors import expansion, inactivity, quota, spike_drop
from rules.detectors.format import rule_location
from rules.model import (
    AccountFacts,
    DetectorResult,
    DropParams,
    ExpansionParams,
    InactivityParams,
    KindParams,
    MetricBlock,
    OpenEpisode,
    QuotaParams,
    Rule,
    SpikeParams,
)

__all__ = ["detect", "required_history"]

_PARAMS: dict[str, type[KindParams]] = {
    "spike": SpikeParams,
    "drop": DropParams,
    "inactivity": InactivityParams,
    "quota": QuotaParams,
    "expansion": ExpansionParams,
}


def _check_rule(rule: Rule) -> None:
    expected = _PARAMS.get(rule.kind)
    if expected is None:
        raise ValueError(
            f"{rule_location(rule)}: unknown kind {rule.kind!r}; expected one of {', '.join(_PARAMS)}"
        )
    if not isinstance(rule.params, expected):
        raise TypeError(
            f"{rule_location(rule)}: kind {rule.kind!r} needs {expected.__name__} params,"
            f" got {type(rule.params).__name__}"
        )
    if rule.bucket <= 0:
        raise ValueError(
            f"{rule_location(rule)}: bucket must be a positive number of seconds, got {rule.bucket}"
        )


def _check_inputs(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts]) -> None:
    where = rule_location(rule)
    if block.metric != rule.metric:
        raise ValueError(
            f"{where}: block holds metric {block.metric!r} but the rule is about {rule.metric!r}"
        )
    if block.step != rule.bucket:
        raise ValueError(f"{where}: block has {block.step}s buckets but the rule uses {rule.bucket}s buckets")
    if len(accounts) != len(block.account_ids):
        raise ValueError(
            f"{where}: {len(accounts)} account facts for a block of {len(block.account_ids)} rows;"
            " pass one AccountFacts per block row, in the same order"
        )
    ids = [account.id for account in accounts]
    if ids == block.account_ids:
        return
    for row, (account_id_given, account_id) in enumerate(zip(ids, block.account_ids, strict=True)):
        if account_id_given != account_id:
            raise ValueError(
                f"{where}: accounts[{row}] is {account_id_given!r} but block row {row} is {account_id!r};"
                " accounts must be in block.account_ids order"
            )


def detect(
    rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts], open_episodes: Sequence[OpenEpisode] = ()
) -> DetectorResult:
    """Evaluate `rule` on the last column of `block` for every row (see module docstring).

    open_episodes: the rule's open (pending or firing) episodes of accounts in the block; each
    kind judges them with hysteresis and states what is true now for those that recovered.
    """
    _check_rule(rule)
    _check_inputs(rule, block, accounts)
    if rule.kind in ("spike", "drop"):
        return spike_drop.detect_spike_drop(rule, block, open_episodes)
    if rule.kind == "inactivity":
        return inactivity.detect_inactivity(rule, block, open_episodes)
    if rule.kind == "quota":
        return quota.detect_quota(rule, block, accounts, open_episodes)
    return expansion.detect_expansion(rule, block, accounts, open_episodes)


def required_history(rule: Rule) -> int:
    """Seconds of history before the evaluated bucket's end that `detect` needs (a bucket multiple)."""
    _check_rule(rule)
    if rule.kind in ("spike", "drop"):
        return spike_drop.required_history(rule)
    if rule.kind == "inactivity":
        return inactivity.required_history(rule)
    if rule.kind == "quota":
        return quota.required_history(rule)
    return expansion.required_history(rule)

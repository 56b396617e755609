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

Each kind is described by a `Kind` in its own module of this package (spike_drop holds
spike and drop); rules.kinds registers them, and `detect` and `required_history` dispatch
on the registry. A rule of an unregistered kind is an error. Message formatting is in
rules.detectors.format.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from rules.detectors.format import rule_location
from rules.kinds import Kind, UnknownKind, kind_of
from rules.memo import by_identity
from rules.model import AccountFacts, DetectorResult, MetricBlock, OpenEpisode, Rule

__all__ = ["detect", "required_history"]


def _check_rule(rule: Rule) -> Kind:
    try:
        kind = kind_of(rule.kind)
    except UnknownKind as exc:
        raise ValueError(f"{rule_location(rule)}: {exc}") from None
    if not isinstance(rule.params, kind.params):
        raise TypeError(
            f"{rule_location(rule)}: kind {rule.kind!r} needs {kind.params.__name__} params,"
            f" got {type(rule.params).__name__}"
        )
    if rule.bucket <= 0:
        raise ValueError(
            f"{rule_location(rule)}: bucket must be a positive number of seconds, got {rule.bucket}"
        )
    return kind


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
    ids = _ids(accounts)
    if ids == block.account_ids:
        return
    for row, (account_id_given, account_id) in enumerate(zip(ids, block.account_ids, strict=True)):
        if account_id_given != account_id:
            raise ValueError(
                f"{where}: accounts[{row}] is {account_id_given!r} but block row {row} is {account_id!r};"
                " accounts must be in block.account_ids order"
            )


_ID = attrgetter("id")


@by_identity()
def _ids(accounts: Sequence[AccountFacts]) -> list[str]:
    return list(map(_ID, accounts))  # C-level (a replay's picked facts are new tuples each step: no memo hit)


def detect(
    rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts], open_episodes: Sequence[OpenEpisode] = ()
) -> DetectorResult:
    """Evaluate `rule` on the last column of `block` for every row (see module docstring).

    open_episodes: the rule's open (pending or firing) episodes of accounts in the block; each
    kind judges them with hysteresis and states what is true now for those that recovered.
    """
    kind = _check_rule(rule)
    _check_inputs(rule, block, accounts)
    return kind.detect(rule, block, accounts, open_episodes)


def required_history(rule: Rule) -> int:
    """Seconds of history before the evaluated bucket's end that `detect` needs (a bucket multiple)."""
    return _check_rule(rule).required_history(rule)

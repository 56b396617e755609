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
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from itertools import compress, repeat

import numpy as np

from rules.detectors import detect, required_history
from rules.gcpause import gc_paused
from rules.impact import Pricing, raised, renewal_severity
from rules.model import (
    AccountFacts,
    Calendar,
    Cohort,
    DetectorResult,
    Finding,
    FindingRows,
    Found,
    FoundItem,
    MetricBlock,
    OpenEpisode,
    PickedFacts,
    Recovery,
    Rule,
    found_accounts,
    picked,
)

BlockKey = tuple[str, int]  # (metric, bucket seconds)


@dataclass
class Interrupted(Collection[tuple[str, str]]):
    """The (rule_id, account_id) pairs whose latest bucket an event shared by many accounts explains:
    a cohort event (the rule's `cohort`) or a [calendar] day muting the rule's kind (then every
    account of the rule, `rules`). Such a bucket says nothing about the account itself, so it
    breaks the run of consecutive buckets that `for` counts: rules.lifecycle clears a pending
    episode there instead of carrying its count over the event (a breach the day before a
    holiday and one the day after are not "two days running")."""

    rules: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)

    def __contains__(self, pair: object) -> bool:
        return pair in self.pairs or (isinstance(pair, tuple) and len(pair) == 2 and pair[0] in self.rules)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def update(self, other: Interrupted) -> None:
        self.rules |= other.rules
        self.pairs |= other.pairs


RecoveryKey = tuple[str, str, str]  # (rule_id, account_id, discriminator)


@dataclass(frozen=True)
class CohortEvent:
    """A rule's condition newly met by a large share of a cohort in one bucket (see Cohort)."""

    rule_id: str
    at: int
    cohort: str  # "all accounts" or "plan <name>"
    accounts: int  # accounts newly meeting the condition (moving `direction` by the cohort level, if set)
    decided: int  # accounts the rule could decide in the cohort
    examples: tuple[str, ...]  # a few of the accounts, for the admin notice
    direction: int = 0  # the share test of movers (_settle_moves): +1 up, -1 down; 0: of accounts firing
    firing: int = 0  # with a direction: how many of the movers newly met the condition

    @property
    def share(self) -> float:
        return self.accounts / self.decided if self.decided else 0.0


class DecidedByRule(AbstractSet[tuple[str, str]]):
    """The (rule_id, account_id) pairs decided, held per rule as the rows of its block (their ids) and
    a bool per row (the detector's `decided`): what evaluate() returns. Building 80k tuples for 8 rules
    at 10k accounts took longer than deciding them (2x the whole detection), so nothing is built
    per pair: a membership test looks the account up in an index of the ids (built once per ids
    list, when first asked), iteration and set operations build what they read (operators give sets).
    The masks are read, never changed (a cohort's muted accounts get a new one)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[tuple[Sequence[str], np.ndarray]]] = {}
        self._index: dict[int, tuple[Sequence[str], dict[str, int]]] = {}  # id(ids) -> (ids, id -> row)

    @classmethod
    def _from_iterable(cls, it: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        return set(it)

    def add(self, rule_id: str, ids: Sequence[str], decided: np.ndarray) -> None:
        """Rows `decided` marks of `ids` are decided for the rule (`decided`: bool per row of ids)."""
        self.parts.setdefault(rule_id, []).append((ids, decided))

    def _row_of(self, ids: Sequence[str]) -> dict[str, int]:
        got = self._index.get(id(ids))
        if got is None or got[0] is not ids:
            got = self._index[id(ids)] = (ids, {a: i for i, a in enumerate(ids)})
        return got[1]

    def __contains__(self, pair: object) -> bool:
        if not isinstance(pair, tuple) or len(pair) != 2:
            return False
        for ids, decided in self.parts.get(pair[0], ()):
            row = self._row_of(ids).get(pair[1])  # type: ignore[call-overload]
            if row is not None and decided[row]:
                return True
        return False

    def rule_accounts(self, rule_id: str) -> set[str]:
        """The account ids decided for one rule."""
        out: set[str] = set()
        for ids, decided in self.parts.get(rule_id, ()):
            out.update(compress(ids, decided))
        return out

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for rule_id, parts in self.parts.items():
            if len(parts) == 1:
                ids, decided = parts[0]
                yield from zip(repeat(rule_id), compress(ids, decided))
            else:
                yield from zip(repeat(rule_id), self.rule_accounts(rule_id))

    def __len__(self) -> int:
        return sum(int(np.count_nonzero(p[0][1])) if len(p) == 1 else len(self.rule_accounts(r))
                   for r, p in self.parts.items())

    def accounts(self) -> set[str]:
        """Every account decided by some rule."""
        out: set[str] = set()
        for parts in self.parts.values():
            for ids, decided in parts:
                out.update(compress(ids, decided))
        return out

    def discard_accounts(self, rule_id: str, accounts: AbstractSet[str]) -> None:
        """Leave `accounts` undecided for the rule."""
        self.parts[rule_id] = [
            (ids, decided & np.fromiter((a not in accounts for a in ids), dtype=bool, count=len(ids)))
            for ids, decided in self.parts.get(rule_id, ())]


@dataclass
class EvaluationResult(Found):
    """What evaluate() found: `findings` as Finding objects (rules.model.Found), `found` as the
    detectors gave them (Finding objects and columnar FindingRows: what a replay steps on)."""

    found: list[FoundItem] = field(default_factory=list)
    decided: set[tuple[str, str]] = field(default_factory=set)  # (rule_id, account_id); evaluate(): DecidedByRule
    evaluated_rules: set[str] = field(default_factory=set)
    recoveries: dict[RecoveryKey, Recovery] = field(default_factory=dict)
    cohort_events: list[CohortEvent] = field(default_factory=list)
    contained: list[tuple[str, str, str]] = field(default_factory=list)  # (rule_id, account_id, why)
    interrupted: Interrupted = field(default_factory=Interrupted)  # buckets explained by a shared event


@dataclass(frozen=True)
class RunRows:
    """The rows of a block a detector runs on at one step (a replay's candidates, rules.replay.Scans),
    and, when known, which of the other rows it would decide (rules.detectors.scan.Scanned): they
    count in the rule's cohort tally without being run."""

    rows: np.ndarray  # bool per block row
    decided: np.ndarray | None = None  # bool per block row, or None: unknown


class _Picked(Sequence[object]):
    """seq[i] for i in idx, built only if read (a cohort tally's rows are read only for an event)."""

    def __init__(self, seq: Sequence[object], idx: np.ndarray) -> None:
        self.seq, self.idx = seq, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        if isinstance(i, slice):
            return [self.seq[j] for j in self.idx[i]]
        return self.seq[self.idx[i]]

    def __iter__(self) -> Iterator[object]:
        seq = self.seq
        return (seq[j] for j in self.idx)


def non_finite_rows(values: np.ndarray) -> np.ndarray:
    """Per row: whether it holds +-inf (NaN is "not observed", a legitimate value)."""
    if values.size == 0:
        return np.zeros(values.shape[0], dtype=bool)
    return np.isinf(values).any(axis=1)  # type: ignore[no-any-return]


def _finite_finding(f: Finding) -> bool:
    return all(x is None or not math.isinf(x) for x in (f.value, f.baseline, f.threshold))


def _without_non_finite(result: DetectorResult) -> set[str]:
    """Drop the findings whose numbers are not finite from `result`; their account ids."""
    odd: set[str] = set()
    kept: list[FoundItem] = []
    for item in result.found:
        if isinstance(item, Finding):
            if _finite_finding(item):
                kept.append(item)
            else:
                odd.add(item.account_id)
            continue
        ok = item.finite()
        if not ok.all():
            odd.update(item.account_id(k) for k in np.flatnonzero(~ok))
            item = item.subset(ok)
        kept.append(item)
    if odd:  # every finding of such an account goes (as one Finding at a time did)
        result.found = [_drop_accounts(x, odd) for x in kept]
    return odd


def _drop_accounts(item: FoundItem, accounts: AbstractSet[str]) -> FoundItem:
    """`item` without the findings of `accounts` (a Finding of one of them: an empty FindingRows)."""
    if isinstance(item, Finding):
        return item if item.account_id not in accounts else _EMPTY
    keep = np.fromiter((item.account_id(k) not in accounts for k in range(len(item))), dtype=bool, count=len(item))
    return item if keep.all() else item.subset(keep)


_EMPTY = FindingRows("", "", "", 0, [], np.zeros(0, dtype=np.intp), "", lambda k: None)  # type: ignore[arg-type, return-value]


class Reuse:
    """What stays the same between evaluations of the same blocks and accounts (a replay): the facts
    of each block's rows (a tuple, so detectors may cache what they derive from it by identity), each
    rule's segment mask and the facts and ids of the rows it keeps, and per block row the first column
    holding +-inf.

    Valid while the blocks and `accounts` evaluated with it do not change (rules.replay keeps one per
    replay); evaluate() without one makes its own (the rules of one evaluation share it: a block's
    +-inf scan is done once, not once per rule).
    """

    def __init__(self) -> None:
        self._facts: dict[BlockKey, tuple[AccountFacts, ...]] = {}
        self._by_ids: dict[int, tuple[list[str], tuple[AccountFacts, ...]]] = {}  # id(account_ids) -> facts
        self._first_inf: dict[BlockKey, np.ndarray] = {}
        self._segment: dict[str, np.ndarray] = {}
        self._rows: dict[str, tuple[np.ndarray, list[str], tuple[AccountFacts, ...], list[str]]] = {}
        self._only: dict[str, tuple[Sequence[AccountFacts], np.ndarray, list[str], Sequence[AccountFacts]]] = {}
        self._renewals: tuple[Mapping[str, AccountFacts], dict[str, int]] | None = None

    def renewals(self, accounts: Mapping[str, AccountFacts]) -> dict[str, int]:
        """account id -> renewal_at, for the accounts of `accounts` that have one (the same mapping: once)."""
        if self._renewals is None or self._renewals[0] is not accounts:
            self._renewals = (accounts, {a: f.renewal_at for a, f in accounts.items() if f.renewal_at is not None})
        return self._renewals[1]

    def facts(self, key: BlockKey, block: MetricBlock,
              accounts: Mapping[str, AccountFacts]) -> tuple[AccountFacts, ...]:
        """The facts of the block's rows: one tuple for the blocks sharing one list of ids (a book's
        metrics), so what detectors derive from it (billing groups) is derived once for all."""
        got = self._facts.get(key)
        if got is None:
            ids = block.account_ids
            shared = self._by_ids.get(id(ids))
            if shared is None or shared[0] is not ids:
                shared = self._by_ids[id(ids)] = (ids, tuple(facts_for(ids, accounts)))
            got = self._facts[key] = shared[1]
        return got

    def first_inf(self, key: BlockKey, block: MetricBlock) -> np.ndarray:
        """Per row: the first column holding +-inf (n_buckets when none)."""
        got = self._first_inf.get(key)
        if got is None:
            values = block.values
            if not values.size or (np.fmax.reduce(values, axis=None) < np.inf and
                                   np.fmin.reduce(values, axis=None) > -np.inf):  # the usual case, in half the time of isinf
                got = np.full(len(values), block.n_buckets)  # (rows without buckets: nothing to argmax)
            else:
                inf = np.isinf(values)
                got = np.where(inf.any(axis=1), inf.argmax(axis=1), block.n_buckets)
            self._first_inf[key] = got
        return got

    def segment(self, rule: Rule, facts: Sequence[AccountFacts]) -> np.ndarray:
        got = self._segment.get(rule.id)
        if got is None:
            seg = rule.segment
            got = self._segment[rule.id] = np.fromiter((seg.matches(f) for f in facts), dtype=bool,
                                                       count=len(facts))
        return got.copy()

    def only(self, rule: Rule, view: MetricBlock, facts: Sequence[AccountFacts], keep: np.ndarray
             ) -> tuple[MetricBlock, Sequence[AccountFacts]]:
        """_only, with the same facts tuple and ids while the rule keeps the same rows (detectors
        remember what they derive from the facts by identity: quota arrays, billing groups)."""
        got = self._only.get(rule.id)
        if got is not None and got[0] is facts and np.array_equal(got[1], keep):
            ids, kept = got[2], got[3]
            return MetricBlock(view.metric, view.start, view.step, ids, view.values[keep]), kept
        picked, kept = _only(view, facts, keep)
        self._only[rule.id] = (facts, keep.copy(), picked.account_ids, kept)
        return picked, kept

    def rows(self, rule: Rule, mask: np.ndarray, ids: list[str],
             facts: Sequence[AccountFacts]) -> tuple[tuple[AccountFacts, ...], list[str]]:
        """The facts and ids of the rows `mask` keeps: the same objects while the mask is the same."""
        got = self._rows.get(rule.id)
        if got is not None and got[1] is ids and np.array_equal(got[0], mask):
            return got[2], got[3]
        kept = tuple(f for f, keep in zip(facts, mask, strict=True) if keep)
        kept_ids = [a for a, keep in zip(ids, mask, strict=True) if keep]
        self._rows[rule.id] = (mask.copy(), ids, kept, kept_ids)
        return kept, kept_ids


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
    open_episodes: Sequence[OpenEpisode] = (), calendar: Calendar | None = None,
) -> tuple[list[Finding], list[str]]:
    """Findings of one rule on one block at `now` (its due time or not), and the account ids it
    could decide: `evaluate` of that rule alone."""
    out = evaluate([rule], {(rule.metric, rule.bucket): block}, accounts, now, only_due=False,
                   open_episodes={rule.id: open_episodes}, calendar=calendar)
    return out.findings, sorted(a for _, a in out.decided)


def detect_rule(
    rule: Rule, block: MetricBlock, accounts: Mapping[str, AccountFacts], now: int,
    block_facts: Sequence[AccountFacts] | None = None, open_episodes: Sequence[OpenEpisode] = (),
    calendar: Calendar | None = None, tallies: list[CohortTally] | None = None,
    contained: list[tuple[str, str, str]] | None = None, reuse: Reuse | None = None,
    interrupted: Interrupted | None = None, only: RunRows | None = None,
) -> tuple[list[str], DetectorResult] | None:
    """The detector's verdict on the rule's segment of `block` at `now` (its row ids and result);
    None when nothing can be decided (no rows, or the bucket is muted by the calendar). Accounts
    with non-finite data are left out and listed in `contained`; a rule whose bucket a [calendar]
    day mutes is added to `interrupted`. A rule with a `cohort` adds its CohortTally to `tallies`:
    cohort events are settled over the whole book (settle_cohorts), not per block of accounts.

    only: the detector runs on those rows only (a replay's candidate rows, rules.replay); the other
    rows get no finding and are not decided. Everything before the detector (containment, the
    calendar) still sees every row; with `only.decided` the other rows are tallied for the cohort
    as decided or not, without a finding."""
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
    elif reuse is not None:
        mask = reuse.segment(rule, facts)
    else:
        mask = np.fromiter((seg.matches(f) for f in facts), dtype=bool, count=len(facts))
    if reuse is not None:
        bad = mask & (reuse.first_inf((block.metric, block.step), block) < n)
    else:
        bad = mask & non_finite_rows(view.values)
    if bad.any():
        if contained is not None:
            contained += [(rule.id, a, f"a {rule.metric} bucket total in the rule's window is not a finite number")
                          for a in np.asarray(view.account_ids, dtype=object)[bad]]
        mask &= ~bad
    # A replay's candidate rows of a rule with a segment: picked from the whole block in one go, not
    # through a copy of every segment row's values first (a block-sized copy per step: 2k x 180, the
    # expansion rules' segment, ~4 MB a call); the same rows, ids, facts and numbers.
    direct = only is not None and reuse is not None and rule.cohort is None and not mask.all()
    if direct:
        if not mask.any():
            return None
    elif not mask.all():
        if reuse is not None:
            facts, ids = reuse.rows(rule, mask, view.account_ids, facts)
            view = MetricBlock(view.metric, view.start, view.step, ids, view.values[mask])
        else:
            view = view.rows(mask)
            facts = [f for f, keep in zip(facts, mask, strict=True) if keep]
    if not direct and not facts:
        return None
    if calendar is not None and calendar.muted(rule.kind, view.end - view.step):
        if interrupted is not None:
            interrupted.rules.add(rule.id)
        return None
    rest: CohortTally | None = None
    if direct:
        view, facts = reuse.only(rule, view, facts, only.rows & mask)  # type: ignore[union-attr]
        if not facts:
            return [], DetectorResult([], np.zeros(0, dtype=bool))
    elif only is not None:
        keep = only.rows if mask.all() else only.rows[mask]
        if rule.cohort is not None and tallies is not None and only.decided is not None and not keep.all():
            others = np.flatnonzero(~keep)
            decided_rest = (only.decided if mask.all() else only.decided[mask])[others]
            rest = CohortTally(rule, view.end, _Picked(view.account_ids, others),  # type: ignore[arg-type]
                               _Picked(facts, others), decided_rest, None, _NO_ROWS)  # type: ignore[arg-type]
        view, facts = _only(view, facts, keep) if reuse is None else reuse.only(rule, view, facts, keep)
        if rest is not None:
            tallies.append(rest)  # type: ignore[union-attr]
        if not facts:
            return [], DetectorResult([], np.zeros(0, dtype=bool))
    # a detector's arithmetic may overflow on huge values: the non-finite result is contained to its
    # account just below (and listed), so numpy's RuntimeWarning would only be noise in the service's log
    with np.errstate(over="ignore", invalid="ignore"):
        result = detect(rule, view, facts, open_episodes)
    odd = _without_non_finite(result)  # e.g. sums of huge values overflowing in a detector
    if odd:
        if contained is not None:
            contained += [(rule.id, a, "the rule's computation on its usage overflowed (not a finite number)")
                          for a in sorted(odd)]
        result.decided[[i for i, a in enumerate(view.account_ids) if a in odd]] = False
    if rule.cohort is not None and tallies is not None:
        ids = view.account_ids
        index: dict[str, int] = {}
        opened = None
        if open_episodes:
            index = {a: i for i, a in enumerate(ids)}
            opened = np.zeros(len(ids), dtype=bool)
            opened[[i for i in (index.get(e.account_id) for e in open_episodes) if i is not None]] = True
        new = found_rows(result.found, ids, index)
        if opened is not None:
            new = new[~opened[new]]
        tallies.append(CohortTally(rule, view.end, ids, facts, result.decided, opened, new, result.moved))
    return view.account_ids, result


_NO_ROWS = np.zeros(0, dtype=np.intp)


def found_rows(found: Sequence[FoundItem], ids: Sequence[str], index: dict[str, int]) -> np.ndarray:
    """The row in `ids` of every finding, in order (an account with two findings twice): FindingRows on
    `ids` give their rows as they are, other findings are looked up in `index` (id -> row; filled here
    from `ids` when empty and needed)."""
    parts: list[np.ndarray] = []
    for item in found:
        if isinstance(item, FindingRows) and item.account_ids is ids:
            parts.append(np.asarray(item.rows, dtype=np.intp))
            continue
        if not index:
            index.update((a, i) for i, a in enumerate(ids))
        parts.append(np.array([index[a] for _, a in found_accounts([item])], dtype=np.intp))
    return np.concatenate(parts) if parts else _NO_ROWS


def _only(view: MetricBlock, facts: Sequence[AccountFacts], keep: np.ndarray
          ) -> tuple[MetricBlock, Sequence[AccountFacts]]:
    """The rows `keep` marks of a view and its facts (indexed, not walked: the kept rows are few)."""
    if keep.all():
        return view, facts
    idx = np.flatnonzero(keep)
    ids = view.account_ids
    return (MetricBlock(view.metric, view.start, view.step, picked(ids, idx), view.values[idx]),
            PickedFacts(facts, idx))


@dataclass(frozen=True)
class CohortTally:
    """What one rule's verdict on one block of accounts brings to its cohort events: the rows it
    saw (ids, facts), which it decided, which had an open episode (None: none) and the rows of the
    findings of the others (newly meeting the condition; an account with two findings twice), and
    the detector's `moved` (DetectorResult.moved: +1 / -1 / 0 per row, or None). The verdict's
    arrays are read, never changed."""

    rule: Rule
    at: int
    ids: Sequence[str]
    facts: Sequence[AccountFacts]
    decided: np.ndarray
    opened: np.ndarray | None
    new: np.ndarray  # row indices
    moved: np.ndarray | None = None

    def groups(self) -> tuple[list[str], np.ndarray]:
        """The cohorts ("all accounts", or "plan <name>" with cohorts by plan) and each row's, as an
        index into them."""
        assert self.rule.cohort is not None
        if self.rule.cohort.by == "plan":
            names, codes = np.unique(np.array([f"plan {f.plan or '(none)'}" for f in self.facts], dtype=object),
                                     return_inverse=True)
            return list(names), codes.reshape(-1)
        return ["all accounts"], np.zeros(len(self.ids), dtype=np.intp)

    def could(self) -> np.ndarray:
        """Per row: decided and without an open episode (could newly meet the condition)."""
        return self.decided if self.opened is None else self.decided & ~self.opened


def settle_cohorts(tallies: Sequence[CohortTally], out: EvaluationResult) -> None:
    """Cohort-aware suppression (rules.model.Cohort) over every block of accounts a rule was
    evaluated on: a bucket in which a large share of a cohort newly meets the condition is a
    calendar or pipeline event. Every account of such a cohort becomes undecided in `out` (no
    finding, no recovery: nothing fires or resolves for it in this bucket; a pending run is
    broken, `out.interrupted`) and the event is added to `out.cohort_events`, in rule order (and per
    rule in the order of the cohorts' first new account).

    The share is taken over the accounts the rule decided that had no open episode (the accounts
    that could newly meet the condition). Counted per cohort with arrays (bincount over each row's
    cohort); ids are read only for the cohorts that are events. A rule whose detector reports
    `moved` on every part is settled by the share test instead (_settle_moves)."""
    by_rule: dict[str, list[CohortTally]] = {}
    for t in tallies:
        by_rule.setdefault(t.rule.id, []).append(t)
    for rule_id, parts in by_rule.items():
        cohort = parts[0].rule.cohort
        assert cohort is not None
        # every part reports `moved` or none does: the rows a replay's scan leaves out are tallied
        # without it (detect_rule's `rest`), so a kind that reports `moved` must have no scan
        # (tests/rules/test_scan.py checks it) or the backtest would settle by the other test
        if all(t.moved is not None for t in parts):
            _settle_moves(rule_id, parts, cohort, out)
            continue
        if sum(len(t.new) for t in parts) < cohort.min_accounts:
            continue  # the usual case: no cohort can have enough accounts
        hits: dict[str, int] = {}  # in the order of each cohort's first new account
        eligible: dict[str, int] = {}
        grouped = []
        for t in parts:
            names, codes = t.groups()
            grouped.append((t, names, codes))
            new_codes = codes[t.new]
            seen, first = np.unique(new_codes, return_index=True)
            counts = np.bincount(new_codes, minlength=len(names))
            for c in seen[np.argsort(first, kind="stable")]:
                hits[names[c]] = hits.get(names[c], 0) + int(counts[c])
            could = np.bincount(codes, weights=t.could(), minlength=len(names))
            for c, name in enumerate(names):
                eligible[name] = eligible.get(name, 0) + int(could[c])
        muted: set[str] = set()
        for group, n_hits in hits.items():
            if n_hits < cohort.min_accounts or n_hits < cohort.share * eligible[group]:
                continue
            examples: list[str] = []
            for t, names, codes in grouped:
                if group not in names:
                    continue
                g = names.index(group)
                examples += [t.ids[i] for i in t.new[codes[t.new] == g]]
                muted.update(t.ids[i] for i in np.flatnonzero(codes == g))
            out.cohort_events.append(CohortEvent(rule_id, parts[0].at, group, n_hits, eligible[group],
                                                 tuple(sorted(examples)[:5])))
        if muted:
            _mute(out, rule_id, muted)


def _settle_moves(rule_id: str, parts: Sequence[CohortTally], cohort: Cohort, out: EvaluationResult) -> None:
    """The share test (rules.model.Cohort) of a rule whose detector reports `moved`: per cohort and
    direction, the accounts that could newly meet the condition and moved that way by the
    detector's cohort level (its recovery score: a holiday that takes 60% of the book half-way to
    the firing score and 25% past it is one event, not 25% of the book notified). An event mutes
    the accounts of its cohort that moved that way (open episodes included: the event explains
    their bucket); the firing ones are its examples (the movers when none fired). Events in the
    order of each (cohort, direction)'s first moving row; up before down within one row."""
    moved_of = [t.moved for t in parts]
    could = [t.could() & (m != 0) for t, m in zip(parts, moved_of, strict=True)]  # type: ignore[operator]
    if sum(int(np.count_nonzero(c)) for c in could) < cohort.min_accounts:
        return  # the usual case: no cohort can have enough accounts
    movers: dict[tuple[str, int], int] = {}  # in the order of each (cohort, direction)'s first moving row
    eligible: dict[str, int] = {}
    grouped = []
    for t, m, c in zip(parts, moved_of, could, strict=True):
        names, codes = t.groups()
        grouped.append((t, names, codes, m))
        rows = np.flatnonzero(c)
        keys = codes[rows] * 2 + (m[rows] < 0)  # type: ignore[index]
        seen, first = np.unique(keys, return_index=True)
        counts = np.bincount(keys, minlength=2 * len(names))
        for k in seen[np.argsort(first, kind="stable")]:
            key = (names[k // 2], -1 if k % 2 else 1)
            movers[key] = movers.get(key, 0) + int(counts[k])
        per = np.bincount(codes, weights=t.could(), minlength=len(names))
        for g, name in enumerate(names):
            eligible[name] = eligible.get(name, 0) + int(per[g])
    muted: set[str] = set()
    for (group, way), n_moved in movers.items():
        if n_moved < cohort.min_accounts or n_moved < cohort.share * eligible[group]:
            continue
        firing: list[str] = []
        moving: list[str] = []
        for t, names, codes, m in grouped:
            if group not in names:
                continue
            rows = (codes == names.index(group)) & (m == way) & t.decided  # type: ignore[operator]
            firing += [t.ids[i] for i in t.new[rows[t.new]]]
            moving += [t.ids[i] for i in np.flatnonzero(rows)]
            muted.update(t.ids[i] for i in np.flatnonzero(rows))
        examples = tuple(sorted(firing or moving)[:5])
        out.cohort_events.append(CohortEvent(rule_id, parts[0].at, group, n_moved, eligible[group], examples,
                                             direction=way, firing=len(firing)))
    if muted:
        _mute(out, rule_id, muted)


def _mute(out: EvaluationResult, rule_id: str, muted: set[str]) -> None:
    """Leave `muted` accounts undecided for the rule in `out`, their pending runs broken."""
    out.found = [x if x.rule_id != rule_id else _drop_accounts(x, muted) for x in out.found]
    out.recoveries = {k: r for k, r in out.recoveries.items() if k[0] != rule_id or k[1] not in muted}
    if isinstance(out.decided, DecidedByRule):
        out.decided.discard_accounts(rule_id, muted)
    else:
        out.decided.difference_update((rule_id, a) for a in muted)
    out.interrupted.pairs.update(zip(repeat(rule_id), muted))


@gc_paused()
def evaluate(
    rules: Sequence[Rule],
    blocks: Mapping[BlockKey, MetricBlock],
    accounts: Mapping[str, AccountFacts],
    now: int,
    only_due: bool = True,
    open_episodes: Mapping[str, Sequence[OpenEpisode]] | None = None,
    calendar: Calendar | None = None,
    reuse: Reuse | None = None,
    tallies: list[CohortTally] | None = None,
    only: Mapping[str, RunRows] | None = None,
    pricing: Pricing | None = None,
) -> EvaluationResult:
    """Evaluate every rule (or only those whose bucket closed at `now`).

    open_episodes: rule id -> its open episodes (rules.lifecycle.open_episodes(states)).
    reuse: what the caller's earlier evaluations of the same blocks and accounts derived (a replay).
    pricing: [pricing]: a finding of an account renewing within renewal_within gets its severity raised
    by renewal_raise levels (rules.impact.renewal_severity), before the lifecycle records it.
    tallies: given when `blocks` hold a part of the book's accounts: the rules' cohort tallies are
    added to it unsettled, for the caller to settle over all parts (settle_cohorts on the merged
    result); by default cohort events are settled over `blocks` before returning.
    only: rule id -> the rows of its block its detector runs on (detect_rule); a rule not in it runs
    on every row.
    """
    out = EvaluationResult()
    out.decided = DecidedByRule()  # type: ignore[assignment]
    if reuse is None:
        reuse = Reuse()
    pending: list[CohortTally] = [] if tallies is None else tallies
    facts: dict[BlockKey, Sequence[AccountFacts]] = {}  # rules on the same block share its facts
    opened = open_episodes or {}
    for rule in rules:
        if only_due and not due(rule, now):
            continue
        block = blocks.get((rule.metric, rule.bucket))
        if block is None:
            raise KeyError(f"no usage block for rule {rule.id!r} ({rule.metric} @ {rule.bucket}s)")
        key = (rule.metric, rule.bucket)
        if key not in facts:
            # a tuple: the detectors remember what they derive from it by identity (rules.memo), so the
            # rules of one block share its ids, quota arrays and billing groups
            facts[key] = reuse.facts(key, block, accounts)
        out.evaluated_rules.add(rule.id)
        verdict = detect_rule(rule, block, accounts, now, facts[key], opened.get(rule.id, ()), calendar,
                              pending, out.contained, reuse, out.interrupted,
                              None if only is None else only.get(rule.id))
        if verdict is None:
            continue
        ids, res = verdict
        out.found.extend(res.found)
        out.decided.add(rule.id, ids, res.decided)  # type: ignore[attr-defined]
        for (account, disc), recovery in res.recoveries.items():
            out.recoveries[(rule.id, account, disc)] = recovery
    if tallies is None:
        settle_cohorts(pending, out)
    if pricing is not None and pricing.renewal_within and pricing.renewal_raise:
        renewing = reuse.renewals(accounts)
        if renewing:
            out.found = [_renewal_raised(x, accounts, pricing, renewing) for x in out.found]
    return out


def _renewal_raised(item: FoundItem, accounts: Mapping[str, AccountFacts], pricing: Pricing,
                    renewing: Mapping[str, int]) -> FoundItem:
    """`item` with the severity [pricing] gives an account renewing soon (per row for FindingRows):
    rules.impact.renewal_severity, with `renewing` (Reuse.renewals: account -> renewal_at, for the
    accounts that have one) read per row instead of the account's facts and a call per row (a
    replay raises every open episode's finding at every step: 1.96 s of a 2k x 180 backtest)."""
    if isinstance(item, Finding):
        severity = renewal_severity(item.severity, accounts.get(item.account_id), pricing, item.at)
        return item if severity == item.severity else replace(item, severity=severity)
    base, at, ids, within = item.severity, item.at, item.account_ids, pricing.renewal_within
    up = raised(base, pricing.renewal_raise)
    if up == base:
        return item
    sev: list[str] | None = None
    for k, r in enumerate(item.rows.tolist()):
        renews = renewing.get(ids[r])
        if renews is not None and 0 <= renews - at <= within:  # rules.impact.renewal_days is not None
            if sev is None:
                sev = [base] * len(item.rows)
            sev[k] = up
    if sev is not None:
        item.severities = sev
    return item

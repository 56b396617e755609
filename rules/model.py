"""Core value types shared by the pure rules engine and its adapters.

Nothing in this module does I/O or reads a clock. Times are integer epoch
seconds (UTC) throughout the engine; adapters convert at the edges.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeVar

import numpy as np

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}  # rules.impact, the digest ranking

MAX_METRIC_LENGTH = 128
# A metric name: 1-128 letters, digits and _ . : - (no spaces), e.g. "api_calls" or "storage.gb": every
# source refuses any other name, so a rule on one could never fire (the loader refuses it too).
METRIC_PATTERN = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_METRIC_LENGTH}}}")

DAY = 86_400
WEEK = 7 * DAY


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Baseline:
    """How the "normal" level of a series is estimated (spike and drop rules).

    window:      how far back baseline points are taken from, in seconds.
    method:      "median" (robust, default) or "mean".
    seasonality: "none" -> every bucket in the window counts;
                 "weekly" -> only buckets at the same position in the week
                 (same weekday, and same time of day for sub-daily buckets).
    min_points:  fewest observed (non-missing) baseline points needed to judge.
    """

    window: int = 28 * DAY
    method: str = "median"
    seasonality: str = "none"
    min_points: int = 3


@dataclass(frozen=True)
class Guards:
    """Minimum-volume guards so small numbers do not produce alerts.

    min_baseline: the baseline must be at least this (both spike and drop).
    min_value:    spike: the current value must be at least this.
    min_delta:    |value - baseline| must be at least this.
    """

    min_baseline: float = 0.0
    min_value: float = 0.0
    min_delta: float = 0.0


@dataclass(frozen=True)
class Segment:
    """Which accounts a rule applies to. Empty tuples mean "no restriction"."""

    plans: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    exclude_accounts: tuple[str, ...] = ()

    def matches(self, account: AccountFacts) -> bool:
        if account.id in self.exclude_accounts:
            return False
        if self.accounts and account.id not in self.accounts:
            return False
        if self.plans and account.plan not in self.plans:
            return False
        return True


@dataclass(frozen=True)
class Routing:
    owner: bool = True
    channels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cohort:
    """Cohort-aware suppression (drop and inactivity rules by default).

    When at least `share` of the accounts a rule could decide in one bucket (and at least
    `min_accounts` of them) newly meet its condition, the bucket is a calendar or pipeline
    event, not an account problem: those accounts count as undecided for that bucket (no
    alert, no resolution) and one admin notice names the event. by = "segment": the rule's
    whole segment is one cohort; "plan": each plan is its own cohort.

    A detector that reports how far each row moved (DetectorResult.moved: the anomaly kind, by
    its recovery score) gets the share test instead: the bucket is an event when at least `share`
    of those accounts (and at least `min_accounts`) moved the same way by that level, whether or
    not they crossed the firing threshold; the accounts that moved that way (the firing ones among
    them) are undecided, the others, a real anomaly the other way included, are judged as usual.
    A holiday that moves every account just under or just over the firing threshold is then one
    event either way, not all or nothing.
    """

    share: float = 0.3
    min_accounts: int = 10
    by: str = "segment"


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    metric: str
    bucket: int  # seconds; 60..86400 and divides 86400
    params: Any  # the kind's frozen params dataclass (rules.kinds: Kind.params)
    severity: str = "warning"
    description: str = ""
    for_buckets: int = 1  # consecutive evaluations the condition must hold before firing
    cooldown: int = 0  # seconds: min gap between notifications for the same rule/account/metric
    renotify: int = 0  # seconds: re-notify a still-firing episode this often (0 = never)
    baseline: Baseline = field(default_factory=Baseline)
    guards: Guards = field(default_factory=Guards)
    segment: Segment = field(default_factory=Segment)
    routing: Routing = field(default_factory=Routing)
    template: str | None = None
    action: str | None = None  # the next step shown in its alerts (str.format; rules.loader.ACTION_FIELDS)
    source_file: str = ""
    source_line: int | None = None
    rule_hash: str = ""  # sha256 (first 12 hex) of the rule file's bytes
    resolve_after: int | None = None  # seconds without the condition before resolving; None = kind default
    cohort: Cohort | None = None  # None = no cohort-aware suppression

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        """What the rule detects, whatever it is called: two rules with the same fingerprint
        raise the same alerts (the later one is a duplicate)."""
        return (self.kind, self.metric, self.bucket, self.params, self.baseline, self.guards,
                self.segment, self.for_buckets)


@dataclass(frozen=True)
class Matcher:
    """Which episodes an inhibit rule's source or target is: by rule id and/or kind (empty = any)."""

    rules: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    def matches(self, rule_id: str, kind: str) -> bool:
        return (not self.rules or rule_id in self.rules) and (not self.kinds or kind in self.kinds)


INHIBIT_LABELS: tuple[str, ...] = ("account", "metric")


@dataclass(frozen=True)
class Inhibit:
    """Alertmanager-style inhibition: a firing `source` episode mutes the notifications of
    `target` episodes that started at or after it and share the `equal` labels."""

    source: Matcher
    target: Matcher
    equal: tuple[str, ...] = INHIBIT_LABELS
    source_file: str = ""
    source_line: int | None = None


@dataclass(frozen=True)
class Calendar:
    """Known quiet days: buckets starting in a muted range are not evaluated by rules of `kinds`
    (no alert, no resolution). Ranges are [start, end) epoch seconds, UTC."""

    mute: tuple[tuple[int, int], ...] = ()
    kinds: tuple[str, ...] = ()  # the loader's default: rules.kinds.calendar_kinds()

    def muted(self, kind: str, bucket_start: int) -> bool:
        return kind in self.kinds and any(a <= bucket_start < b for a, b in self.mute)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    files: tuple[str, ...] = ()
    file_hashes: Mapping[str, str] = field(default_factory=dict)
    inhibits: tuple[Inhibit, ...] = ()
    calendar: Calendar = field(default_factory=Calendar)

    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}


# ------------------------------------------------------------------------ accounts


@dataclass(frozen=True)
class AccountFacts:
    id: str
    name: str
    plan: str = ""
    owner_email: str = ""
    crm_id: str = ""
    quotas: Mapping[str, float] = field(default_factory=dict)  # metric -> quota per billing period
    billing_day: int = 1  # 1..28; the billing period starts on this day of the month
    timezone: str = "UTC"  # IANA name; billing periods start at local midnight
    csm_email: str = ""  # the second owner (customer success manager)
    arr: float | None = None  # annual recurring revenue (or contract value), in the book's currency
    renewal_at: int | None = None  # epoch seconds (UTC midnight) of the renewal / contract end date


# -------------------------------------------------------------------------- series


T = TypeVar("T")


def picked(seq: Sequence[T], idx: np.ndarray) -> list[T]:
    """[seq[i] for i in idx] by C-level calls (idx as Python ints, one itemgetter): a replay picks a
    rule's run rows from a block's ids and facts at every step (at 10k x 180 ~0.5 s as a listcomp
    over numpy integers)."""
    ix = idx.tolist()
    if len(ix) < 2:
        return [seq[i] for i in ix]
    return list(itemgetter(*ix)(seq))


class PickedFacts(tuple):  # type: ignore[type-arg]
    """The facts of some rows of a block (`parent[i]` for i in `idx`, a tuple of them): detectors derive
    what they memoise per facts tuple (quota arrays, billing groups) from the parent's by indexing,
    instead of walking a new tuple each time a replay step runs other rows (rules.detectors.quota)."""

    parent: Sequence[AccountFacts]
    idx: np.ndarray

    def __new__(cls, parent: Sequence[AccountFacts], idx: np.ndarray) -> PickedFacts:
        out = super().__new__(cls, picked(parent, idx))
        out.parent, out.idx = parent, idx
        return out


@dataclass
class MetricBlock:
    """Usage of one metric at one bucket size for many accounts.

    values[i, j] is the usage of account_ids[i] in the bucket starting at
    start + j * step. NaN means *not observed* (no data), which is different
    from 0.0 (observed, no usage). Detectors evaluate the LAST column; callers
    truncate the block to the bucket being evaluated, so a detector can never
    look ahead.
    """

    metric: str
    start: int
    step: int
    account_ids: list[str]
    values: np.ndarray  # float64, shape (len(account_ids), n_buckets)

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[0] != len(self.account_ids):
            raise ValueError(
                f"values shape {self.values.shape} does not match {len(self.account_ids)} accounts"
            )

    @property
    def n_buckets(self) -> int:
        return int(self.values.shape[1])

    @property
    def end(self) -> int:
        """Epoch second at which the last bucket ends (the evaluation time)."""
        return self.start + self.n_buckets * self.step

    def bucket_start(self, j: int) -> int:
        if j < 0:
            j += self.n_buckets
        return self.start + j * self.step

    def truncated(self, n_columns: int) -> MetricBlock:
        """The first `n_columns` buckets (a view, no copy)."""
        return MetricBlock(self.metric, self.start, self.step, self.account_ids, self.values[:, :n_columns])

    def stub(self) -> MetricBlock:
        """This block's metric, ids, step and end without its values (one NaN column, no memory):
        what a columnar finding keeps to build its Finding later without holding the usage."""
        return MetricBlock(self.metric, self.end - self.step, self.step, self.account_ids,
                           np.broadcast_to(np.nan, (len(self.account_ids), 1)))

    def rows(self, mask: np.ndarray) -> MetricBlock:
        ids = [a for a, keep in zip(self.account_ids, mask, strict=True) if keep]
        return MetricBlock(self.metric, self.start, self.step, ids, self.values[mask])


# ------------------------------------------------------------------------ findings


class _Text:
    """A str field that may be given as a function returning it, called on first read (and once).

    Detectors hand Finding.message as such a function: most findings of a replay step only keep an
    episode going (or are dropped, a once-key already fired), and formatting their numbers and dates
    cost more than deciding them. Reading the field always gives the str."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            raise AttributeError(self.slot)  # no class-level default (dataclasses: a required field)
        value = obj.__dict__[self.slot]
        if callable(value):
            value = obj.__dict__[self.slot] = value()
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = value


@dataclass(frozen=True)
class Finding:
    """A rule's condition holding for one account at one evaluation time.

    `at` is the evaluation time (end of the evaluated bucket). `window_start`..
    `window_end` is the data the decision was based on. `discriminator`
    separates episodes of one rule/account/metric (e.g. "2026-11:0.8" for the
    80% quota threshold of the November period); `once` means an episode with
    this key fires at most once, ever.
    """

    rule_id: str
    account_id: str
    metric: str
    kind: str
    severity: str
    at: int
    bucket_start: int
    value: float
    baseline: float | None
    threshold: float | None
    window_start: int
    window_end: int
    message: str = _Text()  # type: ignore[assignment]  # a str, or a function returning it (read: the str)
    discriminator: str = ""
    once: bool = False
    rule_hash: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    reference: Reference | None = None  # a new episode's frozen usual level (spike/drop)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.rule_id, self.account_id, self.metric, self.discriminator)

    def explanation(self) -> dict[str, Any]:
        """JSON-ready record of why this fired (stored in the audit trail)."""
        return {
            "rule": self.rule_id,
            "rule_hash": self.rule_hash,
            "kind": self.kind,
            "account": self.account_id,
            "metric": self.metric,
            "at": self.at,
            "bucket_start": self.bucket_start,
            "value": self.value,
            "baseline": self.baseline,
            "threshold": self.threshold,
            "window": [self.window_start, self.window_end],
            "message": self.message,
            "details": dict(self.details),
        }


# explanation() keys that are a Finding attribute as they are
_PLAIN = {"rule": "rule_id", "rule_hash": "rule_hash", "kind": "kind", "account": "account_id", "metric": "metric",
          "at": "at", "bucket_start": "bucket_start", "value": "value", "baseline": "baseline",
          "threshold": "threshold"}

# explanation() keys made from a Finding without its message, as explanation() makes them
_UNFORMATTED: dict[str, Callable[[Finding], Any]] = {
    "window": lambda f: [f.window_start, f.window_end], "details": lambda f: dict(f.details)}


class LazyExplanation(Mapping[str, Any]):
    """A finding's explanation() built on first read: what a replay keeps as an open episode's
    last_explanation (read only when an event without a finding, e.g. a resolution, reports it).
    Equal to the dict it stands for; not for JSON (json.dumps(dict(x)) is)."""

    __slots__ = ("_finding", "_data", "_k")

    def __init__(self, finding: Finding | FindingRows, k: int = 0) -> None:
        """finding: the Finding, or FindingRows and the row k (its Finding built only when read)."""
        self._finding: Finding | FindingRows | None = finding
        self._k = k
        self._data: dict[str, Any] | None = None

    def _source(self) -> Finding:
        f = self._finding
        assert f is not None
        if isinstance(f, FindingRows):
            f = self._finding = f[self._k]
        return f

    def _built(self) -> dict[str, Any]:
        if self._data is None:
            self._data, self._finding = self._source().explanation(), None
        return self._data

    def __getitem__(self, key: str) -> Any:
        f = self._finding
        if isinstance(f, FindingRows) and key == "baseline":  # read at every step (lifecycle.open_episodes)
            return f.baseline_of(self._k)
        if f is not None and key in _PLAIN:  # no need to build the message for these
            return getattr(self._source(), _PLAIN[key])
        if f is not None and key in _UNFORMATTED:  # nor for these (a resolution's notice reads them)
            return _UNFORMATTED[key](self._source())
        return self._built()[key]

    def get(self, key: str, default: Any = None) -> Any:
        if key == "baseline" and type(self._finding) is FindingRows:  # every replay step, per open episode
            return self._finding.baseline_of(self._k)
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())

    def __eq__(self, other: object) -> bool:
        return self._built() == (other._built() if isinstance(other, LazyExplanation) else other)

    __hash__ = None  # type: ignore[assignment]  # as a dict's

    def __repr__(self) -> str:
        return repr(self._built())


class FindingRows(Sequence[Finding]):
    """Columnar findings: one rule's findings on one evaluated block, row k about block row rows[k]
    (issue 15 item 3). What decides an episode's step is held as arrays and strings (the key, the
    severity, the numbers checked for finiteness); the Finding of row k, with its message and
    details, is built by the detector's `build(k)` only when read (`rows[k]`: a transition, or a
    caller that wants Finding objects, rules.model.materialise). Built once per row, then kept.

    account_ids: the evaluated block's row ids (shared, never copied); discriminator: one for all
    rows or one per row; numbers: per-row arrays of the finding's value/baseline/threshold (checked
    for +-inf by the engine without building anything); baselines: Finding.baseline per row (None: no
    baseline for any row); severities: None (the rule's) or one per row.
    """

    __slots__ = ("rule_id", "metric", "severity", "at", "account_ids", "rows", "discriminator", "numbers",
                 "severities", "baselines", "_build", "_built", "_keys")

    def __init__(self, rule_id: str, metric: str, severity: str, at: int, account_ids: Sequence[str],
                 rows: np.ndarray, discriminator: str | Sequence[str], build: Callable[[int], Finding],
                 numbers: Sequence[np.ndarray] = (), baselines: np.ndarray | None = None) -> None:
        self.rule_id, self.metric, self.severity, self.at = rule_id, metric, severity, at
        self.account_ids, self.rows, self.discriminator = account_ids, rows, discriminator
        self.numbers, self.baselines = numbers, baselines
        self.severities: list[str] | None = None
        self._build = build
        self._built: dict[int, Finding] = {}
        self._keys: list[tuple[str, str, str, str]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k):  # type: ignore[no-untyped-def, override]
        if isinstance(k, slice):
            return [self[i] for i in range(len(self))[k]]
        f = self._built.get(k)
        if f is None:
            f = self._build(k)
            sev = self.severity_of(k)
            if sev != f.severity:
                f = dataclasses.replace(f, severity=sev)
            self._built[k] = f
        return f

    def account_id(self, k: int) -> str:
        return self.account_ids[self.rows[k]]

    def discriminator_of(self, k: int) -> str:
        d = self.discriminator
        return d if isinstance(d, str) else d[k]

    def key(self, k: int) -> tuple[str, str, str, str]:
        """Finding.key of row k, without building the Finding."""
        return (self.rule_id, self.account_ids[self.rows[k]], self.metric, self.discriminator_of(k))

    def keys(self) -> list[tuple[str, str, str, str]]:
        """Finding.key of every row, built once (a replay step reads them twice: reopened episodes, the
        lifecycle); the list is shared, not to be changed."""
        if self._keys is None:
            ids, d = self.account_ids, self.discriminator
            if isinstance(d, str):
                self._keys = [(self.rule_id, ids[r], self.metric, d) for r in self.rows.tolist()]
            else:
                self._keys = [(self.rule_id, ids[r], self.metric, d[k]) for k, r in enumerate(self.rows.tolist())]
        return self._keys

    def baseline_of(self, k: int) -> float | None:
        """Finding.baseline of row k (`baselines`: None when every finding's is None; NaN stands for None:
        a detector's baseline is a number or none, never NaN)."""
        if self.baselines is None:
            return None
        x = float(self.baselines[k])
        return None if x != x else x

    def severity_of(self, k: int) -> str:
        return self.severity if self.severities is None else self.severities[k]

    def finite(self) -> np.ndarray:
        """Per row: none of its numbers is +-inf (NaN, e.g. no baseline, passes as None does)."""
        ok = np.ones(len(self.rows), dtype=bool)
        for x in self.numbers:
            ok &= ~np.isinf(x)
        return ok

    def subset(self, keep: np.ndarray) -> FindingRows:
        """The rows `keep` marks (a bool per row), as their own FindingRows (the same findings)."""
        idx = np.flatnonzero(keep)
        disc = self.discriminator if isinstance(self.discriminator, str) else [self.discriminator[i] for i in idx]
        out = FindingRows(self.rule_id, self.metric, self.severity, self.at, self.account_ids, self.rows[idx], disc,
                          lambda k: self[int(idx[k])], [x[idx] for x in self.numbers],
                          None if self.baselines is None else self.baselines[idx])
        if self.severities is not None:
            out.severities = [self.severities[i] for i in idx]
        return out


FoundItem = Finding | FindingRows


def materialise(found: Sequence[FoundItem]) -> list[Finding]:
    """The one place columnar findings become Finding objects (in order): for callers that want them."""
    out: list[Finding] = []
    for item in found:
        if isinstance(item, Finding):
            out.append(item)
        else:
            out.extend(item[k] for k in range(len(item)))
    return out


def found_keys(found: Sequence[FoundItem]) -> Iterator[tuple[str, str, str, str]]:
    """Finding.key of every finding, in order, without building any."""
    for item in found:
        if isinstance(item, Finding):
            yield item.key
        else:
            yield from item.keys()


def found_accounts(found: Sequence[FoundItem]) -> Iterator[tuple[str, str]]:
    """(rule_id, account_id) of every finding, in order, without building any."""
    for item in found:
        if isinstance(item, Finding):
            yield item.rule_id, item.account_id
        else:
            ids = item.account_ids
            yield from ((item.rule_id, ids[i]) for i in item.rows)


class Found:
    """A holder of findings as Finding objects and FindingRows (`found`, in order); reading `findings`
    turns them all into Finding objects in place (rules.model.materialise) and gives that list, so
    appending to it appends. Code on the columnar path (a replay) reads and extends `found` instead."""

    found: list[FoundItem]

    @property
    def findings(self) -> list[Finding]:
        if not all(isinstance(x, Finding) for x in self.found):
            self.found = materialise(self.found)  # type: ignore[assignment]
        return self.found  # type: ignore[return-value]

    @findings.setter
    def findings(self, value: list[Finding]) -> None:
        self.found = list(value)


class DetectorResult(Found):
    """What a detector says about every row of the block it was given.

    findings:   the conditions that hold now (`found`: as Finding objects and FindingRows).
    decided:    bool per row; True where there was enough data to decide either
                way. Open episodes of decided rows without a finding count towards
                resolving; undecided rows (missing data, too little history) keep their state.
    recoveries: for open episodes (given to the detector) whose condition does not hold
                now: what is true now, keyed (account id, discriminator).
    moved:      None, or int8 per row: +1 / -1 where the row moved up / down by the detector's own
                cohort level (a level that does not depend on the firing threshold, e.g. the anomaly
                kind's recovery score), else 0; what cohort suppression's share test counts
                (rules.model.Cohort). None: the share is of the rows newly meeting the condition.
    """

    def __init__(self, findings: Sequence[FoundItem], decided: np.ndarray,
                 recoveries: dict[tuple[str, str], Recovery] | None = None,
                 moved: np.ndarray | None = None) -> None:
        self.found = list(findings)
        self.decided = decided
        self.recoveries: dict[tuple[str, str], Recovery] = {} if recoveries is None else recoveries
        self.moved = moved


@dataclass(frozen=True)
class Reference:
    """The usual level frozen when an episode opened, so the anomaly never becomes its own
    baseline: one value per position in the seasonal cycle (a single value without
    seasonality; one per bucket of the week with weekly seasonality), position 0 being the
    bucket starting at `anchor` (the first anomalous bucket)."""

    anchor: int
    step: int
    values: tuple[float, ...]

    def level_at(self, bucket_start: int) -> float:
        if len(self.values) == 1:
            return self.values[0]
        return self.values[((bucket_start - self.anchor) // self.step) % len(self.values)]

    def to_json(self) -> dict[str, Any]:
        return {"anchor": self.anchor, "step": self.step, "values": list(self.values)}

    @staticmethod
    def from_json(data: Mapping[str, Any] | None) -> Reference | None:
        if not data:
            return None
        return Reference(int(data["anchor"]), int(data["step"]), tuple(float(v) for v in data["values"]))


@dataclass(frozen=True)
class OpenEpisode:
    """What a detector is told about an open (pending or firing) episode of its rule."""

    account_id: str
    discriminator: str
    started_at: int  # evaluation time of its first finding
    firing: bool
    reference: Reference | None = None


@dataclass(frozen=True)
class Recovery:
    """An open episode's condition does not hold at `at`: the facts a resolution states."""

    at: int
    value: float | None
    baseline: float | None
    message: str  # what is true now, e.g. "api_calls back to 176, 80% of the usual 221"
    details: Mapping[str, Any] = field(default_factory=dict)
    quiet: bool = False  # close without a message to people (a billing period ended, an opportunity passed)
    immediate: bool = False  # resolve now, without the rule's resolve_after hold

"""The rule kinds: one `Kind` description per kind, living beside its detector, and their registry.

Everything that depends on the kind of a rule reads it from here: the loader (which `[rule.threshold]`
keys a kind has, their readers, modes and checks, whether it has a baseline, guards, cohort
suppression), the engine (`detect`, `required_history`), the lifecycle (the default resolve hold),
lint (rules that need quotas), Slack and console titles, and the tables of docs/rules.md
(rules.docs_tables renders them; tests/rules/test_rules_doc.py keeps the page in step).

Adding a kind is one module and one entry:

1. rules/detectors/<kind>.py holds its frozen params dataclass, its detector
   ``detect(rule, block, accounts, open_episodes) -> DetectorResult`` (the last column of the block,
   every row decided or not; open episodes judged with hysteresis, recoveries stating what is true
   now), ``required_history(rule) -> seconds``, and ``KIND = Kind(...)``: its fields (each with
   its reader and the docs text of its row), rule-level checks, title, default resolve hold...
2. its KIND is added to BUILTIN at the end of this module (or a plugin calls ``register(KIND)``).

What a detector may rely on and must do (the replay of `usagebot backtest` calls it at every bucket
close, so its per-call work is multiplied by the days replayed):

- ``accounts`` is a sequence in block row order; in a replay it is the same tuple at every call
  (rules.engine.Reuse), so what the detector derives from the facts alone (quota arrays, billing groups)
  can be remembered by identity with ``rules.memo.by_identity`` (as quota.quota_array does). Never
  mutate ``accounts``, the block's values or a remembered array.
- Build each Finding with rules.detectors.finding.make_finding and give ``message`` as a function
  returning the text (a closure or functools.partial), not the text: it is called only when the
  message is read, i.e. for the findings the lifecycle keeps (most findings of a replay step only
  extend an open episode, or are dropped as once-keys already fired). Values, thresholds,
  discriminators and details stay eager (the lifecycle and the engine read them).
- The replay is checked against its stepwise definition on random books for every registered kind:
  tests/rules/test_replay_equivalence.py fails until a rule of the new kind is added to its rule file.

Then ``python scripts/docs_tables.py`` writes its tables into docs/rules.md.

An unknown kind is an error everywhere (`kind_of` raises UnknownKind); nothing falls back to
another kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rules.config.values import Reader
from rules.model import AccountFacts, DetectorResult, MetricBlock, OpenEpisode, Rule

Detect = Callable[[Rule, MetricBlock, Sequence[AccountFacts], Sequence[OpenEpisode]], DetectorResult]
COHORT_CHOICES = ("never", "optional", "default")


@dataclass(frozen=True)
class Field:
    """One `[rule.threshold]` setting of a kind: how it is read, and its row in docs/rules.md."""

    name: str
    read: Reader  # rules.config.values reader: (where, path, raw value) -> value | None
    type: str  # the docs' Type column, e.g. "number > 1"
    default: str  # the docs' Default column, e.g. "`2.0`" or "none"
    meaning: str  # the docs' Meaning column
    modes: tuple[str, ...] = ()  # the modes it belongs to (kinds with modes only)


@dataclass(frozen=True)
class Ending:
    """How an open episode of the kind (or of one of its modes) is judged: a row of the docs'
    "How alerts end" table."""

    label: str  # "spike", "quota forecast"...
    holds: str  # still firing while ...
    resolves: str  # resolves when ... (then after resolve_after)


class Threshold(Protocol):
    """What a kind's `check` sees of a rule's `[rule.threshold]` once its fields are read."""

    kind: str
    mode: str | None
    bucket: int | None  # the rule's bucket; None when it is itself invalid
    got: dict[str, Any]  # the fields given and valid, by name
    params: Any  # the kind's params built from them (defaults for the others)

    def given(self, key: str) -> bool: ...

    def shown(self, key: str) -> str: ...  # the value as the admin wrote it, for messages

    def error(self, key: str | None, message: str) -> None: ...  # None: the [rule.threshold] table

    def multiple_of_bucket(self, key: str) -> None: ...  # reports a duration that is not


def _no_check(t: Threshold) -> None:
    return None


def _never(params: Any) -> bool:
    return False


@dataclass(frozen=True)
class Kind:
    """Everything usagebot knows about one rule kind (see the module docstring)."""

    name: str
    title: str  # Slack and console heading: "Usage spike"
    summary: str  # one line for the kinds table of docs/rules.md
    params: type  # frozen dataclass: Kind.params(**fields read[, mode=...])
    fields: tuple[Field, ...]
    detect: Detect
    required_history: Callable[[Rule], int]  # seconds of data before the evaluated bucket's end
    endings: tuple[Ending, ...]
    check: Callable[[Threshold], None] = _no_check  # rule-level checks (ranges between fields, multiples)
    modes: tuple[str, ...] = ()  # `mode` choices; the first is the default
    resolve_buckets: int = 1  # default resolve hold (rule.resolve_after unset), in buckets
    cohort: str = "never"  # cohort suppression: "never", "optional" (cohort = true), "default" (on)
    baseline: bool = False  # [rule.baseline] and [rule.guards] apply
    guards_hint: str = ""  # said when [rule.guards] is given to a kind without them
    needs_quota: Callable[[Any], bool] = _never  # params -> whether the rule reads account quotas
    calendar: bool = False  # muted by a [calendar] that does not name its kinds

    def __post_init__(self) -> None:
        if self.cohort not in COHORT_CHOICES:
            raise ValueError(f"kind {self.name!r}: cohort must be one of {', '.join(COHORT_CHOICES)}")
        for f in self.fields:
            if bool(f.modes) != bool(self.modes) or set(f.modes) - set(self.modes):
                raise ValueError(f"kind {self.name!r}: field {f.name!r} has modes {f.modes}; the kind's are"
                                 f" {self.modes}")

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key its `[rule.threshold]` may hold."""
        names = tuple(f.name for f in self.fields)
        return ("mode", *names) if self.modes else names

    def mode_keys(self) -> dict[str, tuple[str, ...]]:
        """mode -> the keys of that mode (kinds with modes; the first mode is the default)."""
        return {m: tuple(f.name for f in self.fields if m in f.modes) for m in self.modes}

    def readers(self) -> dict[str, Reader]:
        return {f.name: f.read for f in self.fields}


class UnknownKind(ValueError):
    """A rule kind that is not registered."""


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind to the registry (its name must be new)."""
    if kind.name in KINDS:
        raise ValueError(f"rule kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def kind_of(name: str) -> Kind:
    """The registered kind called `name`; UnknownKind names the kinds there are."""
    kind = KINDS.get(name)
    if kind is None:
        raise UnknownKind(f"unknown kind {name!r}; expected one of {', '.join(KINDS)}")
    return kind


def title(name: str) -> str:
    """The heading of an alert of kind `name` (an unregistered kind, e.g. of an old episode: its name)."""
    kind = KINDS.get(name)
    return kind.title if kind is not None else (name or "Alert").title()


def with_cohort(default_only: bool = False) -> tuple[str, ...]:
    """Kinds that may have cohort suppression (default_only: those that have it unless turned off)."""
    return tuple(k.name for k in KINDS.values() if k.cohort == "default" or (k.cohort == "optional"
                                                                             and not default_only))


def calendar_kinds() -> tuple[str, ...]:
    """The kinds a [calendar] mutes when it does not name them (Kind.calendar)."""
    return tuple(k.name for k in KINDS.values() if k.calendar)


def resolve_buckets(rule: Rule) -> int:
    """Decided evaluations in a row without the condition before a firing episode of `rule`
    resolves: its `resolve_after` in buckets, else its kind's default (1 for an unknown kind)."""
    if rule.resolve_after is None:
        kind = KINDS.get(rule.kind)
        return kind.resolve_buckets if kind is not None else 1
    return max(1, -(-rule.resolve_after // rule.bucket))


def with_baseline() -> tuple[str, ...]:
    return tuple(k.name for k in KINDS.values() if k.baseline)


# The built-in kinds, in the order they are listed everywhere. Imported last: each detector module
# imports Kind and Field from this module (defined above), so either may be imported first.
from rules.detectors import anomaly, expansion, inactivity, quota, spike_drop, threshold  # noqa: E402

BUILTIN: tuple[Kind, ...] = (spike_drop.SPIKE, spike_drop.DROP, inactivity.KIND, quota.KIND, expansion.KIND,
                             threshold.KIND, anomaly.KIND)
for _kind in BUILTIN:
    register(_kind)

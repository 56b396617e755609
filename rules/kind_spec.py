"""The description of one rule kind (`Kind`, its `Field`s, `Ending`s and the `Threshold` its check
sees): the type each detector module fills in beside its detector. The registry of kinds is
rules.kinds (it imports the detector modules; they import only this module, so the two never import
each other)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rules.config.values import Reader
from rules.model import AccountFacts, DetectorResult, MetricBlock, OpenEpisode, Rule

Detect = Callable[[Rule, MetricBlock, Sequence[AccountFacts], Sequence[OpenEpisode]], DetectorResult]
# (rule, whole block, facts per row) -> bool (rows, n_buckets + 1): which rows may have a finding at each
# bucket close (a superset), or None when it cannot tell; see rules.detectors.scan
Scan = Callable[[Rule, MetricBlock, Sequence[AccountFacts]], Any]
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
    scan: Scan | None = None  # the one-pass candidate scan of a replay; None: every row at every step

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

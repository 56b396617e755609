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
- Optionally give ``scan`` (rules.detectors.scan): over the whole block at once, which rows can possibly
  have a finding at each bucket close (a superset, never a row that could fire left out). A replay then
  runs the detector at each step only on those rows and the rows with open episodes; without one every
  row is evaluated at every step. tests/rules/test_scan.py checks the superset for every kind with one.
  The detector must then treat rows independently (a row's verdict does not depend on the other rows).
- The replay is checked against its stepwise definition on random books for every registered kind:
  tests/rules/test_replay_equivalence.py fails until a rule of the new kind is added to its rule file.

Then ``python scripts/docs_tables.py`` writes its tables into docs/rules.md.

An unknown kind is an error everywhere (`kind_of` raises UnknownKind); nothing falls back to
another kind.
"""

from __future__ import annotations

from rules.kind_spec import COHORT_CHOICES, Detect, Ending, Field, Kind, Scan, Threshold
from rules.model import Rule

__all__ = ["COHORT_CHOICES", "KINDS", "BUILTIN", "Detect", "Ending", "Field", "Kind", "Scan", "Threshold",
           "UnknownKind", "calendar_kinds", "kind_of", "register", "resolve_buckets", "title", "with_baseline",
           "with_cohort"]


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


# The built-in kinds, in the order they are listed everywhere. Imported last: the rules.detectors
# package imports kind_of from this module (defined above) while its kind modules load; the kind
# modules themselves import only rules.kind_spec, so no module imports one that imports it back.
from rules.detectors import anomaly, expansion, inactivity, quota, spike_drop, threshold  # noqa: E402

BUILTIN: tuple[Kind, ...] = (spike_drop.SPIKE, spike_drop.DROP, inactivity.KIND, quota.KIND, expansion.KIND,
                             threshold.KIND, anomaly.KIND)
for _kind in BUILTIN:
    register(_kind)

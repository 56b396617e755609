"""The kinds registry (rules.kinds): everything kind-specific derives from one Kind entry."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from rules import kinds
from rules.config import values as v
from rules.detectors import detect, required_history
from rules.docs_tables import render
from rules.kinds import KINDS, Ending, Field, Kind, Threshold, UnknownKind, kind_of, register, resolve_buckets
from rules.loader import RuleFileError, load_rules_text
from rules.model import DAY, AccountFacts, DetectorResult, MetricBlock, OpenEpisode, Rule


@dataclass(frozen=True)
class EvenParams:
    at_least: float = 0.0


def _detect(rule: Rule, block: MetricBlock, accounts: Sequence[AccountFacts],
            open_episodes: Sequence[OpenEpisode]) -> DetectorResult:
    last = block.values[:, -1]
    return DetectorResult([], ~np.isnan(last))


def _check(t: Threshold) -> None:
    if t.got.get("at_least", 0) > 100:
        t.error("at_least", f"must be at most 100 (got {t.shown('at_least')})")


EVEN = Kind(name="even", title="Even usage", summary="the value is even", params=EvenParams,
            fields=(Field("at_least", v.number(0), "number ≥ 0", "`0`", "Smallest value judged."),),
            detect=_detect, required_history=lambda rule: rule.bucket,
            endings=(Ending("even", "the value is even", "it is odd"),), check=_check, resolve_buckets=4)


@pytest.fixture
def even_kind() -> Iterator[Kind]:
    register(EVEN)
    try:
        yield EVEN
    finally:
        del KINDS["even"]


def test_a_new_kind_is_one_entry_for_loader_engine_lifecycle_titles_and_docs(even_kind: Kind) -> None:
    text = '[[rule]]\nid = "e"\nkind = "even"\nmetric = "m"\n[rule.threshold]\nat_least = 3\n'
    (rule,) = load_rules_text(text).rules
    assert rule.params == EvenParams(3.0) and resolve_buckets(rule) == 4
    block = MetricBlock("m", 0, DAY, ["a"], np.array([[1.0, 2.0]]))
    assert detect(rule, block, [AccountFacts("a", "a")]).decided.tolist() == [True]
    assert required_history(rule) == DAY
    assert kinds.title("even") == "Even usage"
    assert "| `at_least` | number ≥ 0 | `0` | Smallest value judged. |" in render("fields even")
    assert "| even | the value is even | it is odd | 4 buckets |" in render("endings")
    with pytest.raises(RuleFileError) as info:
        load_rules_text(text.replace("at_least = 3", "at_least = 300\nratio = 2"), "e.toml")
    assert [str(p) for p in info.value.problems] == [
        "e.toml:6: rule 'e': threshold.at_least: must be at most 100 (got 300)",
        "e.toml:7: rule 'e': threshold.ratio: 'ratio' is not a setting of even rules (it is a threshold of spike "
        "and drop rules); even thresholds are: at_least",
    ]


def test_an_unknown_kind_is_an_error_everywhere() -> None:
    with pytest.raises(UnknownKind, match="unknown kind 'outlier'; expected one of spike, drop"):
        kind_of("outlier")
    rule = Rule("r", "outlier", "m", DAY, EvenParams(), source_file="r.toml", source_line=3)
    with pytest.raises(ValueError, match=r"rule 'r' \(r.toml:3\): unknown kind 'outlier'"):
        required_history(rule)
    with pytest.raises(RuleFileError, match='kind: must be one of "spike", "drop"'):
        load_rules_text('[[rule]]\nid = "r"\nkind = "outlier"\nmetric = "m"\n')
    assert kinds.title("outlier") == "Outlier"  # an old episode of a kind no longer registered


def test_a_kind_is_registered_once_and_its_fields_modes_are_consistent() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(KINDS["spike"])
    with pytest.raises(ValueError, match="field 'x' has modes"):
        Kind(name="bad", title="", summary="", params=EvenParams, fields=(Field("x", v.number(), "", "", "", ("m",)),),
             detect=_detect, required_history=lambda r: 0, endings=())


def test_the_built_in_kinds_and_their_derived_tables() -> None:
    assert list(KINDS) == ["spike", "drop", "inactivity", "quota", "expansion", "threshold", "anomaly"]
    assert kinds.with_baseline() == ("spike", "drop")
    assert kinds.with_cohort() == ("spike", "drop", "inactivity", "threshold", "anomaly")
    assert kinds.with_cohort(default_only=True) == ("drop", "inactivity", "anomaly")
    assert KINDS["quota"].mode_keys() == {
        "threshold": ("fractions",),
        "forecast": ("fraction", "forecast_window", "min_elapsed", "min_observed", "recovery")}
    assert {k.name: k.resolve_buckets for k in KINDS.values()} == {
        "spike": 3, "drop": 2, "inactivity": 1, "quota": 2, "expansion": 1, "threshold": 2, "anomaly": 1}
    assert [k.title for k in KINDS.values()] == ["Usage spike", "Usage drop", "Inactive account", "Quota",
                                                 "Expansion opportunity", "Usage threshold", "Usage anomaly"]

"""Tests for the TOML rule loader (rules.loader) and its line scanner (rules.config.toml_lines)."""

from __future__ import annotations

import hashlib
import textwrap
import tomllib
from pathlib import Path

import pytest

from rules.config.toml_lines import scan_lines
from rules.detectors.expansion import ExpansionParams
from rules.detectors.inactivity import InactivityParams
from rules.detectors.quota import QuotaParams
from rules.detectors.spike_drop import DropParams, SpikeParams
from rules.loader import Problem, RuleFileError, check_rules, load_rules, load_rules_text
from rules.model import DAY, Baseline, Guards, Routing, Segment

EXAMPLE = Path(__file__).resolve().parents[2] / "rules" / "examples" / "default.toml"

MARK = "#<"  # marks the line a problem is expected on


def problems_of(text: str, filename: str = "r.toml") -> list[Problem]:
    text = textwrap.dedent(text)
    with pytest.raises(RuleFileError) as info:
        load_rules_text(text, filename)
    return info.value.problems


def marked_line(text: str) -> int:
    lines = [n for n, line in enumerate(textwrap.dedent(text).splitlines(), 1) if MARK in line]
    assert len(lines) == 1, "test text must mark exactly one line"
    return lines[0]


def the_problem(text: str) -> Problem:
    found = problems_of(text)
    assert len(found) == 1, "\n".join(str(p) for p in found)
    return found[0]


# ------------------------------------------------------------- shipped example


def test_shipped_example_loads_cleanly() -> None:
    ruleset = load_rules([EXAMPLE])
    by_id = ruleset.by_id()
    assert set(by_id) >= {
        "api-calls-spike",
        "api-calls-drop",
        "events-drop",
        "api-calls-inactive",
        "api-calls-quota",
        "events-quota",
        "api-calls-quota-forecast",
        "api-calls-growth",
        "api-calls-utilization",
    }
    spike = by_id["api-calls-spike"]
    assert spike.baseline.seasonality == "weekly"
    assert isinstance(spike.params, SpikeParams) and spike.params.ratio == 2.5
    assert spike.guards.min_baseline > 0
    drop = by_id["api-calls-drop"]
    assert isinstance(drop.params, DropParams) and drop.params.ratio == 0.5 and drop.for_buckets == 2
    assert isinstance(by_id["events-drop"].params, DropParams)
    inactive = by_id["api-calls-inactive"].params
    assert isinstance(inactive, InactivityParams) and inactive.duration == 7 * DAY
    for rule_id, metric in (("api-calls-quota", "api_calls"), ("events-quota", "events")):
        quota = by_id[rule_id]
        assert quota.metric == metric
        assert quota.params == QuotaParams(mode="threshold", fractions=(0.8, 1.0))
    forecast = by_id["api-calls-quota-forecast"].params
    assert isinstance(forecast, QuotaParams) and forecast.mode == "forecast"
    growth = by_id["api-calls-growth"].params
    assert isinstance(growth, ExpansionParams) and growth.mode == "growth"
    utilization = by_id["api-calls-utilization"].params
    assert isinstance(utilization, ExpansionParams) and utilization.mode == "utilization"

    data = EXAMPLE.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:12]
    assert ruleset.files == (str(EXAMPLE),)
    assert ruleset.file_hashes == {str(EXAMPLE): digest}
    header_lines = [n for n, line in enumerate(data.decode().splitlines(), 1) if line.strip() == "[[rule]]"]
    assert [r.source_line for r in ruleset.rules] == header_lines
    assert all(r.rule_hash == digest and r.source_file == str(EXAMPLE) for r in ruleset.rules)


# ------------------------------------------------------------------ happy path


def test_minimal_rule_gets_model_defaults() -> None:
    ruleset = load_rules_text('[[rule]]\nid = "s"\nkind = "spike"\nmetric = "api_calls"\n', "x.toml")
    (rule,) = ruleset.rules
    assert rule.id == "s" and rule.kind == "spike" and rule.metric == "api_calls"
    assert rule.bucket == DAY
    assert rule.severity == "warning"
    assert rule.for_buckets == 1 and rule.cooldown == 0 and rule.renotify == 0
    assert rule.params == SpikeParams()
    assert rule.baseline == Baseline() and rule.guards == Guards()
    assert rule.segment == Segment() and rule.routing == Routing()
    assert rule.template is None and rule.description == ""
    assert rule.source_file == "x.toml" and rule.source_line == 1
    assert ruleset.files == ("x.toml",)


def test_every_field_is_parsed() -> None:
    ruleset = load_rules_text(
        """
        [[rule]]
        id = "api.spike_1"
        kind = "spike"
        metric = "api_calls"
        bucket = "1h"
        severity = "critical"
        description = "Big jump"
        for = 3
        cooldown = "1d"
        renotify = "12h"
        template = "spike"
        [rule.baseline]
        window = "2w"
        method = "mean"
        seasonality = "weekly"
        min_points = 2
        [rule.threshold]
        ratio = 3
        zscore = 2.5
        smooth = 2
        [rule.guards]
        min_baseline = 10
        min_value = 20.5
        min_delta = 5
        [rule.segment]
        plans = ["growth", "enterprise"]
        accounts = ["acme", "globex"]
        exclude_accounts = ["initech"]
        [rule.routing]
        owner = false
        channels = ["#usage", "C0123ABC"]
        """
    )
    (rule,) = ruleset.rules
    assert rule.bucket == 3600 and rule.severity == "critical" and rule.description == "Big jump"
    assert (rule.for_buckets, rule.cooldown, rule.renotify, rule.template) == (3, DAY, 12 * 3600, "spike")
    assert rule.baseline == Baseline(window=14 * DAY, method="mean", seasonality="weekly", min_points=2)
    assert rule.params == SpikeParams(ratio=3.0, zscore=2.5, smooth=2)
    assert isinstance(rule.params.ratio, float)
    assert rule.guards == Guards(min_baseline=10, min_value=20.5, min_delta=5)
    assert rule.segment == Segment(plans=("growth", "enterprise"), accounts=("acme", "globex"),
                                   exclude_accounts=("initech",))
    assert rule.routing == Routing(owner=False, channels=("#usage", "C0123ABC"))


def test_kind_params_and_modes() -> None:
    ruleset = load_rules_text(
        """
        [[rule]]
        id = "inactive"
        kind = "inactivity"
        metric = "m"
        threshold = { duration = "14d", max_missing = 0.25, prior_window = "0", min_prior_usage = 0 }
        [[rule]]
        id = "forecast"
        kind = "quota"
        metric = "m"
        threshold.mode = "forecast"
        threshold.fraction = 0.9
        threshold.forecast_window = "5d"
        threshold.min_elapsed = "0"
        [[rule]]
        id = "quota-default-mode"
        kind = "quota"
        metric = "m"
        threshold = { fractions = [0.5, 1, 1.5] }
        [[rule]]
        id = "util"
        kind = "expansion"
        metric = "m"
        [rule.threshold]
        mode = "utilization"
        utilization = 0.95
        periods = 3
        [[rule]]
        id = "drop"
        kind = "drop"
        metric = "m"
        """
    )
    by_id = ruleset.by_id()
    assert by_id["inactive"].params == InactivityParams(
        duration=14 * DAY, max_missing=0.25, prior_window=0, min_prior_usage=0.0
    )
    assert by_id["forecast"].params == QuotaParams(
        mode="forecast", fraction=0.9, forecast_window=5 * DAY, min_elapsed=0
    )
    assert by_id["quota-default-mode"].params == QuotaParams(mode="threshold", fractions=(0.5, 1.0, 1.5))
    assert by_id["util"].params == ExpansionParams(mode="utilization", utilization=0.95, periods=3)
    assert by_id["drop"].params == DropParams()


def test_defaults_apply_and_rules_override_them() -> None:
    ruleset = load_rules_text(
        """
        [defaults]
        severity = "critical"
        cooldown = "3d"
        renotify = "1d"
        bucket = "1h"
        for = 2
        [defaults.routing]
        owner = false
        channels = ["#usage-alerts"]
        [defaults.guards]
        min_baseline = 50
        min_delta = 10

        [[rule]]
        id = "inherits"
        kind = "spike"
        metric = "m"

        [[rule]]
        id = "overrides"
        kind = "drop"
        metric = "m"
        severity = "info"
        cooldown = "0"
        bucket = "15m"
        for = 1
        routing.channels = ["#other"]
        guards.min_baseline = 0

        [[rule]]
        id = "no-guards-kind"
        kind = "quota"
        metric = "m"
        """
    )
    by_id = ruleset.by_id()
    inherits = by_id["inherits"]
    assert (inherits.severity, inherits.cooldown, inherits.renotify, inherits.bucket, inherits.for_buckets) == (
        "critical", 3 * DAY, DAY, 3600, 2
    )
    assert inherits.routing == Routing(owner=False, channels=("#usage-alerts",))
    assert inherits.guards == Guards(min_baseline=50, min_delta=10)

    overrides = by_id["overrides"]
    assert (overrides.severity, overrides.cooldown, overrides.bucket, overrides.for_buckets) == (
        "info", 0, 900, 1
    )
    assert overrides.renotify == DAY  # not overridden
    # leaf-level merge: channels replaced, owner still from [defaults]
    assert overrides.routing == Routing(owner=False, channels=("#other",))
    assert overrides.guards == Guards(min_baseline=0, min_delta=10)

    # guards only mean something to spike and drop rules
    assert by_id["no-guards-kind"].guards == Guards()


def test_defaults_are_per_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[defaults]\nseverity = "critical"\n[[rule]]\nid = "a"\nkind = "spike"\nmetric = "m"\n')
    (tmp_path / "b.toml").write_text('[[rule]]\nid = "b"\nkind = "spike"\nmetric = "m"\n')
    by_id = load_rules([tmp_path]).by_id()
    assert by_id["a"].severity == "critical"
    assert by_id["b"].severity == "warning"


def test_disabled_rule_is_validated_but_not_loaded() -> None:
    ruleset = load_rules_text(
        '[[rule]]\nid = "on"\nkind = "spike"\nmetric = "m"\n'
        '[[rule]]\nid = "off"\nkind = "spike"\nmetric = "m"\nenabled = false\n'
    )
    assert [r.id for r in ruleset.rules] == ["on"]
    problem = the_problem(
        """
        [[rule]]
        id = "off"
        kind = "spike"
        metric = "m"
        enabled = false
        threshold.ratio = 0.5  #<
        """
    )
    assert problem.field == "threshold.ratio"


# ---------------------------------------------------------- single validations

HEAD = '[[rule]]\nid = "r"\nkind = "{kind}"\nmetric = "m"\n'


def rule_text(kind: str, body: str) -> str:
    return HEAD.format(kind=kind) + textwrap.dedent(body)


CASES: list[tuple[str, str, str, str]] = [
    # (name, text, expected field, expected message fragment)
    ("missing id", '[[rule]]  #<\nkind = "spike"\nmetric = "m"\n', "id", "required"),
    ("missing kind", '[[rule]]  #<\nid = "r"\nmetric = "m"\n', "kind", "required"),
    ("missing metric", '[[rule]]  #<\nid = "r"\nkind = "spike"\n', "metric", "required"),
    ("bad id", '[[rule]]\nid = "API Spike"  #<\nkind = "spike"\nmetric = "m"\n', "id", 'did you mean "api-spike"?'),
    ("id not a string", '[[rule]]\nid = 7  #<\nkind = "spike"\nmetric = "m"\n', "id", "must be a string, got 7"),
    ("unknown kind", '[[rule]]\nid = "r"\nkind = "spikes"  #<\nmetric = "m"\n', "kind", 'did you mean "spike"?'),
    ("empty metric", '[[rule]]\nid = "r"\nkind = "spike"\nmetric = " "  #<\n', "metric", "must not be empty"),
    ("unknown key", rule_text("spike", 'severty = "info"  #<\n'), "severty", "did you mean 'severity'?"),
    ("misplaced threshold key", rule_text("spike", "ratio = 3  #<\n"), "ratio", "belongs in [rule.threshold]"),
    ("misplaced top key", rule_text("spike", '[rule.threshold]\nseverity = "info"  #<\n'),
     "threshold.severity", "belongs directly in the [[rule]] table"),
    ("bucket 7m", rule_text("spike", 'bucket = "7m"  #<\n'), "bucket", "divide a day evenly"),
    ("bucket 2d", rule_text("spike", 'bucket = "2d"  #<\n'), "bucket", "between 1m and 1d"),
    ("bucket 30s", rule_text("spike", 'bucket = "30s"  #<\n'), "bucket", "between 1m and 1d"),
    ("bucket garbage", rule_text("spike", 'bucket = "daily"  #<\n'), "bucket", "invalid duration"),
    ("severity", rule_text("spike", 'severity = "crit"  #<\n'), "severity", 'did you mean "critical"?'),
    ("for 0", rule_text("spike", "for = 0  #<\n"), "for", "must be between 1 and 52560000 (got 0)"),
    ("for float", rule_text("spike", "for = 2.0  #<\n"), "for", "write 2 instead of 2.0"),
    ("for string", rule_text("spike", 'for = "2"  #<\n'), "for", 'got a string "2"'),
    ("for past a century", rule_text("spike", "for = 99999999999999999999  #<\n"), "for", "must be between 1 and 52560000 (got 99999999999999999999)"),
    ("cooldown past a century", rule_text("spike", 'cooldown = "99999999999999999999s"  #<\n'), "cooldown",
     "longer than 100 years"),
    ("renotify of 5,000 digits", rule_text("spike", 'renotify = "' + "9" * 5000 + 'd"  #<\n'), "renotify",
     "longer than 100 years"),
    ("cooldown", rule_text("spike", 'cooldown = "3 days"  #<\n'), "cooldown", "invalid duration"),
    ("renotify bare int", rule_text("spike", "renotify = 5  #<\n"), "renotify", "with a unit"),
    ("empty template", rule_text("spike", 'template = ""  #<\n'), "template", "must not be empty"),
    ("template path", rule_text("spike", 'template = "../secret"  #<\n'), "template", "no paths"),
    ("description type", rule_text("spike", "description = 3  #<\n"), "description", "must be a string"),
    ("enabled type", rule_text("spike", 'enabled = "no"  #<\n'), "enabled", "must be true or false"),
    # baseline
    ("baseline on inactivity", rule_text("inactivity", '[rule.baseline]  #<\nwindow = "28d"\n'),
     "baseline", "only spike and drop rules have a baseline"),
    ("baseline not a table", rule_text("spike", 'baseline = "28d"  #<\n'), "baseline", "must be a table"),
    ("window vs bucket", rule_text("spike", 'bucket = "1h"\n[rule.baseline]\nwindow = "90m"  #<\n'),
     "baseline.window", "1h30m is not a whole multiple of the bucket 1h"),
    ("zero window", rule_text("drop", '[rule.baseline]\nwindow = "0"  #<\n'), "baseline.window", "longer than 0"),
    ("method", rule_text("spike", '[rule.baseline]\nmethod = "avg"  #<\n'), "baseline.method",
     'must be one of "median", "mean"'),
    ("seasonality", rule_text("spike", '[rule.baseline]\nseasonality = "weekley"  #<\n'),
     "baseline.seasonality", 'did you mean "weekly"?'),
    ("weekly short window", rule_text("spike", '[rule.baseline]\nwindow = "3d"  #<\nseasonality = "weekly"\n'),
     "baseline.window", "must be at least 7d (got 3d)"),
    ("weekly partial weeks", rule_text("spike", '[rule.baseline]\nwindow = "10d"  #<\nseasonality = "weekly"\n'),
     "baseline.window", "whole number of weeks"),
    ("min_points unreachable", rule_text("spike", '[rule.baseline]\nwindow = "5d"\nmin_points = 6  #<\n'),
     "baseline.min_points", "can never be met: a 5d window of 1d buckets has only 5 point(s)"),
    ("min_points weekly", rule_text("spike", '[rule.baseline]\nseasonality = "weekly"\nmin_points = 5  #<\n'),
     "baseline.min_points", "4w weekly window has only 4 same-weekday point(s)"),
    ("min_points default too high", rule_text("spike", '[rule.baseline]\nwindow = "2d"  #<\n'),
     "baseline.window", "min_points 3 can never be met"),
    ("min_points zero", rule_text("spike", "[rule.baseline]\nmin_points = 0  #<\n"), "baseline.min_points", ">= 1"),
    ("baseline unknown", rule_text("spike", '[rule.baseline]\nwindw = "7d"  #<\n'), "baseline.windw",
     "did you mean 'window'?"),
    # spike / drop thresholds
    ("spike ratio", rule_text("spike", "[rule.threshold]\nratio = 0.8  #<\n"), "threshold.ratio",
     "must be > 1 for a spike rule (got 0.8)"),
    ("drop ratio", rule_text("drop", "[rule.threshold]\nratio = 1.5  #<\n"), "threshold.ratio",
     "must be between 0 and 1 for a drop rule"),
    ("drop ratio zero", rule_text("drop", "[rule.threshold]\nratio = 0  #<\n"), "threshold.ratio",
     "must be between 0 and 1"),
    ("ratio type", rule_text("spike", '[rule.threshold]\nratio = "2x"  #<\n'), "threshold.ratio",
     'must be a number, got a string "2x"'),
    ("ratio nan", rule_text("spike", "[rule.threshold]\nratio = nan  #<\n"), "threshold.ratio", "finite"),
    ("zscore", rule_text("spike", "[rule.threshold]\nzscore = -1  #<\n"), "threshold.zscore", "must be > 0"),
    ("smooth", rule_text("drop", "[rule.threshold]\nsmooth = 0  #<\n"), "threshold.smooth", ">= 1"),
    ("wrong kind key", rule_text("spike", '[rule.threshold]\nduration = "7d"  #<\n'), "threshold.duration",
     "not a setting of spike rules (it is a threshold of inactivity rules)"),
    ("threshold typo", rule_text("spike", "[rule.threshold]\nraito = 2  #<\n"), "threshold.raito",
     "did you mean 'ratio'?"),
    ("baseline key in threshold", rule_text("spike", '[rule.threshold]\nwindow = "7d"  #<\n'),
     "threshold.window", "belongs in [rule.baseline]"),
    # inactivity
    ("max_missing", rule_text("inactivity", "[rule.threshold]\nmax_missing = 1.0  #<\n"),
     "threshold.max_missing", ">= 0 and < 1"),
    ("inactivity duration", rule_text("inactivity", '[rule.threshold]\nduration = "36h"  #<\n'),
     "threshold.duration", "1d12h is not a whole multiple of the bucket 1d"),
    ("prior_window zero", rule_text("inactivity", '[rule.threshold]\nprior_window = "0"  #<\n'),
     "threshold.prior_window", "can never be met"),
    ("min_prior_usage", rule_text("inactivity", "[rule.threshold]\nmin_prior_usage = -1  #<\n"),
     "threshold.min_prior_usage", ">= 0"),
    ("ratio on inactivity", rule_text("inactivity", "[rule.threshold]\nratio = 2  #<\n"), "threshold.ratio",
     "not a setting of inactivity rules (it is a threshold of spike and drop rules)"),
    # quota
    ("fractions unsorted", rule_text("quota", "[rule.threshold]\nfractions = [1.0, 0.8]  #<\n"),
     "threshold.fractions[1]", "out of order"),
    ("fractions repeated", rule_text("quota", "[rule.threshold]\nfractions = [0.8, 0.8]  #<\n"),
     "threshold.fractions[1]", "listed twice"),
    ("fraction zero", rule_text("quota", "[rule.threshold]\nfractions = [0, 1]  #<\n"),
     "threshold.fractions[0]", "must be > 0 and <= 10"),
    ("fraction too big", rule_text("quota", "[rule.threshold]\nfractions = [0.8, 12]  #<\n"),
     "threshold.fractions[1]", "must be > 0 and <= 10"),
    ("fractions empty", rule_text("quota", "[rule.threshold]\nfractions = []  #<\n"),
     "threshold.fractions", "at least one"),
    ("fractions scalar", rule_text("quota", "[rule.threshold]\nfractions = 0.8  #<\n"),
     "threshold.fractions", "must be an array"),
    ("quota mode", rule_text("quota", '[rule.threshold]\nmode = "predict"  #<\n'), "threshold.mode",
     'must be one of "threshold", "forecast"'),
    ("forecast key without mode", rule_text("quota", "[rule.threshold]\nfraction = 1.0  #<\n"),
     "threshold.fraction", 'applies to mode = "forecast" only; this quota rule uses mode "threshold" '
     '(mode defaults to "threshold")'),
    ("threshold key in forecast mode",
     rule_text("quota", '[rule.threshold]\nmode = "forecast"\nfractions = [1.0]  #<\n'),
     "threshold.fractions", 'applies to mode = "threshold" only'),
    ("forecast_window", rule_text("quota", '[rule.threshold]\nmode = "forecast"\nforecast_window = "36h"  #<\n'),
     "threshold.forecast_window", "not a whole multiple of the bucket 1d"),
    ("min_elapsed", rule_text("quota", '[rule.threshold]\nmode = "forecast"\nmin_elapsed = "30d"  #<\n'),
     "threshold.min_elapsed", "shortest billing period"),
    ("forecast fraction", rule_text("quota", '[rule.threshold]\nmode = "forecast"\nfraction = 11  #<\n'),
     "threshold.fraction", "<= 10"),
    ("guards on quota", rule_text("quota", "[rule.guards]  #<\nmin_value = 5\n"), "guards",
     "guards apply to spike and drop rules only"),
    # expansion
    ("expansion period", rule_text("expansion", '[rule.threshold]\nperiod = "10h"  #<\n'),
     "threshold.period", "10h is not a whole multiple of the bucket 1d"),
    ("expansion growth", rule_text("expansion", "[rule.threshold]\ngrowth = 0  #<\n"), "threshold.growth",
     "must be > 0"),
    ("expansion periods", rule_text("expansion", "[rule.threshold]\nperiods = 0  #<\n"), "threshold.periods",
     ">= 1"),
    ("utilization in growth mode", rule_text("expansion", "[rule.threshold]\nutilization = 0.9  #<\n"),
     "threshold.utilization", 'applies to mode = "utilization" only'),
    ("growth key in utilization mode",
     rule_text("expansion", '[rule.threshold]\nmode = "utilization"\nperiod = "7d"  #<\n'),
     "threshold.period", 'applies to mode = "growth" only'),
    ("guards on expansion", rule_text("expansion", "[rule.guards]  #<\nmin_value = 5\n"), "guards",
     "use threshold.min_value"),
    # guards, segment, routing
    ("negative guard", rule_text("spike", "[rule.guards]\nmin_delta = -5  #<\n"), "guards.min_delta", ">= 0"),
    ("min_value on drop", rule_text("drop", "[rule.guards]\nmin_value = 5  #<\n"), "guards.min_value",
     "applies to spike rules only"),
    ("guard typo", rule_text("spike", "[rule.guards]\nmin_baselin = 5  #<\n"), "guards.min_baselin",
     "did you mean 'min_baseline'?"),
    ("plans not array", rule_text("spike", '[rule.segment]\nplans = "growth"  #<\n'), "segment.plans",
     "must be an array of strings"),
    ("account twice", rule_text("spike", '[rule.segment]\naccounts = ["a", "a"]  #<\n'), "segment.accounts[1]",
     "listed twice"),
    ("account in and out",
     rule_text("spike", '[rule.segment]\naccounts = ["a"]\nexclude_accounts = ["b", "a"]  #<\n'),
     "segment.exclude_accounts[1]", "also listed in segment.accounts"),
    ("segment typo", rule_text("spike", '[rule.segment]\nplan = ["growth"]  #<\n'), "segment.plan",
     "did you mean 'plans'?"),
    ("channel without #", rule_text("spike", '[rule.routing]\nchannels = ["usage-alerts"]  #<\n'),
     "routing.channels[0]", 'is not a Slack channel: use \'#name\' or a channel id like \'C0123ABC\'; '
     'did you mean "#usage-alerts"?'),
    ("channel uppercase", rule_text("spike", '[rule.routing]\nchannels = ["#ok", "#Usage"]  #<\n'),
     "routing.channels[1]", 'lowercase: write "#usage"'),
    ("owner type", rule_text("spike", '[rule.routing]\nowner = "yes"  #<\n'), "routing.owner",
     "must be true or false"),
    ("routing not a table", rule_text("spike", 'routing = "#x"  #<\n'), "routing", "must be a table"),
    # defaults
    ("defaults kind", '[defaults]\nkind = "spike"  #<\n' + HEAD.format(kind="spike"), "defaults.kind",
     "cannot have a file-wide default"),
    ("defaults typo", '[defaults]\ncooldwn = "1d"  #<\n' + HEAD.format(kind="spike"), "defaults.cooldwn",
     "did you mean 'cooldown'?"),
    ("defaults flat routing key", '[defaults]\nchannels = ["#a"]  #<\n' + HEAD.format(kind="spike"),
     "defaults.channels", "write it under [defaults.routing]"),
    ("defaults routing key", '[defaults.routing]\nchanels = ["#a"]  #<\n' + HEAD.format(kind="spike"),
     "defaults.routing.chanels", "did you mean 'channels'?"),
    ("defaults guard", '[defaults.guards]\nmin_baseline = -1  #<\n' + HEAD.format(kind="spike"),
     "defaults.guards.min_baseline", ">= 0"),
    ("defaults bucket", '[defaults]\nbucket = "7m"  #<\n' + HEAD.format(kind="spike"), "defaults.bucket",
     "divide a day"),
    ("defaults for", '[defaults]\nfor = 0  #<\n' + HEAD.format(kind="spike"), "defaults.for", "between 1 and 52560000"),
    # document level
    ("rules typo", '[[rules]]  #<\nid = "r"\n' + HEAD.format(kind="spike"), "rules", "did you mean 'rule'?"),
    ("stray top-level setting", 'severity = "info"  #<\n' + HEAD.format(kind="spike"), "severity",
     "file-wide settings go under [defaults]"),
]


@pytest.mark.parametrize(("text", "field", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_single_validation(text: str, field: str, fragment: str) -> None:
    problem = the_problem(text)
    assert problem.field == field
    assert fragment in problem.message
    assert problem.line == marked_line(text)
    assert problem.file == "r.toml"


def test_problem_names_rule_id_and_formats() -> None:
    problem = the_problem(rule_text("spike", "[rule.threshold]\nratio = 0.8\n"))
    assert problem.rule_id == "r"
    assert str(problem) == "r.toml:6: rule 'r': threshold.ratio: must be > 1 for a spike rule (got 0.8)"
    assert str(Problem("a.toml", None, None, None, "file is empty")) == "a.toml: file is empty"
    assert str(Problem("a.toml", 3, None, "defaults.for", "must be >= 1")) == "a.toml:3: defaults.for: must be >= 1"


def test_window_multiple_names_bucket_from_defaults() -> None:
    problem = the_problem(
        """
        [defaults]
        bucket = "1h"
        [[rule]]
        id = "r"
        kind = "spike"
        metric = "m"
        baseline.window = "90m"  #<
        """
    )
    assert problem.field == "baseline.window"
    assert "bucket 1h (set in [defaults] at line 3)" in problem.message


def test_invalid_default_is_reported_once_not_per_rule() -> None:
    problem = the_problem(
        """
        [defaults]
        bucket = "7m"  #<
        [[rule]]
        id = "r"
        kind = "spike"
        metric = "m"
        baseline.window = "90m"
        """
    )
    assert problem.field == "defaults.bucket"


def test_weekly_seasonality_with_bucket_not_dividing_a_week() -> None:
    found = problems_of(rule_text("spike", 'bucket = "5h"\n[rule.baseline]\nseasonality = "weekly"\n'))
    assert [(p.field, p.line) for p in found] == [("bucket", 5), ("baseline.seasonality", 7)]
    assert "weekly seasonality needs a bucket that divides a week; 5h does not" in found[1].message


def test_id_with_inline_table_and_dotted_key_lines() -> None:
    text = rule_text("spike", "threshold = { smooth = 2, ratio = 0.5 }\nguards.min_value = -1\n")
    found = problems_of(text)
    assert [(p.field, p.line) for p in found] == [("threshold.ratio", 5), ("guards.min_value", 6)]


def test_multi_line_array_element_line() -> None:
    text = rule_text("spike", '[rule.routing]\nchannels = [\n  "#a",\n  "#b",\n  "Bad Channel",\n]\n')
    problem = the_problem(text)
    assert (problem.field, problem.line) == ("routing.channels[2]", 9)


# ---------------------------------------------------------- several problems


def test_all_problems_are_reported_sorted_by_line() -> None:
    text = textwrap.dedent(
        """\
        [defaults]
        cooldown = "soon"

        [[rule]]
        id = "a"
        kind = "spike"
        metric = "m"
        threshold.ratio = 1

        [[rule]]
        id = "b"
        kind = "dropp"
        metric = "m"
        severity = "loud"

        [[rule]]
        id = "a"
        kind = "quota"
        metric = "m"
        threshold.fractions = [0.9, 0.5]
        """
    )
    with pytest.raises(RuleFileError) as info:
        load_rules_text(text, "many.toml")
    found = info.value.problems
    assert [(p.line, p.rule_id, p.field) for p in found] == [
        (2, None, "defaults.cooldown"),
        (8, "a", "threshold.ratio"),
        (12, "b", "kind"),
        (14, "b", "severity"),
        (17, "a", "id"),
        (20, "a", "threshold.fractions[1]"),
    ]
    assert "duplicate rule id: already defined at many.toml:4" in found[4].message
    assert str(info.value).splitlines() == [str(p) for p in found]


def test_check_rules_returns_none_and_every_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(HEAD.format(kind="spike"))
    bad = tmp_path / "bad.toml"
    bad.write_text(rule_text("drop", "for = 0\n").replace('"r"', '"r2"'))
    ruleset, found = check_rules([good, bad, tmp_path / "missing.toml"])
    assert ruleset is None
    assert [(p.file, p.line, p.field) for p in found] == [
        (str(tmp_path / "missing.toml"), None, None),
        (str(bad), 5, "for"),
    ]
    assert found[0].message == "no such file or directory"


# ------------------------------------------------------------ files and dirs


def test_directory_loads_toml_files_sorted_non_recursive(tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text('[[rule]]\nid = "from-b"\nkind = "spike"\nmetric = "m"\n')
    (tmp_path / "a.toml").write_text('[[rule]]\nid = "from-a"\nkind = "drop"\nmetric = "m"\n')
    (tmp_path / "notes.txt").write_text("not toml")
    (tmp_path / ".#a.toml").write_text("editor lock file")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.toml").write_text('[[rule]]\nid = "from-sub"\nkind = "spike"\nmetric = "m"\n')
    ruleset, found = check_rules([tmp_path])
    assert found == []
    assert ruleset is not None
    assert [r.id for r in ruleset.rules] == ["from-a", "from-b"]
    assert ruleset.files == (str(tmp_path / "a.toml"), str(tmp_path / "b.toml"))
    assert set(ruleset.file_hashes) == set(ruleset.files)
    # a file named twice (directly and through its directory) is read once
    again = load_rules([tmp_path / "a.toml", tmp_path])
    assert [r.id for r in again.rules] == ["from-a", "from-b"]
    assert load_rules([str(sub)]).rules[0].source_file == str(sub / "c.toml")


def test_empty_directory_and_no_paths(tmp_path: Path) -> None:
    ruleset, found = check_rules([tmp_path])
    assert ruleset is None
    assert [(p.file, p.message) for p in found] == [(str(tmp_path), "directory contains no *.toml rule files")]
    ruleset, found = check_rules([])
    assert ruleset is None and "no rule files" in found[0].message


def test_duplicate_ids_across_files_name_both_locations(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('# first\n[[rule]]\nid = "same"\nkind = "spike"\nmetric = "m"\n')
    (tmp_path / "b.toml").write_text('[[rule]]\nid = "other"\nkind = "spike"\nmetric = "m"\n\n'
                                     '[[rule]]\nid = "same"\nkind = "drop"\nmetric = "m"\n')
    ruleset, found = check_rules([tmp_path])
    assert ruleset is None
    (problem,) = found
    assert (problem.file, problem.line, problem.rule_id, problem.field) == (str(tmp_path / "b.toml"), 7, "same", "id")
    assert problem.message == f"duplicate rule id: already defined at {tmp_path / 'a.toml'}:2"


def test_hash_changes_when_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(HEAD.format(kind="spike"))
    first = load_rules([path])
    path.write_text(HEAD.format(kind="spike") + "severity = 'info'\n")
    second = load_rules([path])
    assert first.file_hashes[str(path)] != second.file_hashes[str(path)]
    assert second.rules[0].rule_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert load_rules([path]).file_hashes == second.file_hashes  # stable for the same bytes


def test_load_rules_text_hash_is_over_utf8_bytes() -> None:
    text = HEAD.format(kind="spike") + 'description = "über"\n'
    ruleset = load_rules_text(text, "t.toml")
    assert ruleset.file_hashes == {"t.toml": hashlib.sha256(text.encode()).hexdigest()[:12]}


# ------------------------------------------------------------ file-level errors


def test_syntax_error_reports_line_and_column() -> None:
    text = '[[rule]]\nid = "r"\nkind = spike\nmetric = "m"\n'
    (problem,) = problems_of(text, "bad.toml")
    assert (problem.file, problem.line, problem.rule_id, problem.field) == ("bad.toml", 3, None, None)
    assert problem.message == "TOML syntax error: Invalid value (column 8)"
    assert str(problem) == "bad.toml:3: TOML syntax error: Invalid value (column 8)"


def test_syntax_error_at_end_of_file() -> None:
    (problem,) = problems_of('[[rule]]\nid = "r"\nchannels = ["#a",\n')
    assert problem.line == 3
    assert problem.message.startswith("TOML syntax error: ")
    assert problem.message.endswith(" (at end of file)")


@pytest.mark.parametrize("text", ["", "   \n\n"])
def test_empty_file(text: str) -> None:
    (problem,) = problems_of(text)
    assert problem.line is None and "file is empty" in problem.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("# only a comment\n", "no rules defined"),
        ('[defaults]\nseverity = "info"\n', "no rules defined"),
        ("rule = []\n", "no rules defined"),
        ('[rule]\nid = "r"\n', "write each rule as [[rule]] (double brackets)"),
        ("rule = [1]\n", "each rule must be a table"),
    ],
)
def test_file_without_rules(text: str, fragment: str) -> None:
    (problem,) = problems_of(text)
    assert fragment in problem.message


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_bytes(b'[[rule]]\nid = "\xff"\n')
    _, found = check_rules([path])
    assert [(p.line, p.message) for p in found] == [(2, "not valid UTF-8 text (byte 15)")]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_bytes(b"\xef\xbb\xbf" + HEAD.format(kind="spike").encode())
    assert load_rules([path]).rules[0].source_line == 1


# ----------------------------------------------------------------- line scanner


def test_scanner_maps_tables_keys_and_elements() -> None:
    text = textwrap.dedent(
        '''\
        # [[rule]] in a comment is ignored
        [defaults]
        cooldown = "3d"  # [not a table]
        [defaults.routing]
        channels = ["#a",
          "#b", # comment inside an array
        ]
        [[rule]]
        id = 'x'
        description = """first
        has "quotes" and \\""" and [brackets]
        last"""
        routing.owner = false
        guards = { min_value = 5, min_delta = 1 }
        [ rule . threshold ]
        ratio = 2.0
        [[rule]]
        "id" = "y"
        literal = \'\'\'a
        b\'\'\'
        [rule.baseline]
        window = "28d"
        '''
    )
    tomllib.loads(text)  # the scanner is only used on valid TOML
    lines = scan_lines(text)
    expected = {
        ("defaults",): 2,
        ("defaults", "cooldown"): 3,
        ("defaults", "routing"): 4,
        ("defaults", "routing", "channels"): 5,
        ("defaults", "routing", "channels", 0): 5,
        ("defaults", "routing", "channels", 1): 6,
        ("rule",): 8,
        ("rule", 0): 8,
        ("rule", 0, "id"): 9,
        ("rule", 0, "description"): 10,
        ("rule", 0, "routing"): 13,
        ("rule", 0, "routing", "owner"): 13,
        ("rule", 0, "guards", "min_value"): 14,
        ("rule", 0, "guards", "min_delta"): 14,
        ("rule", 0, "threshold"): 15,
        ("rule", 0, "threshold", "ratio"): 16,
        ("rule", 1): 17,
        ("rule", 1, "id"): 18,
        ("rule", 1, "literal"): 19,
        ("rule", 1, "baseline"): 21,
        ("rule", 1, "baseline", "window"): 22,
    }
    assert {path: lines.exact(path) for path in expected} == expected


def test_scanner_falls_back_to_enclosing_table() -> None:
    lines = scan_lines('[[rule]]\nid = "a"\n[rule.threshold]\nratio = 2\n\n[[rule]]\nid = "b"\n')
    assert lines.line_of(("rule", 0, "threshold", "zscore")) == 3
    assert lines.line_of(("rule", 1, "metric")) == 6
    assert lines.line_of(("rule", 1, "threshold", "ratio")) == 6
    assert lines.line_of(("nothing", "here")) is None
    assert lines.line_of(()) is None


def test_scanner_handles_nested_arrays_of_tables_and_arrays_of_inline_tables() -> None:
    text = '[[a]]\n[[a.b]]\nx = 1\n[[a.b]]\nx = 2\n[[a]]\nc = [\n  { k = 1 },\n  { k = 2 },\n]\n'
    tomllib.loads(text)
    lines = scan_lines(text)
    assert lines.exact(("a", 0, "b", 1, "x")) == 5
    assert lines.exact(("a", 1)) == 6
    assert lines.exact(("a", 1, "c", 1, "k")) == 9


def test_scanner_never_raises_on_invalid_text() -> None:
    lines = scan_lines('[[rule]]\nid = "unterminated\n[rule.x')
    assert lines.exact(("rule", 0)) == 1


# ------------------------------------------------------------------------ docs


def test_every_rule_example_in_the_reference_loads() -> None:
    doc = (EXAMPLE.parents[2] / "docs" / "rules.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```toml\n")[1:]]
    examples = [b for b in blocks if any(line.startswith("[[rule]]") for line in b.splitlines())]
    assert len(examples) >= 7
    for block in examples:
        assert load_rules_text(block, "docs.toml").rules


@pytest.mark.parametrize(("metric", "said"), [
    ("api calls", "is not a metric name (letters, digits and _ . : - only; got \"api calls\", which has ' ');"
                  " did you mean \"api_calls\"?"),
    ("événements/s", "is not a metric name (letters, digits and _ . : - only; got \"événements/s\", which has"
                     " '/' 'é')"),
    ("m" * 129, "must be at most 128 characters (got 129)"),
])
def test_a_metric_no_source_can_provide_is_refused_at_its_line(metric: str, said: str) -> None:
    """Seen: metric = "api calls" passed `usagebot check` (every source refuses such a name: the rule
    could never fire, and nothing said so without data)."""
    p = the_problem(f"""
        [[rule]]
        id = "r1"
        kind = "threshold"
        metric = "{metric}"  #<
        [rule.threshold]
        above = 1
    """)
    assert (p.line, p.rule_id, p.field, p.message) == (5, "r1", "metric", said)


def test_every_metric_name_a_source_takes_is_taken() -> None:
    for metric in ("api_calls", "storage.gb", "eu-1:calls", "A" * 128):
        (r,) = load_rules_text(f'[[rule]]\nid = "r"\nkind = "threshold"\nmetric = "{metric}"\n'
                               '[rule.threshold]\nabove = 1\n').rules
        assert r.metric == metric


def test_a_quota_rule_whose_for_outlasts_any_billing_period_is_refused() -> None:
    """Seen: a quota rule with for = 32 (daily) passed `usagebot check` and never fired, not even at 100% of
    the quota from the first day: its episodes belong to one billing period and close when it ends."""
    p = the_problem("""
        [[rule]]
        id = "q"
        kind = "quota"
        metric = "api_calls"
        for = 32  #<
    """)
    assert (p.line, p.rule_id, p.field) == (6, "q", "for")
    assert p.message == ("32 buckets of 1d is longer than a billing period (at most 31 days): a quota alert belongs"
                         " to one period, so it could never fire; use at most 31")
    p = the_problem("""
        [[rule]]
        id = "qf"
        kind = "quota"
        metric = "api_calls"
        bucket = "1h"
        for = 747  #<
        [rule.threshold]
        mode = "forecast"
    """)
    assert (p.line, p.field) == (7, "for") and p.message.endswith("use at most 746")
    for text in ('for = 31\n', 'bucket = "1h"\nfor = 746\n'):  # a 31-day month (and a daylight-saving change) can hold them
        load_rules_text(f'[[rule]]\nid = "q"\nkind = "quota"\nmetric = "api_calls"\n{text}')
    load_rules_text('[[rule]]\nid = "d"\nkind = "drop"\nmetric = "api_calls"\nfor = 40\n')  # other kinds: any for

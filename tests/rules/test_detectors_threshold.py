"""The threshold kind (rules.detectors.threshold): detector, loader errors (file:line), a replay."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from rules.detectors import detect, required_history
from rules.detectors.threshold import ThresholdParams
from rules.engine import history_needed
from rules.kinds import resolve_buckets
from rules.lint import DataFacts, MetricFacts, lint
from rules.loader import RuleFileError, load_rules_text
from rules.model import DAY, AccountFacts, DetectorResult, MetricBlock, OpenEpisode, Rule
from rules.replay import replay

NAN = float("nan")


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


END = ts("2026-11-15T00:00")


def block(values: object, step: int = DAY) -> MetricBlock:
    arr = np.atleast_2d(np.asarray(values, dtype=np.float64))
    ids = [f"acct-{i}" for i in range(arr.shape[0])]
    return MetricBlock("seats", END - arr.shape[1] * step, step, ids, arr)


def rule(**params: Any) -> Rule:
    return Rule("seats-cap", "threshold", "seats", DAY, ThresholdParams(**params), rule_hash="f00d")


def run(r: Rule, b: MetricBlock, quotas: dict[str, float] | None = None,
        open_episodes: tuple[OpenEpisode, ...] = ()) -> DetectorResult:
    facts = [AccountFacts(a, a, quotas={"seats": quotas[a]} if quotas and a in quotas else {})
             for a in b.account_ids]
    return detect(r, b, facts, open_episodes)


# ----------------------------------------------------------------------------------- detector


def test_above_a_fixed_number_fires_strictly_above_it() -> None:
    res = run(rule(above=100), block([[5, 101], [5, 100], [5, NAN]]))
    assert res.decided.tolist() == [True, True, False]  # a missing bucket decides nothing
    (f,) = res.findings
    assert (f.account_id, f.kind, f.value, f.baseline, f.threshold) == ("acct-0", "threshold", 101.0, None, 100.0)
    assert (f.at, f.bucket_start, f.window_start, f.discriminator, f.once) == (END, END - DAY, END - DAY, "", False)
    assert f.message == "seats is 101 in the 1d bucket starting 2026-11-14: above the limit of 100."
    assert f.details == {"limit": 100.0, "direction": "above", "recovery": 90.0, "smooth": 1}


def test_below_a_fixed_number() -> None:
    res = run(rule(below=10), block([[50, 9], [50, 10], [50, 0]]))
    assert [f.account_id for f in res.findings] == ["acct-0", "acct-2"]
    assert res.findings[0].message.endswith(": below the limit of 10.")
    assert res.findings[0].details["recovery"] == pytest.approx(11.0)


def test_a_share_of_the_accounts_quota_and_accounts_without_one_are_undecided() -> None:
    b = block([[0, 95], [0, 95], [0, 95], [0, 95]])
    res = run(rule(above=0.9, of="quota"), b, quotas={"acct-0": 100, "acct-1": 200, "acct-3": 0})
    assert res.decided.tolist() == [True, True, False, False]  # no quota / a zero quota: skipped
    (f,) = res.findings
    assert (f.account_id, f.threshold) == ("acct-0", 90.0)
    assert f.details["quota"] == 100.0
    assert f.message == "seats is 95 in the 1d bucket starting 2026-11-14: above the limit of 90 (90% of the quota)."


def test_smooth_takes_the_mean_of_the_last_buckets_and_needs_them_all() -> None:
    r = rule(above=100, smooth=3)
    assert required_history(r) == 3 * DAY
    res = run(r, block([[0, 90, 120, 120], [0, NAN, 300, 300], [300, 0, 0, 290]]))
    assert [f.account_id for f in res.findings] == ["acct-0"]
    assert res.decided.tolist() == [True, False, True]
    assert "(mean of the 3 1d buckets ending 2026-11-15)" in res.findings[0].message


def test_an_open_alert_is_judged_against_recovery_hysteresis() -> None:
    firing = OpenEpisode("acct-0", "", END - 3 * DAY, firing=True)
    # 95 is below the limit but above recovery (90): the alert holds, stating what ends it
    res = run(rule(above=100), block([[120, 95]]), open_episodes=(firing,))
    (f,) = res.findings
    assert f.threshold == 90.0 and "it resolves at or below 90" in f.message and not res.recoveries
    # 90 is back at recovery: a Recovery saying what is true now
    res = run(rule(above=100), block([[120, 90]]), open_episodes=(firing,))
    assert not res.findings and res.decided.tolist() == [True]
    rec = res.recoveries[("acct-0", "")]
    assert (rec.at, rec.value) == (END, 90.0)
    assert rec.message == "seats back to 90 in the 1d bucket starting 2026-11-14: at or below 90; the limit is 100."
    # a pending episode holds with the firing condition itself
    pending = OpenEpisode("acct-0", "", END - DAY, firing=False)
    res = run(rule(above=100, recovery=80), block([[120, 95]]), open_episodes=(pending,))
    assert not res.findings and ("acct-0", "") in res.recoveries
    # missing data neither holds nor recovers an open alert
    res = run(rule(above=100), block([[120, NAN]]), open_episodes=(firing,))
    assert not res.findings and not res.recoveries and res.decided.tolist() == [False]


def test_a_value_past_the_limit_never_reads_as_the_limit_and_a_held_alert_says_it_is_within_it() -> None:
    """Seen: "api_calls is 100 ...: above the limit of 100" for 100.4, "is 10 ...: below the limit of 10" for
    9.96, and an alert held by its recovery band re-notified as "is 95 ...: above the limit of 100"."""
    (f,) = run(rule(above=100), block([[5, 100.4]])).findings
    assert f.message == "seats is 100.4 in the 1d bucket starting 2026-11-14: above the limit of 100."
    (f,) = run(rule(below=10), block([[50, 9.96]])).findings
    assert f.message == "seats is 9.96 in the 1d bucket starting 2026-11-14: below the limit of 10."
    (f,) = run(rule(above=1e15), block([[5, 1e15 + 2]])).findings
    assert f.message.endswith("is 1,000,000,000,000,002 in the 1d bucket starting 2026-11-14: above the limit of"
                              " 1,000,000,000,000,000.")
    firing = OpenEpisode("acct-0", "", END - 3 * DAY, firing=True)
    (f,) = run(rule(above=100), block([[120, 95]]), open_episodes=(firing,)).findings
    assert f.message == ("seats is 95 in the 1d bucket starting 2026-11-14: back within the limit of 100 but still"
                         " above 90; it resolves at or below 90.")
    (f,) = run(rule(above=100), block([[120, 90.2]]), open_episodes=(firing,)).findings
    assert "is 90.2 in the 1d bucket starting 2026-11-14: back within the limit of 100 but still above 90;" in f.message
    (f,) = run(rule(below=10, recovery=20), block([[0, 15]]), open_episodes=(firing,)).findings
    assert "is 15 in the 1d bucket starting 2026-11-14: back within the limit of 10 but still below 20;" in f.message
    (f,) = run(rule(above=0.9, of="quota"), block([[0, 95]]), {"acct-0": 100.0}, open_episodes=(firing,)).findings
    assert "is 95 in the 1d bucket starting 2026-11-14: above the limit of 90 (90% of the quota); it resolves" \
        in f.message


def test_below_recovery_is_above_the_limit() -> None:
    firing = OpenEpisode("acct-0", "", END - 3 * DAY, firing=True)
    res = run(rule(below=10, recovery=20), block([[0, 15]]), open_episodes=(firing,))
    assert res.findings and "it resolves at or above 20" in res.findings[0].message
    res = run(rule(below=10, recovery=20), block([[0, 20]]), open_episodes=(firing,))
    assert ("acct-0", "") in res.recoveries and not res.findings


def test_params_of_another_kind_are_refused() -> None:
    with pytest.raises(TypeError, match="kind 'spike' needs SpikeParams params, got ThresholdParams"):
        detect(Rule("r", "spike", "seats", DAY, ThresholdParams(above=1)), block([[1]]), [AccountFacts("acct-0", "a")])


# ------------------------------------------------------------------------------------- loader


HEAD = '[[rule]]\nid = "cap"\nkind = "threshold"\nmetric = "seats"\n[rule.threshold]\n'


@pytest.mark.parametrize(("body", "line", "field", "message"), [
    ("smooth = 1\n", 5, "threshold", 'needs above or below, e.g. above = 1000 (or above = 0.9 with of = "quota")'),
    ("above = 10\nbelow = 5\n", 7, "threshold.below", "give either above or below, not both"),
    ("below = 0\n", 6, "threshold.below", "must be > 0: usage is never below 0, so the rule could never fire (got 0)"),
    ("above = -1\n", 6, "threshold.above", "must be >= 0 (got -1)"),
    ('above = "10"\n', 6, "threshold.above", 'must be a number, got a string "10"'),
    ("above = 100\nrecovery = 120\n", 7, "threshold.recovery",
     "must be between 0 and above (100): an open alert resolves once the value is back at or below recovery (got 120)"),
    ("below = 10\nrecovery = 5\n", 7, "threshold.recovery",
     "must be at least below (10): an open alert resolves once the value is back at or above recovery (got 5)"),
    ('above = 1\nof = "quotas"\n', 7, "threshold.of", 'must be one of "quota" (got "quotas"); did you mean "quota"?'),
    ("above = 1\nsmooth = 0\n", 7, "threshold.smooth", "must be >= 1 (got 0)"),
    ("above = 1\nratio = 2\n", 7, "threshold.ratio",
     "'ratio' is not a setting of threshold rules (it is a threshold of spike and drop rules); threshold thresholds"
     " are: above, below, of, recovery, smooth"),
])
def test_loader_errors_name_file_line_and_field(body: str, line: int, field: str, message: str) -> None:
    with pytest.raises(RuleFileError) as info:
        load_rules_text(HEAD + body, "seats.toml")
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.rule_id, problem.field, problem.message) == (
        "seats.toml", line, "cap", field, message)
    assert str(problem) == f"seats.toml:{line}: rule 'cap': {field}: {message}"


def test_guards_and_baseline_are_refused_and_cohort_is_optional() -> None:
    with pytest.raises(RuleFileError) as info:
        load_rules_text(HEAD + "above = 1\n[rule.guards]\nmin_baseline = 5\n[rule.baseline]\nwindow = \"7d\"\n",
                        "seats.toml")
    assert [str(p) for p in info.value.problems] == [
        "seats.toml:7: rule 'cap': guards: guards apply to spike and drop rules only, not threshold rules",
        "seats.toml:9: rule 'cap': baseline: only spike and drop rules have a baseline; remove it from this"
        " threshold rule",
    ]
    (r,) = load_rules_text(HEAD + "above = 1\n").rules
    assert r.cohort is None and resolve_buckets(r) == 2 and r.params == ThresholdParams(above=1.0)
    (r,) = load_rules_text(HEAD.replace("[rule.threshold]\n", "cohort = true\n[rule.threshold]\n")
                           + "below = 1\n").rules
    assert r.cohort is not None


def test_lint_warns_when_no_account_has_the_quota_a_rule_reads() -> None:
    ruleset = load_rules_text(HEAD + 'above = 1\nof = "quota"\n', "seats.toml")
    facts = DataFacts("the database", 3, {"seats": MetricFacts(3, 0, DAY, DAY)}, quota_metrics={})
    (warning,) = lint(ruleset, facts)
    assert "no account in the database has a quota for 'seats'" in warning.message
    fixed = load_rules_text(HEAD + "above = 1\n", "seats.toml")
    assert lint(fixed, facts) == []


# ------------------------------------------------------------------------------------- replay


def test_replay_fires_holds_in_the_band_and_resolves_after_the_hold() -> None:
    """Seats climb past the plan's quota of 50 (fires once), hover in the band between the limit and
    recovery (45..50: still firing, no flapping), fall back under 45 for two days (resolves once)."""
    ruleset = load_rules_text(HEAD.replace('metric = "seats"', 'metric = "seats"\nfor = 2')
                              + 'above = 1.0\nof = "quota"\nrecovery = 0.9\n')
    seats = [40, 42, 44, 51, 53, 49, 52, 48, 46, 44, 49, 44, 43, 42]
    start = END - len(seats) * DAY
    b = MetricBlock("seats", start, DAY, ["acme", "small"], np.array([seats, [1.0] * len(seats)]))
    facts = {"acme": AccountFacts("acme", "Acme", quotas={"seats": 50}), "small": AccountFacts("small", "S")}
    assert history_needed(ruleset.rules) == {("seats", DAY): DAY}
    events = [(t.event, t.state.account_id, (t.at - start) // DAY)
              for step in replay(list(ruleset.rules), {("seats", DAY): b}, facts, start, END)
              for t in step.transitions]
    # day 4 is the first above 50 (pending), day 5 the second (fired); 49/52/48/46 hold (> 45);
    # day 10 (44) is the first back at or below 45, 49 on day 11 keeps it, 44 and 43 (days 12, 13)
    # are the two decided evaluations in a row of resolve_after: resolved on day 13.
    assert events == [("pending", "acme", 4), ("fired", "acme", 5), ("resolved", "acme", 13)]

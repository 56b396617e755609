"""What usagebot says must stay true (issue 11): the replays of what was seen when the product was tried.

Each test replays a series day by day as the scheduler would (rules.replay) with rules loaded from
TOML like an admin writes them, and asserts the episode history an account executive would see.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rules.engine import history_needed
from rules.lifecycle import INTERRUPTED, Transition
from rules.loader import load_rules_text
from rules.model import DAY, AccountFacts, MetricBlock, RuleSet
from rules.replay import replay

START = 1_782_864_000 - 1_782_864_000 % (7 * DAY)  # a Thursday 00:00 UTC in 2026 (epoch weeks start Thursdays)
WEEKLY = [1.0, 1.0, 0.4, 0.4, 1.0, 1.0, 1.0]  # Thu Fri Sat Sun Mon Tue Wed: quiet weekends


def series(days: int, level: float, seed: int = 1, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    season = np.array([WEEKLY[d % 7] for d in range(days)])
    return np.round(level * season * rng.lognormal(0, noise, days))


def run(rules: str, values: np.ndarray | Sequence[np.ndarray], accounts: Sequence[AccountFacts] | None = None,
        start_day: int = 35, metric: str = "api_calls") -> tuple[RuleSet, list[Transition]]:
    ruleset = load_rules_text(rules)
    rows = np.atleast_2d(np.asarray(values, dtype=float))
    ids = [f"acct-{i}" for i in range(rows.shape[0])]
    facts = {a.id: a for a in (accounts or [AccountFacts(i, i) for i in ids])}
    block = MetricBlock(metric, START, DAY, ids, rows)
    blocks = {k: block for k in history_needed(ruleset.rules)}
    end = START + rows.shape[1] * DAY
    events = [t for step in replay(list(ruleset.rules), blocks, facts, START + start_day * DAY, end,
                                   inhibits=ruleset.inhibits, calendar=ruleset.calendar)
              for t in step.transitions]
    return ruleset, events


def kinds(events: list[Transition], rule: str | None = None) -> list[tuple[str, int]]:
    """(event, day) of the fired/resolved transitions (of one rule)."""
    return [(t.event, (t.at - START) // DAY) for t in events
            if t.event in ("fired", "resolved") and (rule is None or t.state.rule_id == rule)]


DROP = """
[[rule]]
id = "drop"
kind = "drop"
metric = "api_calls"
for = 2
[rule.baseline]
window = "28d"
seasonality = "weekly"
[rule.threshold]
ratio = 0.4
[rule.guards]
min_baseline = 20
min_delta = 20
"""

INACTIVE = """
[[rule]]
id = "inactive"
kind = "inactivity"
metric = "api_calls"
[rule.threshold]
duration = "7d"
prior_window = "30d"
min_prior_usage = 100
"""


def test_a_dead_account_stays_firing_until_it_has_usage_again() -> None:
    """Seen: a drop alert resolved when the zeros entered the weekly median (which then fell under
    min_baseline), re-fired, resolved again; the inactivity alert resolved when its 30-day prior
    window aged out; /usage showed 0 open alerts for an account dead for 5 weeks."""
    v = series(110, 400.0)
    v[60:100] = 0.0  # dead from day 60 for 40 days, then back
    _, events = run(DROP + INACTIVE, v)
    assert kinds(events, "drop") == [("fired", 62), ("resolved", 104)]  # for = 2; usage back on day 100
    assert kinds(events, "inactive") == [("fired", 67), ("resolved", 101)]  # usage again on day 100
    resolution = next(t for t in events if t.event == "resolved" and t.state.rule_id == "inactive")
    assert resolution.recovery is not None and "has usage again" in resolution.recovery.message


def test_a_persistent_drop_fires_once_and_does_not_resolve_on_alternate_days() -> None:
    """Seen: after a persistent drop the 4-point weekly median sat between old and new level and the
    drop alert fired and resolved on alternate days for 2-3 weeks."""
    v = series(120, 500.0, noise=0.15)
    v[50:] = np.round(v[50:] * 0.3)  # down to 30% for good
    _, events = run(DROP, v)
    assert kinds(events) == [("fired", 52)]  # and still firing 68 days later: never "resolved"


def test_resolution_states_what_is_true_now_against_the_level_before() -> None:
    """Seen: "Resolved: Resolved (condition no longer holds): api_calls dropped to 121 ... threshold
    221" while usage that day was 176."""
    v = series(90, 300.0)
    v[50:60] = np.round(v[50:60] * 0.2)
    _, events = run(DROP, v)
    (res,) = [t for t in events if t.event == "resolved"]
    rec = res.recovery
    day_value = float(v[(res.at - START) // DAY - 1])
    assert rec is not None and rec.value == day_value  # the value of the day it resolved
    assert rec.message.startswith(f"api_calls back to {day_value:,.0f}")
    assert "the usual" in rec.message and "dropped to" not in rec.message
    assert res.state.recovering_since is not None and res.state.recovering_since < res.at


def test_recovery_threshold_keeps_a_value_hovering_at_the_threshold_from_flapping() -> None:
    v = series(100, 1000.0, noise=0.0)
    usual = v.copy()
    v[50:52] = np.round(usual[50:52] * 0.3)  # two days at 30%: fires (for = 2)
    for d in range(52, 100):  # then 35%, 45%, 35%, 45% ... of the usual level: around ratio 0.4
        v[d] = round(usual[d] * (0.35 if d % 2 == 0 else 0.45))
    _, events = run(DROP, v)
    assert kinds(events) == [("fired", 52)]


FORECAST = """
[[rule]]
id = "forecast"
kind = "quota"
metric = "api_calls"
[rule.threshold]
mode = "forecast"
fraction = 1.0
forecast_window = "7d"
min_elapsed = "3d"
"""


def _quota(q: float) -> list[AccountFacts]:
    return [AccountFacts("acct-0", "A", quotas={"api_calls": q})]


def test_forecast_needs_observed_days_and_a_missing_day_resolves_nothing() -> None:
    """Seen: a missing data day resolved an open forecast, which then could not fire again that
    period; forecasts fired after one day of data in the period."""
    start_of_month = 1_785_542_400  # 2026-08-01: START + 43 days would be mid July; align below
    offset = (start_of_month - START) // DAY
    v = np.full(offset + 31, 400.0)
    v[offset + 1 : offset + 3] = np.nan  # the 2nd and 3rd of the month not delivered
    v[offset + 9] = np.nan  # and a missing day while the forecast is open
    _, events = run(FORECAST, v, _quota(11_000), start_day=offset - 3)
    got = kinds(events)
    assert got[0][0] == "fired" and got[0][1] >= offset + 5  # 3 observed days first (min_observed 3d)
    assert not [e for e in got if e[0] == "resolved" and e[1] < offset + 31]  # missing day: undecided


def test_forecast_hysteresis_no_flapping_around_the_target() -> None:
    """Seen: quota forecasts fired 48 and resolved 47 times in one backtest."""
    start_of_month = 1_785_542_400
    offset = (start_of_month - START) // DAY
    rng = np.random.default_rng(4)
    v = np.round(rng.normal(330.0, 60.0, offset + 31))  # a pace right at quota / 31 days
    _, events = run(FORECAST, v, _quota(10_000), start_day=offset)
    assert [e for e, _ in kinds(events) if e == "fired"] == ["fired"] * min(1, len(kinds(events)))
    assert len([t for t in events if t.event == "resolved" and not t.quiet]) <= 1


def test_inactivity_and_drop_of_one_stop_notify_once() -> None:
    """Seen: an inactivity and a drop alert for the same account and metric on the same day, and an
    inactivity alert on day +6 as a second critical page for a stop the drop rule reported on day +1."""
    inhibit = """
[[inhibit]]
source = { kinds = ["inactivity"] }
target = { kinds = ["drop"] }
[[inhibit]]
source = { kinds = ["drop"] }
target = { kinds = ["inactivity"] }
"""
    v = series(100, 400.0)
    v[60:] = 0.0
    _, events = run(DROP + INACTIVE + inhibit, v)
    fired = [t for t in events if t.event == "fired"]
    assert [(t.state.rule_id, t.notify) for t in fired] == [("drop", True), ("inactive", False)]
    assert fired[1].reason.startswith("inhibited by rule drop")


def test_two_identical_rules_notify_once() -> None:
    twin = DROP.replace('id = "drop"', 'id = "drop-copy"')
    v = series(90, 400.0)
    v[60:70] = 20.0
    _, events = run(DROP + twin, v)
    fired = [(t.state.rule_id, t.notify, t.reason) for t in events if t.event == "fired"]
    assert fired == [("drop", True, ""), ("drop-copy", False, "duplicate of rule drop")]


def test_a_day_most_of_the_book_dips_is_a_cohort_event_not_hundreds_of_alerts() -> None:
    """Seen: on a holiday when every account ran at 15-25% of normal, hundreds of drop alerts."""
    rows = np.array([series(80, 300.0 + 10 * i, seed=i) for i in range(40)])
    rows[:, 60] = np.round(rows[:, 60] * 0.2)  # a holiday for everyone
    rows[:, 61] = np.round(rows[:, 61] * 0.2)  # two days: longer than `for`
    rows[3, 60:70] = np.round(rows[3, 60:70] * 0.1)  # ... and one account really drops
    rules = DROP.replace("for = 2", "for = 1")
    ruleset, _ = run(rules, rows[:1])
    assert ruleset.rules[0].cohort is not None  # on by default for drop rules
    steps = list(replay(list(ruleset.rules), {("api_calls", DAY): MetricBlock("api_calls", START, DAY,
                        [f"a{i}" for i in range(40)], rows)}, {}, START + 35 * DAY, START + 80 * DAY))
    fired = [t for s in steps for t in s.transitions if t.event == "fired"]
    assert [t.state.account_id for t in fired] == ["a3"]  # only the real drop, once the holiday is over
    events = [e for s in steps for e in s.cohort_events]
    assert [(e.at - START) // DAY for e in events] == [61, 62] and events[0].accounts >= 30


def test_a_muted_calendar_day_decides_nothing() -> None:
    v = series(80, 300.0)
    v[60] = 0.0  # a known holiday
    v[61] = 0.0
    rules = DROP.replace("for = 2", "for = 1") + f"""
[calendar]
mute = [{{ from = {_date(60)}, to = {_date(61)} }}]
"""
    _, events = run(rules, v)
    assert kinds(events) == []


def test_a_breach_either_side_of_a_cohort_event_is_not_two_days_running() -> None:
    """Seen (CI, bench.quality seed 2041623255): an account low on the Thursday before a two-day
    holiday and on the Sunday after it got a "two days running" drop alert: its pending count was
    carried across the cohort-event buckets. The shared event breaks the run; a real drop that
    goes on after the holiday still fires once it has held `for` buckets of its own."""
    rows = np.array([series(80, 300.0 + 10 * i, seed=i) for i in range(40)])
    rows[:, 60:62] = np.round(rows[:, 60:62] * 0.2)  # a holiday for everyone (Sat, Sun)
    rows[3, 59] = np.round(rows[3, 59] * 0.2)  # a: low the day before the holiday ...
    rows[3, 62] = np.round(rows[3, 62] * 0.2)  # ... and the day after, normal otherwise
    rows[7, 59:70] = np.round(rows[7, 59:70] * 0.1)  # b: a real drop that runs through it
    ids = [f"a{i}" for i in range(40)]
    ruleset = load_rules_text(DROP)
    steps = list(replay(list(ruleset.rules), {("api_calls", DAY): MetricBlock("api_calls", START, DAY, ids, rows)},
                        {}, START + 35 * DAY, START + 80 * DAY))
    assert [(e.at - START) // DAY for s in steps for e in s.cohort_events] == [61, 62]
    fired = [(t.state.account_id, (t.at - START) // DAY) for s in steps for t in s.transitions
             if t.event == "fired"]
    assert fired == [("a7", 64)]  # days 62 and 63 of its own, after the holiday
    cleared = [(t.state.account_id, (t.at - START) // DAY) for s in steps for t in s.transitions
               if t.event == "cleared" and t.reason == INTERRUPTED and t.state.account_id in ("a3", "a7")]
    assert cleared == [("a3", 61), ("a7", 61)]


def test_a_muted_calendar_day_breaks_the_run_too() -> None:
    v = series(80, 300.0)
    v[59] = np.round(v[59] * 0.2)  # low the day before a known holiday
    v[60] = 0.0  # the holiday
    v[61] = np.round(v[61] * 0.2)  # low the day after
    rules = DROP + f"""
[calendar]
mute = [{{ from = {_date(60)}, to = {_date(60)} }}]
"""
    _, events = run(rules, v)
    assert kinds(events) == []
    assert [(t.event, (t.at - START) // DAY) for t in events if t.event in ("pending", "cleared")] == [
        ("pending", 60), ("cleared", 61), ("pending", 62), ("cleared", 63)]


def _date(day: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(START + day * DAY, UTC).date().isoformat()


def test_first_evaluation_holds_what_is_already_true() -> None:
    """Seen: the first cycle on a book sends every condition that is already true."""
    ruleset = load_rules_text(DROP + INACTIVE)
    v = series(90, 400.0)
    v[78:] = 0.0  # dead for 10 days when the service first looks
    block = MetricBlock("api_calls", START, DAY, ["acct-0"], np.atleast_2d(v))
    steps = list(replay(list(ruleset.rules), {k: block for k in history_needed(ruleset.rules)},
                        {}, START + 88 * DAY, START + 90 * DAY, inhibits=ruleset.inhibits, quiet_first_run=True))
    fired = [t for s in steps for t in s.transitions if t.event == "fired"]
    assert fired and all(not t.notify and t.reason == "first evaluation" for t in fired)
    assert not [t for t in steps[1].transitions if t.event == "resolved"]


SMOOTHED = """
[[rule]]
id = "{kind}"
kind = "{kind}"
metric = "api_calls"
for = 2
[rule.baseline]
window = "14d"
[rule.threshold]
ratio = {ratio}
smooth = 2
"""


def test_a_smoothed_value_is_said_as_the_mean_of_its_buckets_when_fired_and_resolved() -> None:
    """Seen (for = 2, smooth = 2): "api_calls dropped to 25 in the 1d bucket starting 2026-03-11" when that
    day was 50 (25 was the mean of 03-10 and 03-11): an open episode's messages named one bucket."""
    for kind, ratio, low, high in (("drop", 0.5, 0.0, 100.0), ("spike", 2.0, 400.0, 100.0)):
        v = np.full(40, 100.0)
        v[30] = low  # only day 30 is beyond the ratio, but the means of days 29-30 and 30-31 both are
        _, events = run(SMOOTHED.format(kind=kind, ratio=ratio), v, start_day=20)
        (fired,) = [t for t in events if t.event == "fired"]
        assert fired.finding is not None and fired.finding.value == (low + high) / 2
        day = (fired.at - START) // DAY  # the evaluation after day 31
        assert day == 32
        text = fired.finding.message
        assert "(mean of the 2 1d buckets ending " in text and "in the 1d bucket starting" not in text, text
        (res,) = [t for t in events if t.event == "resolved"]
        assert res.recovery is not None and "(mean of the 2 1d buckets ending " in res.recovery.message
        assert "in the 1d bucket starting" not in res.recovery.message

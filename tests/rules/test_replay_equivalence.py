"""The replay (rules.replay, what `usagebot backtest` runs) against the stepwise definition of it
(tests/rules/reference.stepwise_replay: every step evaluates with every state and hands the lifecycle
every state ever recorded): random books and rule files with every registered kind, gaps, `for`,
cooldowns, renotify, once-per-period quotas, segments, cohorts and inhibition give the same
transitions in the same order, the same cohort events and the same states, step by step."""

from __future__ import annotations

import numpy as np
import pytest

from integrations.sources.demo import generate_book
from rules.engine import history_needed
from rules.kinds import KINDS
from rules.loader import load_rules_text
from rules.model import DAY
from rules.replay import replay
from tests.rules.reference import stepwise_replay

END = 1_792_800_000 - 1_792_800_000 % DAY
DAYS = 75


def _rules_text(rng: np.random.Generator) -> str:
    """Rules of every kind with random lifecycle settings."""
    def life() -> str:
        return (f'for = {int(rng.choice([1, 1, 2, 3]))}\ncooldown = "{int(rng.choice([0, 2, 5]))}d"\n'
                f'renotify = "{int(rng.choice([0, 0, 3]))}d"\n')
    def segment() -> str:
        return '[rule.segment]\nplans = ["starter", "growth"]\n' if rng.random() < 0.3 else ""
    cohort = "[rule.cohort]\nshare = 0.2\nmin_accounts = 3\n" if rng.random() < 0.5 else ""
    return f"""
[[rule]]
id = "calls-spike"
kind = "spike"
metric = "api_calls"
{life()}
[rule.baseline]
window = "{int(rng.choice([21, 28]))}d"
seasonality = "{rng.choice(["none", "weekly"])}"
method = "{rng.choice(["median", "mean", "upper"])}"
[rule.threshold]
ratio = {float(rng.choice([1.5, 2.0, 2.5]))}
{segment()}
[[rule]]
id = "calls-drop"
kind = "drop"
metric = "api_calls"
{life()}
[rule.baseline]
window = "28d"
seasonality = "weekly"
[rule.threshold]
ratio = {float(rng.choice([0.5, 0.7]))}
{cohort}
[[rule]]
id = "events-drop"
kind = "drop"
metric = "events"
{life()}
[rule.threshold]
ratio = 0.6
smooth = {int(rng.choice([1, 2]))}
{segment()}
[[rule]]
id = "calls-inactive"
kind = "inactivity"
metric = "api_calls"
{life()}
[rule.threshold]
duration = "{int(rng.choice([3, 5]))}d"
max_missing = {float(rng.choice([0.0, 0.5]))}
prior_window = "20d"
min_prior_usage = 10

[[rule]]
id = "calls-quota"
kind = "quota"
metric = "api_calls"
{life()}
[rule.threshold]
mode = "threshold"
fractions = [{float(rng.choice([0.3, 0.5]))}, 0.8, 1.0]

[[rule]]
id = "events-forecast"
kind = "quota"
metric = "events"
{life()}
[rule.threshold]
mode = "forecast"
fraction = {float(rng.choice([0.6, 1.0]))}
forecast_window = "{int(rng.choice([3, 7]))}d"
min_elapsed = "2d"

[[rule]]
id = "calls-growth"
kind = "expansion"
metric = "api_calls"
{life()}
[rule.threshold]
mode = "growth"
period = "7d"
periods = 2
growth = 0.05
min_value = 50

[[rule]]
id = "calls-utilization"
kind = "expansion"
metric = "api_calls"
[rule.threshold]
mode = "utilization"
utilization = 0.5
periods = 1

[[rule]]
id = "exports-cap"
kind = "threshold"
metric = "exports"
{life()}
[rule.threshold]
above = {float(rng.choice([5, 20, 50]))}

[[rule]]
id = "events-of-quota"
kind = "threshold"
metric = "events"
{life()}
[rule.threshold]
above = {float(rng.choice([0.02, 0.05]))}
of = "quota"

[[rule]]
id = "events-anomaly"
kind = "anomaly"
metric = "events"
{life()}
[rule.threshold]
direction = "{rng.choice(["up", "down", "both"])}"
score = {float(rng.choice([3.0, 4.0]))}

[[inhibit]]
source = {{ kinds = ["inactivity"] }}
target = {{ kinds = ["drop"] }}
equal = ["account", "metric"]
"""


# Guards, z-scores, smoothing, min_points and a "below" limit: the bounds of the scans (rules.detectors.scan)
# are tested at their edges. (A drop has cohort suppression by default.)
GUARDED = """
[[rule]]
id = "guarded-spike"
kind = "spike"
metric = "api_calls"
[rule.baseline]
window = "28d"
seasonality = "{seasonality}"
method = "{method}"
min_points = 2
[rule.threshold]
ratio = 1.3
smooth = {smooth}
zscore = 1.0
[rule.guards]
min_baseline = 5
min_delta = 3
min_value = 4

[[rule]]
id = "guarded-drop"
kind = "drop"
metric = "events"
[rule.baseline]
window = "21d"
seasonality = "{seasonality}"
method = "{method}"
[rule.threshold]
ratio = 0.8
smooth = {smooth}
[rule.guards]
min_baseline = 2
min_delta = 1

[[rule]]
id = "low-exports"
kind = "threshold"
metric = "exports"
[rule.threshold]
below = 3
smooth = {smooth}
"""


def _blocks(book, rules) -> dict:
    """The book's daily series for every (metric, bucket) the rules need (NaN where not delivered)."""
    return {(metric, step): book.block(metric) for metric, step in history_needed(rules)}


def _transitions(ts):
    return [(t.event, t.at, t.key, t.notify, t.reason, t.quiet, t.state,
             None if t.finding is None else t.finding.explanation(), t.recovery,
             [(g.event, g.key, g.notify, g.reason) for g in t.grouped]) for t in ts]


def _same_as_stepwise(rules, blocks, accounts, start, **kw) -> list:
    """The replay's steps (at, transitions, states, cohort events), asserted equal to the stepwise
    definition's step by step."""
    want = list(stepwise_replay(rules, blocks, accounts, start, END, **kw))
    got = [(s.at, _transitions(s.transitions), dict(s.states), s.cohort_events)
           for s in replay(rules, blocks, accounts, start, END, **kw)]
    assert len(got) == len(want)
    for (at, g_ts, g_states, g_cohort), (w_at, w_ts, w_states, w_cohort) in zip(got, want, strict=True):
        assert at == w_at and g_ts == _transitions(w_ts), f"transitions differ at {at}"
        assert g_cohort == w_cohort and list(g_states.items()) == list(w_states.items()), f"states differ at {at}"
    return got


@pytest.mark.parametrize("seed", range(10))
def test_replay_equals_the_stepwise_definition(seed):
    rng = np.random.default_rng(seed)
    text = _rules_text(rng)
    if seed >= 4:  # the scans' bounds at their edges
        text += GUARDED.format(seasonality=rng.choice(["none", "weekly"]), method=rng.choice(["median", "mean", "upper"]),
                               smooth=int(rng.choice([1, 2, 3])))
    ruleset = load_rules_text(text)
    assert {r.kind for r in ruleset.rules} == set(KINDS), "add a rule of the new kind to _rules_text"
    book = generate_book(n_accounts=int(rng.integers(15, 40)), days=DAYS, end=END, seed=seed,
                         gaps=int(rng.integers(0, 6)), holidays=int(rng.integers(0, 3)))
    rules = list(ruleset.rules)
    start = END - int(rng.integers(20, 45)) * DAY
    blocks = _blocks(book, rules)
    accounts = {a.id: a for a in book.accounts}
    quiet = bool(rng.random() < 0.5)
    want = list(stepwise_replay(rules, blocks, accounts, start, END, inhibits=ruleset.inhibits, quiet_first_run=quiet))
    got = [(s.at, _transitions(s.transitions), dict(s.states), s.cohort_events)
           for s in replay(rules, blocks, accounts, start, END, inhibits=ruleset.inhibits, quiet_first_run=quiet)]
    assert [g[0] for g in got] == [w[0] for w in want]
    events = 0
    for (at, g_ts, g_states, g_cohort), (_, w_ts, w_states, w_cohort) in zip(got, want, strict=True):
        assert g_ts == _transitions(w_ts), f"transitions differ at {at}"
        assert g_cohort == w_cohort
        assert list(g_states.items()) == list(w_states.items()), f"states differ at {at}"
        events += len(g_ts)
    assert events > 20  # the book and rules do make things happen


@pytest.mark.parametrize(("seed", "quiet"), [(11, True), (3, False)])
def test_replay_of_the_shipped_rules_equals_the_stepwise_definition(seed, quiet):
    """What `usagebot backtest` replays by default (rules/examples/default.toml: cohorts, inhibits,
    quotas near their levels), on a book with holidays (cohort events) and gaps."""
    from pathlib import Path

    from rules.loader import load_rules

    ruleset = load_rules([Path(__file__).resolve().parents[2] / "rules" / "examples" / "default.toml"])
    book = generate_book(n_accounts=45, days=DAYS + 30, end=END, seed=seed, gaps=4, holidays=4)
    rules = list(ruleset.rules)
    blocks, accounts = _blocks(book, rules), {a.id: a for a in book.accounts}
    start = END - 60 * DAY
    kw = dict(inhibits=ruleset.inhibits, calendar=ruleset.calendar, quiet_first_run=quiet)
    got = _same_as_stepwise(rules, blocks, accounts, start, **kw)
    assert sum(len(g[1]) for g in got) > 50 and any(g[3] for g in got)  # events, cohort events among them


def test_a_replay_formats_no_message_until_an_event_reads_it(monkeypatch):
    """Detectors hand messages as functions; the replay keeps explanations lazily: deciding and
    stepping format nothing; reading a transition's message formats that one message."""
    import rules.detectors.finding as finding_module

    calls = {"made": 0, "formatted": 0}
    real = finding_module.make_finding

    def counting(*args, message, **kwargs):
        calls["made"] += 1
        text = message if isinstance(message, str) else None

        def formatted() -> str:
            calls["formatted"] += 1
            return text if text is not None else message()

        return real(*args, message=formatted, **kwargs)

    for module in ("spike_drop", "quota", "expansion", "inactivity", "threshold"):
        monkeypatch.setattr(f"rules.detectors.{module}.make_finding", counting)
    rng = np.random.default_rng(3)
    ruleset = load_rules_text(_rules_text(rng))
    book = generate_book(n_accounts=20, days=DAYS, end=END, seed=3, gaps=2)
    rules = list(ruleset.rules)
    steps = list(replay(rules, _blocks(book, rules), {a.id: a for a in book.accounts}, END - 30 * DAY, END,
                        inhibits=ruleset.inhibits))
    transitions = [t for s in steps for t in s.transitions if t.finding is not None]
    # a Finding for every transition at least (open spike/drop/quota/expansion episodes carried without
    # one: columnar rows), and not one message formatted
    assert calls["made"] >= len(transitions) > 0 and calls["formatted"] == 0
    baselines = [st.last_explanation.get("baseline") for st in steps[-1].states.values()]
    assert len(baselines) > 10 and calls["formatted"] == 0  # an explanation's numbers are read without its message
    text = transitions[0].finding.message
    assert isinstance(text, str) and text and calls["formatted"] == 1
    assert transitions[0].finding.message is text and calls["formatted"] == 1  # once
    lazy = [s for s in steps[-1].states.values() if s.is_open][0].last_explanation
    assert dict(lazy) == lazy and isinstance(lazy["message"], str)


# Episodes that a finding continues for many steps (levels reached early in a billing period stay until it
# ends, then close quietly; forecasts come true; opportunities of a month), with `for`, cooldowns and
# renotify: the columnar findings (rules.model.FindingRows) step them without building a Finding.
LONG = """
[[rule]]
id = "calls-levels"
kind = "quota"
metric = "api_calls"
for = {for_}
renotify = "{renotify}d"
cooldown = "{cooldown}d"
[rule.threshold]
fractions = [0.05, 0.2, 0.5, 0.9]

[[rule]]
id = "events-forecast"
kind = "quota"
metric = "events"
for = {for_}
renotify = "{renotify}d"
[rule.threshold]
mode = "forecast"
fraction = {fraction}
forecast_window = "5d"
min_elapsed = "1d"
min_observed = "1d"

[[rule]]
id = "calls-utilization"
kind = "expansion"
metric = "api_calls"
renotify = "{renotify}d"
cooldown = "{cooldown}d"
[rule.threshold]
mode = "utilization"
utilization = 0.1
periods = 1

[[rule]]
id = "calls-growth"
kind = "expansion"
metric = "api_calls"
for = {for_}
[rule.threshold]
mode = "growth"
period = "7d"
periods = 1
growth = 0.02
min_value = 10
"""


@pytest.mark.parametrize("seed", range(4))
def test_long_running_episodes_of_columnar_findings_equal_the_stepwise_definition(seed):
    from rules.impact import Pricing

    rng = np.random.default_rng(100 + seed)
    text = LONG.format(for_=int(rng.choice([1, 2, 3])), renotify=int(rng.choice([0, 2, 5])),
                       cooldown=int(rng.choice([0, 3])), fraction=float(rng.choice([0.5, 1.0])))
    ruleset = load_rules_text(text)
    rules = list(ruleset.rules)
    book = generate_book(n_accounts=30, days=DAYS + 60, end=END, seed=seed, gaps=int(rng.integers(0, 4)))
    blocks, accounts = _blocks(book, rules), {a.id: a for a in book.accounts}
    start = END - 95 * DAY  # three billing periods and more: levels reached, held, closed, reached again
    kw = dict(quiet_first_run=bool(seed % 2), pricing=Pricing(renewal_within=200 * DAY))  # raised severities
    want = list(stepwise_replay(rules, blocks, accounts, start, END, **kw))
    got = [(s.at, _transitions(s.transitions), dict(s.states)) for s in replay(rules, blocks, accounts, start, END, **kw)]
    assert len(got) == len(want)
    for (at, g_ts, g_states), (w_at, w_ts, w_states, _) in zip(got, want, strict=True):
        assert at == w_at and g_ts == _transitions(w_ts), f"transitions differ at {at}"
        assert list(g_states.items()) == list(w_states.items()), f"states differ at {at}"
    events = [t[0] for g in got for t in g[1]]
    assert {"fired", "resolved"} <= set(events)
    held = max(s.consecutive for s in got[-1][2].values())
    assert held >= 20  # an episode continued for weeks
    assert any(s.severity != r.severity for s in got[-1][2].values() for r in rules if r.id == s.rule_id)


def test_a_replay_builds_a_finding_only_for_a_transition(monkeypatch):
    """Quota and expansion findings are columnar: over a replay, a Finding (with its message and
    details) is built for a row only when the lifecycle turns it into a transition, not for every
    step an open episode continues."""
    import rules.detectors.finding as finding_module

    made: list[tuple] = []
    real = finding_module.make_finding

    def counting(rule, block, i, **kwargs):
        made.append((rule.id, block.account_ids[i], kwargs.get("discriminator", ""), block.end))
        return real(rule, block, i, **kwargs)

    for module in ("quota", "expansion"):
        monkeypatch.setattr(f"rules.detectors.{module}.make_finding", counting)
    ruleset = load_rules_text(LONG.format(for_=1, renotify=0, cooldown=0, fraction=1.0))
    rules = list(ruleset.rules)
    book = generate_book(n_accounts=25, days=DAYS + 30, end=END, seed=5)
    steps = list(replay(rules, _blocks(book, rules), {a.id: a for a in book.accounts}, END - 70 * DAY, END))
    with_finding = {(t.state.rule_id, t.state.account_id, t.state.discriminator, t.at) for s in steps for t in s.transitions
                    if t.finding is not None}
    continued = sum(s.consecutive for s in steps[-1].states.values())
    assert len(with_finding) > 10 and continued > 3 * len(with_finding), (continued, len(with_finding))
    assert len(made) == len(set(made)) and set(made) <= with_finding  # one build per transition at most


@pytest.mark.parametrize("seed", [0, 1])
def test_the_open_episodes_told_at_each_step_are_those_of_every_open_state(monkeypatch, seed):
    """rules.replay.Told keeps what the detectors are told across steps, updating only the states a
    step changed: at every step it hands evaluate exactly open_episodes() of the states open before
    the step (the same OpenEpisodes, in the same order), episodes continued, reopened and closed."""
    from pathlib import Path

    import rules.replay as replay_module
    from rules.lifecycle import open_episodes
    from rules.loader import load_rules

    told: list[dict] = []
    handed: list[dict] = []  # the lists themselves (a rule's is kept while its episodes are told the same)
    real = replay_module.evaluate

    def spy(*args, open_episodes, **kwargs):
        told.append({rid: list(eps) for rid, eps in open_episodes.items()})
        handed.append(open_episodes)
        return real(*args, open_episodes=open_episodes, **kwargs)

    monkeypatch.setattr(replay_module, "evaluate", spy)
    shipped = load_rules([Path(__file__).resolve().parents[2] / "rules" / "examples" / "default.toml"])
    long = load_rules_text(LONG.format(for_=2, renotify=3, cooldown=3, fraction=0.5))
    rules = list(shipped.rules) + list(long.rules)
    by_id = {r.id: r for r in rules}
    book = generate_book(n_accounts=30, days=DAYS + 60, end=END, seed=seed, gaps=3, holidays=2)
    snapshots = [dict(s.states) for s in replay(rules, _blocks(book, rules), {a.id: a for a in book.accounts},
                                                END - 90 * DAY, END, inhibits=shipped.inhibits,
                                                calendar=shipped.calendar, quiet_first_run=bool(seed))]
    assert len(told) == len(snapshots) > 60
    before: dict = {}
    for step, (got, states) in enumerate(zip(told, snapshots, strict=True)):
        assert got == open_episodes(before, by_id), f"step {step}"
        before = states
    assert sum(len(v) for t in told for v in t.values()) > 500  # many open episodes told
    kept = sum(a[r] is b.get(r) for a, b in zip(handed, handed[1:], strict=False) for r in a)
    assert kept > len(handed)  # unchanged lists handed again, not rebuilt per open episode
    closed_then_open = {k for a, b in zip(snapshots, snapshots[1:], strict=False) for k, s in b.items()
                        if k in a and not a[k].is_open and s.is_open}
    assert closed_then_open  # some episodes reopened


@pytest.mark.parametrize("seed", [20, 21, 22])
def test_segment_rules_of_every_kind_equal_the_stepwise_definition(seed):
    """Every rule restricted to a segment (the replay picks a segment rule's candidate rows from the
    whole block in one go, rules.engine.detect_rule): the same events and states as the stepwise
    definition, with `for`, cooldowns, renotify, gaps and both first-run policies."""
    import re

    from rules.impact import Pricing

    rng = np.random.default_rng(seed)
    text = re.sub(r'\[rule\.segment\]\nplans = \["starter", "growth"\]\n', "", _rules_text(rng))
    head, inhibit = text.split("[[inhibit]]", 1)
    parts = head.split("[[rule]]")
    plans = ['["starter", "growth"]', '["growth", "enterprise"]', '["starter"]']
    text = "[[rule]]".join([parts[0]] + [p + f"[rule.segment]\nplans = {plans[i % 3]}\n\n"
                                         for i, p in enumerate(parts[1:])]) + "[[inhibit]]" + inhibit
    ruleset = load_rules_text(text)
    rules = list(ruleset.rules)
    assert all(r.segment.plans for r in rules)
    book = generate_book(n_accounts=int(rng.integers(30, 50)), days=DAYS + 30, end=END, seed=seed,
                         gaps=int(rng.integers(1, 5)), holidays=1)
    blocks, accounts = _blocks(book, rules), {a.id: a for a in book.accounts}
    start = END - 70 * DAY
    kw = dict(inhibits=ruleset.inhibits, quiet_first_run=bool(seed % 2), pricing=Pricing(renewal_within=200 * DAY))
    got = _same_as_stepwise(rules, blocks, accounts, start, **kw)
    fired = {t[2][0] for g in got for t in g[1] if t[0] == "fired"}
    assert len(fired) >= 4, fired  # several rules' episodes fire within their segments


@pytest.mark.parametrize("seed", range(6))
def test_states_read_now_and_then_equal_the_stepwise_definition(monkeypatch, seed):
    """A firing episode a finding continues without a transition is not materialised at each step
    (rules.lifecycle.advance `runs`): its state is built when the states view is read. States read
    only at some steps (runs of many steps: levels held to their period's end, forecasts, opportunities,
    spikes and drops with references), with `for`, cooldowns, renotify, gaps, inhibits and
    once-per-period levels, are the stepwise definition's at those steps, the transitions at every
    step are the same, and far fewer states are built than episodes are continued."""
    from pathlib import Path

    import rules.lifecycle as lifecycle
    from rules.impact import Pricing
    from rules.loader import load_rules

    rng = np.random.default_rng(300 + seed)
    shipped = load_rules([Path(__file__).resolve().parents[2] / "rules" / "examples" / "default.toml"])
    long = load_rules_text(LONG.format(for_=int(rng.choice([1, 2, 3])), renotify=int(rng.choice([0, 2, 5])),
                                       cooldown=int(rng.choice([0, 3])), fraction=float(rng.choice([0.5, 1.0]))))
    rules = list(shipped.rules) + list(long.rules)
    rules += [r for r in load_rules_text(_rules_text(rng)).rules if r.id not in {q.id for q in rules}]
    book = generate_book(n_accounts=int(rng.integers(25, 40)), days=DAYS + 60, end=END, seed=seed,
                         gaps=int(rng.integers(0, 5)), holidays=int(rng.integers(0, 3)))
    blocks, accounts = _blocks(book, rules), {a.id: a for a in book.accounts}
    start = END - 95 * DAY
    kw = dict(inhibits=shipped.inhibits, calendar=shipped.calendar, quiet_first_run=bool(seed % 2),
              pricing=Pricing(renewal_within=200 * DAY))
    # the columnar kinds' rules that never renotify (a renotify is a transition, which builds the state)
    quiet = {r.id for r in rules if r.kind in ("quota", "expansion") and r.renotify == 0}
    built = {"states": 0}
    real = lifecycle._continued

    def counting(prev, *args):
        built["states"] += prev.rule_id in quiet
        return real(prev, *args)

    monkeypatch.setattr(lifecycle, "_continued", counting)
    want = list(stepwise_replay(rules, blocks, accounts, start, END, **kw))
    continued, built["states"] = built["states"], 0  # the stepwise lifecycle: a new state per continuation
    read_at = set(rng.choice(len(want), size=len(want) // 8, replace=False).tolist()) | {len(want) - 1}
    views, got = [], []
    for n, step in enumerate(replay(rules, blocks, accounts, start, END, **kw)):
        assert step.at == want[n][0] and _transitions(step.transitions) == _transitions(want[n][1]), step.at
        if n in read_at:
            states = dict(step.states)
            assert list(states.items()) == list(want[n][2].items()), f"states differ at {step.at}"
            key = next(k for k, s in states.items() if s.is_open)
            assert step.states[key] is states[key]  # read again: the same state
            got.append(states)
        views.append(step.states)
    assert continued > 300 and built["states"] < continued / 3, (built, continued)
    # an earlier step's view is the same live view (ReplayStep.states: copy it to keep it)
    assert dict(views[0]) == dict(views[-1]) == want[-1][2]

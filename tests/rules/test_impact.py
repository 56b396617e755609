"""Why an alert matters (rules.impact): plain words, overage cost, revenue at risk, the plan that
fits, renewal severity, and the rule's action (validated at load)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bot.config.pricing import parse_pricing
from rules.config import ConfigError
from rules.config.sections import document_from_text
from rules.impact import PlanPrice, Pricing, assess, render_action, renewal_severity
from rules.loader import RuleFileError, load_rules_text
from rules.model import DAY, AccountFacts

PRICING = Pricing(plans={
    "starter": PlanPrice("starter", 1, 500.0, {"api_calls": 5_000.0}, {"api_calls": 0.10}),
    "growth": PlanPrice("growth", 2, 2_500.0, {"api_calls": 60_000.0}, {"api_calls": 0.04}),
    "enterprise": PlanPrice("enterprise", 3, 20_000.0, {"api_calls": 1_000_000.0}, {"api_calls": 0.01}),
})
ACME = AccountFacts("acme", "Acme", plan="growth", arr=60_000.0, renewal_at=None)
AT = 1_795_478_400  # 2026-11-24T00:00:00Z


def test_a_drop_in_plain_words_with_the_weekday_and_the_revenue_at_risk():
    monday = AT - DAY  # the bucket 2026-11-23 (a Monday) ended at AT
    i = assess("drop", "api_calls", "warning", 13.0, 100.0, {"seasonality": "weekly"}, ACME, PRICING, AT, monday)
    assert i.headline == "api calls fell 87% vs a normal Monday"
    assert i.revenue_at_risk == pytest.approx(52_200.0) and i.severity == "warning"
    assert i.money_line(PRICING, ACME.arr) == "$52,200 of $60,000 ARR at risk"
    plain = assess("drop", "api_calls", "warning", 50.0, 100.0, {"seasonality": "none"}, ACME, PRICING, AT, monday)
    assert plain.headline == "api calls fell 50% vs the usual level"
    assert assess("inactivity", "api_calls", "warning", 0.0, None, {"inactive_since": "2026-11-10T00:00:00Z"},
                  ACME, PRICING, AT).revenue_at_risk == 60_000.0


def test_a_quota_forecast_costs_the_projected_overage_at_the_plans_price():
    details = {"quota": 40_000.0, "projected_total": 53_364.0, "utilization": 0.14}
    i = assess("quota", "api_calls", "info", 5_690.0, None, details, ACME, PRICING, AT)
    assert i.headline == "On track to use 133% of the api calls quota this period"
    assert i.overage_units == 13_364.0 and i.overage_cost == pytest.approx(534.56) and i.overage_projected
    assert i.next_plan is None  # a forecast's money is the overage; the plan that fits is for expansions
    assert i.money_line(PRICING, None) == "Projected overage 13,364 ≈ $535"
    so_far = assess("quota", "api_calls", "warning", 41_000.0, None, {"quota": 40_000.0, "utilization": 1.025},
                    ACME, PRICING, AT)
    assert so_far.money_line(PRICING, None) == "Overage so far 1,000 ≈ $40"
    unpriced = assess("quota", "api_calls", "info", 1.0, None, details, AccountFacts("x", "X", plan="custom"),
                      PRICING, AT)
    assert unpriced.overage_units == 13_364.0 and unpriced.overage_cost is None


def test_a_tiny_overage_is_never_said_as_none():
    """Seen: 40,000.04 of a 40,000 quota said "Overage so far 0.0 ≈ $0" (one decimal; whole cents)."""
    tiny = assess("quota", "api_calls", "warning", 40_000.04, None, {"quota": 40_000.0, "utilization": 1.000001},
                  ACME, PRICING, AT)
    assert tiny.money_line(PRICING, None) == "Overage so far 0.04 ≈ <$0.01"
    assert PRICING.money(0.004) == "<$0.01" and PRICING.money(0.0) == "$0" and PRICING.money(12.5) == "$12.50"
    assert [PRICING.money(x) for x in (-0.004, -12.5, -1234)] == ["-<$0.01", "-$12.50", "-$1,234"]  # ($-12.50 before)


def test_an_expansion_names_the_lowest_plan_above_that_fits():
    starter = AccountFacts("s", "S", plan="starter")
    util = {"quota": 1_000.0, "utilization": 1.11, "periods": [{}, {}]}
    i = assess("expansion", "api_calls", "info", 7_000.0, None, util, starter, PRICING, AT)
    assert (i.next_plan, i.next_plan_price) == ("growth", 2_500.0)
    assert i.headline == "api calls at 111% of the quota, 2 billing periods running"
    big = assess("expansion", "api_calls", "info", 70_000.0, None, util, starter, PRICING, AT)
    assert big.next_plan == "enterprise"
    growth = {"window_sums": [2_391.0, 2_100.0, 1_600.0, 1_401.0], "growth_rates": [0.11, 0.37, 0.12],
              "period": 7 * DAY}
    g = assess("expansion", "api_calls", "info", 20_000.0, 1_401.0, growth, starter, PRICING, AT)
    assert g.headline == "api calls up 1327% in 21 days"
    assert g.next_plan == "enterprise"  # 20,000 in 7 days is ~85,700 per 30 days: over growth's 60,000
    top = assess("expansion", "api_calls", "info", 10.0, None, util, AccountFacts("e", "E", plan="enterprise"),
                 PRICING, AT)
    assert top.next_plan is None


@pytest.mark.parametrize(("days", "within", "raise_by", "severity", "said"), [
    (21, 60 * DAY, 1, "critical", 21), (61, 60 * DAY, 1, "warning", None), (21, 0, 1, "warning", None),
    (21, 60 * DAY, 0, "warning", 21), (-3, 60 * DAY, 1, "warning", None)])
def test_a_renewal_within_n_days_raises_the_severity(days, within, raise_by, severity, said):
    acct = AccountFacts("a", "A", plan="growth", renewal_at=AT + days * DAY)
    pricing = Pricing(plans=PRICING.plans, renewal_within=within, renewal_raise=raise_by)
    assert renewal_severity("warning", acct, pricing, AT) == severity
    i = assess("spike", "api_calls", severity, 300.0, 100.0, {}, acct, pricing, AT)
    assert (i.severity, i.renewal_days) == (severity, said)  # assess takes the (raised) severity as given
    assert i.headline == "api calls rose 3x vs the usual level"


def test_the_engine_raises_a_renewing_accounts_findings_and_the_replay_stores_it() -> None:
    """The raise is applied to the findings (rules.engine), so the lifecycle records the raised
    severity: the stored episode, the message and the backtest agree."""
    from rules.engine import evaluate
    from rules.loader import load_rules_text
    from rules.model import MetricBlock
    from rules.replay import replay

    rules = load_rules_text('[[rule]]\nid = "hot"\nkind = "threshold"\nmetric = "m"\nseverity = "warning"\n'
                            '[rule.threshold]\nabove = 10\n').rules
    block = MetricBlock("m", AT - 3 * DAY, DAY, ["soon", "later"], np.array([[50.0] * 3, [50.0] * 3]))
    accounts = {"soon": AccountFacts("soon", "S", renewal_at=AT + 20 * DAY),
                "later": AccountFacts("later", "L", renewal_at=AT + 200 * DAY)}
    got = evaluate(rules, {("m", DAY): block}, accounts, AT, pricing=Pricing())
    assert {f.account_id: f.severity for f in got.findings} == {"soon": "critical", "later": "warning"}
    plain = evaluate(rules, {("m", DAY): block}, accounts, AT)
    assert {f.severity for f in plain.findings} == {"warning"}
    steps = list(replay(rules, {("m", DAY): block}, accounts, AT - DAY, AT, pricing=Pricing()))
    assert {k[1]: s.severity for k, s in steps[-1].states.items()} == {"soon": "critical", "later": "warning"}


def test_an_action_is_filled_in_and_a_bad_placeholder_is_named_at_load():
    rules = load_rules_text('[[rule]]\nid = "d"\nkind = "drop"\nmetric = "api_calls"\n'
                            'action = "Call {owner} about {account_name}; offer {next_plan}"\n'
                            '[rule.threshold]\nratio = 0.5\n', "rules.toml")
    action = rules.rules[0].action
    assert render_action(action, owner="maya@example.com", account_name="Acme") == (
        "Call maya@example.com about Acme; offer ")
    with pytest.raises(RuleFileError) as err:
        load_rules_text('[[rule]]\nid = "d"\nkind = "drop"\nmetric = "api_calls"\n'
                        'action = "Call {ownr}"\n[rule.threshold]\nratio = 0.5\n', "rules.toml")
    assert "rules.toml:5: rule 'd': action: unknown placeholder {ownr}; did you mean 'owner'?" in str(err.value)
    with pytest.raises(RuleFileError, match="rules.toml:5: rule 'd': action: is not a valid template"):
        load_rules_text('[[rule]]\nid = "d"\nkind = "drop"\nmetric = "api_calls"\n'
                        'action = "Call {owner"\n[rule.threshold]\nratio = 0.5\n', "rules.toml")


@pytest.mark.parametrize("action", ["Call {owner!r}", "Call {owner:>99999999}", "Call {owner:{rule}}"])
def test_an_action_with_a_format_spec_or_conversion_is_refused_at_load(action):
    """An action names facts; `{owner:>99999999}` would have made every alert of the rule 100 MB."""
    with pytest.raises(RuleFileError) as err:
        load_rules_text('[[rule]]\nid = "d"\nkind = "drop"\nmetric = "api_calls"\n'
                        f'action = "{action}"\n[rule.threshold]\nratio = 0.5\n', "rules.toml")
    assert "rules.toml:5: rule 'd': action: is not a valid template (placeholder {owner" in str(err.value)
    assert "write {owner}" in str(err.value)


def test_pricing_config_problems_name_file_line_and_field():
    doc = document_from_text('[pricing]\nrenewal_within = "2 months"\n[pricing.plans.a]\norder = 1\nprise = 5\n'
                             '[pricing.plans.b]\norder = 1\n[pricing.plans.b.overage]\napi_calls = -1\n', "u.toml")
    parse_pricing(doc.section("pricing"))
    with pytest.raises(ConfigError) as err:
        doc.raise_if_problems()
    text = str(err.value)
    assert "u.toml:2" in text and "renewal_within" in text
    assert "u.toml:5" in text and "prise" in text and "price" in text
    assert "api_calls" in text and "same `order`" in text
    ok = document_from_text('[pricing]\ncurrency = "€"\n[pricing.plans.a]\norder = 1\nprice = 5\n'
                            'quotas = { api_calls = 100 }\noverage = { api_calls = 0.5 }\n', "u.toml")
    p = parse_pricing(ok.section("pricing"))
    ok.raise_if_problems()
    assert p.plans["a"] == PlanPrice("a", 1, 5.0, {"api_calls": 100.0}, {"api_calls": 0.5}) and p.money(1234) == "€1,234"


@pytest.mark.parametrize(("value", "expected", "details", "said"), [
    (1_500.0, 58.5, {"signal": "bucket", "model": "daily"}, "api calls 25.6x what is usual for this time of day"),
    (137.0, 100.0, {"signal": "bucket", "model": "weekly"}, "api calls 37% above what is usual for this time of the week"),
    (55.0, 100.0, {"signal": "bucket", "model": "level"}, "api calls 45% below its recent level"),
    (100.4, 100.0, {"signal": "bucket", "model": "level"}, "api calls 0.4% above its recent level"),
    (0.0, 58.5, {"signal": "bucket", "model": "daily"}, "api calls fell to zero (usually about 58.5 at this time of day)"),
    (0.0, 58.5, {"signal": "bucket", "model": "level"}, "api calls fell to zero (its recent level: about 58.5)"),
    (100.0, 100.0, {"signal": "bucket", "model": "level"}, "api calls at its recent level"),  # a holding finding
    # a forecast below 0 (a falling trend extrapolated) is said as 0: usage is never negative
    (20.0, -0.292, {"signal": "bucket", "model": "level"}, "api calls at 20 (its recent level: about 0)"),
    (5.0, 0.0, {"signal": "bucket", "model": "daily"}, "api calls at 5 (usually about 0 at this time of day)"),
    # a sustained shift, level model: the median of the last `adapt` buckets is expected + shift
    (80.0, 50.0, {"signal": "shift", "model": "level", "shift": 30.0, "span": 30 * 60},
     "api calls 60% above the usual level over the last 30m"),
    (0.0, 64.5, {"signal": "shift", "model": "level", "shift": -64.5, "span": 6 * 3600},
     "api calls at 0 over the last 6h (usually about 64.5)"),
    # seasonal: the median departure of each bucket from its own time of day, in units (a share of
    # the current bucket's usual value would be false across a varying pattern)
    (0.0, 64.5, {"signal": "shift", "model": "daily", "shift": -50.5, "span": 6 * 3600},
     "api calls ran 50.5 below what is usual for the time of day over the last 6h (median)"),
    (0.0, 178.0, {"signal": "shift", "model": "weekly", "shift": 24.5, "span": 6 * 3600},
     "api calls ran 24.5 above what is usual for the time of the week over the last 6h (median)"),
    (150.0, 100.0, {"signal": "shift", "model": "level", "shift": -40.0}, "api calls 40% below the usual level lately"),
    (90.0, 100.0, {"signal": "shift", "model": "daily", "shift": 0.0, "span": 3600},
     "api calls at what is usual for the time of day over the last 1h (median)"),
    (150.0, 100.0, {"signal": "shift", "model": "level", "span": 3600}, ""),  # no shift given: nothing claimed
])
def test_an_anomaly_in_plain_words_of_what_its_signal_measured(value, expected, details, said):
    """The headline of an anomaly says the bucket against what its model expects at this time, or a
    shift's median against the usual level over its span; never a percentage of an expected 0."""
    i = assess("anomaly", "api_calls", "warning", value, expected, details, ACME, PRICING, AT)
    assert i.headline == said
    assert "-" not in i.headline and not re.search(r"(?<![\d.])0% ", i.headline)  # never negative, never "0% above"

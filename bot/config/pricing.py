"""The [pricing] table of the config file -> rules.impact.Pricing (why an alert matters).

    [pricing]
    currency = "$"
    renewal_within = "60d"     # an alert of an account renewing within this is raised...
    renewal_raise = 1          # ...by this many severity levels (0 = never)
    [pricing.plans.growth]     # one table per plan, named as the accounts' `plan`
    order = 2                  # rank: a bigger plan has a higher order (the expansion's "plan that fits")
    price = 2000               # per billing period (shown beside the plan that fits)
    quotas = { api_calls = 50000 }     # the plan's quotas per metric and billing period
    overage = { api_calls = 0.04 }     # price per unit over the account's quota (projected overage cost)
"""

from __future__ import annotations

from rules.config import Section, Table
from rules.impact import PlanPrice, Pricing

PLAN_KEYS = ("order", "price", "quotas", "overage")
PRICING = Table("pricing", ("currency", "renewal_within", "renewal_raise"), (Table("plans", free=True),))


def _per_metric(plan: Section, key: str) -> dict[str, float]:
    if not plan.has(key):
        return {}
    table = plan.table(key)
    out: dict[str, float] = {}
    for metric in table.data:
        value = table.float(str(metric), min=0.0)
        if value is not None:
            out[str(metric)] = value
    return out


def parse_pricing(section: Section) -> Pricing:
    """Read [pricing]; problems (file:line, field) are added to the section's document."""
    section.check_keys(PRICING)
    d = Pricing()
    plans: dict[str, PlanPrice] = {}
    if section.has("plans"):
        table = section.table("plans")
        for name in table.data:
            plan = table.table(str(name))
            plan.check_keys(PLAN_KEYS)
            plans[str(name)] = PlanPrice(name=str(name), order=plan.int("order", 0, min=None) or 0,
                                         price=plan.float("price", min=0.0), quotas=_per_metric(plan, "quotas"),
                                         overage=_per_metric(plan, "overage"))
        orders = [p.order for p in plans.values()]
        if len(set(orders)) != len(orders):
            table.problem(None, "two plans have the same `order`; give each plan its own rank (1 = smallest)")
    return Pricing(plans=plans, currency=section.str("currency", d.currency) or d.currency,
                   renewal_within=section.duration("renewal_within", d.renewal_within, min=0) or 0,
                   renewal_raise=section.int("renewal_raise", d.renewal_raise, min=0, max=2) or 0)

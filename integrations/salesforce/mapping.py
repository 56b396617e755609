"""Health -> Salesforce field values, and which record an account is written to (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from integrations.salesforce.config import SalesforceConfig
from rules.health import Health
from rules.model import AccountFacts

_SF_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


def is_salesforce_id(value: str) -> bool:
    return bool(_SF_ID.match(value))


def _text(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    return value if len(value) <= limit else value[: max(0, limit - 1)] + "…"


_GETTERS: dict[str, Callable[[Health, Callable[[int], str], int], Any]] = {
    "score": lambda h, _iso, _n: h.score,
    "band": lambda h, _iso, _n: h.band,
    "trend": lambda h, _iso, _n: h.trend,
    "trend_ratio": lambda h, _iso, _n: None if h.trend_ratio is None else round(h.trend_ratio, 2),
    "quota_utilization": lambda h, _iso, _n: (None if h.quota_utilization is None
                                              else round(h.quota_utilization * 100, 1)),
    "active_days": lambda h, _iso, _n: h.active_days,
    "expansion_signal": lambda h, _iso, _n: h.expansion_signal,
    "last_alert": lambda h, _iso, n: _text(h.last_alert, n),
    "last_alert_at": lambda h, iso_fn, _n: iso_fn(h.last_alert_at) if h.last_alert_at else None,
    "explanation": lambda h, _iso, n: _text(h.explain(), n),
}


def source_values(h: Health, iso_fn: Callable[[int], str], text_limit: int = 255) -> dict[str, Any]:
    """Every health value a field can be mapped to (see SOURCES), as Salesforce receives it."""
    return {source: get(h, iso_fn, text_limit) for source, get in _GETTERS.items()}


def field_values(h: Health, fields: Mapping[str, str], iso_fn: Callable[[int], str],
                 text_limit: int = 255) -> dict[str, Any]:
    """Salesforce field API name -> value, in mapping order."""
    return {name: _GETTERS[source](h, iso_fn, text_limit) for source, name in fields.items()}


def match_key(account: AccountFacts, config: SalesforceConfig) -> tuple[str | None, str]:
    """(key, "") where the account's values go, or (None, why not).

    match = "id": the account's crm_id must be a Salesforce record Id.
    match = "external_id": the usagebot account id is the external id value.
    """
    if config.match == "external_id":
        return account.id, ""
    crm_id = (account.crm_id or "").strip()
    if not crm_id:
        return None, "no crm_id (the Salesforce record Id) in the account facts"
    if not is_salesforce_id(crm_id):
        return None, f"crm_id {crm_id!r} is not a Salesforce Id (15 or 18 letters and digits)"
    return crm_id, ""

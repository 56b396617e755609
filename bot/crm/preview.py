"""Usage health of every stored account, and the Salesforce field values it maps to.

Health is integrations.health.account_health (the computation `/usage` shows too); `crm_preview`
adds the field values (the default mapping unless given one); nothing is sent anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from integrations.health import account_health, health_as_of, pick_primary_metric
from integrations.salesforce.config import DEFAULT_FIELDS
from integrations.salesforce.mapping import field_values
from rules.health import DEFAULT_MODEL, Health, HealthModel
from rules.model import AccountFacts, RuleSet
from rules.periods import iso

__all__ = ["CrmPreviewRow", "account_health", "crm_preview", "health_as_of", "pick_primary_metric"]


@dataclass(frozen=True)
class CrmPreviewRow:
    account: AccountFacts
    health: Health
    fields: Mapping[str, Any]


def crm_preview(
    engine: Engine, ruleset: RuleSet, now: int, primary_metric: str | None = None,
    model: HealthModel = DEFAULT_MODEL, fields: Mapping[str, str] | None = None, text_limit: int = 255,
) -> list[CrmPreviewRow]:
    """Health and Salesforce field values (API name -> value) per account; sends nothing."""
    mapping = DEFAULT_FIELDS if fields is None else fields
    return [CrmPreviewRow(acct, h, field_values(h, mapping, iso, text_limit))
            for acct, h in account_health(engine, ruleset, now, model, primary_metric)]

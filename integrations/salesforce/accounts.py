"""Account facts from Salesforce Accounts: the SOQL of a pull and the facts of one record.

What is asked: `SELECT Id, SystemModstamp, <mapped fields> FROM <object> [WHERE (<where>) AND
SystemModstamp >= <cursor>] ORDER BY SystemModstamp, Id`, one query whose pages (2,000 records
each) follow nextRecordsUrl. Relationship paths ("Owner.Email") come back as nested records and
are read here; the owner's email is what the Slack directory maps to a Slack user. `>=` (not `>`):
a record changed in the same second as the last pull's newest is fetched again rather than missed
(the diff shows it unchanged).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from integrations.salesforce.config import AccountPullConfig, SalesforceConfig

MODSTAMP = "SystemModstamp"


@dataclass(frozen=True)
class PulledRecord:
    """One Account record as account facts. `facts`: AccountFacts field -> value, for the mapped
    fields whose values could be read; `problems`: "field: why" of those that could not."""

    sf_id: str
    account_id: str | None  # None: matched by crm_id later (match = "id")
    modstamp: str
    facts: Mapping[str, Any]
    problems: tuple[str, ...] = field(default=())


def _paths(pull: AccountPullConfig, sf: SalesforceConfig) -> list[str]:
    paths = [MODSTAMP, *pull.field_map().values(), *pull.quotas.values()]
    if sf.match == "external_id" and sf.external_id_field:
        paths.append(sf.external_id_field)
    out: list[str] = ["Id"]
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _instant(text: str) -> dt.datetime:
    t = text.replace("Z", "+00:00")
    if len(t) > 5 and t[-5] in "+-" and t[-3] != ":":
        t = t[:-2] + ":" + t[-2:]
    d = dt.datetime.fromisoformat(t)
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


def soql_datetime(modstamp: str) -> str:
    """ "2026-11-24T10:00:00.000+0000" -> "2026-11-24T10:00:00Z" (a SOQL datetime literal)."""
    return _instant(modstamp).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pull_soql(pull: AccountPullConfig, sf: SalesforceConfig, since: str | None) -> str:
    """The query of a pull: everything (since=None) or what changed at or after `since` (a SystemModstamp)."""
    conds = [f"({pull.where})"] if pull.where else []
    if since:
        conds.append(f"{MODSTAMP} >= {soql_datetime(since)}")
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    return f"SELECT {', '.join(_paths(pull, sf))} FROM {sf.object}{where} ORDER BY {MODSTAMP}, Id"


def _get(record: Mapping[str, Any], path: str) -> Any:
    """A field of a query record; "Owner.Email" reads the nested Owner record (None when it is null)."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _date(value: Any) -> int:
    """Epoch seconds of a Date ("2027-03-31", UTC midnight) or DateTime field."""
    text = str(value)
    if len(text) == 10:
        return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())
    return int(_instant(text).timestamp())


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{value!r} is not a finite number")
    return x


def _convert(fact: str, value: Any) -> Any:
    """A field's value as the AccountFacts field `fact` holds it (ValueError when it cannot be)."""
    if fact in ("owner_email", "csm_email"):
        return "" if value is None else str(value).strip().lower()
    if fact == "arr":
        return None if value is None else _number(value)
    if fact == "renewal_at":
        return None if value in (None, "") else _date(value)
    if fact == "billing_day":
        day = _number(value)
        if day != int(day) or not 1 <= day <= 28:
            raise ValueError(f"billing day must be 1..28, got {value!r}")
        return int(day)
    return "" if value is None else str(value).strip()


def record_facts(record: Mapping[str, Any], pull: AccountPullConfig, sf: SalesforceConfig) -> PulledRecord:
    """The facts of one queried record. A value that cannot be read (a billing day of 31, ARR "n/a")
    is left out and named in `problems`; a null field clears the fact (no CSM, no renewal date),
    except name, owner, billing_day and timezone, which keep the accounts CSV's (an alert routed to
    nobody because a User has no email would be worse than one to the CSV's owner)."""
    facts: dict[str, Any] = {}
    problems: list[str] = []
    for fact, path in pull.field_map().items():
        raw = _get(record, path)
        if (raw is None or raw == "") and fact in ("billing_day", "timezone", "name", "owner_email"):
            continue
        try:
            facts[fact] = _convert(fact, raw)
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
    quotas: dict[str, float] = {}
    for metric, path in pull.quotas.items():
        raw = _get(record, path)
        if raw is None:
            continue
        try:
            quotas[metric] = _number(raw)
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
    if quotas:
        facts["quotas"] = quotas
    sf_id = str(record.get("Id") or "")
    facts["crm_id"] = sf_id
    account_id = None
    if sf.match == "external_id" and sf.external_id_field:
        ext = _get(record, sf.external_id_field)
        account_id = str(ext).strip() if ext not in (None, "") else ""
    return PulledRecord(sf_id=sf_id, account_id=account_id, modstamp=str(record.get(MODSTAMP) or ""),
                        facts=facts, problems=tuple(problems))

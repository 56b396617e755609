"""Desired field values vs the values Salesforce last accepted: only changed fields are sent (pure)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

UNKNOWN = object()
_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(?:Z|\+0000|\+00:00)$")  # the old value is not known (never written to this record)


@dataclass(frozen=True)
class DesiredRecord:
    account_id: str
    account_name: str
    match_key: str
    values: Mapping[str, Any]  # field API name -> value


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any  # UNKNOWN when never written
    new: Any


@dataclass(frozen=True)
class RecordChange:
    account_id: str
    account_name: str
    match_key: str
    changes: tuple[FieldChange, ...]
    retry_of: str | None = None  # the error of the previous failed attempt, if any

    def values(self) -> dict[str, Any]:
        return {c.field: c.new for c in self.changes}


def normalise(value: Any) -> Any:
    """The value as it is stored (JSON round trip), so stored and fresh values compare equal."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return json.loads(json.dumps(value))


def diff_records(
    desired: Iterable[DesiredRecord],
    written: Mapping[str, tuple[str, Mapping[str, Any]]],
    errors: Mapping[str, str] | None = None,
) -> list[RecordChange]:
    """Records with at least one field whose desired value differs from the written one.

    written: account id -> (match key, field -> last accepted value). Values
    written to another match key (the account now points at another record)
    count as unknown. Output is sorted by account id.
    """
    out: list[RecordChange] = []
    errors = errors or {}
    for d in sorted(desired, key=lambda r: r.account_id):
        key, old_values = written.get(d.account_id, ("", {}))
        same = key == d.match_key
        changes = []
        for name, value in d.values.items():
            new = normalise(value)
            if same and name in old_values:
                old = old_values[name]
                if old == new and type(old) is type(new):
                    continue
            else:
                old = UNKNOWN
            changes.append(FieldChange(name, old, new))
        if changes:
            out.append(RecordChange(d.account_id, d.account_name, d.match_key, tuple(changes),
                                    errors.get(d.account_id) if same else None))
    return out


def format_value(value: Any) -> str:
    if value is UNKNOWN:
        return "(unknown)"
    if value is None:
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def format_change(c: FieldChange) -> str:
    return f"{c.field}: {format_value(c.old)} -> {format_value(c.new)}"


def align_read_value(read: Any, desired: Any) -> Any:
    """A value read back from Salesforce in the form usagebot writes it, so equal values compare equal.

    Salesforce answers 72.0 for a Number(3, 0) field usagebot wrote 72 to, and
    "2026-11-24T09:00:00.000+0000" for a date/time written as "2026-11-24T09:00:00Z".
    """
    if read is None or desired is None or isinstance(desired, bool) or isinstance(read, bool):
        return read
    if isinstance(desired, int) and isinstance(read, float) and read.is_integer():
        return int(read)
    if isinstance(desired, float) and isinstance(read, int):
        return float(read)
    if isinstance(desired, str) and isinstance(read, str) and _DATETIME.match(desired):
        m = _DATETIME.match(read)
        if m:
            return f"{m.group(1)}T{m.group(2)}Z"
    return read

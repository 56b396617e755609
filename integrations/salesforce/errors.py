"""Salesforce's per-record errors, classified once: retrying the same values can help, or it cannot.

A record of an sObject Collections request or a Bulk API job fails on its own (allOrNone=false). Some
such errors pass (UNABLE_TO_LOCK_ROW: another transaction held the row); others stay until an admin
changes something in Salesforce or in the mapping (a value too long for its field, a deleted record,
a field the integration user may not edit). `record_error_hint` names the second kind with what to
do; bot.crm.delivery parks such a record (storage.crm: not sent again with the same values until
`usagebot crm retry`), and also parks one that failed RETRY_LIMIT times in a row with any error, so
nothing is retried for ever (the idea of Alertmanager's notify/ "retryable or not" per integration).
"""

from __future__ import annotations

import re

# consecutive failed writes of one record (one per sync or deliver run) before it is parked; for a Task:
# create requests sent without creating it (refusals and lost answers: bot.crm.delivery._task_failure)
RETRY_LIMIT = 5

# code -> what to do; "{fields}" is the fields Salesforce named (or "the mapped fields").
PERMANENT_RECORD_ERRORS: dict[str, str] = {
    "STRING_TOO_LONG": "a value is longer than {fields} allows: widen the field or shorten the mapped value",
    "ENTITY_IS_DELETED": "the record was deleted in Salesforce: point the account at its new record (the match)",
    "INVALID_FIELD": "{fields} does not exist or is not visible to the integration user: fix the mapping "
                     "or grant field access",
    "INVALID_FIELD_FOR_INSERT_UPDATE": "{fields} is read-only for the integration user: grant edit access "
                                       "(field-level security)",
    "INSUFFICIENT_ACCESS_OR_READONLY": "the integration user may not edit this record: grant edit access",
    "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY": "the integration user may not see the referenced "
                                                     "record: grant access",
    "FIELD_INTEGRITY_EXCEPTION": "Salesforce refuses the value of {fields}: fix the mapped value or the field",
    "INVALID_CROSS_REFERENCE_KEY": "{fields} refers to a record that does not exist: fix the mapped id",
    "INVALID_TYPE_ON_FIELD_IN_RECORD": "a value of {fields} has the wrong type: fix the mapping's type",
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST": "{fields} is a restricted picklist without this value: add "
                                               "the value to the picklist or change the mapping",
    "NUMBER_OUTSIDE_VALID_RANGE": "a number is outside the range of {fields}: widen the field",
    "REQUIRED_FIELD_MISSING": "{fields} is required on the record: map a value for it",
    "FIELD_CUSTOM_VALIDATION_EXCEPTION": "a validation rule of the org refuses the values: fix the rule "
                                         "or the mapping",
    "MALFORMED_ID": "the record id is not a Salesforce id: fix the account's match",
    "NOT_FOUND": "the record does not exist: fix the account's match",
    "INVALID_ID_FIELD": "the record id is not valid for this object: fix the account's match",
    "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY": "a trigger or flow of the org refuses the write: fix it",
    "DUPLICATE_VALUE": "{fields} must be unique and another record holds the value: fix the mapping",
    "INVALID_EMAIL_ADDRESS": "{fields} is no valid email address: fix the mapped value",
}
# "CODE: message (fields: A, B)" (sObject Collections, integrations.salesforce.client) or
# "CODE:message:A,B" (a Bulk API result file's sf__Error).
_CODE = re.compile(r"(?:^|; )([A-Z][A-Z0-9_]{2,}):")
_FIELDS = re.compile(r"\(fields: ([^)]*)\)")


def record_error_codes(error: str) -> list[str]:
    """Salesforce's error codes in one record's error text."""
    return _CODE.findall(error or "")


def record_error_hint(error: str) -> str | None:
    """What to do about a record error retrying cannot fix, None when a retry may succeed."""
    for code in record_error_codes(error):
        hint = PERMANENT_RECORD_ERRORS.get(code)
        if hint is not None:
            m = _FIELDS.search(error)
            fields = m.group(1) if m else _bulk_fields(error, code)
            return f"{code}: " + hint.format(fields=f"field {fields}" if fields else "a mapped field")
    return None


def _bulk_fields(error: str, code: str) -> str:
    parts = error.split(":")
    return parts[2].strip() if code.startswith(parts[0]) and len(parts) >= 3 else ""

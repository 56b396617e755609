"""The one form an error text is stored in (outbox, cursors, sources, CRM records and tasks, sync runs).

An error is masked (no secret is stored) and kept to MAX_ERROR_CHARS, cut in the middle so that its
last KEPT_END characters stay: the code appends what an error means at its end ("-> parked after 5
tries; `usagebot crm retry ...` sends it again"), and readers look for it there (the Log task button
tells a Task parked after its tries from one Salesforce refused by that marker).
"""

from __future__ import annotations

from rules.config.redaction import clip

MAX_ERROR_CHARS = 2000  # a column's worth: an HTTP body quoted in an error is often much longer
KEPT_END = 500  # the appended advice and markers are < 300 characters


def stored_error(error: str) -> str:
    """`error` masked and cut to at most MAX_ERROR_CHARS characters, keeping its last KEPT_END."""
    return clip(error, MAX_ERROR_CHARS, keep_end=KEPT_END)

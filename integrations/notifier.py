"""What a notifier is: the `Notifier` protocol and the one error type every delivery raises.

A notifier has a `name` (its outbox rows are of kind storage.outbox.notify_kind(name), so each
delivers only its own) and `deliver(notice)`, which carries one integrations.notice.AlertNotice out
and returns, or raises `DeliveryError` saying what the outbox should do with the row:

- `retry_after=N`: due again in exactly N seconds (a 429's Retry-After, waiting for an earlier
  message); a deferral is no try of the row (its attempts are not counted) and never makes it dead;
- `persistent=True`: retried with the outbox backoff and never made dead, because something else
  bounds it (a "Log task" click's row: its Task is parked after RETRY_LIMIT tries);
- `permanent=True`: retrying cannot help (an unknown channel, a 4xx refusal): the row is dead, for an
  operator (`usagebot outbox retry-dead`... storage.outbox.retry_dead puts it back);
- neither: retried with the outbox backoff, dead after the outbox's attempt limit.

`halts=True` (with `permanent`) says the refusal is about the notifier itself, not this row (Slack
rejected the bot token; a webhook receiver refused its URL or signature): every row of this notifier
would get the same answer, so the run stops calling it and marks its other due rows dead with the
same error and fix, without a call each (500 queued alerts cost 1 call, not 500).

Any other exception is taken as the last case. bot.service.pipeline.deliver_outbox is the only reader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from integrations.notice import AlertNotice
from storage.outbox import outbox_kinds

MAX_RETRY_AFTER = 86_400  # a server asking for more than a day is taken at a day (a deferral never kills a row)


class DeliveryError(Exception):
    """A delivery that did not happen (see the module docstring). Messages carry no secrets."""

    def __init__(self, message: str, retry_after: int | None = None, permanent: bool = False,
                 halts: bool = False, persistent: bool = False) -> None:
        super().__init__(message)
        self.persistent = bool(persistent) and not permanent and not halts
        self.retry_after = None if retry_after is None else max(0, int(retry_after))
        self.permanent = bool(permanent) or bool(halts)
        self.halts = bool(halts)  # about the notifier, not the row: the run stops calling it


def retry_after(value: str | None, now: float) -> int | None:
    """Seconds of a Retry-After header (Slack's or a webhook receiver's: delta seconds or an HTTP
    date), at most a day however many digits it has; None if absent or not one of the two."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+", value):
        return MAX_RETRY_AFTER if len(value) > 10 else min(MAX_RETRY_AFTER, int(value))
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return min(MAX_RETRY_AFTER, max(0, int(when - now)))


class Notifier(Protocol):
    """Delivers notices; its outbox rows are of kind notify_kind(name) ("notify:slack")."""

    name: str

    def deliver(self, notice: AlertNotice) -> None: ...


class Outlet(Protocol):
    """Carries out outbox rows of its `kinds`: a notifier's notices (`NoticeOutlet`), Slack message
    updates, CRM writes. `handle` raises DeliveryError like a notifier."""

    name: str
    kinds: tuple[str, ...]

    def handle(self, payload: Mapping[str, Any]) -> None: ...


class NoticeOutlet:
    """A notifier as an outlet: its rows' payloads are notices (read once, here)."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.name = notifier.name
        self.kinds = tuple(outbox_kinds(notifier.name))

    def handle(self, payload: Mapping[str, Any]) -> None:
        self.notifier.deliver(AlertNotice.from_json(payload))

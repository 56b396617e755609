"""Where notifications go: the notifiers (one outbox row each), the admin channel, the first-run policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.config.app import FIRST_RUN_POLICIES
from integrations.notice import AlertNotice
from rules.impact import Pricing
from storage.outbox import OutboxItem, notify_kind


@dataclass(frozen=True)
class Notices:
    """Where a cycle's notifications go.

    notifiers: one outbox row per notification and notifier (outbox kind "notify:<name>"), so
    each notifier delivers only its own rows.
    admin_channel: the admin channel for summaries (first run, cohort events).
    first_run: conditions already true when a rule or an account is first evaluated are
    "digest": recorded, not notified, one summary to the admin channel (the default);
    "quiet": recorded, not notified, no summary; "notify": notified one by one.
    pricing: the [pricing] model that says why an alert matters (rules.impact).
    """

    notifiers: tuple[str, ...] = ("console",)
    admin_channel: str | None = None
    first_run: str = "digest"
    pricing: Pricing = field(default_factory=Pricing)

    def __post_init__(self) -> None:
        if self.first_run not in FIRST_RUN_POLICIES:
            raise ValueError(f"first_run must be one of {', '.join(FIRST_RUN_POLICIES)}, got {self.first_run!r}")

    def items(self, notice: AlertNotice, at: int | None = None) -> list[OutboxItem]:
        """One outbox row per notifier for this notice (its key, its JSON)."""
        return notice_items(notice, at, self.notifiers)


def notice_items(notice: AlertNotice, at: int | None, notifiers: Sequence[str]) -> list[OutboxItem]:
    """A notice queued once per notifier: one row each, under the notice's idempotency key."""
    payload = notice.to_json()
    return [OutboxItem(notice.idempotency_key, notify_kind(n), payload, not_before=at) for n in notifiers]

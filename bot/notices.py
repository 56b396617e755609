"""Where notifications go: the notifiers (one outbox row each), the admin channel, the first-run policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage.outbox import OutboxItem, notify_kind

FIRST_RUN_POLICIES = ("digest", "quiet", "notify")


@dataclass(frozen=True)
class Notices:
    """Where a cycle's notifications go.

    notifiers: one outbox row per notification and notifier (outbox kind "notify:<name>"), so
    each notifier delivers only its own rows.
    admin_channel: the admin channel for summaries (first run, cohort events).
    first_run: conditions already true when a rule or an account is first evaluated are
    "digest": recorded, not notified, one summary to the admin channel (the default);
    "quiet": recorded, not notified, no summary; "notify": notified one by one.
    """

    notifiers: tuple[str, ...] = ("console",)
    admin_channel: str | None = None
    first_run: str = "digest"

    def __post_init__(self) -> None:
        if self.first_run not in FIRST_RUN_POLICIES:
            raise ValueError(f"first_run must be one of {', '.join(FIRST_RUN_POLICIES)}, got {self.first_run!r}")

    def items(self, key: str, payload: Mapping[str, Any], at: int | None = None) -> list[OutboxItem]:
        """One outbox row per notifier for this notification."""
        return [OutboxItem(key, notify_kind(n), payload, not_before=at) for n in self.notifiers]

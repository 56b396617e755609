"""Where an alert goes: the owner's DM, the rule's channels, the severity's channel, else the default
channel. One routing for every notifier that shows or sends to people (Slack sends there; the console
prints where it would go)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from integrations.notice import AlertNotice


@dataclass(frozen=True)
class Destination:
    kind: str  # "dm" | "channel"
    target: str  # owner email (dm) or channel name/id as configured

    @property
    def key(self) -> str:
        """Stable name of the destination (part of delivery step keys and message rows)."""
        return f"{self.kind}:{self.target}"

    def shown(self) -> str:
        return f"DM {self.target}" if self.kind == "dm" else self.target


def destinations(notice: AlertNotice, owner_dm: bool = True, severity_channels: Mapping[str, str] | None = None,
                 default_channel: str | None = None) -> list[Destination]:
    """DM to the owner (the rule's routing.owner, and `owner_dm`), the rule's channels plus the
    channel of the alert's severity; `default_channel` when no channel was routed."""
    out: list[Destination] = []
    owner = notice.owner_email.strip().lower()
    if owner_dm and notice.routing.owner and owner:
        out.append(Destination("dm", owner))
    channels = list(notice.routing.channels)
    sev_channel = (severity_channels or {}).get(notice.severity)
    if sev_channel:
        channels.append(sev_channel)
    if not channels and default_channel:
        channels.append(default_channel)
    out += [Destination("channel", c) for c in dict.fromkeys(channels)]
    return out

"""Where an alert goes: the owner's DM, the rule's channels, the severity's channel, else the default."""

from __future__ import annotations

from dataclasses import dataclass

from integrations.notice import AlertNotice
from integrations.slack.config import SlackConfig


@dataclass(frozen=True)
class Destination:
    kind: str  # "dm" | "channel"
    target: str  # owner email (dm) or channel name/id as configured

    @property
    def key(self) -> str:
        """Stable name of the destination (part of delivery step keys and message rows)."""
        return f"{self.kind}:{self.target}"


def destinations(notice: AlertNotice, config: SlackConfig) -> list[Destination]:
    """DM to the owner (rule routing.owner, [slack] owner_dm), the rule's channels plus the channel
    of the alert's severity; the default channel when no channel was routed."""
    out: list[Destination] = []
    owner = notice.owner_email.strip().lower()
    if config.owner_dm and notice.routing.owner and owner:
        out.append(Destination("dm", owner))
    channels = list(notice.routing.channels)
    sev_channel = config.severity_channels.get(notice.severity)
    if sev_channel:
        channels.append(sev_channel)
    if not channels and config.default_channel:
        channels.append(config.default_channel)
    for c in dict.fromkeys(channels):
        out.append(Destination("channel", c))
    return out


def fallback_destination(config: SlackConfig, tried: list[Destination]) -> Destination | None:
    """The default channel, when no routed destination could take the alert and it was not tried yet."""
    if not config.default_channel:
        return None
    d = Destination("channel", config.default_channel)
    return None if d in tried else d

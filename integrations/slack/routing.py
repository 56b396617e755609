"""Where a Slack alert goes: integrations.routing with the [slack] settings, and the fallback channel."""

from __future__ import annotations

from integrations.notice import AlertNotice
from integrations.routing import Destination
from integrations.routing import destinations as route
from integrations.slack.config import SlackConfig

__all__ = ["Destination", "destinations", "fallback_destination"]


def destinations(notice: AlertNotice, config: SlackConfig) -> list[Destination]:
    """integrations.routing.destinations with the [slack] owner_dm, severity_channels and default_channel."""
    return route(notice, config.owner_dm, config.severity_channels, config.default_channel)


def fallback_destination(config: SlackConfig, tried: list[Destination]) -> Destination | None:
    """The default channel, when no routed destination could take the alert and it was not tried yet."""
    if not config.default_channel:
        return None
    d = Destination("channel", config.default_channel)
    return None if d in tried else d

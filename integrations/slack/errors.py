"""Slack's delivery errors: integrations.notifier.DeliveryError with Slack's error code.

`retry_after` (seconds until the row should be tried again, e.g. a 429's Retry-After) and
`permanent` (retrying cannot help: the row is marked dead for an operator to look at) are read by
bot.service.pipeline.deliver_outbox. Messages never contain tokens or secrets."""

from __future__ import annotations

from integrations.notifier import DeliveryError
from rules.config.redaction import mask


class SlackDeliveryError(DeliveryError):
    """A Slack call failed; retried later with the outbox backoff."""

    def __init__(self, message: str, error: str = "", retry_after: int | None = None,
                 permanent: bool = False, halts: bool = False) -> None:
        super().__init__(mask(message), retry_after, permanent, halts)
        self.error = error  # Slack's error code ("channel_not_found"), "" for HTTP/network failures


class RetryLater(SlackDeliveryError):
    """Try again in `retry_after` seconds (rate limited, or waiting for an earlier message)."""

    def __init__(self, message: str, retry_after: int, error: str = "") -> None:
        super().__init__(message, error, retry_after=max(1, int(retry_after)))


class PermanentSlackError(SlackDeliveryError):
    """Slack refused the request for a reason a retry will not fix (unknown channel, bad blocks...)."""

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(message, error, permanent=True)


class SlackAuthError(SlackDeliveryError):
    """Slack refused the bot token itself (invalid_auth, token_revoked, account_inactive...): no call
    can succeed until an admin fixes the token, so the row is dead at once with what to do. Not a
    PermanentSlackError: the fallbacks for one bad destination (another channel, a text-only post, a
    digest given up) must not act on it; it ends the delivery of the row, and of every other row
    of the run (`halts`: they would get the same answer)."""

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(message, error, permanent=True, halts=True)


class SlackUnavailable(SlackDeliveryError):
    """Network failure or a 5xx from Slack: the outcome of a write is unknown."""


class TemplateProblem(Exception):
    """An alert template does not render to a valid Block Kit message; names the template and line."""

"""Delivery errors. `bot.pipeline.deliver_outbox` reads two attributes (duck typing, so the pipeline
does not depend on Slack): `retry_after` (seconds until the row should be tried again, e.g. a 429's
Retry-After) and `permanent` (retrying cannot help: the row is marked dead for an operator to look at).
Messages never contain tokens or secrets."""

from __future__ import annotations

from rules.config.redaction import mask


class SlackDeliveryError(Exception):
    """A Slack call failed; retried later with the outbox backoff."""

    permanent = False
    retry_after: int | None = None

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(mask(message))
        self.error = error  # Slack's error code ("channel_not_found"), "" for HTTP/network failures


class RetryLater(SlackDeliveryError):
    """Try again in `retry_after` seconds (rate limited, or waiting for an earlier message)."""

    def __init__(self, message: str, retry_after: int, error: str = "") -> None:
        super().__init__(message, error)
        self.retry_after = max(1, int(retry_after))


class PermanentSlackError(SlackDeliveryError):
    """Slack refused the request for a reason a retry will not fix (unknown channel, bad blocks...)."""

    permanent = True


class SlackUnavailable(SlackDeliveryError):
    """Network failure or a 5xx from Slack: the outcome of a write is unknown."""


class TemplateProblem(Exception):
    """An alert template does not render to a valid Block Kit message; names the template and line."""

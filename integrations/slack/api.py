"""A rate-limit-aware wrapper around slack_sdk's WebClient.

- One request per call: the client is built without slack_sdk's automatic retries, because a
  chat.postMessage re-sent after a lost response would post twice. Delivery decides what to retry.
- 429: the Retry-After is remembered per method; waits up to `max_inline_wait` seconds are slept
  through, longer ones raise RetryLater so the outbox row is due again after the wait.
- Each call ends within `timeout` as a whole, connect to last byte (DeadlineWebClient): a server
  dripping its answer is cut off like a network failure.
- Posts to one channel are spaced by `min_post_interval` seconds (Slack allows ~1 message/s/channel).
- Errors become SlackDeliveryError subclasses, one classification here: permanent ones (unknown
  channel, invalid blocks, missing_scope) are marked so, a rejected token (AUTH_ERRORS) is a
  SlackAuthError (also permanent: dead at once, naming the fix; never retried with backoff); HTTP 5xx, network failures (a reset, a body cut off mid-way), an answer that is not
  Slack's JSON with a status other than 4xx (a 200 HTML page from a proxy) and Slack's own "it may have happened" codes (fatal_error,
  internal_error) are SlackUnavailable: the outcome of a write is unknown, so a post is looked up
  before it is sent again. A non-JSON 4xx (a proxy's 403/407 page) was not carried out: a plain
  retryable SlackDeliveryError. A Retry-After is taken at most a day (integrations.notifier.retry_after).
"""

from __future__ import annotations

import http.client
import logging
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.webhook import WebhookClient, WebhookResponse

from integrations import http_deadline
from integrations.notifier import retry_after as parse_retry_after
from integrations.slack.config import SlackConfig
from integrations.slack.errors import (
    PermanentSlackError,
    RetryLater,
    SlackAuthError,
    SlackDeliveryError,
    SlackUnavailable,
)
from rules.config.redaction import clip

log = logging.getLogger(__name__)

SLACK_API = "https://slack.com/api/"
POST_METHODS = ("chat.postMessage", "chat.update")

# Errors retrying cannot fix (https://api.slack.com/methods/chat.postMessage#errors and friends).
PERMANENT_ERRORS = frozenset({
    "channel_not_found", "not_in_channel", "is_archived", "msg_too_long", "no_text", "invalid_blocks",
    "invalid_blocks_format", "invalid_attachments", "cannot_dm_bot", "user_not_found", "users_not_found",
    "restricted_action", "restricted_action_read_only_channel", "restricted_action_thread_only_channel",
    "thread_not_found", "message_not_found", "cant_update_message", "edit_window_closed", "invalid_metadata_format",
    "invalid_metadata_schema", "missing_scope", "not_allowed_token_type", "too_many_attachments",
    "invalid_arguments", "invalid_cursor", "user_disabled", "no_permission",
})
# Errors after which Slack may have carried the request out (https://api.slack.com/methods/chat.postMessage:
# "It's possible some aspect of the operation succeeded"): the outcome is unknown, like a 5xx.
UNKNOWN_OUTCOME_ERRORS = frozenset({"fatal_error", "internal_error", "service_unavailable"})
ERROR_CODE = re.compile(r"[a-z0-9_.]{1,80}")  # Slack's codes; slack_sdk puts its own sentence for a non-JSON body
# Errors about the token itself: every call fails until an admin fixes it (SlackAuthError, dead at once).
AUTH_ERRORS = frozenset({
    "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
})  # not no_permission: chat.postMessage gives it for one conversation the app may not post in (permanent)
RETRY_HINT = "usagebot outbox retry"  # how a dead row is queued again (bot.cli.outbox)


class DeadlineWebClient(WebClient):
    """slack_sdk's WebClient whose every call ends within `timeout` seconds, from connecting to the
    last byte of the body (an error page's too): slack_sdk gives urllib `timeout` for each socket
    operation, so a server or proxy sending its answer a byte at a time held a call (and the job
    making it) as long as it liked. A call cut off raises TimeoutError (inside urllib: URLError),
    which SlackApi.call turns into SlackUnavailable: a post's outcome is unknown, it is looked up
    before it is sent again."""

    def _perform_urllib_http_request(self, *, url: str, args: dict[str, dict[str, Any]]) -> dict[str, Any]:
        # the whole of slack_sdk's request, including the read of an HTTPError's body it does here
        with http_deadline.within(self.timeout):
            return super()._perform_urllib_http_request(url=url, args=args)

    def _perform_urllib_http_request_internal(self, url: str, req: urllib.request.Request) -> dict[str, Any]:
        """slack_sdk's own (open, read, decode), with urllib handlers whose sockets honour the deadline."""
        with _open(url, req, self.proxy, self.ssl, self.timeout) as resp:
            body: bytes = resp.read()
            if resp.headers.get_content_type() == "application/gzip":  # admin.analytics.getFile
                return {"status": resp.code, "headers": resp.headers, "body": body}
            charset = resp.headers.get_content_charset() or "utf-8"
            return {"status": resp.code, "headers": resp.headers, "body": body.decode(charset)}


class DeadlineWebhookClient(WebhookClient):
    """slack_sdk's client for a response_url (or an incoming webhook) whose every send, its one retry
    after a connection error included, ends within `timeout` seconds as a whole, plus slack_sdk's
    pause of 0.5-1.5 s before that retry (a sleep no deadline cuts). slack_sdk gives urllib
    `timeout` for each socket operation (bolt's `respond`: 30 s each), so a server dripping its
    answer held the thread sending it as long as it liked. A send cut off raises TimeoutError (inside
    urllib: URLError)."""

    def _perform_http_request(self, *, body: dict[str, Any], headers: dict[str, str]) -> WebhookResponse:
        with http_deadline.within(self.timeout):
            return super()._perform_http_request(body=body, headers=headers)

    def _perform_http_request_internal(self, url: str, req: urllib.request.Request) -> WebhookResponse:
        """slack_sdk's own (open, read, decode), with urllib handlers whose sockets honour the deadline."""
        with _open(url, req, self.proxy, self.ssl, self.timeout) as resp:
            body = resp.read().decode(resp.headers.get_content_charset() or "utf-8")
            return WebhookResponse(url=url, status_code=resp.status, body=body, headers=resp.headers)


def _open(url: str, req: urllib.request.Request, proxy: str | None, context: Any, timeout: float) -> Any:
    """What slack_sdk's clients open a request with (its proxy, its TLS context), through urllib
    handlers whose sockets honour the deadline (http_deadline.opener); the caller reads inside."""
    if not url.lower().startswith("http"):  # urllib opens file:// too (slack_sdk refuses it the same way)
        raise SlackRequestError(f"Invalid URL detected: {url}")
    handlers = [] if proxy is None else [urllib.request.ProxyHandler({"http": proxy, "https": proxy})]
    return http_deadline.opener(*handlers, context=context).open(req, timeout=timeout)


def make_web_client(config: SlackConfig) -> WebClient:
    """A WebClient for the configured token and base URL, without automatic retries, each call
    bounded by `timeout` as a whole (DeadlineWebClient)."""
    token = config.bot_token.reveal() if config.bot_token is not None else None
    return DeadlineWebClient(token=token, base_url=config.base_url or SLACK_API, timeout=config.timeout,
                             retry_handlers=[])


class SlackApi:
    def __init__(
        self,
        client: WebClient,
        min_post_interval: float = 1.0,
        max_inline_wait: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.min_post_interval = min_post_interval
        self.max_inline_wait = max_inline_wait
        self.sleep = sleep
        self.monotonic = monotonic
        self._blocked_until: dict[str, float] = {}  # method -> monotonic time its rate limit ends
        self._next_post: dict[str, float] = {}  # channel -> monotonic time the next post may go out
        self.calls = 0

    @classmethod
    def from_config(cls, config: SlackConfig, **kw: Any) -> SlackApi:
        return cls(make_web_client(config), min_post_interval=config.min_post_interval,
                   max_inline_wait=config.max_inline_wait, **kw)

    # ------------------------------------------------------------------ core

    def _wait_or_raise(self, until: float, what: str) -> None:
        wait = until - self.monotonic()
        if wait <= 0:
            return
        if wait > self.max_inline_wait:
            raise RetryLater(f"{what}: rate limited by Slack for {wait:.0f}s more", int(wait + 0.999),
                             error="ratelimited")
        self.sleep(wait)

    def _pace(self, channel: str | None) -> None:
        if channel is None or self.min_post_interval <= 0:
            return
        wait = self._next_post.get(channel, 0.0) - self.monotonic()
        if wait > 0:
            self.sleep(wait)
        self._next_post[channel] = self.monotonic() + self.min_post_interval

    def call(self, method: str, fn: Callable[[], Any], channel: str | None = None) -> dict[str, Any]:
        """Run one API call (fn performs it with the WebClient) with rate-limit handling."""
        for _ in range(3):
            self._wait_or_raise(self._blocked_until.get(method, 0.0), method)
            if method in POST_METHODS:
                self._pace(channel)
            self.calls += 1
            try:
                resp = fn()
                return dict(resp.data) if hasattr(resp, "data") else dict(resp)
            except SlackApiError as exc:
                status = int(getattr(exc.response, "status_code", 0) or 0)
                data = exc.response.data if isinstance(exc.response.data, dict) else {}
                error = str(data.get("error", "") or "")
                if status == 429 or error == "ratelimited":
                    headers = {k.lower(): v for k, v in (exc.response.headers or {}).items()}
                    raw = headers.get("retry-after", "1")
                    raw = raw[0] if isinstance(raw, list) else raw
                    seconds = parse_retry_after(str(raw), time.time())
                    retry_after = 30 if seconds is None else max(1, seconds)
                    self._blocked_until[method] = self.monotonic() + retry_after
                    log.info("Slack rate limit on %s: retry after %ss", method, retry_after)
                    continue
                if status >= 500:
                    raise SlackUnavailable(f"Slack {method} answered HTTP {status}; will retry") from None
                if not ERROR_CODE.fullmatch(error):
                    raise _not_json(method, status, error) from None
                if error in UNKNOWN_OUTCOME_ERRORS:
                    raise SlackUnavailable(f"Slack {method}: {error} (it may have been carried out); will retry") \
                        from None
                where = f" (channel {channel})" if channel else ""
                if error in AUTH_ERRORS:
                    raise SlackAuthError(
                        f"Slack {method}{where}: {error}: the bot token was rejected; check slack.bot_token "
                        "(Bot User OAuth Token, xoxb-...) and that the app is installed and its workspace "
                        f"active, then `{RETRY_HINT}`", error) from None
                detail = _detail(data)
                msg = f"Slack {method}{where}: {error or f'HTTP {status}'}{detail}"
                if error == "missing_scope":
                    needed = str(data.get("needed") or "") or "the scope the method needs"
                    msg += (f": the Slack app lacks {needed}; add it under OAuth & Permissions, reinstall the "
                            f"app, then `{RETRY_HINT}`")
                if error == "no_permission":
                    msg += (": the app may not post in this conversation (add the app to it, or grant it on "
                            f"Enterprise Grid), then `{RETRY_HINT}`")
                if error in PERMANENT_ERRORS:
                    raise PermanentSlackError(msg, error) from None
                raise SlackDeliveryError(msg, error) from None
            except SlackDeliveryError:
                raise
            except (OSError, TimeoutError, http.client.HTTPException) as exc:  # URLError, resets, timeouts,
                # a body cut off mid-way (IncompleteRead), a garbled status line
                raise SlackUnavailable(
                    f"Slack {method}: network error ({type(exc).__name__}: {_reason(exc)}); will retry") from None
        until = self._blocked_until.get(method, 0.0)
        raise RetryLater(f"{method}: still rate limited by Slack", int(max(1.0, until - self.monotonic()) + 0.999),
                         error="ratelimited")

    # --------------------------------------------------------------- methods

    def post_message(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
                     thread_ts: str | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        kw: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False, "unfurl_media": False}
        if blocks:
            kw["blocks"] = blocks
        if thread_ts:
            kw["thread_ts"] = thread_ts
        if metadata:
            kw["metadata"] = metadata
        return self.call("chat.postMessage", lambda: self.client.chat_postMessage(**kw), channel)

    def update_message(self, channel: str, ts: str, text: str,
                       blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return self.call("chat.update", lambda: self.client.chat_update(
            channel=channel, ts=ts, text=text, blocks=blocks or []), channel)

    def history(self, channel: str, oldest: str, cursor: str | None = None) -> dict[str, Any]:
        return self.call("conversations.history", lambda: self.client.conversations_history(
            channel=channel, oldest=oldest, limit=200, include_all_metadata=True, cursor=cursor))

    def replies(self, channel: str, ts: str, oldest: str, cursor: str | None = None) -> dict[str, Any]:
        return self.call("conversations.replies", lambda: self.client.conversations_replies(
            channel=channel, ts=ts, oldest=oldest, limit=200, include_all_metadata=True, cursor=cursor))

    def lookup_by_email(self, email: str) -> dict[str, Any]:
        return self.call("users.lookupByEmail", lambda: self.client.users_lookupByEmail(email=email))

    def user_info(self, user: str) -> dict[str, Any]:
        return self.call("users.info", lambda: self.client.users_info(user=user))

    def open_dm(self, user: str) -> dict[str, Any]:
        return self.call("conversations.open", lambda: self.client.conversations_open(users=user))

    def list_channels(self, cursor: str | None = None) -> dict[str, Any]:
        return self.call("conversations.list", lambda: self.client.conversations_list(
            types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor))

    def usergroup_members(self, usergroup: str) -> dict[str, Any]:
        return self.call("usergroups.users.list", lambda: self.client.usergroups_users_list(usergroup=usergroup))

    def auth_test(self) -> dict[str, Any]:
        return self.call("auth.test", lambda: self.client.auth_test())


def _not_json(method: str, status: int, body: str) -> SlackDeliveryError:
    """The error for an answer that is not Slack's JSON (an HTML page from a proxy or load balancer).

    A 4xx (not 429, handled before) came from something in front of Slack that refused the request
    (a corporate proxy's 403/407): Slack never saw it, so it is a plain retryable SlackDeliveryError
    and a post is not looked up before it is sent again. Not permanent and not halting: a proxy's
    refusal is often passing (a login window, a policy update). Any other status (a 200 page, a 5xx)
    may have come after Slack carried the request out: SlackUnavailable, the outcome is unknown."""
    page = clip(" ".join(body.split()), 200)
    if 400 <= status < 500:
        return SlackDeliveryError(
            f"Slack {method}: HTTP {status} from something in front of Slack (a proxy?), not Slack's JSON "
            f"({page}); not carried out; will retry")
    return SlackUnavailable(f"Slack {method} answered HTTP {status} with a body that is not Slack's JSON "
                            f"({page}); will retry")


def _detail(data: dict[str, Any]) -> str:
    meta = data.get("response_metadata") or {}
    msgs = meta.get("messages") or data.get("errors") or []
    return f" ({clip('; '.join(str(m) for m in msgs), 500)})" if msgs else ""


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return clip(" ".join(str(reason).split()), 200)

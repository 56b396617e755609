"""The generic webhook notifier: every notice POSTed as signed JSON to a URL of yours.

    [[notifiers]]
    type = "webhook"
    name = "ops"                              # its outbox rows: notify:ops (default "webhook")
    url = "${USAGEBOT_WEBHOOK_URL}"           # or url_file; a secret (it often carries a token)
    secret = "${USAGEBOT_WEBHOOK_SECRET}"     # or secret_file: the HMAC-SHA256 signing key
    timeout = "10s"

Each notice is one request (docs/webhook.md has the payload, its version and how to verify it):

    POST <url>
    Content-Type: application/json
    Idempotency-Key: <the notice's idempotency key: the same on every retry>
    X-Usagebot-Timestamp: <unix seconds of this attempt>
    X-Usagebot-Signature: v1=<hex HMAC-SHA256(secret, "v1:" + timestamp + ":" + body)>

The body is the same bytes on every retry of a notice. The answer decides the outbox row
(integrations.notifier.DeliveryError): 2xx delivered; 429 and 5xx (and 408, timeouts, network
errors) retried, after exactly Retry-After when the receiver sends one, else with the outbox
backoff until the row is dead; any other status (4xx, and 3xx: redirects are not followed) is
permanent: the row is dead at once, for an operator (`storage.outbox.retry_dead`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from integrations import http_deadline
from integrations.notice import AlertNotice
from integrations.notifier import DeliveryError, retry_after
from rules.config import Secret, Section
from rules.config.redaction import clip
from rules.config.secrets import MIN_SECRET_CHARS
from rules.config.urls import url_problem
from storage.db import bigint_of

PAYLOAD_VERSION = 1
SIGNATURE_HEADER = "X-Usagebot-Signature"
TIMESTAMP_HEADER = "X-Usagebot-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_TOLERANCE = 300  # seconds a receiver should accept a timestamp off its own clock (replays)
KEYS = ("type", "name", "enabled", "url", "url_file", "secret", "secret_file", "timeout")
RETRYABLE = frozenset({408, 425, 429})
# the receiver refuses the webhook itself (its signature, its URL), not one payload: the run stops sending to it
REFUSES_THE_WEBHOOK = frozenset({401, 404, 405, 407, 410})  # not 403: a receiver may forbid one payload
MAX_SAID = 4096  # bytes of a refusal's body read for its error message


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    url: Secret
    secret: Secret
    timeout: int = 10


def parse_webhook_config(sec: Section, name: str) -> WebhookConfig | None:
    """One `[[notifiers]]` entry of type "webhook" (`name` checked by the registry)."""
    sec.check_keys(KEYS)
    url = sec.secret("url", required=True)
    secret = sec.secret("secret", required=True)
    timeout = sec.duration("timeout", 10, min=1) or 10
    if url is not None and not url.reveal().startswith(("https://", "http://")):
        sec.problem("url", "must start with https:// (or http://)")
        return None
    if url is not None and url_problem(url.reveal()) is not None:
        sec.problem("url", str(url_problem(url.reveal())))
        return None
    if secret is not None and len(secret.reveal()) < MIN_SECRET_CHARS:
        sec.problem("secret", f"is too short to sign with: use at least {MIN_SECRET_CHARS} characters (e.g. "
                              "`openssl rand -hex 32`)")
        return None
    if url is None or secret is None:
        return None
    return WebhookConfig(name, url, secret, timeout)


# ------------------------------------------------------------------------------ the request


def payload(notice: AlertNotice) -> dict[str, Any]:
    """The JSON body (docs/webhook.md): version, the idempotency key, and the alert record."""
    return {
        "version": PAYLOAD_VERSION,
        "idempotency_key": notice.idempotency_key,
        "type": "admin" if notice.is_admin else "alert",
        "event": notice.event,
        "episode_id": notice.episode_id,
        "alert": notice.record(),
    }


def body_of(notice: AlertNotice) -> bytes:
    """The request body: the same bytes for every retry of a notice."""
    return json.dumps(payload(notice), ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """X-Usagebot-Signature: "v1=" + hex HMAC-SHA256 of "v1:<timestamp>:<body>"."""
    mac = hmac.new(secret.encode(), b"v1:" + str(int(timestamp)).encode() + b":" + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: int | None = None,
           tolerance: int = SIGNATURE_TOLERANCE) -> bool:
    """What a receiver does (the reference for docs/webhook.md): a fresh timestamp and a matching
    signature, compared in constant time. `headers` keys lower-case."""
    ts, sig = headers.get(TIMESTAMP_HEADER.lower(), ""), headers.get(SIGNATURE_HEADER.lower(), "")
    when = bigint_of(ts, 0)  # ASCII digits only: int('²') raises, and so would compare_digest on 'é'
    if when is None or not sig or not sig.isascii():
        return False
    if abs((int(time.time()) if now is None else now) - when) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, when, body), sig)


class WebhookNotifier:
    """POSTs each notice, signed, to the configured URL (see the module docstring)."""

    def __init__(self, config: WebhookConfig, client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock  # the signature's timestamp: the time of the request, never the evaluation's
        self.client = client or http_deadline.client(timeout=config.timeout, follow_redirects=False,
                                                     headers={"User-Agent": "usagebot-webhook"})

    def deliver(self, notice: AlertNotice) -> None:
        body = body_of(notice)
        now = self.clock()
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",  # read raw (_start_of)
                   IDEMPOTENCY_HEADER: notice.idempotency_key,
                   TIMESTAMP_HEADER: str(int(now)),
                   SIGNATURE_HEADER: signature(self.config.secret.reveal(), int(now), body)}
        where = f"webhook {self.name!r}"
        try:
            # streamed: a 2xx is taken at its status line, and of any other answer only the first
            # MAX_SAID bytes that arrive within `timeout` are read (a receiver trickling its body, or
            # sending a huge one, held the deliver job for as long as it liked: timeouts are per read);
            # the whole call, headers included, ends within `timeout` (integrations.http_deadline)
            with http_deadline.within(self.config.timeout), \
                    self.client.stream("POST", self.config.url.reveal(), content=body, headers=headers) as resp:
                status = resp.status_code
                if 200 <= status < 300:
                    return
                said = _start_of(resp, self.config.timeout)
        except httpx.TimeoutException:
            raise DeliveryError(f"{where}: no answer within {self.config.timeout}s; will retry") from None
        except httpx.HTTPError as exc:  # connection refused, DNS, TLS: the receiver never saw it, or we cannot tell
            raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}; will retry") from None
        message = f"{where} answered HTTP {status}" + (f": {said}" if said else "")
        if status in RETRYABLE or status >= 500:
            raise DeliveryError(f"{message}; will retry", retry_after=retry_after(resp.headers.get("retry-after"), now))
        if 300 <= status < 400:
            message += " (redirects are not followed: configure the final URL)"
        if status in REFUSES_THE_WEBHOOK or 300 <= status < 400:  # its URL or secret: every row would get it
            raise DeliveryError(f"{message}; not retried: the receiver refuses this webhook (check its url and "
                                "secret, then `usagebot outbox retry`)", halts=True)
        raise DeliveryError(f"{message}; not retried (a 4xx means the receiver refuses this request)", permanent=True)

    def close(self) -> None:
        self.client.close()


def _start_of(resp: httpx.Response, seconds: float) -> str:
    """The start of a refusal's body for its error message: at most MAX_SAID bytes, read for at most
    `seconds` (whatever the receiver sends after that is not waited for), whitespace collapsed, masked,
    then cut to 200 characters."""
    deadline = time.monotonic() + seconds
    got = b""
    try:
        for chunk in resp.iter_raw():
            got += chunk
            if len(got) >= MAX_SAID or time.monotonic() >= deadline:
                break
    except httpx.HTTPError:  # cut off or too slow: what arrived says enough
        pass
    # masked before it is cut (redaction.clip): a secret echoed where the cut falls shows none of it
    return clip(" ".join(got[:MAX_SAID].decode(resp.encoding or "utf-8", "replace").split()), 200)

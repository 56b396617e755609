"""HTTP for the polled sources (http_json, openmeter, stripe_meter): httpx with auth, retries and timeouts.

- Auth: bearer token, basic (username + password) or a custom header; the
  secrets are `Secret`s and never appear in messages or logs.
- Retries: connection errors, timeouts, HTTP 429 and 5xx are retried with
  exponential backoff (`backoff`, doubling, at most `max_backoff`), honouring
  a `Retry-After` header; other 4xx fail at once with a hint.
- Messages name the source, the method and the URL without query string or
  user info, the page, and the first 200 characters of an error body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bot.configbase import Secret, Section
from integrations.sources.base import SourceError

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
AUTH_TYPES = ("none", "bearer", "basic", "header")
USER_AGENT = "usagebot"


@dataclass(frozen=True)
class Auth:
    type: str = "none"
    token: Secret | None = None  # bearer
    username: str | None = None  # basic
    password: Secret | None = None  # basic
    header: str | None = None  # header: name
    value: Secret | None = None  # header: value

    def headers(self) -> dict[str, str]:
        if self.type == "bearer" and self.token:
            return {"Authorization": f"Bearer {self.token.reveal()}"}
        if self.type == "header" and self.header and self.value:
            return {self.header: self.value.reveal()}
        return {}

    def httpx_auth(self) -> httpx.BasicAuth | None:
        if self.type == "basic" and self.username is not None:
            return httpx.BasicAuth(self.username, self.password.reveal() if self.password else "")
        return None

    def secrets(self) -> list[str]:
        return [s.reveal() for s in (self.token, self.password, self.value) if s]


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    timeout: float = 30.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return float(min(self.max_backoff, self.backoff * 2 ** attempt))


def parse_auth(section: Section, key: str = "auth") -> Auth | None:
    if not section.has(key):
        return Auth()
    t = section.table(key)
    kind = t.str("type", required=True, choices=AUTH_TYPES)
    t.check_keys(("type", "token", "token_file", "username", "password", "password_file", "header",
                  "value", "value_file"))
    if kind == "bearer":
        return Auth("bearer", token=t.secret("token", required=True))
    if kind == "basic":
        return Auth("basic", username=t.str("username", required=True), password=t.secret("password"))
    if kind == "header":
        return Auth("header", header=t.str("header", required=True), value=t.secret("value", required=True))
    return Auth() if kind == "none" else None


def parse_retry(section: Section) -> RetryPolicy:
    timeout = section.duration("timeout", 30, min=1) or 30
    return RetryPolicy(
        retries=section.int("retries", 3, min=0, max=20) or 0,
        backoff=float(section.duration("backoff", 1, min=0) or 0),
        max_backoff=float(section.duration("max_backoff", 60, min=1) or 60),
        timeout=float(timeout),
    )


RETRY_KEYS = ("timeout", "retries", "backoff", "max_backoff")


def display_url(url: str) -> str:
    """The URL without user info, query string and fragment (safe for messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class Fetcher:
    """GET JSON with retries. One per source; `close()` releases its connections."""

    source_id: str
    auth: Auth = field(default_factory=Auth)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    headers: Mapping[str, str] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep
    transport: httpx.BaseTransport | None = None
    requests: int = 0  # requests sent (for tests and metrics)

    def __post_init__(self) -> None:
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json", **self.headers, **self.auth.headers()}
        self.client = httpx.Client(headers=hdrs, auth=self.auth.httpx_auth(), timeout=self.retry.timeout,
                                   transport=self.transport, follow_redirects=True)

    def close(self) -> None:
        self.client.close()

    def _scrub(self, text: str) -> str:
        for s in self.auth.secrets():
            if s:
                text = text.replace(s, "***")
        return text

    def _fail(self, where: str, message: str) -> SourceError:
        return SourceError(self._scrub(f"source {self.source_id!r}: {where}: {message}"))

    def get_json(self, url: str, params: Mapping[str, Any] | None = None, what: str = "") -> tuple[Any, httpx.Response]:
        """The decoded JSON body of a GET (and the response, for Link headers)."""
        where = f"GET {display_url(url)}" + (f" ({what})" if what else "")
        attempt = 0
        while True:
            self.requests += 1
            try:
                # merge with the URL's own query string (httpx would replace it with `params`)
                resp = self.client.get(httpx.URL(url).copy_merge_params(dict(params or {})))
            except httpx.TimeoutException:
                problem = f"timed out after {self.retry.timeout:g}s"
                retry_after = None
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__}: {exc})"
                retry_after = None
            else:
                if resp.status_code < 400:
                    try:
                        return resp.json(), resp
                    except ValueError:
                        ctype = resp.headers.get("content-type", "?")
                        raise self._fail(where, f"response is not JSON (content-type {ctype}): "
                                                f"{resp.text[:200]!r}") from None
                body = resp.text[:200]
                problem = f"HTTP {resp.status_code}: {body!r}"
                if resp.status_code not in RETRY_STATUS:
                    hint = {401: "; check the credentials ([sources.auth])",
                            403: "; the credentials lack permission for this resource",
                            404: "; check the url (and the meter/resource id in it)"}.get(resp.status_code, "")
                    raise self._fail(where, problem + hint)
                retry_after = resp.headers.get("retry-after")
            if attempt >= self.retry.retries:
                raise self._fail(where, f"{problem} (gave up after {attempt + 1} attempt(s))")
            self.sleep(self.retry.delay(attempt, retry_after))
            attempt += 1


def dig(data: Any, path: str) -> Any:
    """The value at a dotted path ("data.items", "meta.next", "items.0.id"); "" is the data itself.

    Raises KeyError naming the first missing part.
    """
    if not path:
        return data
    cur = data
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(part)
    return cur


def dig_optional(data: Any, path: str) -> Any:
    try:
        return dig(data, path)
    except KeyError:
        return None

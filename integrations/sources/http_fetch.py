"""HTTP for the polled sources (http_json, openmeter, stripe_meter): httpx with auth, retries and limits.

- Auth: bearer token, basic (username + password) or a custom header; the
  secrets are `Secret`s and are masked (rules.config.redaction) in every message and log.
- Retries: connection errors, timeouts, HTTP 429 and 5xx are retried with
  exponential backoff (`backoff`, doubling, at most `max_backoff`), honouring
  a `Retry-After` header; other 4xx fail at once with a hint.
- Limits: `timeout` bounds each connect and each read; `request_deadline`
  bounds one whole request (a peer that drip-feeds its answer is cut off), and
  `poll_deadline` the whole poll (all pages and retries; `begin_poll()` starts
  it; passing it raises PollDeadline, on which a window source tries a window
  half as long next time: integrations.sources.base.read_window). An answer past
  `max_response_bytes` raises WindowTooLarge: a window source reads a shorter
  window at once. A body is streamed and refused as soon as it passes
  `max_response_bytes` (after decompression: a gzip bomb is cut off too).
  `request_deadline` bounds every socket operation of the request too
  (integrations.http_deadline): a peer that drips its status line and headers
  is cut off at the deadline as well.
- Messages name the source, the method and the URL without query string or
  user info, the page, and the first 200 characters of an error body, masked
  before it is cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from integrations import http_deadline, json_text
from integrations.sources.base import PollDeadline, SourceError, WindowTooLarge
from rules.config import Secret, Section, Table, redaction

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
AUTH_TYPES = ("none", "bearer", "basic", "header")
USER_AGENT = "usagebot"
DEFAULT_REQUEST_DEADLINE = 120
DEFAULT_POLL_DEADLINE = 600
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
ERROR_BODY_BYTES = 64 * 1024  # of an error answer, read for its message (of which 200 characters are shown)
SHOWN_BODY = 200


@dataclass(frozen=True)
class Auth:
    type: str = "none"
    token: Secret | None = None  # bearer
    username: str | None = None  # basic
    password: Secret | None = None  # basic
    header: str | None = None  # header: name
    value: Secret | None = None  # header: value

    def __post_init__(self) -> None:
        if self.type == "basic" and self.password:  # base64("user:password") is masked whole
            redaction.register_pair(self.username, self.password.reveal())

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
    """Retries and limits of one source's HTTP requests (seconds, bytes)."""

    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    timeout: float = 30.0
    request_deadline: float = DEFAULT_REQUEST_DEADLINE
    poll_deadline: float = DEFAULT_POLL_DEADLINE
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return float(min(self.max_backoff, self.backoff * 2 ** attempt))


AUTH = Table("auth", ("type", "token", "token_file", "username", "password", "password_file", "header", "value",
                      "value_file"))


def parse_auth(section: Section, key: str = "auth") -> Auth | None:
    if not section.has(key):
        return Auth()
    t = section.table(key)
    kind = t.str("type", required=True, choices=AUTH_TYPES)
    t.check_keys(AUTH)
    if kind == "bearer":
        return Auth("bearer", token=t.secret("token", required=True))
    if kind == "basic":
        return Auth("basic", username=t.str("username", required=True), password=t.secret("password"))
    if kind == "header":
        return Auth("header", header=t.str("header", required=True), value=t.secret("value", required=True))
    return Auth() if kind == "none" else None


def parse_retry(section: Section) -> RetryPolicy:
    timeout = section.duration("timeout", 30, min=1) or 30
    d = RetryPolicy()
    return RetryPolicy(
        retries=section.int("retries", 3, min=0, max=20) or 0,
        backoff=float(section.duration("backoff", 1, min=0) or 0),
        max_backoff=float(section.duration("max_backoff", 60, min=1) or 60),
        timeout=float(timeout),
        request_deadline=float(section.duration("request_deadline", int(d.request_deadline), min=1)
                               or d.request_deadline),
        poll_deadline=float(section.duration("poll_deadline", int(d.poll_deadline), min=1) or d.poll_deadline),
        max_response_bytes=section.int("max_response_bytes", d.max_response_bytes, min=1024)
        or d.max_response_bytes,
    )


RETRY_KEYS = ("timeout", "retries", "backoff", "max_backoff", "request_deadline", "poll_deadline",
              "max_response_bytes")


def display_url(url: str) -> str:
    """The URL without user info, query string and fragment (safe for messages)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "(unparseable URL)"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def register_url_secrets(url: str, params: Mapping[str, str] = {}, headers: Mapping[str, str] = {}) -> None:  # noqa: B006
    """Tell rules.config.redaction about the secrets in a source's URL (user info, api keys in the query) and in
    its `params` and `headers` whose names look secret (api_key = "...", X-Api-Key = "...")."""
    redaction.register_url(url)
    for name, value in (*params.items(), *headers.items()):
        if redaction.looks_secret(name):
            redaction.register(value)


class _Refused(Exception):
    """A request stopped by a limit (size, deadline); `retry` says whether trying again may help."""

    def __init__(self, message: str, retry: bool, too_large: bool = False) -> None:
        super().__init__(message)
        self.retry, self.too_large = retry, too_large


def _text(raw: bytes, resp: httpx.Response) -> str:
    try:
        return raw.decode(resp.encoding or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", "replace")


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n:,} bytes"


@dataclass
class Fetcher:
    """GET JSON with retries and limits. One per source; `close()` releases its connections."""

    source_id: str
    auth: Auth = field(default_factory=Auth)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    headers: Mapping[str, str] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep
    transport: httpx.BaseTransport | None = None
    monotonic: Callable[[], float] = time.monotonic
    requests: int = 0  # requests sent (for tests and metrics)

    def __post_init__(self) -> None:
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json", **self.headers, **self.auth.headers()}
        self.client = http_deadline.client(headers=hdrs, auth=self.auth.httpx_auth(), timeout=self.retry.timeout,
                                           transport=self.transport, follow_redirects=True)
        self._poll_ends: float | None = None

    def close(self) -> None:
        self.client.close()

    def begin_poll(self) -> None:
        """Start the poll deadline: every request from now on must end within `poll_deadline`."""
        self._poll_ends = self.monotonic() + self.retry.poll_deadline

    def _fail(self, where: str, message: str, deadline: bool = False) -> SourceError:
        kind = PollDeadline if deadline else SourceError
        return kind(f"source {self.source_id!r}: {where}: {message}")

    def _poll_left(self) -> float | None:
        return None if self._poll_ends is None else self._poll_ends - self.monotonic()

    def _fetch(self, url: httpx.URL, budget: float) -> tuple[httpx.Response, bytes]:
        """One GET, its body streamed under the size cap, the whole request (status line, headers,
        body) within `budget` seconds: every socket operation waits at most for what is left of it."""
        got: list[int] = []  # the body's bytes so far, once the headers have arrived
        ends = self.monotonic() + budget
        try:
            with http_deadline.within(budget):
                return self._read(url, budget, ends, got)
        except httpx.TimeoutException:
            if self.monotonic() < ends - 0.01:  # 10 ms: a read cut at the deadline wakes at about it
                raise  # one connect or read took longer than `timeout`: the caller's message
            so_far = (f"the response was still arriving after {budget:g}s ({_mib(got[0])} so far)" if got
                      else f"no status line and headers within {budget:g}s")
            raise _Refused(f"{so_far}; stopped", retry=True) from None

    def _read(self, url: httpx.URL, budget: float, ends: float, got: list[int]) -> tuple[httpx.Response, bytes]:
        limit = self.retry.max_response_bytes
        timeout = max(0.001, min(self.retry.timeout, budget))
        with self.client.stream("GET", url, timeout=timeout) as resp:
            cap = limit if resp.status_code < 400 else ERROR_BODY_BYTES
            declared = resp.headers.get("content-length", "")
            if resp.status_code < 400 and declared.isdigit() and int(declared) > limit:
                raise _Refused(f"the response is {_mib(int(declared))} (Content-Length), more than "
                               f"max_response_bytes ({_mib(limit)}); ask for smaller pages (pagination.size) or "
                               "raise max_response_bytes", retry=False, too_large=True)
            chunks: list[bytes] = []
            got.append(0)
            for chunk in resp.iter_bytes():
                got[0] += len(chunk)
                if got[0] > cap:
                    if resp.status_code >= 400:  # enough of an error body for its message
                        chunks.append(chunk)
                        break
                    raise _Refused(f"the response passed max_response_bytes ({_mib(limit)}) and was cut off; "
                                   "ask for smaller pages (pagination.size) or raise max_response_bytes",
                                   retry=False, too_large=True)
                chunks.append(chunk)
                if self.monotonic() > ends:
                    raise _Refused(f"the response was still arriving after {budget:g}s "
                                   f"({_mib(got[0])} so far); stopped", retry=True)
        return resp, b"".join(chunks)

    def get_json(self, url: str, params: Mapping[str, Any] | None = None, what: str = "") -> tuple[Any, httpx.Response]:
        """The decoded JSON body of a GET (and the response, for Link headers)."""
        where = f"GET {display_url(url)}" + (f" ({what})" if what else "")
        attempt = 0
        while True:
            left = self._poll_left()
            if left is not None and left <= 0:
                raise self._fail(where, f"the poll took longer than poll_deadline ({self.retry.poll_deadline:g}s); "
                                        "stopped (nothing was stored from this poll)", deadline=True)
            budget = self.retry.request_deadline if left is None else min(self.retry.request_deadline, left)
            self.requests += 1
            retry_after = None
            try:
                # merge with the URL's own query string (httpx would replace it with `params`)
                resp, raw = self._fetch(httpx.URL(url).copy_merge_params(dict(params or {})), budget)
            except _Refused as exc:
                if exc.too_large:  # (a window source reads a shorter window: base.read_window)
                    raise WindowTooLarge(f"source {self.source_id!r}: {where}: {exc}",
                                         f"an answer larger than max_response_bytes ({_mib(self.retry.max_response_bytes)})",
                                         "max_response_bytes", where, str(exc)) from None
                if not exc.retry:
                    raise self._fail(where, str(exc)) from None
                problem = str(exc)
            except httpx.TimeoutException:
                problem = f"timed out after {min(self.retry.timeout, budget):g}s"
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__}: {redaction.clip(exc, SHOWN_BODY)})"
            except httpx.DecodingError as exc:  # Content-Encoding says gzip, the body is not
                raise self._fail(where, f"the response body cannot be decoded ({type(exc).__name__}: "
                                        f"{redaction.clip(exc, SHOWN_BODY)})") from None
            except (httpx.RequestError, httpx.InvalidURL) as exc:  # too many redirects, a bad URL...
                raise self._fail(where, f"request failed ({type(exc).__name__}: "
                                        f"{redaction.clip(exc, SHOWN_BODY)})") from None
            else:
                if resp.status_code < 400:
                    return self._decode(where, resp, raw), resp
                body = redaction.clip(_text(raw, resp), SHOWN_BODY)
                problem = f"HTTP {resp.status_code}: {body!r}"
                if resp.status_code not in RETRY_STATUS:
                    hint = {401: "; check the credentials ([sources.auth])",
                            403: "; the credentials lack permission for this resource",
                            404: "; check the url (and the meter/resource id in it)"}.get(resp.status_code, "")
                    raise self._fail(where, problem + hint)
                retry_after = resp.headers.get("retry-after")
            if attempt >= self.retry.retries:
                raise self._fail(where, f"{problem} (gave up after {attempt + 1} attempt(s))")
            wait = self.retry.delay(attempt, retry_after)
            left = self._poll_left()
            if left is not None and wait >= left:
                raise self._fail(where, f"{problem}; a retry in {wait:g}s would pass poll_deadline "
                                        f"({self.retry.poll_deadline:g}s): stopped after {attempt + 1} attempt(s)",
                                 deadline=True)
            self.sleep(wait)
            attempt += 1

    def _decode(self, where: str, resp: httpx.Response, raw: bytes) -> Any:
        try:
            return json_text.loads(raw, unique_keys=False)  # a vendor's response: its last copy, as its own clients read it
        except json_text.JSONProblem as exc:
            ctype = resp.headers.get("content-type", "?")
            text = redaction.clip(_text(raw[:ERROR_BODY_BYTES], resp), SHOWN_BODY)
            raise self._fail(where, f"response is not JSON (content-type {ctype}): {exc}: {text!r}") from None


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

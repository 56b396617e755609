"""A deadline for a whole httpx call (connect, request, status line, headers, body).

httpx's timeouts bound each connect, each write and each read, not the call: a server that sends its
status line and headers a byte at a time (one byte a second against a 10 s timeout) held a call, and
the job making it, for as long as it liked. `within(seconds)` sets a deadline for the calls made in
its block, in this thread (a context variable); a client made by `client()` gives every socket
operation min(its own timeout, the time left) and raises httpcore's timeout once the time is up,
which httpx turns into its own TimeoutException, which the callers already handle (a retry, or an
unknown outcome where a request may have been taken).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

_ENDS: contextvars.ContextVar[float | None] = contextvars.ContextVar("usagebot_http_deadline", default=None)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Every call of a `client()` inside the block ends within `seconds` from now (or raises
    an httpx.TimeoutException). Nested blocks keep the earlier deadline."""
    ends = time.monotonic() + seconds
    outer = _ENDS.get()
    token = _ENDS.set(ends if outer is None else min(outer, ends))
    try:
        yield
    finally:
        _ENDS.reset(token)


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """The timeout to give one socket operation: its own, cut to the time left of the deadline."""
    ends = _ENDS.get()
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        raise error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A socket stream whose every operation is bounded by the deadline too."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's own sync backend, its streams wrapped in `_Stream`."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout),
                                               local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def client(**kwargs: Any) -> httpx.Client:
    """An httpx.Client (same arguments) whose calls honour `within`: its default transport and the
    proxy transports it mounts from the environment get the deadline backend (a transport passed
    in, such as a test's MockTransport, is left as it is). httpx has no argument for httpcore's
    network backend, so it is set on each pool httpx built (every httpcore pool and proxy pool keeps
    it as `_network_backend`; tests/integrations/test_http_deadline.py fails if a release moves it)."""
    made = httpx.Client(**kwargs)
    for mounted in (made._transport, *made._mounts.values()):
        if isinstance(mounted, httpx.HTTPTransport):
            pool = mounted._pool
            if not hasattr(pool, "_network_backend"):
                raise RuntimeError("httpcore's pool no longer keeps _network_backend: update integrations.http_deadline")
            pool._network_backend = _Backend()
    return made

"""A deadline for a whole HTTP call (name lookup, connect, request, status line, headers, body): httpx, and the
sockets http.client reads through (slack_sdk's urllib, requests' urllib3; see the second part).

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
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx
import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.util.connection

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


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


class _Lookup:
    """One getaddrinfo in flight, in a daemon thread, and the callers waiting for it."""

    def __init__(self, key: tuple[str, Any, int]) -> None:
        self.key = key
        self.done = threading.Event()
        self.result: Any = None

    def run(self) -> None:
        host, port, family = self.key
        try:
            self.result = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the waiting callers' threads
            self.result = exc
        finally:
            with _LOOKUPS_LOCK:
                _LOOKUPS.pop(self.key, None)
            self.done.set()


_LOOKUPS: dict[tuple[str, Any, int], _Lookup] = {}  # the lookups in flight, by (host, port, family)
_LOOKUPS_LOCK = threading.Lock()


def _address(sockaddr: tuple[Any, ...]) -> str:
    """The IP to connect to of a getaddrinfo sockaddr, with an IPv6 scope (a link-local address's
    interface) kept: ("fe80::1", 80, 0, 2) -> "fe80::1%2", which connect parses back."""
    ip = str(sockaddr[0])
    if len(sockaddr) == 4 and sockaddr[3] and "%" not in ip:
        return f"{ip}%{sockaddr[3]}"
    return ip


def addresses(host: str, port: Any, family: int = socket.AF_UNSPEC) -> list[str] | None:
    """The IP addresses to connect to for `host`, looked up within the deadline's time left; None
    when no deadline is set or `host` is an IP (the caller connects as usual).

    getaddrinfo has no timeout: a resolver that never answers held a call for its own retries (5 s
    per try, several tries) past any deadline. The lookup runs in a daemon thread and is waited for
    only the time left (the thread ends on its own when the resolver gives up). Calls that look up
    the same name while a lookup of it is in flight wait for that one: a resolver that hangs during
    an outage holds one thread per name, not one per call. Raises TimeoutError when the time is up,
    socket.gaierror when the name does not resolve."""
    if _ENDS.get() is None or _is_ip(host):
        return None
    left = _sock_left(None)
    key = (host, port, family)
    with _LOOKUPS_LOCK:
        lookup = _LOOKUPS.get(key)
        if lookup is None:
            lookup = _LOOKUPS[key] = _Lookup(key)
            threading.Thread(target=lookup.run, name=f"lookup {host}", daemon=True).start()
    if not lookup.done.wait(left):
        raise TimeoutError(f"looking up {host} took longer than the call's deadline")
    if isinstance(lookup.result, BaseException):
        raise lookup.result
    ips = list(dict.fromkeys(_address(info[4]) for info in lookup.result))
    if not ips:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
    return ips


# What a failed connect to one address raises on each stack: the next address may answer, as the
# stacks' own create_connection tries them (a refusal, an unreachable network, a connect timeout
# shorter than the deadline: an address that drops packets, e.g. an IPv6 one on a network without it).
_NEXT_ADDRESS = (OSError, httpcore.ConnectError, httpcore.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)


def _each_address(host: str, port: Any, connect: Any, family: int = socket.AF_UNSPEC) -> Any:
    """connect(address) to each address of `host` in turn (see `addresses`); the first that connects,
    else the last error. Without a deadline, or for an IP, connect(host) once. Each try is given
    what is left of the deadline by `connect` (a later address gets what the earlier ones left)."""
    ips = addresses(host, port, family)
    if ips is None:
        return connect(host)
    last: BaseException | None = None
    for ip in ips:
        try:
            return connect(ip)
        except _NEXT_ADDRESS as exc:
            last = exc
    assert last is not None
    raise last


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
        try:
            return _Stream(_each_address(host, port, lambda where: self._inner.connect_tcp(
                where, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options)))
        except TimeoutError as exc:  # the lookup's time was up
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except socket.gaierror as exc:
            raise httpcore.ConnectError(str(exc)) from exc

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


# ------------------------------------------------------------------ http.client sockets (urllib, urllib3)
#
# slack_sdk (urllib) and requests (urllib3) read through http.client, whose socket timeout also bounds
# each operation only. `bind(sock)` makes a connected socket honour `within` the same way: each send
# and receive gets min(the socket's own timeout, the time left), the own timeout put back afterwards
# (a pooled connection is reused by later calls with their own deadline). The socket's class is
# swapped for a subclass of the same layout (no new slots), so the object http.client and ssl hold is
# unchanged; no thread, no timer. A deadline passed raises TimeoutError, what a socket timeout raises.
# The connections below bind the socket the moment it is connected, before an HTTP proxy's CONNECT
# answer is read (a proxy dripping it held the call), and give the TLS handshake what is left of the
# deadline after the connect and the tunnel (tests/integrations/test_proxy_deadlines.py).


def _sock_left(own: float | None) -> float | None:
    return _left(own, TimeoutError)


def _bounded(op: Any) -> Any:
    """A socket method that runs with its timeout cut to the deadline's time left."""
    def run(self: Any, *args: Any) -> Any:
        own = self.gettimeout()
        cut = _sock_left(own)
        if cut == own:
            return op(self, *args)
        socket.socket.settimeout(self, cut)
        try:
            return op(self, *args)
        finally:
            socket.socket.settimeout(self, own)
    run.__name__ = op.__name__
    return run


def _deadline_class(base: type[socket.socket]) -> type[socket.socket]:
    ops = {name: _bounded(getattr(base, name)) for name in ("recv", "recv_into", "send", "sendall")}
    if "__slots__" in base.__dict__:
        ops["__slots__"] = ()  # same layout as base, so __class__ can be assigned
    return type(f"Deadline{base.__name__}", (base,), ops)


_CLASSES = {base: _deadline_class(base) for base in (socket.socket, ssl.SSLSocket)}


def bind(sock: Any) -> Any:
    """Make `sock` (a connected socket.socket or ssl.SSLSocket) honour `within`; returns it. Any
    other object (a TLS-in-TLS transport through an HTTPS proxy) is returned unbounded."""
    cls = _CLASSES.get(type(sock))
    if cls is not None:
        sock.__class__ = cls
    return sock


def connect_timeout(timeout: Any) -> Any:
    """The timeout to connect with: `timeout` (http.client's default marker too) cut to the time left."""
    if _ENDS.get() is None:
        return timeout
    own = None if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else timeout  # type: ignore[attr-defined]
    return _sock_left(own)


def _rest(sock: Any) -> Any:
    """`bind` `sock` and cut its own timeout to the time left: what a TLS handshake on it waits for
    (ssl bounds a whole handshake, not each read, by the socket's timeout), so connect, proxy tunnel
    and handshake share one deadline instead of each getting the time left when the connect began."""
    bind(sock)
    if _ENDS.get() is not None and isinstance(sock, socket.socket):
        try:
            sock.settimeout(_sock_left(sock.gettimeout()))
        except TimeoutError:
            sock.close()
            raise
    return sock


class _BoundConnect:
    """A connection mixin (http.client's or urllib3's): connect within the time left, the socket
    `bind`-ed as soon as it is connected, so a proxy's CONNECT answer (read before any TLS) is bounded
    too, and the handshake waits for what is left after the connect and the tunnel (`_rest`)."""

    timeout: Any
    sock: Any
    _create_connection: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        create = self._create_connection  # http.client's (socket.create_connection, or a test's)

        def bounded(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
                    *args: Any, **kwargs: Any) -> Any:
            host, port = address[0], address[1]
            return _rest(_each_address(host, port, lambda where: create(
                (where, port), timeout if where == host else connect_timeout(timeout), *args, **kwargs)))
        self._create_connection = bounded

    def connect(self) -> None:
        self.timeout = connect_timeout(self.timeout)
        super().connect()  # type: ignore[misc]
        bind(self.sock)

    def _tunnel(self) -> None:
        super()._tunnel()  # type: ignore[misc]
        _rest(self.sock)


class _BoundUrllib3Connect(_BoundConnect):
    """urllib3 makes its socket in `_new_conn` (and a TLS proxy's in `_connect_tls_proxy`)."""

    _dns_host: str
    port: int
    host: str
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> Any:
        """urllib3's own `_new_conn` without a deadline or for an IP; under a deadline its name is
        looked up within the time left (`addresses`, the address families urllib3 allows) and each
        address is tried with the connect timeout cut to what is left then, its errors raised as
        urllib3 raises them, naming the host (not the address tried)."""
        if _ENDS.get() is None or _is_ip(self._dns_host):
            return _rest(super()._new_conn())  # type: ignore[misc]
        timeout = self.timeout

        def connect(where: str) -> Any:
            return urllib3.util.connection.create_connection(
                (where, self.port), connect_timeout(timeout), source_address=self.source_address,
                socket_options=self.socket_options)
        try:
            sock = _each_address(self._dns_host, self.port, connect, urllib3.util.connection.allowed_gai_family())
        except socket.gaierror as exc:
            raise urllib3.exceptions.NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        except TimeoutError as exc:  # the lookup, or the last address, ran out of time
            raise urllib3.exceptions.ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={timeout})") from exc
        except OSError as exc:
            raise urllib3.exceptions.NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        return _rest(sock)

    def _connect_tls_proxy(self, hostname: str, sock: Any) -> Any:
        return _rest(super()._connect_tls_proxy(hostname, sock))  # type: ignore[misc]


class HTTPConnection(_BoundConnect, http.client.HTTPConnection):
    """http.client's connection, its socket bound by `within` (connect included)."""


class HTTPSConnection(_BoundConnect, http.client.HTTPSConnection):
    """http.client's TLS connection, its socket bound by `within` (connect and handshake included)."""


class HTTPHandler(urllib.request.HTTPHandler):
    """urllib's handler, with `HTTPConnection`."""

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(HTTPConnection, req)


class HTTPSHandler(urllib.request.HTTPSHandler):
    """urllib's TLS handler, with `HTTPSConnection`."""

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(HTTPSConnection, req, context=self._context)


def opener(*handlers: urllib.request.BaseHandler, context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """urllib's opener with `handlers`, its http:// and https:// connections bound by `within`
    (`context`: the TLS one); the caller opens and reads inside `within`."""
    return urllib.request.build_opener(HTTPHandler(), HTTPSHandler(context=context), *handlers)


class _Urllib3Connection(_BoundUrllib3Connect, urllib3.connection.HTTPConnection):
    """urllib3's connection (requests'), its socket bound by `within` (connect included)."""


class _Urllib3TLSConnection(_BoundUrllib3Connect, urllib3.connection.HTTPSConnection):
    """urllib3's TLS connection, its socket bound by `within` (connect and handshake included)."""


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Urllib3Connection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _Urllib3TLSConnection


_POOLS = {"http": _Pool, "https": _TLSPool}


def _bind_pools(adapter: requests.adapters.HTTPAdapter) -> None:
    """Make the connections of `adapter`'s pools, and of the proxy pools it makes later, `bind`-ed."""
    adapter.poolmanager.pool_classes_by_scheme = _POOLS
    make_proxy_manager = adapter.proxy_manager_for

    def proxy_manager_for(proxy: str, **proxy_kwargs: Any) -> Any:
        manager = make_proxy_manager(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # a SOCKS pool makes its own connection class
            manager.pool_classes_by_scheme = _POOLS
        return manager

    adapter.proxy_manager_for = proxy_manager_for  # type: ignore[method-assign]


_BUDGET: contextvars.ContextVar[float | None] = contextvars.ContextVar("usagebot_session_budget", default=None)


@contextlib.contextmanager
def session_budget(seconds: float) -> Iterator[None]:
    """Each request a `bound_session` sends inside the block (in this thread) ends within `seconds`
    as a whole instead of the session's own `seconds` (the longer of the two: a budget below the
    session's never shortens a request), while each of its socket operations is still
    bounded by the session's `seconds` (a stalled connection fails as soon as before): for a few
    known long downloads, such as a Bulk API job's result files, without loosening every other call.
    An enclosing `within` still holds (the earlier deadline wins)."""
    token = _BUDGET.set(seconds)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def bound_session(session: requests.Session, seconds: float) -> requests.Session:
    """Make every request of `session` end within `seconds`, from connecting to the last byte of its
    body (requests reads it in Session.send unless the caller streams it): requests' `timeout` bounds
    each socket operation only. A request sent without a timeout gets `seconds` per socket operation
    too (what is left of the deadline is the tighter bound, except inside `session_budget`). Composes
    with the adapters already mounted (a CA-bundle adapter, a test's routing adapter): their pools
    make `bind`-ed connections; mount adapters before calling this. A request cut off raises what
    requests raises for a timeout or a failed read (requests.Timeout, requests.ConnectionError),
    which its callers already handle."""
    for adapter in session.adapters.values():
        if isinstance(adapter, requests.adapters.HTTPAdapter):
            _bind_pools(adapter)
    send = session.send

    def bounded_send(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = seconds
        budget = _BUDGET.get()
        with within(seconds if budget is None else max(seconds, budget)):  # a budget never shortens
            return send(request, **kwargs)

    session.send = bounded_send  # type: ignore[method-assign]
    return session

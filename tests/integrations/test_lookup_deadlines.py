"""A name lookup (getaddrinfo) is bounded by the call's deadline, on every stack: httpx, http.client
(slack_sdk's urllib) and urllib3 (requests, simple-salesforce).

getaddrinfo has no timeout of its own: a resolver that does not answer held a call for its retries
(seconds each) past any deadline. Here a stand-in getaddrinfo hangs for one name, fails for another
and gives two addresses (the first refusing) for a third; the server is a real one on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests
import urllib3.util.connection

from integrations import http_deadline

HANG = 5.0  # the stand-in resolver's silence: far past the 0.5 s deadline
DEADLINE = 0.5
real_getaddrinfo = socket.getaddrinfo


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A server on 127.0.0.1 and a resolver: slow.test hangs, nowhere.test does not exist,
    two.test is 127.0.0.2 (nothing listens there: refused) then 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    release = threading.Event()

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow.test":
            release.wait(HANG)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host == "nowhere.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host == "two.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.2", "127.0.0.1")]
        if host == "refused.test":  # nothing listens at either
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.2", "127.0.0.3")]
        if host == "dark.test":  # the first drops every SYN (a full backlog), the second answers
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.4", "127.0.0.1")]
        if host == "darker.test":  # both drop every SYN
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.4", "127.0.0.5")]
        if host == "link.test":  # a link-local IPv6 address of interface 3
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1", port, 0, 3))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    dark = [_silent(ip, server.server_address[1]) for ip in ("127.0.0.4", "127.0.0.5")]
    try:
        yield server.server_address[1]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        for listener, queued in dark:
            for sock in [listener, *queued]:
                sock.close()


def _silent(ip: str, port: int) -> tuple[socket.socket, list[socket.socket]]:
    """A listener at ip:port that never accepts, its backlog full: the kernel drops further SYNs, so
    a connect there hangs until its timeout (as to an address whose packets are dropped)."""
    listener = socket.socket()
    listener.bind((ip, port))
    listener.listen(0)
    queued = []
    for _ in range(3):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((ip, port))
        queued.append(sock)
    time.sleep(0.1)
    return listener, queued


def _httpx(url: str) -> Any:
    with http_deadline.within(DEADLINE), http_deadline.client(timeout=HANG * 2) as c:
        return c.get(url).json()


def _urllib(url: str) -> Any:
    with http_deadline.within(DEADLINE), http_deadline.opener().open(url, timeout=HANG * 2) as resp:
        return resp.read()


def _requests(url: str) -> Any:
    session = requests.Session()
    session.trust_env = False
    http_deadline.bound_session(session, DEADLINE)
    return session.get(url, timeout=HANG * 2).json()


STACKS = {"httpx": (_httpx, httpx.ConnectTimeout, httpx.ConnectError),
          "urllib": (_urllib, urllib.error.URLError, urllib.error.URLError),
          "requests": (_requests, requests.ConnectionError, requests.ConnectionError)}


def _failure(call: Callable[[str], Any], url: str, error: type[BaseException]) -> tuple[float, str]:
    """(seconds taken, error text) of a call that must fail with `error`."""
    started = time.monotonic()
    with pytest.raises(error) as err:
        call(url)
    return time.monotonic() - started, str(err.value)


@pytest.mark.parametrize("stack", STACKS)
def test_a_lookup_that_never_answers_ends_at_the_deadline(port: int, stack: str) -> None:
    call, timed_out, _ = STACKS[stack]
    took, said = _failure(call, f"http://slow.test:{port}/", timed_out)
    assert took < DEADLINE + 1.0, took  # before: HANG (5 s), the resolver's own time
    assert "slow.test" in said or "timed out" in said.lower(), said


@pytest.mark.parametrize("stack", STACKS)
def test_a_name_that_does_not_exist_fails_at_once(port: int, stack: str) -> None:
    call, _, failed = STACKS[stack]
    took, said = _failure(call, f"http://nowhere.test:{port}/", failed)
    assert took < DEADLINE, took
    assert "not known" in said or "resolve" in said.lower(), said


@pytest.mark.parametrize("stack", STACKS)
def test_the_next_address_is_tried_when_the_first_refuses(port: int, stack: str) -> None:
    call, _, _ = STACKS[stack]
    got = call(f"http://two.test:{port}/")
    assert got in ({"ok": True}, b'{"ok": true}')


def test_without_a_deadline_nothing_changes(port: int) -> None:
    """No deadline: the stack's own lookup (None from addresses), a name and an IP alike."""
    assert http_deadline.addresses("localhost", port) is None
    with http_deadline.within(5):
        assert http_deadline.addresses("127.0.0.1", port) is None
        assert http_deadline.addresses("[::1]", port) is None
        assert http_deadline.addresses("two.test", port) == ["127.0.0.2", "127.0.0.1"]
    with httpx.Client() as c:
        assert c.get(f"http://localhost:{port}/").json() == {"ok": True}


CONNECT = 0.5  # a connect timeout shorter than the deadline below


def _calls(deadline: float, connect: float | None) -> dict[str, Any]:
    """Each stack's GET under `deadline`, with its own per-connect timeout `connect` (None: none)."""
    def via_httpx(url: str) -> Any:
        with http_deadline.within(deadline), http_deadline.client(timeout=connect) as c:
            return c.get(url).json()

    def via_urllib(url: str) -> Any:
        with http_deadline.within(deadline), http_deadline.opener().open(url, timeout=connect) as resp:
            return resp.read()

    def via_requests(url: str) -> Any:
        session = requests.Session()
        session.trust_env = False
        http_deadline.bound_session(session, deadline)
        return session.get(url, timeout=connect).json()
    return {"httpx": via_httpx, "urllib": via_urllib, "requests": via_requests}


@pytest.mark.parametrize("stack", STACKS)
def test_an_address_that_drops_packets_is_left_at_its_connect_timeout_for_the_next(port: int, stack: str) -> None:
    """The connect timeout (0.5 s) is shorter than the deadline (5 s): the first address's timeout
    moves on to the second, as the stacks' own create_connection does (before: httpx and requests
    gave up at the first timeout)."""
    started = time.monotonic()
    got = _calls(5.0, CONNECT)[stack](f"http://dark.test:{port}/")
    assert got in ({"ok": True}, b'{"ok": true}')
    assert time.monotonic() - started < CONNECT + 1.0


@pytest.mark.parametrize("stack", STACKS)
def test_every_address_is_given_only_what_the_earlier_ones_left_of_the_deadline(
        port: int, stack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0.8 s connect timeout, a 1 s deadline, both addresses silent: the first is left at 0.8 s, the
    second gets the 0.2 s left and the call ends at 1 s (before, on requests: the second got the
    time left when the connect began, and the call took 1.6 s)."""
    tried: list[tuple[str, float]] = []

    def recorded(real: Any) -> Any:
        def create_connection(address: Any, timeout: Any = None, *args: Any, **kwargs: Any) -> Any:
            tried.append((address[0], timeout))
            return real(address, timeout, *args, **kwargs)
        return create_connection
    monkeypatch.setattr(socket, "create_connection", recorded(socket.create_connection))
    monkeypatch.setattr(urllib3.util.connection, "create_connection", recorded(urllib3.util.connection.create_connection))
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 (each stack's own timeout error)
        _calls(1.0, 0.8)[stack](f"http://darker.test:{port}/")
    assert time.monotonic() - started < 1.35
    assert [ip for ip, _ in tried] == ["127.0.0.4", "127.0.0.5"], tried
    assert tried[1][1] <= 0.25, tried


def test_a_connection_error_names_the_host_not_the_address_tried(port: int) -> None:
    with pytest.raises(requests.ConnectionError) as err:
        _calls(2.0, None)["requests"](f"http://refused.test:{port}/")
    assert "refused.test" in str(err.value) and "127.0.0.3" not in str(err.value), err.value


def test_calls_waiting_for_a_hung_lookup_share_one_thread(port: int) -> None:
    """A resolver that hangs during an outage: 8 calls in a row hold one lookup thread, not 8."""
    for _ in range(8):
        with pytest.raises(httpx.ConnectTimeout):
            _calls(0.3, None)["httpx"](f"http://slow.test:{port}/")
    lookups = [t for t in threading.enumerate() if t.name == "lookup slow.test"]
    assert len(lookups) == 1


def test_a_link_local_address_keeps_its_interface(port: int) -> None:
    with http_deadline.within(5):
        assert http_deadline.addresses("link.test", port) == ["fe80::1%3"]

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
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests

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
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        yield server.server_address[1]
    finally:
        release.set()
        server.shutdown()
        server.server_close()


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


@pytest.mark.parametrize("stack", STACKS)
def test_a_lookup_that_never_answers_ends_at_the_deadline(port: int, stack: str) -> None:
    call, timed_out, _ = STACKS[stack]
    started = time.monotonic()
    with pytest.raises(timed_out) as err:
        call(f"http://slow.test:{port}/")
    took = time.monotonic() - started
    assert took < DEADLINE + 1.0, took  # before: HANG (5 s), the resolver's own time
    assert "slow.test" in str(err.value) or "timed out" in str(err.value).lower(), err.value


@pytest.mark.parametrize("stack", STACKS)
def test_a_name_that_does_not_exist_fails_at_once(port: int, stack: str) -> None:
    call, _, failed = STACKS[stack]
    started = time.monotonic()
    with pytest.raises(failed) as err:
        call(f"http://nowhere.test:{port}/")
    assert time.monotonic() - started < DEADLINE
    assert "not known" in str(err.value) or "resolve" in str(err.value).lower(), err.value


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

"""integrations.http_deadline: a deadline for a whole httpx call, over a real local socket."""

from __future__ import annotations

import time

import httpx
import pytest

from integrations import http_deadline
from tests.integrations.drip import dripping


def test_every_socket_operation_of_a_call_waits_only_for_what_is_left_of_its_deadline() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 400 + b"\r\nContent-Length: 0\r\n\r\n"
    with dripping(b"", head, 0.05) as drip, http_deadline.client(timeout=5) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout), http_deadline.within(0.5):
            client.get(drip.url)
        took = time.monotonic() - started
    assert took < 3  # the drip lasts ~22 s, each byte well within the 5 s timeout; the deadline 0.5 s


def test_a_nested_block_keeps_the_earlier_deadline_and_none_applies_outside() -> None:
    with http_deadline.within(0.2):
        with http_deadline.within(60):
            with pytest.raises(httpx.ReadTimeout):
                time.sleep(0.25)
                http_deadline._left(5.0, httpx.ReadTimeout)
    assert http_deadline._left(5.0, httpx.ReadTimeout) == 5.0


def test_the_backend_is_set_on_httpx_own_pools_and_a_given_transport_is_left_alone() -> None:
    """Fails if an httpx/httpcore release stops keeping the pool's backend where this module sets it."""
    made = http_deadline.client()
    mock = httpx.MockTransport(lambda request: httpx.Response(204))
    given = http_deadline.client(transport=mock)
    try:
        assert isinstance(made._transport._pool._network_backend, http_deadline._Backend)  # type: ignore[attr-defined]
        assert given._transport is mock and given.get("http://x/").status_code == 204
    finally:
        made.close()
        given.close()

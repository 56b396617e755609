"""Whole-call deadlines for the Slack (slack_sdk/urllib) and Salesforce (requests/urllib3) clients:
a server that drips its answer a byte at a time, each byte well within the per-read timeout, is cut
off at the configured timeout (before: it held the call as long as it liked)."""

from __future__ import annotations

import ssl
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from requests.adapters import HTTPAdapter

from integrations.salesforce.client import SalesforceClient, SalesforceUnavailable
from integrations.salesforce.config import SalesforceConfig
from integrations.slack.api import SlackApi, make_web_client
from integrations.slack.config import SlackConfig
from integrations.slack.errors import SlackUnavailable
from rules.config import Secret
from tests.fakes.salesforce_server import _certificate
from tests.integrations.drip import dripping

TIMEOUT = 1.0
BODY = b'{"ok": true, "channel": "C1", "ts": "1.000001"}'


def _answer(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _slack(url: str) -> SlackApi:
    config = SlackConfig(bot_token=Secret("xoxb-test"), base_url=url.removesuffix("hook"), timeout=TIMEOUT)
    return SlackApi(make_web_client(config), min_post_interval=0)


@pytest.mark.parametrize("part", ["status line", "body"])
def test_a_slack_post_against_a_dripping_server_ends_at_its_timeout(part):
    whole = _answer(BODY)
    upfront, dripped = (b"", whole) if part == "status line" else (whole[:-len(BODY)], BODY)
    with dripping(upfront, dripped, every=0.2) as drip:
        started = time.monotonic()
        with pytest.raises(SlackUnavailable) as err:
            _slack(drip.url).post_message("C1", "hello")
        took = time.monotonic() - started
    assert took < 2 * TIMEOUT and drip.sent[0] >= 2  # it was dripping, and was cut off at the deadline
    assert "network error" in str(err.value) and "will retry" in str(err.value)


def test_a_slack_call_answered_at_once_still_works():
    with dripping(_answer(BODY), b"", every=0.2) as drip:
        assert _slack(drip.url).post_message("C1", "hello")["ts"] == "1.000001"


class _ToDrip(HTTPAdapter):
    """Sends every request to the dripping server on 127.0.0.1, whatever its URL."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        u, to = urlsplit(request.url or ""), urlsplit(self.url)
        request.url = urlunsplit((to.scheme, to.netloc, u.path, u.query, u.fragment))
        return super().send(request, **kwargs)


def _salesforce(url: str, verify: str | None = None) -> SalesforceClient:
    session = requests.Session()
    session.trust_env = False
    session.verify = verify or True
    session.mount("https://", _ToDrip(url))
    cfg = SalesforceConfig(auth="session", session_id=Secret("00Dxx!session"),
                           instance_url="https://acme.my.salesforce.com", timeout=TIMEOUT, retries=0)
    return SalesforceClient(cfg, session=session, sleep=lambda s: None)


@pytest.mark.parametrize("part", ["status line", "body"])
def test_a_salesforce_query_against_a_dripping_server_ends_at_its_timeout(part):
    body = b'{"totalSize": 1, "done": true, "records": [{"Id": "001000000000001AAA"}]}'
    whole = _answer(body)
    upfront, dripped = (b"", whole) if part == "status line" else (whole[:-len(body)], body)
    with dripping(upfront, dripped, every=0.2) as drip:
        started = time.monotonic()
        with pytest.raises(SalesforceUnavailable) as err:
            _salesforce(drip.url).query_all("SELECT Id FROM Account")
        took = time.monotonic() - started
    assert took < 2 * TIMEOUT and drip.sent[0] >= 2
    assert "talking to Salesforce" in str(err.value) and not err.value.ambiguous  # a query takes nothing


def test_a_salesforce_create_cut_off_by_the_deadline_is_ambiguous():
    body = b'[{"id": "001000000000001AAA", "success": true, "errors": []}]'
    whole = _answer(body)
    with dripping(whole[:-len(body)], body, every=0.2) as drip:
        with pytest.raises(SalesforceUnavailable) as err:
            _salesforce(drip.url).create("Account", [{"Name": "Acme"}])
    assert err.value.ambiguous  # the create may have been carried out


def test_a_salesforce_query_answered_at_once_still_works():
    body = b'{"totalSize": 1, "done": true, "records": [{"Id": "001000000000001AAA"}]}'
    with dripping(_answer(body), b"", every=0.2) as drip:
        assert _salesforce(drip.url).query_all("SELECT Id FROM Account") == [{"Id": "001000000000001AAA"}]


def test_a_salesforce_query_over_tls_against_a_dripping_server_ends_at_its_timeout():
    """The same over TLS: the socket bound is ssl's (its class swapped after the handshake)."""
    cert, key = _certificate()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    body = b'{"totalSize": 0, "done": true, "records": []}'
    whole = _answer(body)
    with dripping(whole[:-len(body)], body, every=0.2, tls=tls) as drip:
        started = time.monotonic()
        with pytest.raises(SalesforceUnavailable):
            _salesforce(drip.url, verify=cert).query_all("SELECT Id FROM Account")
        took = time.monotonic() - started
    assert took < 2 * TIMEOUT and drip.sent[0] >= 2

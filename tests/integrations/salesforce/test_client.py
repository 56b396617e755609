"""SalesforceClient through the real simple-salesforce against the fake org (HTTPS on 127.0.0.1)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from integrations.salesforce.client import (
    ApiUsage,
    SalesforceAuthError,
    SalesforceClient,
    SalesforceLimitError,
    SalesforceRequestError,
    SalesforceUnavailable,
    parse_limit_info,
)
from integrations.salesforce.config import SalesforceConfig
from rules.config import Secret
from tests.fakes.salesforce_server import FakeSalesforce, make_rsa_key_pair, running
from tests.integrations.salesforce.helpers import password_config


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return make_rsa_key_pair(tmp_path_factory.mktemp("jwt"))


@pytest.fixture
def fake(rsa_key: tuple[Path, str]) -> Iterator[FakeSalesforce]:
    yield from running(jwt_public_key=rsa_key[1])


def client(fake: FakeSalesforce, cfg: SalesforceConfig, sleeps: list[float] | None = None) -> SalesforceClient:
    return SalesforceClient(cfg, session=fake.session(), sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_password_login_at_login_salesforce_com_and_update(fake):
    rid = fake.add_record("Account", {"Name": "Acme"})
    c = client(fake, password_config(fake))
    results = c.update("Account", [{"Id": rid, "Usage_Health_Score__c": 72}])
    assert results[0].ok and results[0].id == rid
    assert fake.records["Account"][rid]["Usage_Health_Score__c"] == 72
    assert fake.logins == [{"kind": "soap", "host": "login.salesforce.com", "username": fake.username}]
    data = fake.data_requests()[0]
    assert data.host == "fake-org.my.salesforce.com" and data.path == "/services/data/v59.0/composite/sobjects"
    assert c.calls == 2 and c.logins == 1 and c.usage == ApiUsage(1, 15_000)


def test_sandbox_domain_logs_in_at_test_salesforce_com(fake):
    c = client(fake, password_config(fake, domain="test"))
    c.query_all("SELECT Id FROM Account")
    assert fake.logins[0]["host"] == "test.salesforce.com"


def test_jwt_bearer_login_with_a_private_key(fake, rsa_key):
    key_path, _ = rsa_key
    cfg = SalesforceConfig(auth="jwt", username=fake.username, consumer_key=Secret(fake.consumer_key),
                           private_key=Secret(key_path.read_text()), domain="test")
    c = client(fake, cfg)
    rid = fake.add_record("Account", {"Name": "Acme"})
    assert c.update("Account", [{"Id": rid, "Usage_Trend__c": "Growing"}])[0].ok
    assert fake.logins == [{"kind": "jwt", "host": "test.salesforce.com", "username": fake.username}]


def test_jwt_for_a_user_that_has_not_approved_the_app_fails_clearly(fake, rsa_key):
    cfg = SalesforceConfig(auth="jwt", username="someone@else.com", consumer_key=Secret(fake.consumer_key),
                           private_key=Secret(rsa_key[0].read_text()))
    with pytest.raises(SalesforceAuthError) as e:
        client(fake, cfg).query_all("SELECT Id FROM Account")
    msg = str(e.value)
    assert "invalid_grant" in msg and "JWT bearer for someone@else.com at login.salesforce.com" in msg
    assert "PRIVATE KEY" not in msg


def test_session_id_and_instance_url_with_a_ca_bundle_and_no_routing(fake):
    cfg = SalesforceConfig(auth="session", session_id=Secret(fake.new_session()), instance_url=fake.instance_url,
                           ca_bundle=fake.ca_file)
    c = SalesforceClient(cfg)  # a plain requests session: the instance URL is the fake itself
    rid = fake.add_record("Account", {"Name": "Acme"})
    assert c.update("Account", [{"Id": rid, "Expansion_Signal__c": True}])[0].ok
    assert fake.logins == [] and c.logins == 0


def test_expired_session_is_renewed_by_logging_in_again(fake):
    rid = fake.add_record("Account", {"Name": "Acme"})
    c = client(fake, password_config(fake))
    c.update("Account", [{"Id": rid, "A__c": 1}])
    fake.expire_sessions()
    assert c.update("Account", [{"Id": rid, "A__c": 2}])[0].ok
    assert c.logins == 2 and fake.records["Account"][rid]["A__c"] == 2


def test_expired_session_id_cannot_be_renewed(fake):
    sid = fake.new_session()
    cfg = SalesforceConfig(auth="session", session_id=Secret(sid), instance_url=fake.instance_url,
                           ca_bundle=fake.ca_file)
    c = SalesforceClient(cfg)
    fake.expire_sessions()
    with pytest.raises(SalesforceAuthError) as e:
        c.query_all("SELECT Id FROM Account")
    assert "INVALID_SESSION_ID" in str(e.value) and "cannot log in again" in str(e.value)
    assert sid not in str(e.value)


def test_wrong_password_message_names_the_user_and_host_but_no_secret(fake):
    cfg = replace(password_config(fake), password=Secret("not-the-password"))
    with pytest.raises(SalesforceAuthError) as e:
        client(fake, cfg).query_all("SELECT Id FROM Account")
    msg = str(e.value)
    assert "INVALID_LOGIN" in msg and f"username {fake.username} at login.salesforce.com" in msg
    assert "not-the-password" not in msg and fake.security_token not in msg
    assert "***" in repr(cfg.password) and "not-the-password" not in repr(cfg)


def test_no_credentials_refuses_to_build_a_client():
    with pytest.raises(SalesforceAuthError, match="no Salesforce credentials"):
        SalesforceClient(SalesforceConfig())


def test_per_record_errors_come_back_in_request_order(fake):
    a = fake.add_record("Account", {"Name": "A"})
    b = fake.add_record("Account", {"Name": "B"})
    fake.record_errors[b] = ("FIELD_INTEGRITY_EXCEPTION", "bad value")
    res = client(fake, password_config(fake)).update(
        "Account", [{"Id": a, "X__c": 1}, {"Id": b, "X__c": 2}, {"Id": "001000000000404AAA", "X__c": 3}])
    assert [r.ok for r in res] == [True, False, False]
    assert res[1].error == "FIELD_INTEGRITY_EXCEPTION: bad value"
    assert res[2].error == "INVALID_CROSS_REFERENCE_KEY: invalid cross reference id"


def test_more_than_200_records_in_one_request_is_a_programming_error(fake):
    with pytest.raises(ValueError, match="200"):
        client(fake, password_config(fake)).update("Account", [{"Id": f"001{i:015d}"} for i in range(201)])


def test_5xx_is_retried_with_doubling_backoff_then_gives_up(fake):
    sleeps: list[float] = []
    cfg = password_config(fake, retries=2, retry_backoff=1.5)
    c = client(fake, cfg, sleeps)
    fake.fail(503, times=2, path_contains="/query")
    assert c.query_all("SELECT Id FROM Account") == []
    assert sleeps == [1.5, 3.0]
    fake.fail(502, times=5, path_contains="/query")
    with pytest.raises(SalesforceUnavailable) as e:
        c.query_all("SELECT Id FROM Account")
    assert "HTTP 502" in str(e.value) and "after 3 tries" in str(e.value) and not e.value.ambiguous


def test_creates_are_not_retried_and_say_the_outcome_is_unknown(fake):
    c = client(fake, password_config(fake, retries=3))
    fake.fail(500, times=1, path_contains="/composite/sobjects")
    with pytest.raises(SalesforceUnavailable) as e:
        c.create("Task", [{"Subject": "x"}])
    assert e.value.ambiguous and "Task" not in fake.records
    assert len([r for r in fake.log if "/composite/" in r.path]) == 1


def test_request_limit_exceeded(fake):
    fake.api_used = fake.api_limit
    with pytest.raises(SalesforceLimitError, match="REQUEST_LIMIT_EXCEEDED"):
        client(fake, password_config(fake)).query_all("SELECT Id FROM Account")


def test_budget_stops_before_the_configured_share_of_the_daily_limit(fake):
    fake.api_limit, fake.api_used = 1000, 498
    c = client(fake, password_config(fake, max_api_share=0.5))
    c.query_all("SELECT Id FROM Account")  # usage unknown before the first answer: allowed -> 499
    c.query_all("SELECT Id FROM Account")  # 499 + 1 <= 500 -> 500
    assert c.budget() == 0
    with pytest.raises(SalesforceLimitError) as e:
        c.query_all("SELECT Id FROM Account")
    assert "500 of 1,000" in str(e.value) and fake.api_used == 500


def test_request_level_errors_name_the_problem(fake):
    fake.fields = {"Account": {"Name"}}
    rid = fake.add_record("Account", {"Name": "A"})
    with pytest.raises(SalesforceRequestError, match="INVALID_FIELD: No such column 'Nope__c'"):
        client(fake, password_config(fake)).update("Account", [{"Id": rid, "Nope__c": 1}])


def test_query_pages_follow_next_records_url(fake):
    fake.page_size = 3
    for i in range(7):
        fake.add_record("Account", {"Name": f"A{i}"})
    c = client(fake, password_config(fake))
    rows = c.query_all("SELECT Id, Name FROM Account")
    assert sorted(r["Name"] for r in rows) == [f"A{i}" for i in range(7)] and "attributes" not in rows[0]
    assert len(fake.data_requests()) == 3


def test_parse_limit_info():
    assert parse_limit_info("api-usage=18/5000") == ApiUsage(18, 5000)
    assert parse_limit_info("api-usage=25/5000; per-app-api-usage=17/250(appName=x)") == ApiUsage(25, 5000)
    assert parse_limit_info("per-app-api-usage=17/250(appName=x)") is None
    assert parse_limit_info(None) is None


def test_fake_refuses_hosts_other_than_salesforce_and_loopback(fake):
    import requests

    with pytest.raises(requests.ConnectionError, match="refusing"):
        fake.session().get("https://example.com/")


def test_fake_answers_single_sobject_patch_through_simple_salesforce(fake):
    from simple_salesforce.exceptions import SalesforceMalformedRequest

    rid = fake.add_record("Account", {"Name": "Acme"})
    sf = client(fake, password_config(fake)).connect()
    assert sf.Account.update(rid, {"Usage_Trend__c": "Stable"}) == 204
    assert fake.records["Account"][rid]["Usage_Trend__c"] == "Stable"
    with pytest.raises(SalesforceMalformedRequest, match="INVALID_CROSS_REFERENCE_KEY"):
        sf.Account.update("001000000000404AAA", {"Usage_Trend__c": "Stable"})


# ------------------------------------------------------------ bulk result downloads (bulk_timeout)

def _bulk_client(fake: FakeSalesforce) -> tuple[SalesforceClient, list[str]]:
    ids = [fake.add_record("Account", {"Name": f"Acme {i}"}) for i in range(3)]
    cfg = password_config(fake, timeout=1.0, bulk_timeout=3.0, retries=0)
    return client(fake, cfg), ids


def _bulk_update(c: SalesforceClient, ids: list[str]) -> dict:
    return c.bulk_write("Account", [{"Id": rid, "Usage_Health_Score__c": 70} for rid in ids], "Id")


def _failing_bulk_update(path: str, **trickle: float) -> tuple[float, SalesforceUnavailable]:
    """(seconds taken, the error) of a bulk update whose result file at `path` trickles (FakeSalesforce.trickle)."""
    with FakeSalesforce() as fake:
        c, ids = _bulk_client(fake)
        fake.trickle(path, **trickle)  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(SalesforceUnavailable) as err:
            _bulk_update(c, ids)
        return time.monotonic() - started, err.value


def test_a_bulk_result_file_arriving_steadily_for_longer_than_timeout_is_downloaded():
    """Each result download is bounded as a whole by bulk_timeout (3 s), not timeout (1 s): a file
    that trickles in over 2 s (a part every 0.2 s) is read to its end (before: cut off at 1 s)."""
    with FakeSalesforce() as fake:
        c, ids = _bulk_client(fake)
        fake.trickle("/successfulResults", seconds=2.0)
        started = time.monotonic()
        results = _bulk_update(c, ids)
        took = time.monotonic() - started
    assert took >= 1.8 and all(results[rid].ok for rid in ids)


def test_a_bulk_result_file_trickling_past_bulk_timeout_fails_as_a_timeout():
    took, err = _failing_bulk_update("/successfulResults", seconds=8.0, pieces=40)
    assert 2.5 < took < 5.0  # cut off at bulk_timeout (3 s), not when the file ended (8 s)
    assert "Bulk API 2.0 update of 3 Account record(s)" in str(err) and "talking to Salesforce" in str(err)


def test_a_stalled_bulk_result_download_fails_at_timeout():
    """bulk_timeout bounds the download as a whole; a connection that stops sending still fails at
    `timeout` (1 s) per read, not at bulk_timeout (3 s)."""
    took, err = _failing_bulk_update("/failedResults", seconds=0.0, stall=6.0)
    assert took < 2.0 and "talking to Salesforce" in str(err)


def test_other_calls_keep_timeout_as_their_whole_bound(fake):
    """Only the result downloads get bulk_timeout: a query answer trickling for 2 s fails at 1 s."""
    c = client(fake, password_config(fake, timeout=1.0, bulk_timeout=3.0, retries=0))
    fake.trickle("/query", seconds=2.0)
    started = time.monotonic()
    with pytest.raises(SalesforceUnavailable):
        c.query_all("SELECT Id FROM Account")
    assert time.monotonic() - started < 1.8


def test_bulk_record_errors_are_masked_like_the_other_calls_errors(fake):
    """A failed record's sf__Error from a job's result file echoing a secret was kept as it came
    (stored as the record's last error, shown by `crm status`); composite writes' errors were masked."""
    token = "sfsecret-Vb8Nq3Lx7Tz2"
    Secret(token)
    ids = [fake.add_record("Account", {"Name": f"Acme {i}"}) for i in range(2)]
    fake.record_errors[ids[0]] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", f"value rejected near {token}")
    results = client(fake, password_config(fake)).bulk_write(
        "Account", [{"Id": rid, "Usage_Health_Score__c": 70} for rid in ids], "Id")
    assert not results[ids[0]].ok and results[ids[1]].ok
    assert results[ids[0]].error == "FIELD_CUSTOM_VALIDATION_EXCEPTION:value rejected near ***"


def test_a_bulk_timeout_below_timeout_does_not_shorten_a_result_download():
    """bulk_timeout (here 1 s) is a budget for long downloads, never less than `timeout` (3 s): a
    result file arriving over 2 s is read (before: cut off at bulk_timeout's 1 s)."""
    with FakeSalesforce() as fake:
        ids = [fake.add_record("Account", {"Name": f"Acme {i}"}) for i in range(3)]
        c = client(fake, password_config(fake, timeout=3.0, bulk_timeout=1.0, retries=0))
        fake.trickle("/successfulResults", seconds=2.0)
        results = _bulk_update(c, ids)
    assert all(results[rid].ok for rid in ids)


def test_a_bulk_call_whose_login_again_cannot_connect_is_a_login_failure(fake):
    """A Bulk API call meets an expired session (simple-salesforce does not renew those: the client
    logs in again itself) and the login host cannot be reached: SalesforceUnavailable(login=True),
    nothing sent (before: requests.ConnectionError escaped the client, raised inside its handler)."""
    rid = fake.add_record("Account", {"Name": "Acme"})
    c = client(fake, password_config(fake, retries=0))
    c.query_all("SELECT Id FROM Account")  # logged in
    fake.expire_sessions()
    fake.login_unreachable = 1
    with pytest.raises(SalesforceUnavailable) as err:
        c.bulk_write("Account", [{"Id": rid, "Usage_Health_Score__c": 70}], "Id")
    assert err.value.login and "log in again" in str(err.value)

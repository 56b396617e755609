"""Salesforce REST access through simple-salesforce: login, re-login, retries, API-limit tracking.

- Logs in lazily on the first request: username/password(+token) by SOAP login,
  JWT bearer by the OAuth token endpoint (both at https://<domain>.salesforce.com),
  or a given session id + instance URL.
- An expired session (401 INVALID_SESSION_ID) is renewed by logging in again
  (simple-salesforce does it for password and JWT logins); a session-id setup
  cannot log in, and says so.
- 5xx answers and connection errors are retried `retries` times with doubling
  backoff for idempotent requests (updates, upserts, queries); creates are not
  retried (the caller records them as "unknown" and checks next time).
- Every response's Sforce-Limit-Info header ("api-usage=used/limit") is read;
  before each API call the client stops (SalesforceLimitError) when the org's
  usage has reached `max_api_share` of its daily limit, and on
  REQUEST_LIMIT_EXCEEDED.
- Messages never contain passwords, tokens, keys or session ids.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceOperationError,
    SalesforceRefusedRequest,
)
from simple_salesforce.exceptions import SalesforceError as _SfError

from integrations import http_deadline
from integrations.salesforce.config import MAX_BATCH, SalesforceConfig
from integrations.salesforce.errors import record_error_hint
from rules.config.redaction import clip, mask, register

T = TypeVar("T")
_LIMIT_INFO = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")
_LOGIN_PATHS = ("/services/Soap/u/", "/services/oauth2/token")


@contextmanager
def _no_login_hint() -> Iterator[None]:
    """simple-salesforce warns with an authorize URL (holding the consumer key) on one JWT failure;
    the SalesforceAuthError usagebot raises says what to do instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*If your connected app policy", category=UserWarning)
        yield


class SalesforceError(Exception):
    """A Salesforce problem, described without secrets (the message is masked when the error is made)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(mask(message))


class SalesforceAuthError(SalesforceError):
    """Login failed, or the session expired and cannot be renewed."""


class SalesforceLimitError(SalesforceError):
    """The org's API budget for usagebot is used up (or Salesforce said REQUEST_LIMIT_EXCEEDED)."""


class SalesforceUnavailable(SalesforceError):
    """5xx answers or connection errors that outlasted the retries.

    `ambiguous`: the request may have been carried out (a create that timed out).
    `login`: the login host could not be reached (logging in, or again after an expired session):
    the request itself was not carried out.
    """

    def __init__(self, message: str, ambiguous: bool = False, login: bool = False) -> None:
        super().__init__(message)  # masked by SalesforceError
        self.ambiguous = ambiguous and not login
        self.login = login


_LOGIN_PATHS = ("/services/Soap/u/", "/services/oauth2/token")


def _is_login(exc: requests.RequestException) -> bool:
    """A request error of a login (simple-salesforce logs in again inside a call on an expired session)."""
    url = str(getattr(getattr(exc, "request", None), "url", "") or "")
    return any(p in url for p in _LOGIN_PATHS)


class SalesforceRequestError(SalesforceError):
    """Salesforce rejected the whole request (e.g. INVALID_FIELD: a mapped field does not exist)."""


@dataclass(frozen=True)
class ApiUsage:
    used: int
    limit: int


@dataclass(frozen=True)
class RecordResult:
    """One record of an sObject Collections (or Bulk API) request."""

    ok: bool
    id: str | None = None
    error: str | None = None
    created: bool = False

    @property
    def hint(self) -> str | None:
        """For a failure retrying cannot fix: what to do (integrations.salesforce.errors); else None."""
        return None if self.ok or not self.error else record_error_hint(self.error)


def parse_limit_info(header: str | None) -> ApiUsage | None:
    """ "api-usage=18/5000; per-app-api-usage=..." -> ApiUsage(18, 5000)."""
    if not header:
        return None
    m = _LIMIT_INFO.search(header)
    return ApiUsage(int(m.group(1)), int(m.group(2))) if m else None


def _errors_text(errors: Sequence[Mapping[str, Any]] | Any) -> str:
    if not isinstance(errors, list) or not errors:
        return clip(errors, 500)
    parts = []
    for e in errors:
        if not isinstance(e, Mapping):
            parts.append(clip(e, 200))
            continue
        code = e.get("statusCode") or e.get("errorCode") or "ERROR"
        text = f"{code}: {e.get('message', '')}".strip()
        if e.get("fields"):
            text += f" (fields: {', '.join(map(str, e['fields']))})"
        parts.append(text)
    return clip("; ".join(parts), 2000)


def _sf_error_text(exc: _SfError) -> str:
    content = getattr(exc, "content", None)
    if isinstance(content, list | dict):
        return _errors_text(content if isinstance(content, list) else [content])
    return clip(content or exc, 500)


def _error_code(exc: _SfError) -> str:
    content = getattr(exc, "content", None)
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        return str(content[0].get("errorCode") or content[0].get("statusCode") or "")
    return ""


class SalesforceClient:
    """One connection to one org. `calls` counts every HTTP request (logins included)."""

    def __init__(self, config: SalesforceConfig, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not config.can_connect:
            raise SalesforceAuthError(
                "no Salesforce credentials in [salesforce]: set username + password (+ security_token), or "
                "username + consumer_key + private_key_file (JWT), or session_id + instance_url")
        self.config = config
        self.session = session or requests.Session()
        if config.ca_bundle:
            self.session.mount("https://", _VerifyWith(config.ca_bundle))
        # every request ends within `timeout` as a whole (requests' own bounds each socket read only)
        http_deadline.bound_session(self.session, config.timeout)
        self.session.hooks.setdefault("response", []).append(self._on_response)
        self.sleep = sleep
        self.calls = 0
        self.logins = 0
        self.usage: ApiUsage | None = None
        self._sf: Salesforce | None = None

    # ---------------------------------------------------------------- plumbing

    def _on_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if any(p in response.request.url for p in _LOGIN_PATHS):  # type: ignore[operator]
            self.logins += 1
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self.usage = usage

    def budget(self) -> int | None:
        """API calls usagebot may still make today (None until Salesforce has told the usage)."""
        if self.usage is None:
            return None
        return math.floor(self.config.max_api_share * self.usage.limit) - self.usage.used

    def check_budget(self, calls: int = 1) -> None:
        left = self.budget()
        if left is not None and left < calls:
            u = self.usage
            assert u is not None
            raise SalesforceLimitError(
                f"stopped short of the daily API limit: the org has used {u.used:,} of {u.limit:,} API calls "
                f"today and salesforce.max_api_share = {self.config.max_api_share:g} allows usagebot up to "
                f"{math.floor(self.config.max_api_share * u.limit):,}")

    def _login_error(self, exc: SalesforceAuthenticationFailed) -> SalesforceAuthError:
        code = getattr(exc, "code", "") or ""
        message = getattr(exc, "auth_message", "") or ""
        return SalesforceAuthError(f"Salesforce login failed ({self.config.describe_auth()}): {code}: {message}"
                                   .rstrip(": "))

    def connect(self) -> Salesforce:
        if self._sf is None:
            with _no_login_hint():
                self._sf = self._login()
        register(getattr(self._sf, "session_id", None))  # the session is a secret too (and is renewed)
        return self._sf

    def _login(self) -> Salesforce:
        c = self.config
        common: dict[str, Any] = {"version": c.api_version, "session": self.session, "domain": c.domain}
        try:
            if c.auth == "password":
                assert c.password is not None
                register(c.password.reveal() + (c.security_token.reveal() if c.security_token else ""))
                return Salesforce(username=c.username, password=c.password.reveal(),
                                      security_token=c.security_token.reveal() if c.security_token else "",
                                      **common)
            elif c.auth == "jwt":
                assert c.consumer_key is not None and c.private_key is not None
                return Salesforce(username=c.username, consumer_key=c.consumer_key.reveal(),
                                      privatekey=c.private_key.reveal(), **common)
            else:
                assert c.session_id is not None
                return Salesforce(session_id=c.session_id.reveal(), instance_url=c.instance_url, **common)
        except SalesforceAuthenticationFailed as exc:
            raise self._login_error(exc) from None
        except requests.RequestException as exc:
            raise SalesforceUnavailable(f"cannot reach {c.login_host} to log in: {type(exc).__name__}",
                                        login=True) from None

    def _login_unreachable(self, what: str, exc: requests.RequestException) -> SalesforceUnavailable:
        """The error of logging in again (an expired session) when the login host cannot be reached."""
        return SalesforceUnavailable(f"{what}: cannot reach {self.config.login_host} to log in again: "
                                     f"{type(exc).__name__}", login=True)

    def _call(self, what: str, fn: Callable[[Salesforce], T], idempotent: bool = True) -> T:
        """Run one API request with the budget check, re-login and retry rules."""
        attempts = 1 + (self.config.retries if idempotent else 0)
        relogged = False
        attempt = 0
        while True:
            self.check_budget()
            sf = self.connect()
            try:
                with _no_login_hint():  # simple-salesforce may log in again inside fn
                    return fn(sf)
            except SalesforceAuthenticationFailed as exc:  # re-login inside simple-salesforce failed
                raise self._login_error(exc) from None
            except SalesforceExpiredSession as exc:
                if self.config.auth == "session":
                    raise SalesforceAuthError(
                        f"{what}: the session id is expired or invalid ({_sf_error_text(exc)}); auth = "
                        "\"session\" cannot log in again: set a fresh salesforce.session_id, or configure "
                        "username/password or JWT") from None
                if relogged:
                    raise SalesforceAuthError(f"{what}: the session stayed invalid after logging in again "
                                              f"({_sf_error_text(exc)})") from None
                relogged = True  # e.g. Bulk API calls, which simple-salesforce does not renew itself
                try:
                    with _no_login_hint():
                        sf._refresh_session()
                except SalesforceAuthenticationFailed as login_exc:
                    raise self._login_error(login_exc) from None
                except requests.RequestException as net:  # raised in a handler: the clauses below miss it
                    raise self._login_unreachable(what, net) from None
                continue
            except SalesforceOperationError as exc:  # a Bulk API job failed or timed out
                raise SalesforceRequestError(f"{what}: {clip(exc, 500)}") from None
            except SalesforceRefusedRequest as exc:
                if _error_code(exc) == "REQUEST_LIMIT_EXCEEDED":
                    raise SalesforceLimitError(f"{what}: Salesforce refused the request: "
                                               f"{_sf_error_text(exc)}") from None
                raise SalesforceRequestError(f"{what}: {_sf_error_text(exc)}") from None
            except _SfError as exc:
                status = int(getattr(exc, "status", 0) or 0)
                if status >= 500:
                    problem = f"HTTP {status}: {_sf_error_text(exc)}"
                else:
                    raise SalesforceRequestError(f"{what}: HTTP {status}: {_sf_error_text(exc)}") from None
            except requests.RequestException as exc:
                if _is_login(exc):  # the session expired and logging in again cannot connect: nothing was done
                    raise self._login_unreachable(what, exc) from None
                problem = f"{type(exc).__name__} talking to Salesforce"
            attempt += 1
            if attempt >= attempts:
                break
            self.sleep(self.config.retry_backoff * 2 ** (attempt - 1))
        tries = f" after {attempts} tries" if attempts > 1 else ""
        raise SalesforceUnavailable(f"{what}: {problem}{tries}", ambiguous=not idempotent)

    # ----------------------------------------------------------------- queries

    def query_all(self, soql: str) -> list[dict[str, Any]]:
        """Every record of a SOQL query (one API call per page of up to 2,000)."""
        page = self._call("SOQL query", lambda sf: sf.query(soql, timeout=self.config.timeout))
        records = list(page.get("records", []))
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            url = page["nextRecordsUrl"]
            page = self._call("SOQL query (next page)",
                              lambda sf, u=url: sf.query_more(u, identifier_is_url=True, timeout=self.config.timeout))
            records.extend(page.get("records", []))
        for r in records:
            r.pop("attributes", None)
        return records

    # ------------------------------------------------------------------ writes

    def _collection(self, what: str, path: str, method: str, records: Sequence[Mapping[str, Any]],
                    idempotent: bool) -> list[RecordResult]:
        if not records:
            return []
        if len(records) > MAX_BATCH:
            raise ValueError(f"{what}: {len(records)} records in one request; sObject Collections take {MAX_BATCH}")
        body = {"allOrNone": False, "records": list(records)}
        result = self._call(what, lambda sf: sf.restful(path, method=method, json=body, timeout=self.config.timeout),
                            idempotent=idempotent)
        if not isinstance(result, list) or len(result) != len(records) or not all(isinstance(r, dict) for r in result):
            # a 2xx we cannot read (a proxy's {} or []): the request may have been carried out, like a lost answer
            raise SalesforceUnavailable(f"{what}: expected {len(records)} results, got {clip(result, 200)}",
                                        ambiguous=not idempotent)
        return [RecordResult(ok=bool(r.get("success")), id=r.get("id"),
                             error=None if r.get("success") else _errors_text(r.get("errors")),
                             created=bool(r.get("created", False))) for r in result]

    def update(self, sobject: str, records: Sequence[Mapping[str, Any]]) -> list[RecordResult]:
        """Update by Id (each record: {"Id": ..., field: value}); results in request order."""
        recs = [{"attributes": {"type": sobject}, "id": r["Id"], **{k: v for k, v in r.items() if k != "Id"}}
                for r in records]
        return self._collection(f"update {len(recs)} {sobject} record(s)", "composite/sobjects", "PATCH", recs,
                                idempotent=True)

    def upsert(self, sobject: str, external_id_field: str, records: Sequence[Mapping[str, Any]]) -> list[RecordResult]:
        """Upsert by an external id field (each record holds it); results in request order."""
        recs = [{"attributes": {"type": sobject}, **r} for r in records]
        return self._collection(f"upsert {len(recs)} {sobject} record(s) by {external_id_field}",
                                f"composite/sobjects/{sobject}/{external_id_field}", "PATCH", recs,
                                idempotent=True)

    def create(self, sobject: str, records: Sequence[Mapping[str, Any]]) -> list[RecordResult]:
        """Create records (not retried: a lost answer may still have created them)."""
        recs = [{"attributes": {"type": sobject}, **r} for r in records]
        return self._collection(f"create {len(recs)} {sobject} record(s)", "composite/sobjects", "POST", recs,
                                idempotent=False)

    # ---------------------------------------------------------------- bulk 2.0

    def bulk_write(self, sobject: str, records: Sequence[Mapping[str, Any]], key_field: str,
                   external_id_field: str | None = None) -> dict[str, RecordResult]:
        """Update (or upsert by `external_id_field`) through one Bulk API 2.0 ingest job.

        `key_field` ("Id" or the external id field) identifies records in the
        job's result files; returns key -> result (unprocessed records fail).
        """
        rows = [{k: _bulk_cell(v) for k, v in r.items()} for r in records]
        what = f"Bulk API 2.0 {'upsert' if external_id_field else 'update'} of {len(rows)} {sobject} record(s)"

        def run(sf: Salesforce) -> dict[str, RecordResult]:
            job = getattr(sf.bulk2, sobject)
            wait = self.config.bulk_poll_interval
            # simple-salesforce waits up to 24 h for a job; bound it (instance attribute, class untouched).
            job._client.DEFAULT_WAIT_TIMEOUT_SECONDS = self.config.bulk_timeout
            if external_id_field:
                jobs = job.upsert(records=rows, external_id_field=external_id_field, wait=wait)
            else:
                jobs = job.update(records=rows, wait=wait)
            out: dict[str, RecordResult] = {}
            for j in jobs:
                job_id = j["job_id"]
                for row in csv.DictReader(io.StringIO(self._bulk_results(job.get_successful_records, job_id))):
                    out[row.get(key_field, "")] = RecordResult(True, id=row.get("sf__Id") or None,
                                                               created=row.get("sf__Created") == "true")
                for row in csv.DictReader(io.StringIO(self._bulk_results(job.get_failed_records, job_id))):
                    out[row.get(key_field, "")] = RecordResult(False, id=row.get("sf__Id") or None,
                                                               error=clip(row.get("sf__Error") or "failed", 2000))
                for row in csv.DictReader(io.StringIO(self._bulk_results(job.get_unprocessed_records, job_id))):
                    out[row.get(key_field, "")] = RecordResult(False, error="not processed by the bulk job")
            return out

        return self._call(what, run, idempotent=True)

    def _bulk_results(self, get: Callable[[str], str], job_id: str) -> str:
        """One result file of a job: its download may take up to `bulk_timeout` as a whole (a big
        file arriving steadily), each read still at most `timeout` (a stalled connection fails then)."""
        with http_deadline.session_budget(self.config.bulk_timeout):
            return get(job_id)


class _VerifyWith(HTTPAdapter):
    """Verify TLS with this CA bundle (a session's `verify` loses to REQUESTS_CA_BUNDLE in the environment)."""

    def __init__(self, ca_bundle: str) -> None:
        super().__init__()
        self.ca_bundle = ca_bundle

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["verify"] = self.ca_bundle
        return super().send(request, **kwargs)


def _bulk_cell(value: Any) -> str:
    """A CSV cell for Bulk API 2.0: "#N/A" clears a field, booleans are true/false."""
    if value is None:
        return "#N/A"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

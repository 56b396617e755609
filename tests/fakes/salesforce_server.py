"""A fake Salesforce org: a real HTTPS server on 127.0.0.1 spoken to by the real simple-salesforce.

It answers
- SOAP login (POST /services/Soap/u/<v>) for username + password + security token,
- the OAuth token endpoint (POST /services/oauth2/token) for the JWT bearer flow
  (the assertion is verified with the test's public key: iss, sub, aud),
- SOQL (GET .../query?q=..., pages of `page_size` with nextRecordsUrl) for a
  small subset: SELECT f, Rel.f, ... FROM obj [WHERE a IN ('x', ...) AND b = 'y' AND (c >= 2026-01-01T00:00:00Z)]
  [ORDER BY f, ...] [LIMIT n]; relationship paths (Owner.Email) follow the lookup field to the record;
  every record has a SystemModstamp, moved on each write (and by `modify()`),
- sObject PATCH (.../sobjects/<obj>/<id>),
- sObject Collections: PATCH/POST .../composite/sobjects and PATCH
  .../composite/sobjects/<obj>/<externalIdField> (allOrNone=false, per-record errors),
- Bulk API 2.0 ingest jobs (create, upload CSV, close, poll, result files),
and puts "Sforce-Limit-Info: api-usage=<used>/<limit>" on every REST answer.

Faults to inject: `expire_sessions()` (next call 401 INVALID_SESSION_ID),
`fail(status, times, path_contains)` (e.g. 503s; `after=True`: the request is carried
out first and only its answer is the fault, a lost answer), `record_errors[id] = (code, msg)`
(per-record errors), `api_used`/`api_limit` (REQUEST_LIMIT_EXCEEDED once used up),
`login_unreachable = N` (the next N logins cannot connect: the login host is down),
`hang_after(n, path_contains, method)` (the n-th such request is carried out, then its
answer waits until `release` is set: a client can be killed with the write done).

Like Salesforce it validates: with `fields`, writes AND queries of unknown fields fail
(INVALID_FIELD); long text areas (Description) cannot be filtered in a WHERE clause;
Task Subject is at most 255 characters and its WhatId must name an existing record; an
upsert's key field must be one of `external_ids[object]` (when given).

simple-salesforce always builds https://<domain>.salesforce.com (login) and
https://<instance>/... URLs. `session()` returns a requests.Session that trusts
the fake's self-signed certificate and sends requests for *.salesforce.com hosts
to 127.0.0.1:<port> (keeping the Host header); any other host is refused.
`instance_url` (https://127.0.0.1:<port>) works without that routing, for
session-id auth with `ca_bundle = fake.ca_file`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import ipaddress
import itertools
import json
import re
import ssl
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import jwt
import requests
from requests.adapters import HTTPAdapter

from tests.fakes.http import FakeServer

INSTANCE_HOST = "fake-org.my.salesforce.com"
_CERT_LOCK = threading.Lock()
_CERT: tuple[str, str] | None = None


def _certificate() -> tuple[str, str]:
    """(cert file, key file) of a self-signed certificate for 127.0.0.1 and *.salesforce.com (once per run)."""
    global _CERT
    with _CERT_LOCK:
        if _CERT is not None:
            return _CERT
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-salesforce")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                x509.DNSName("*.salesforce.com"), x509.DNSName("*.my.salesforce.com"),
            ]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        d = Path(tempfile.mkdtemp(prefix="fake-sf-"))
        (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        _CERT = (str(d / "cert.pem"), str(d / "key.pem"))
        return _CERT


def make_rsa_key_pair(directory: Path) -> tuple[Path, str]:
    """(private key PEM file, public key PEM text) for the JWT bearer flow."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / "server.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return path, public


class _RouteToFake(HTTPAdapter):
    def __init__(self, port: int, fake: FakeSalesforce | None = None) -> None:
        super().__init__()
        self.port = port
        self.fake = fake

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        u = urlsplit(request.url or "")
        host = u.hostname or ""
        f = self.fake
        if f is not None and f.login_unreachable > 0 and ("/services/Soap/u/" in u.path
                                                           or u.path.endswith("/services/oauth2/token")):
            f.login_unreachable -= 1
            raise requests.ConnectionError(f"fake Salesforce: {host} cannot be reached (login_unreachable)",
                                           request=request)  # as requests' HTTPAdapter does
        if host.endswith(".salesforce.com"):
            request.headers["Host"] = u.netloc
            request.url = urlunsplit((u.scheme, f"127.0.0.1:{self.port}", u.path, u.query, u.fragment))
        elif host not in ("127.0.0.1", "localhost"):
            raise requests.ConnectionError(f"fake Salesforce: refusing to contact {host} (tests stay on 127.0.0.1)")
        return super().send(request, **kwargs)


@dataclass
class LoggedRequest:
    method: str
    host: str
    path: str
    status: int
    body: Any = None

    @property
    def is_login(self) -> bool:
        return "/services/Soap/u/" in self.path or self.path.endswith("/services/oauth2/token")


@dataclass
class _Fault:
    status: int
    times: int
    path_contains: str
    body: Any
    method: str | None = None
    after: bool = False  # carry the request out, then answer with the fault (the answer is lost)


NOT_FILTERABLE = frozenset({"Description"})  # long text areas cannot be filtered in SOQL
@dataclass
class _Trickle:
    path_contains: str
    seconds: float
    pieces: int
    stall: float


@dataclass
class _Job:
    id: str
    object: str
    operation: str
    external_id_field: str | None
    state: str = "Open"
    rows: list[dict[str, str]] = field(default_factory=list)
    ok: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)


_COND = re.compile(r"^(\w+)\s*(=|!=|>=|<=|>|<|IN)\s*(.+)$", re.IGNORECASE | re.DOTALL)
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


def _literal(text: str) -> Any:
    text = text.strip()
    if text.startswith("'"):
        m = _QUOTED.match(text)
        return m.group(1).replace("\\'", "'") if m else text
    if text.lower() == "null":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text  # numbers and datetimes compare as the stored ISO strings


def _matches(record: dict[str, Any], cond: str) -> bool:
    m = _COND.match(cond.strip())
    if m is None:
        raise ValueError(f"fake SOQL cannot parse condition {cond!r}")
    fld, op, raw = m.group(1), m.group(2).upper(), m.group(3)
    value = record.get(fld)
    if op == "IN":
        return value in [x.replace("\\'", "'") for x in _QUOTED.findall(raw)]
    lit = _literal(raw)
    if op == "=":
        return value == lit
    if op == "!=":
        return value != lit
    if value is None or lit is None:
        return False
    value, lit = _comparable(value), _comparable(lit)
    return {">=": value >= lit, "<=": value <= lit, ">": value > lit, "<": value < lit}[op]


def _comparable(v: Any) -> Any:
    """Datetimes (stored "2026-11-24T10:00:00.000+0000", SOQL literals "2026-11-24T10:00:00Z") as instants."""
    if isinstance(v, str) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", v):
        text = v.replace("Z", "+00:00")
        text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text)
        try:
            return dt.datetime.fromisoformat(text).timestamp()
        except ValueError:
            return v
    return v


class FakeSalesforce:
    def __init__(self, username: str = "usagebot@example.com", password: str = "s3cret-pass",
                 security_token: str = "TOKEN123", consumer_key: str = "CONSUMER-KEY",
                 jwt_public_key: str | None = None, api_limit: int = 15_000, api_used: int = 0,
                 page_size: int = 2000, fields: dict[str, set[str]] | None = None,
                 external_ids: dict[str, set[str]] | None = None) -> None:
        self.username, self.password, self.security_token = username, password, security_token
        self.consumer_key, self.jwt_public_key = consumer_key, jwt_public_key
        self.api_limit, self.api_used = api_limit, api_used
        self.page_size = page_size
        # object -> allowed fields (None = any); writes of other fields fail the request with INVALID_FIELD
        self.fields = fields
        self.external_ids = external_ids  # object -> fields marked External ID (None = any field)
        self.hang: tuple[int, str, str | None] | None = None  # (countdown, path part, method)
        self.trickles: list[_Trickle] = []
        self.processed = threading.Event()  # set when a hanging request has been carried out
        self.release = threading.Event()  # set to let a hanging request answer
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.record_errors: dict[str, tuple[str, str]] = {}
        self.create_errors: dict[str, tuple[str, str]] = {}  # sobject -> (code, msg): every create refused
        self.log: list[LoggedRequest] = []
        self.sessions: set[str] = set()
        self.logins: list[dict[str, str]] = []
        self.faults: list[_Fault] = []
        self.login_unreachable = 0  # the next N logins fail to connect (requests.ConnectionError), never reach us
        self.now: float | None = None  # CreatedDate clock (None = real time)
        self._ids = itertools.count(1)
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.RLock()
        self._server: FakeServer | None = None
        self._thread: threading.Thread | None = None
        self.ca_file, self._key_file = _certificate()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeSalesforce:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.ca_file, self._key_file)
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = FakeServer(("127.0.0.1", 0), Handler)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeSalesforce:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return int(self._server.server_address[1])

    @property
    def instance_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override `verify`
        s.verify = self.ca_file
        s.mount("https://", _RouteToFake(self.port, self))
        s.mount("http://", _RouteToFake(self.port, self))
        return s

    # ------------------------------------------------------------------- setup

    def new_id(self, prefix: str = "001") -> str:
        return f"{prefix}{next(self._ids):012d}AAA"

    def add_record(self, sobject: str, fields: dict[str, Any], id: str | None = None) -> str:
        with self._lock:
            rid = id or self.new_id("001" if sobject == "Account" else "a00")
            self.records.setdefault(sobject, {})[rid] = {"Id": rid, "SystemModstamp": self._created_date(), **fields}
            return rid

    def modify(self, sobject: str, rid: str, **values: Any) -> None:
        """Change a record as a Salesforce user would (its SystemModstamp moves to now)."""
        with self._lock:
            self.records[sobject][rid].update(values, SystemModstamp=self._created_date())

    def new_session(self) -> str:
        token = f"00D000000000001!SESSION{next(self._ids)}"
        self.sessions.add(token)
        return token

    def expire_sessions(self) -> None:
        with self._lock:
            self.sessions.clear()

    def fail(self, status: int = 503, times: int = 1, path_contains: str = "/services/data/",
             body: Any = None, method: str | None = None, after: bool = False) -> None:
        """Answer the next `times` requests whose path contains `path_contains` (and of `method`) with `status`
        (after carrying them out, when `after`)."""
        default = [{"message": "Service temporarily unavailable", "errorCode": "SERVER_UNAVAILABLE"}]
        self.faults.append(_Fault(status, times, path_contains, body if body is not None else default, method,
                                  after))

    def hang_after(self, n: int, path_contains: str, method: str | None = None) -> None:
        """The n-th request (1 = the next) whose path contains `path_contains` is carried out, then hangs."""
        self.hang = (n, path_contains, method)

    def trickle(self, path_contains: str, seconds: float, pieces: int = 10, stall: float = 0.0) -> None:
        """The next answer whose path contains `path_contains` sends its status line and headers at once,
        then its body in `pieces` parts spread over `seconds` (each gap well within a client's per-read
        timeout when seconds/pieces is small): a big result file arriving steadily. With `stall`, it
        goes silent for `stall` seconds after the first part instead (a stalled connection)."""
        self.trickles.append(_Trickle(path_contains, seconds, pieces, stall))

    # --------------------------------------------------------------- inspection

    def data_requests(self) -> list[LoggedRequest]:
        return [r for r in self.log if not r.is_login]

    def written(self, method: str = "PATCH") -> list[dict[str, Any]]:
        """Every record sent in collection requests of `method` (in order)."""
        out = []
        for r in self.log:
            if r.method == method and "/composite/sobjects" in r.path and r.status < 300 and isinstance(r.body, dict):
                out.extend(r.body.get("records", []))
        return out

    # ----------------------------------------------------------------- helpers

    def _created_date(self) -> str:
        t = self.now if self.now is not None else time.time()
        return dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")

    def _check_fields(self, sobject: str, names: list[str]) -> str | None:
        if self.fields is None or sobject not in self.fields:
            return None
        for n in names:
            if n not in self.fields[sobject] and n not in ("Id", "attributes", "CreatedDate", "SystemModstamp"):
                return n
        return None

    def _exists(self, rid: Any) -> bool:
        return any(rid in recs for recs in self.records.values())

    def _apply(self, sobject: str, rid: str, values: dict[str, Any]) -> dict[str, Any]:
        if rid in self.record_errors:
            code, msg = self.record_errors[rid]
            return {"id": rid, "success": False, "errors": [{"statusCode": code, "message": msg, "fields": []}]}
        store = self.records.get(sobject, {})
        if rid not in store:
            return {"id": None, "success": False, "errors": [{
                "statusCode": "INVALID_CROSS_REFERENCE_KEY", "message": "invalid cross reference id",
                "fields": []}]}
        store[rid].update(values, SystemModstamp=self._created_date())
        return {"id": rid, "success": True, "errors": []}

    def _create(self, sobject: str, values: dict[str, Any]) -> dict[str, Any]:
        def refused(code: str, message: str, fld: str) -> dict[str, Any]:
            return {"id": None, "success": False, "created": False,
                    "errors": [{"statusCode": code, "message": message, "fields": [fld]}]}

        if sobject in self.create_errors:
            return refused(*self.create_errors[sobject], "Subject")
        if sobject == "Account" and not values.get("Name"):
            return refused("REQUIRED_FIELD_MISSING", "Required fields are missing: [Name]", "Name")
        if sobject == "Task":
            if len(str(values.get("Subject") or "")) > 255:
                return refused("STRING_TOO_LONG", "Subject: data value too large (max length=255)", "Subject")
            if values.get("WhatId") and not self._exists(values["WhatId"]):
                return refused("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", "WhatId")
        rid = self.new_id({"Task": "00T", "Account": "001"}.get(sobject, "a00"))
        self.records.setdefault(sobject, {})[rid] = {"Id": rid, "CreatedDate": self._created_date(),
                                                     "SystemModstamp": self._created_date(), **values}
        return {"id": rid, "success": True, "created": True, "errors": []}

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Raises ValueError (MALFORMED_QUERY) or LookupError (INVALID_FIELD) like Salesforce would.

        Relationship paths ("Owner.Email", "CSM__r.Email") follow the lookup field (OwnerId,
        CSM__c) to the record it names and come back nested, as Salesforce returns them; a
        condition may be wrapped in parentheses; ORDER BY sorts on the named fields (nulls first).
        """
        m = re.match(r"^\s*SELECT\s+(.+?)\s+FROM\s+(\w+)(?:\s+WHERE\s+(.+?))?(?:\s+ORDER\s+BY\s+(.+?))?"
                     r"(?:\s+LIMIT\s+(\d+))?\s*$", soql, re.IGNORECASE | re.DOTALL)
        if m is None:
            raise ValueError(f"fake SOQL cannot parse {soql!r}")
        sobject = m.group(2)
        cols = [c.strip() for c in m.group(1).split(",")]
        conds = [c.strip().strip("()").strip() for c in re.split(r"\s+AND\s+", m.group(3), flags=re.IGNORECASE)
                 ] if m.group(3) else []
        where = [c.split()[0] for c in conds]
        order = [c.strip().split()[0] for c in m.group(4).split(",")] if m.group(4) else []
        plain = [c if "." not in c else _lookup_field(c.split(".")[0]) for c in cols]
        bad = self._check_fields(sobject, [*plain, *where, *order]) if self.fields is not None else None
        if bad:
            raise LookupError(f"No such column '{bad}' on entity '{sobject}'")
        for f in where:
            if f in NOT_FILTERABLE:
                raise LookupError(f"field '{f}' can not be filtered in a query call")
        out = []
        for rec in self.records.get(sobject, {}).values():
            if all(_matches(rec, c) for c in conds):
                out.append(rec)
        if order:
            out.sort(key=lambda r: tuple((r.get(f) is not None, _comparable(r.get(f)) if r.get(f) is not None
                                          else 0) for f in order))
        if m.group(5):
            out = out[: int(m.group(5))]
        return [{"attributes": {"type": sobject}, **self._columns(rec, cols)} for rec in out]

    def _columns(self, rec: dict[str, Any], cols: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for c in cols:
            if "." not in c:
                row[c] = rec.get(c)
                continue
            rel, rest = c.split(".", 1)
            target = self._by_id(rec.get(_lookup_field(rel)))
            if target is None:
                row[rel] = None
                continue
            nested = row.get(rel) or {"attributes": {"type": target[0]}}
            nested.update(self._columns(target[1], [rest]))
            row[rel] = nested
        return row

    def _by_id(self, rid: Any) -> tuple[str, dict[str, Any]] | None:
        for sobject, recs in self.records.items():
            if rid in recs:
                return sobject, recs[rid]
        return None


def _lookup_field(relationship: str) -> str:
    """The lookup field of a relationship name: Owner -> OwnerId, CSM__r -> CSM__c."""
    return relationship[:-3] + "__c" if relationship.endswith("__r") else relationship + "Id"


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeSalesforce
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # ------------------------------------------------------------------ replies

    def _send(self, status: int, body: Any = None, content_type: str = "application/json",
              limit_info: bool = False) -> None:
        lost: _Fault | None = getattr(self, "_lost_answer", None)
        if lost is not None:  # the request was carried out; its answer is lost
            self._lost_answer = None
            status, body, content_type = lost.status, lost.body, "application/json"
        if getattr(self, "_hang", False):
            self._hang = False
            f = self.server_fake
            f.processed.set()
            f._lock.release()  # let other requests through while this answer waits (held by _handle)
            try:
                f.release.wait(60)
            finally:
                f._lock.acquire()
        data = b"" if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if limit_info:
            f = self.server_fake
            self.send_header("Sforce-Limit-Info", f"api-usage={f.api_used}/{f.api_limit}")
        self.end_headers()
        self._status = status
        trickle = next((t for t in self.server_fake.trickles if t.path_contains in self.path), None)
        if trickle is None:
            self.wfile.write(data)
            return
        f = self.server_fake
        f.trickles.remove(trickle)
        f._lock.release()  # other requests may go on while this answer trickles (held by _handle)
        try:
            self._trickle(data, trickle)
        finally:
            f._lock.acquire()

    def _trickle(self, data: bytes, t: _Trickle) -> None:
        size = max(1, -(-len(data) // t.pieces))
        parts = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        gap = t.seconds / max(1, len(parts) - 1)
        try:
            for i, part in enumerate(parts):
                self.wfile.write(part)
                self.wfile.flush()
                if i == 0 and t.stall:
                    time.sleep(t.stall)
                elif i < len(parts) - 1:
                    time.sleep(gap)
        except OSError:  # the client gave up: this answer ends here
            self.close_connection = True

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self, method: str) -> None:
        f = self.server_fake
        self._status = 0
        raw = self._body()
        path = urlsplit(self.path).path
        logged: Any = None
        if raw and "json" in (self.headers.get("Content-Type") or ""):
            try:
                logged = json.loads(raw)
            except ValueError:
                logged = None
        elif raw and "/jobs/" in path:
            logged = raw.decode()
        try:
            with f._lock:
                self._route(method, path, raw)
        except Exception as exc:  # a bug in the fake: answer 500 so the test sees it
            self._send(500, [{"message": f"fake error: {exc!r}", "errorCode": "FAKE_ERROR"}])
        finally:
            with f._lock:
                f.log.append(LoggedRequest(method, self.headers.get("Host", ""), self.path, self._status, logged))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    # ------------------------------------------------------------------ routing

    def _route(self, method: str, path: str, raw: bytes) -> None:
        f = self.server_fake
        for fault in f.faults:
            if fault.times > 0 and fault.path_contains in self.path and fault.method in (None, method):
                fault.times -= 1
                if fault.after:  # carried out below; the answer is replaced by the fault
                    self._lost_answer = fault
                    break
                self._send(fault.status, fault.body)
                return
        if f.hang is not None and f.hang[1] in self.path and f.hang[2] in (None, method):
            n = f.hang[0] - 1
            f.hang = (n, f.hang[1], f.hang[2]) if n > 0 else None
            if n == 0:
                self._hang = True
        if method == "POST" and re.match(r"^/services/Soap/u/[\d.]+", path):
            return self._soap_login(raw)
        if method == "POST" and path == "/services/oauth2/token":
            return self._token(raw)
        m = re.match(r"^/services/data/v[\d.]+/(.*)$", path)
        if m is None:
            return self._send(404, [{"message": f"no such resource {path}", "errorCode": "NOT_FOUND"}])
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in f.sessions:
            return self._send(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
        if f.api_used >= f.api_limit:
            return self._send(403, [{"message": "TotalRequests Limit exceeded.",
                                     "errorCode": "REQUEST_LIMIT_EXCEEDED"}], limit_info=True)
        f.api_used += 1
        self._rest(method, m.group(1), raw)

    def _soap_login(self, raw: bytes) -> None:
        f = self.server_fake
        ns = {"n": "urn:partner.soap.sforce.com"}
        tree = ET.fromstring(raw)
        user = tree.find(".//n:username", ns)
        pw = tree.find(".//n:password", ns)
        username, password = (user.text or "") if user is not None else "", (pw.text or "") if pw is not None else ""
        f.logins.append({"kind": "soap", "host": self.headers.get("Host", ""), "username": username})
        if username != f.username or password != f.password + f.security_token:
            fault = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
                     'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                     'xmlns:sf="urn:fault.partner.soap.sforce.com"><soapenv:Body><soapenv:Fault>'
                     '<faultcode>sf:INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN</faultstring><detail>'
                     '<sf:LoginFault><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode><sf:exceptionMessage>'
                     'Invalid username, password, security token; or user locked out.</sf:exceptionMessage>'
                     '</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>')
            return self._send(500, fault, content_type="text/xml")
        sid = f.new_session()
        ok = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
              'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com">'
              '<soapenv:Body><loginResponse><result>'
              f'<serverUrl>https://{INSTANCE_HOST}/services/Soap/u/59.0/00D000000000001</serverUrl>'
              f'<sessionId>{sid}</sessionId><userId>005000000000001AAA</userId>'
              '</result></loginResponse></soapenv:Body></soapenv:Envelope>')
        self._send(200, ok, content_type="text/xml")

    def _token(self, raw: bytes) -> None:
        f = self.server_fake
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        host = self.headers.get("Host", "")
        f.logins.append({"kind": "jwt", "host": host, "username": ""})
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not f.jwt_public_key:
            return self._send(400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"})
        try:
            claims = jwt.decode(form.get("assertion", ""), f.jwt_public_key, algorithms=["RS256"],
                                audience=f"https://{host}")
        except jwt.PyJWTError as exc:
            return self._send(400, {"error": "invalid_grant", "error_description": f"invalid assertion: {exc}"})
        f.logins[-1]["username"] = str(claims.get("sub"))
        if claims.get("iss") != f.consumer_key:
            return self._send(400, {"error": "invalid_client_id", "error_description": "client identifier invalid"})
        if claims.get("sub") != f.username:
            return self._send(400, {"error": "invalid_grant", "error_description": "user hasn't approved this consumer"})
        self._send(200, {"access_token": f.new_session(), "instance_url": f"https://{INSTANCE_HOST}",
                         "id": "https://login.salesforce.com/id/00D000000000001/005000000000001",
                         "token_type": "Bearer", "scope": "api"})

    def _rest(self, method: str, rest: str, raw: bytes) -> None:
        f = self.server_fake
        body = json.loads(raw) if raw and not rest.startswith("jobs/ingest/") else None
        info = {"limit_info": True}
        if method == "GET" and rest.startswith("query"):
            return self._query(rest)
        if rest.startswith("jobs/ingest"):
            return self._bulk(method, rest, raw)
        if rest.startswith("composite/sobjects"):
            parts = rest.split("/")
            records = body.get("records", []) if isinstance(body, dict) else []
            if len(records) > 200:
                return self._send(400, [{"message": "Maximum 200 records per request",
                                         "errorCode": "EXCEEDED_ID_LIMIT"}], **info)
            if body.get("allOrNone") is not False:
                return self._send(400, [{"message": "the fake expects allOrNone=false",
                                         "errorCode": "FAKE_EXPECTATION"}], **info)
            for rec in records:
                sobject = rec.get("attributes", {}).get("type", "")
                bad = f._check_fields(sobject, [k for k in rec if k not in ("attributes", "id")])
                if bad:
                    return self._send(400, [{"message": f"No such column '{bad}' on sobject of type {sobject}",
                                             "errorCode": "INVALID_FIELD"}], **info)
            results = []
            for rec in records:
                sobject = rec["attributes"]["type"]
                values = {k: v for k, v in rec.items() if k not in ("attributes", "id")}
                if method == "PATCH" and len(parts) == 4:  # upsert by external id
                    ext = parts[3]
                    if f.external_ids is not None and ext not in f.external_ids.get(sobject, set()):
                        return self._send(400, [{"message": f"Field name provided, {ext} is not an External ID "
                                                            "or indexed field for " + sobject,
                                                 "errorCode": "INVALID_FIELD"}], **info)
                    match = [rid for rid, r in f.records.get(sobject, {}).items() if r.get(ext) == rec.get(ext)]
                    if match:
                        res = f._apply(sobject, match[0], values)
                        res["created"] = False
                    else:
                        res = f._create(sobject, values)
                elif method == "PATCH":
                    res = f._apply(sobject, rec.get("id", ""), values)
                elif method == "POST":
                    res = f._create(sobject, values)
                else:
                    return self._send(405, [{"message": "method not allowed", "errorCode": "METHOD_NOT_ALLOWED"}])
                results.append(res)
            return self._send(200, results, **info)
        m = re.match(r"^sobjects/(\w+)/(\w+)$", rest)
        if m and method == "PATCH":
            res = f._apply(m.group(1), m.group(2), body or {})
            if res["success"]:
                return self._send(204, None, **info)
            return self._send(400, [{"message": e["message"], "errorCode": e["statusCode"]} for e in res["errors"]],
                              **info)
        self._send(404, [{"message": f"no such resource {rest}", "errorCode": "NOT_FOUND"}], **info)

    def _query(self, rest: str) -> None:
        f = self.server_fake
        u = urlsplit(self.path)
        if rest.rstrip("/") != "query":
            cursor, _, offset = rest.split("/", 1)[1].rpartition("-")
            rows = f._cursors.get(cursor)
            if rows is None:
                return self._send(400, [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}],
                                  limit_info=True)
            start = int(offset)
        else:
            soql = parse_qs(u.query).get("q", [""])[0]
            try:
                rows = f.query(soql)
            except ValueError as exc:
                return self._send(400, [{"message": str(exc), "errorCode": "MALFORMED_QUERY"}], limit_info=True)
            except LookupError as exc:
                return self._send(400, [{"message": str(exc), "errorCode": "INVALID_FIELD"}], limit_info=True)
            cursor = f"01g{next(f._ids):015d}"
            f._cursors[cursor] = rows
            start = 0
        page = rows[start : start + f.page_size]
        done = start + f.page_size >= len(rows)
        body: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": page}
        if not done:
            version = self.path.split("/")[3]
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{cursor}-{start + f.page_size}"
        self._send(200, body, limit_info=True)

    # --------------------------------------------------------------------- bulk

    def _bulk(self, method: str, rest: str, raw: bytes) -> None:
        f = self.server_fake
        parts = rest.split("/")  # jobs, ingest, [id], [batches|successfulResults|...]
        info = {"limit_info": True}
        if method == "POST" and len(parts) == 2:
            spec = json.loads(raw)
            job = _Job(id=f"750{next(f._ids):015d}", object=spec["object"], operation=spec["operation"],
                       external_id_field=spec.get("externalIdFieldName"))
            f._jobs[job.id] = job
            return self._send(200, self._job_info(job), **info)
        job = f._jobs.get(parts[2]) if len(parts) > 2 else None
        if job is None:
            return self._send(404, [{"message": "no such job", "errorCode": "NOT_FOUND"}], **info)
        if method == "PUT" and parts[3:] == ["batches"]:
            job.rows.extend(csv.DictReader(io.StringIO(raw.decode())))
            return self._send(201, None, **info)
        if method == "PATCH" and len(parts) == 3:
            state = json.loads(raw).get("state")
            if state == "UploadComplete":
                self._run_job(job)
            elif state == "Aborted":
                job.state = "Aborted"
            return self._send(200, self._job_info(job), **info)
        if method == "GET" and len(parts) == 3:
            return self._send(200, self._job_info(job), **info)
        if method == "GET" and len(parts) == 4:
            kind = parts[3]
            rows = {"successfulResults": job.ok, "failedResults": job.failed, "unprocessedRecords": []}.get(kind)
            if rows is None:
                return self._send(404, [{"message": "no such result", "errorCode": "NOT_FOUND"}], **info)
            return self._send(200, _csv(rows), content_type="text/csv", **info)
        self._send(405, [{"message": "method not allowed", "errorCode": "METHOD_NOT_ALLOWED"}], **info)

    def _job_info(self, job: _Job) -> dict[str, Any]:
        return {"id": job.id, "object": job.object, "operation": job.operation, "state": job.state,
                "numberRecordsProcessed": len(job.ok) + len(job.failed), "numberRecordsFailed": len(job.failed)}

    def _run_job(self, job: _Job) -> None:
        f = self.server_fake
        for row in job.rows:
            values: dict[str, Any] = {}
            for k, v in row.items():
                if k == "Id":
                    continue
                values[k] = None if v == "#N/A" else (v == "true" if v in ("true", "false") else _number(v))
            if job.operation == "upsert" and job.external_id_field:
                match = [rid for rid, r in f.records.get(job.object, {}).items()
                         if str(r.get(job.external_id_field)) == row.get(job.external_id_field)]
                res = f._apply(job.object, match[0], values) if match else f._create(job.object, values)
            else:
                res = f._apply(job.object, row.get("Id", ""), values)
            if res["success"]:
                job.ok.append({"sf__Id": res["id"], "sf__Created": "false", **row})
            else:
                err = res["errors"][0]
                job.failed.append({"sf__Id": res.get("id") or "", "sf__Error": f"{err['statusCode']}:{err['message']}",
                                   **row})
        job.state = "JobComplete"


def _number(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _csv(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def running(**kwargs: Any) -> Iterator[FakeSalesforce]:
    """For pytest fixtures: `yield from running(...)`."""
    fake = FakeSalesforce(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()

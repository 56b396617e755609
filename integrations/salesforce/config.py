"""The [salesforce] table of the config file -> SalesforceConfig.

Authentication is chosen by the keys present (or `auth = "..."`):
- "password": username + password (+ security_token unless the org trusts the IP);
- "jwt":      username + consumer_key + private_key_file (OAuth 2.0 JWT bearer flow);
- "session":  session_id + instance_url (a session from elsewhere; cannot log in again);
- "none":     no credentials: only `usagebot crm sync --dry-run` works.
Secrets come from "${ENV_VAR}" or `<key>_file` and are held as `Secret` (never printed).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from rules.config import Secret, Section, Table
from rules.config import values as v
from rules.config.tables import setting, settings_keys
from rules.config.urls import url_problem
from rules.kinds import KINDS
from rules.model import SEVERITIES

# What a Task subject template may name (bot.crm.sync.planned_task fills them).
SUBJECT_FIELDS = ("account", "message", "rule", "severity", "kind", "metric")

AUTH_MODES = ("password", "jwt", "session", "none")
MATCH_MODES = ("id", "external_id")
# Health values a Salesforce field can receive (see docs/salesforce.md).
SOURCES = ("score", "band", "trend", "trend_ratio", "quota_utilization", "active_days", "expansion_signal",
           "last_alert", "last_alert_at", "explanation")
DEFAULT_FIELDS: Mapping[str, str] = {
    "score": "Usage_Health_Score__c",
    "band": "Usage_Health_Band__c",
    "trend": "Usage_Trend__c",
    "quota_utilization": "Quota_Utilization__c",
    "last_alert": "Last_Usage_Alert__c",
    "last_alert_at": "Last_Usage_Alert_At__c",
    "expansion_signal": "Expansion_Signal__c",
}
MAX_BATCH = 200  # sObject Collections limit
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_FIELD_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*){0,4}$")  # Owner.Email, CSM__r.Email
_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")
_VERSION = re.compile(r"^\d{2,3}\.0$")


@dataclass(frozen=True)
class AccountPullConfig:
    """[salesforce.accounts]: which Account fields (SOQL paths: "Owner.Email" follows OwnerId to the
    User) give usagebot's account facts. An empty string = not pulled (the accounts CSV's value stays).
    `quotas`: metric -> field. `every`: pull on this schedule in the service (0 = only `usagebot crm pull`).
    `where`: an extra SOQL condition (e.g. "Type = 'Customer'")."""

    enabled: bool = setting(True, v.boolean)
    name: str = setting("Name", v.string)
    owner: str = setting("Owner.Email", v.string)
    csm: str = setting("", v.string)
    plan: str = setting("", v.string)
    arr: str = setting("", v.string)
    renewal: str = setting("", v.string)
    billing_day: str = setting("", v.string)
    timezone: str = setting("", v.string)
    where: str = setting("", v.string)
    every: int = setting(0, v.duration(0))
    quotas: Mapping[str, str] = field(default_factory=dict)

    def field_map(self) -> dict[str, str]:
        """AccountFacts field -> Salesforce field path, for the mapped ones."""
        pairs = {"name": self.name, "owner_email": self.owner, "csm_email": self.csm, "plan": self.plan,
                 "arr": self.arr, "renewal_at": self.renewal, "billing_day": self.billing_day,
                 "timezone": self.timezone}
        return {k: p for k, p in pairs.items() if p}


SALESFORCE: Table = Table("salesforce", (
    "auth", "username", "password", "password_file", "security_token", "security_token_file", "consumer_key",
    "consumer_key_file", "private_key", "private_key_file", "session_id", "session_id_file", "instance_url",
    "domain", "sandbox", "api_version", "timeout", "ca_bundle", "object", "match", "external_id_field",
    "text_limit", "batch_size", "max_api_share", "retries", "retry_backoff", "bulk_threshold",
    "bulk_poll_interval", "bulk_timeout",
), (Table("fields", SOURCES), Table("tasks", ("enabled", "severities", "kinds", "rules", "owner", "subject",
                                             "due_in_days", "max_age", "status", "key_field"),
                                     (Table("priority", SEVERITIES),)),
    Table("accounts", settings_keys(AccountPullConfig), (Table("quotas", free=True),))))




@dataclass(frozen=True)
class TaskConfig:
    """Salesforce Tasks for the account owner, once per alert episode.

    An episode gets a task when its severity is in `severities` OR its kind in
    `kinds` OR its rule in `rules`, and it fired within `max_age` of the sync
    (so turning tasks on does not create one for every old episode).
    `subject` is a str.format template with {account}, {message}, {rule},
    {severity}, {kind}, {metric}.
    Each Task carries the episode's unique key (a "usagebot key: ..." line in its
    Description, looked up if a create's outcome is unknown). `key_field`: a
    custom Text field on Activity marked External ID and Unique (e.g.
    "Usagebot_Key__c"): the key is written there too and Tasks are created by
    upsert on it, so Salesforce itself never holds two Tasks for one episode.
    """

    enabled: bool = False
    severities: tuple[str, ...] = ("critical",)
    kinds: tuple[str, ...] = ("expansion",)
    rules: tuple[str, ...] = ()
    owner: str = "account_owner"  # or "api_user" (the integration user owns the task)
    subject: str = "Usage alert for {account}: {message}"
    due_in_days: int = 3
    max_age: int = 7 * 86_400
    status: str = "Not Started"
    priority: Mapping[str, str] = field(default_factory=lambda: {
        "critical": "High", "warning": "Normal", "info": "Low"})
    key_field: str | None = None

    def wants(self, severity: str, kind: str, rule_id: str) -> bool:
        return self.enabled and (severity in self.severities or kind in self.kinds or rule_id in self.rules)


@dataclass(frozen=True)
class SalesforceConfig:
    auth: str = "none"
    username: str | None = None
    password: Secret | None = None
    security_token: Secret | None = None
    consumer_key: Secret | None = None
    private_key: Secret | None = None  # PEM text (read from private_key_file)
    session_id: Secret | None = None
    instance_url: str | None = None
    domain: str = "login"  # login host: https://<domain>.salesforce.com ("test" for sandboxes)
    api_version: str = "59.0"
    timeout: float = 30.0
    ca_bundle: str | None = None
    object: str = "Account"
    match: str = "id"  # "id": accounts.crm_id is the record Id; "external_id": upsert by external_id_field
    external_id_field: str | None = None
    fields: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_FIELDS))  # source -> API name
    text_limit: int = 255
    batch_size: int = MAX_BATCH
    max_api_share: float = 0.5  # stop before the org's daily API usage passes this share of its limit
    retries: int = 2  # extra tries of a request that failed with a 5xx or a connection error
    retry_backoff: float = 2.0  # seconds before the first retry, doubling
    bulk_threshold: int = 0  # use Bulk API 2.0 when at least this many records change (0 = never)
    bulk_poll_interval: float = 5.0
    bulk_timeout: float = 600.0
    tasks: TaskConfig = field(default_factory=TaskConfig)
    accounts: AccountPullConfig | None = None  # [salesforce.accounts]: pull account facts from the CRM

    @property
    def can_connect(self) -> bool:
        return self.auth != "none"

    @property
    def login_host(self) -> str:
        return f"{self.domain}.salesforce.com"

    def describe_auth(self) -> str:
        """How usagebot logs in, without secrets (for messages)."""
        if self.auth == "password":
            return f"username {self.username} at {self.login_host}"
        if self.auth == "jwt":
            return f"JWT bearer for {self.username} at {self.login_host}"
        if self.auth == "session":
            return f"session id at {self.instance_url}"
        return "no credentials"


def _secret(sec: Section, key: str) -> Secret | None:
    s = sec.secret(key)
    return s if s else None


def _api_name(sec: Section, key: str, value: str | None) -> str | None:
    if value is None or value == "":
        return value
    if not _API_NAME.match(value):
        sec.problem(key, f"{value!r} is not a Salesforce API name (letters, digits and _, starting with a letter)")
        return None
    return value


def _parse_fields(sec: Section) -> dict[str, str]:
    if not sec.has("fields"):
        return dict(DEFAULT_FIELDS)
    table = sec.table("fields")
    table.check_keys(SALESFORCE.table("fields"))
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    bad = False
    for source in [k for k in table.data if k in SOURCES]:  # in the file's order
        name = table.str(source)
        if not name:
            continue  # absent or "" = not written
        if _api_name(table, source, name) is None:
            bad = True
            continue
        if name.lower() in seen:
            table.problem(source, f"field {name} already receives {seen[name.lower()]!r}")
            bad = True
            continue
        seen[name.lower()] = source
        out[source] = name
    if not out and not bad:
        table.problem(None, "maps no health value to a field; map at least one (e.g. score = \"Usage_Health_Score__c\")")
    return out


def _parse_tasks(sec: Section) -> TaskConfig:
    d = TaskConfig()
    if not sec.has("tasks"):
        return d
    t = sec.table("tasks")
    t.check_keys(SALESFORCE.table("tasks"))
    severities = t.str_list("severities", d.severities)
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        t.problem("severities", f"unknown severity {', '.join(bad)}; severities are {', '.join(SEVERITIES)}")
    kinds = t.str_list("kinds", d.kinds)
    badk = [k for k in kinds if k not in KINDS]
    if badk:
        t.problem("kinds", f"unknown rule kind {', '.join(badk)}; kinds are {', '.join(KINDS)}")
    subject = t.str("subject", d.subject) or d.subject
    try:
        unknown = [n for n in v.template_fields(subject) if n not in SUBJECT_FIELDS]
        problem = f"unknown placeholder {{{unknown[0]}}}" if unknown else None
    except ValueError as exc:
        problem = str(exc)
    if problem:
        t.problem("subject", f"bad template ({problem}); placeholders: "
                             + " ".join("{" + n + "}" for n in SUBJECT_FIELDS))
    priority = dict(d.priority)
    if t.has("priority"):
        p = t.table("priority")
        p.check_keys(SALESFORCE.table("tasks").table("priority"))
        for s in SEVERITIES:
            priority[s] = p.str(s, priority[s]) or priority[s]
    return TaskConfig(
        enabled=bool(t.bool("enabled", True)),
        severities=tuple(severities), kinds=tuple(kinds), rules=tuple(t.str_list("rules", ())),
        owner=t.str("owner", d.owner, choices=("account_owner", "api_user")) or d.owner,
        subject=subject,
        due_in_days=t.int("due_in_days", d.due_in_days, min=0, max=365) or 0,
        max_age=t.duration("max_age", d.max_age, min=60) or d.max_age,
        status=t.str("status", d.status) or d.status,
        priority=priority,
        key_field=_api_name(t, "key_field", t.str("key_field")) or None,
    )


def _parse_account_pull(sec: Section) -> AccountPullConfig | None:
    if not sec.has("accounts"):
        return None
    t = sec.table("accounts")
    t.check_keys(SALESFORCE.table("accounts"))
    values: dict[str, object] = {}
    for f in dataclasses.fields(AccountPullConfig):
        if "read" not in f.metadata:
            continue
        got = t.read(f.name, f.metadata["read"])
        if got is None:
            continue
        if isinstance(got, str) and f.name != "where" and got and not _FIELD_PATH.match(got):
            t.problem(f.name, f"{got!r} is not a Salesforce field (an API name, or a relationship path like "
                              "\"Owner.Email\")")
            continue
        values[f.name] = got
    quotas: dict[str, str] = {}
    if t.has("quotas"):
        q = t.table("quotas")
        for metric, path in q.data.items():
            if not isinstance(path, str) or not _FIELD_PATH.match(path):
                q.problem(metric, f"must name a Salesforce field holding the {metric} quota (got {path!r})")
                continue
            quotas[str(metric)] = path
    pull = AccountPullConfig(**values, quotas=quotas)  # type: ignore[arg-type]
    if not pull.field_map() and not quotas:
        t.problem(None, "maps no account fact to a Salesforce field (e.g. owner = \"Owner.Email\")")
    return pull if pull.enabled else None


def _infer_auth(sec: Section, have: Mapping[str, bool]) -> str:
    explicit = sec.str("auth", choices=AUTH_MODES)
    if explicit:
        return explicit
    if have["session_id"]:
        return "session"
    if have["private_key"] or have["consumer_key"]:
        return "jwt"
    if have["username"] or have["password"]:
        return "password"
    return "none"


def _parse_domain(sec: Section) -> str:
    domain = sec.str("domain")
    sandbox = sec.bool("sandbox", False)
    if domain and domain.lower().endswith("salesforce.com"):
        sec.problem("domain", f"give the part before \".salesforce.com\" (e.g. \"login\", \"test\", "
                              f"\"mycompany.my\"), not {domain!r}")
        return "test" if sandbox else "login"
    if domain and not _DOMAIN.match(domain):
        sec.problem("domain", f"{domain!r} is not a host name part (e.g. \"login\", \"test\", \"mycompany.my\")")
        return "test" if sandbox else "login"
    if sandbox and domain == "login":
        sec.problem("sandbox", "sandbox = true but domain = \"login\" (production); drop one of them")
    return domain or ("test" if sandbox else "login")


def parse_salesforce_config(section: Section) -> SalesforceConfig:
    """Read [salesforce]; problems (file:line, field) are added to the section's document."""
    sec = section
    sec.check_keys(SALESFORCE)
    d = SalesforceConfig()
    username = sec.str("username") or None
    password = _secret(sec, "password")
    token = _secret(sec, "security_token")
    consumer_key = _secret(sec, "consumer_key")
    private_key = _secret(sec, "private_key")
    session_id = _secret(sec, "session_id")
    instance_url = sec.str("instance_url") or None
    have = {"username": bool(username), "password": bool(password), "consumer_key": bool(consumer_key),
            "private_key": bool(private_key), "session_id": bool(session_id)}
    auth = _infer_auth(sec, have)
    needs = {"password": ("username", "password"), "jwt": ("username", "consumer_key", "private_key"),
             "session": ("session_id",), "none": ()}[auth]
    for key in needs:
        if not have[key]:
            hint = f" (or {key}_file)" if key != "username" else ""
            sec.problem(key, f"is required for auth = \"{auth}\"{hint}")
    if auth == "session" and not instance_url:
        sec.problem("instance_url", "is required with a session_id (e.g. \"https://mycompany.my.salesforce.com\")")
    if instance_url and instance_url.startswith("https://") and url_problem(instance_url) is not None:
        sec.problem("instance_url", str(url_problem(instance_url)))
        instance_url = None
    if instance_url:
        u = urlparse(instance_url)
        if u.scheme != "https" or not u.hostname:
            sec.problem("instance_url", f"must be an https:// URL like \"https://mycompany.my.salesforce.com\" "
                                        f"(got {instance_url!r})")
            instance_url = None
    if private_key and "PRIVATE KEY" not in private_key.reveal():
        sec.problem("private_key_file" if sec.has("private_key_file") else "private_key",
                    "does not hold a PEM private key (-----BEGIN ... PRIVATE KEY-----)")

    version = sec.str("api_version", d.api_version) or d.api_version
    if not _VERSION.match(version):
        sec.problem("api_version", f"must look like \"59.0\" (got {version!r})")
        version = d.api_version
    match = sec.str("match", d.match, choices=MATCH_MODES) or d.match
    ext = _api_name(sec, "external_id_field", sec.str("external_id_field"))
    if match == "external_id" and not ext:
        sec.problem("external_id_field", "is required with match = \"external_id\" (the field holding the "
                                         "usagebot account id, e.g. \"Usagebot_Account_Id__c\")")
    obj = _api_name(sec, "object", sec.str("object", d.object)) or d.object
    ca_bundle = sec.str("ca_bundle") or None
    timeout = sec.duration("timeout", int(d.timeout), min=1)

    return SalesforceConfig(
        auth=auth, username=username, password=password, security_token=token, consumer_key=consumer_key,
        private_key=private_key, session_id=session_id, instance_url=instance_url, domain=_parse_domain(sec),
        api_version=version, timeout=float(timeout or d.timeout), ca_bundle=ca_bundle, object=obj, match=match,
        external_id_field=ext, fields=_parse_fields(sec),
        text_limit=sec.int("text_limit", d.text_limit, min=1, max=131_072) or d.text_limit,
        batch_size=sec.int("batch_size", d.batch_size, min=1, max=MAX_BATCH) or d.batch_size,
        max_api_share=sec.float("max_api_share", d.max_api_share, min=0.01, max=1.0) or d.max_api_share,
        retries=sec.int("retries", d.retries, min=0, max=10) or 0,
        retry_backoff=sec.float("retry_backoff", d.retry_backoff, min=0.0, max=300.0) or 0.0,
        bulk_threshold=sec.int("bulk_threshold", d.bulk_threshold, min=0) or 0,
        bulk_poll_interval=sec.float("bulk_poll_interval", d.bulk_poll_interval, min=0.0, max=300.0)
        or 0.0,
        bulk_timeout=float(sec.duration("bulk_timeout", int(d.bulk_timeout), min=1) or d.bulk_timeout),
        tasks=_parse_tasks(sec), accounts=_parse_account_pull(sec),
    )

"""The whole usagebot config file (TOML): every section, validated together.

    [storage]    url                       database (SQLite file or PostgreSQL)
    [rules]      paths                     rule files / directories (validated like `usagebot check`)
    [service]    host, port, logs, admin channel, shutdown timeout
    [scheduler]  leader election, job intervals, evaluation timing
    [evaluation] first_run policy (conditions already true at a first evaluation)
    [ingest]     push endpoint (CloudEvents) and its shared secret
    [[sources]]  polled usage sources (csv, http_json, sql, openmeter, stripe_meter)
    [slack]      Slack delivery and app           (integrations.slack.config)
    [salesforce] CRM sync                         (integrations.salesforce.config)
    [health]     usage-health model               (bot.health_config)
    [web]        the read-only web UI             (bot.web.config)

`${NAME}` / `${NAME:-default}` take values from the environment; secrets
also from `<key>_file`. `load_config` collects EVERY problem (file:line:
field: message) and raises them together as a ConfigError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.configbase import ConfigError, ConfigProblem, Document, Section, load_document
from bot.redaction import register_url
from integrations.sources.base import SourceConfig, parse_source_config
from integrations.sources.push import PushConfig, parse_ingest_config
from rules.model import RuleSet

SECTIONS = ("storage", "rules", "service", "scheduler", "evaluation", "ingest", "sources", "slack", "salesforce",
            "health", "web")
LEADER_KINDS = ("auto", "advisory_lock", "lease", "none")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    log_format: str = "json"
    log_level: str = "info"
    admin_channel: str | None = None  # stale-source and rejected-file notices
    shutdown_timeout: int = 30
    max_body_bytes: int = 2_000_000
    max_connections: int = 500  # open HTTP connections at once
    read_timeout: int = 30  # a request must arrive whole within this long of its first byte
    idle_timeout: int = 60  # an HTTP connection without a request in progress is closed after this long
    http_threads: int = 8  # worker threads answering HTTP requests


@dataclass(frozen=True)
class SchedulerConfig:
    leader: str = "auto"
    leader_name: str = "usagebot"  # lock / lease name: replicas sharing it elect one leader
    leader_check: int = 5
    lease_ttl: int = 30
    misfire_grace: int = 60
    max_workers: int = 4
    evaluate_every: int = 60
    max_wait: int = 3600
    catch_up: int = 3
    deliver_every: int = 30
    freshness_every: int = 60
    crm_sync_every: int | None = 3600
    crm_sync_cron: str | None = None
    digest_every: int = 60
    prune_every: int = 3600
    reload_every: int = 10  # how often rule files and templates are checked for changes (also on SIGHUP)


@dataclass(frozen=True)
class EvaluationConfig:
    """first_run: "digest" (record, one admin summary), "quiet" (record only) or "notify"."""

    first_run: str = "digest"


@dataclass(frozen=True)
class AppConfig:
    file: str
    storage_url: str
    rule_paths: tuple[str, ...]
    service: ServiceConfig = field(default_factory=ServiceConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    ingest: PushConfig | None = None
    sources: tuple[SourceConfig, ...] = ()
    slack: Any = None  # integrations.slack.config.SlackConfig, when [slack] is present
    salesforce: Any = None  # integrations.salesforce.config.SalesforceConfig, when [salesforce] is present
    health: Any = None  # rules.health.HealthModel, when [health] is present
    ruleset: RuleSet | None = None
    web: Any = None  # bot.web.config.WebConfig, when [web] is present (the web UI is off without it)

    @property
    def is_postgresql(self) -> bool:
        return self.storage_url.startswith(("postgresql", "postgres"))


def _relative(doc: Document, path: str) -> str:
    """Relative paths in the config are relative to the config file's folder."""
    p = Path(path)
    return str(p if p.is_absolute() else Path(doc.file).resolve().parent / p)


def storage_url(doc: Document) -> str:
    """[storage] url (default: SQLite usagebot-data/usagebot.db); relative SQLite paths are relative to the file."""
    sec = doc.section("storage")
    sec.check_keys(("url",))
    url = sec.str("url", "sqlite:///usagebot-data/usagebot.db") or "sqlite:///usagebot-data/usagebot.db"
    register_url(url)  # the database password is masked in every log line and message
    from storage.db import StorageError, _normalise

    try:
        _normalise(url)
    except StorageError as exc:
        sec.problem("url", str(exc))
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        url = "sqlite:///" + _relative(doc, url.removeprefix("sqlite:///"))
    return url


def _rules(doc: Document, validate: bool) -> tuple[tuple[str, ...], RuleSet | None]:
    sec = doc.section("rules", required=True)
    sec.check_keys(("paths",))
    paths = [_relative(doc, p) for p in sec.str_list("paths", required=True)]
    if not paths and sec.has("paths"):
        sec.problem("paths", "lists no rule files")
    missing = [p for p in paths if not Path(p).exists()]
    for p in missing:
        sec.problem("paths", f"{p}: no such file or directory")
    if not validate or missing or not paths:
        return tuple(paths), None
    from rules.loader import check_rules

    ruleset, problems = check_rules(paths)
    for p in problems:
        doc.problems.append(ConfigProblem(str(getattr(p, "file", "") or p), getattr(p, "line", None), None,
                                          _rule_problem_text(p)))
    return tuple(paths), ruleset if not problems else None


def _rule_problem_text(p: Any) -> str:
    """A rule problem without its own "file:line: " prefix (ConfigProblem adds it)."""
    text = str(p)
    f, line = getattr(p, "file", None), getattr(p, "line", None)
    for prefix in (f"{f}:{line}: ", f"{f}: "):
        if f and text.startswith(prefix):
            return text[len(prefix):]
    return text


def _service(doc: Document) -> ServiceConfig:
    sec = doc.section("service")
    sec.check_keys(("host", "port", "log_format", "log_level", "admin_channel", "shutdown_timeout",
                    "max_body_bytes", "max_connections", "read_timeout", "idle_timeout", "http_threads"))
    d = ServiceConfig()
    channel = sec.str("admin_channel")
    if channel is not None and not channel.startswith(("#", "C", "G")):
        sec.problem("admin_channel", f"expected a channel name like '#usagebot-admin' or a channel id, got {channel!r}")
    return ServiceConfig(
        host=sec.str("host", d.host) or d.host,
        port=sec.int("port", d.port, min=0, max=65535) if sec.has("port") else d.port,  # type: ignore[arg-type]
        log_format=sec.str("log_format", d.log_format, choices=LOG_FORMATS) or d.log_format,
        log_level=sec.str("log_level", d.log_level, choices=LOG_LEVELS) or d.log_level,
        admin_channel=channel,
        shutdown_timeout=sec.duration("shutdown_timeout", d.shutdown_timeout, min=1) or d.shutdown_timeout,
        max_body_bytes=sec.int("max_body_bytes", d.max_body_bytes, min=1024) or d.max_body_bytes,
        max_connections=sec.int("max_connections", d.max_connections, min=1, max=100_000) or d.max_connections,
        read_timeout=sec.duration("read_timeout", d.read_timeout, min=1) or d.read_timeout,
        idle_timeout=sec.duration("idle_timeout", d.idle_timeout, min=1) or d.idle_timeout,
        http_threads=sec.int("http_threads", d.http_threads, min=1, max=256) or d.http_threads,
    )


def _scheduler(doc: Document, postgresql: bool) -> SchedulerConfig:
    sec = doc.section("scheduler")
    sec.check_keys(tuple(SchedulerConfig.__dataclass_fields__))
    d = SchedulerConfig()
    leader = sec.str("leader", d.leader, choices=LEADER_KINDS) or d.leader
    if leader == "advisory_lock" and not postgresql:
        sec.problem("leader", "advisory_lock needs PostgreSQL storage; use \"lease\" (or \"auto\")")
    check = sec.duration("leader_check", d.leader_check, min=1) or d.leader_check
    ttl = sec.duration("lease_ttl", d.lease_ttl, min=2) or d.lease_ttl
    if ttl < 2 * check:
        sec.problem("lease_ttl", f"must be at least twice leader_check ({check}s), or a healthy leader loses "
                                 "its lease between renewals")
    cron_expr = sec.str("crm_sync_cron")
    if cron_expr is not None:
        from bot.crontab import cron_trigger

        try:
            cron_trigger(cron_expr)
        except ValueError as exc:
            sec.problem("crm_sync_cron", f"invalid crontab expression {cron_expr!r}: {exc}")
            cron_expr = None

    def dur(key: str, default: int, lo: int = 1) -> int:
        v = sec.duration(key, default, min=lo)
        return default if v is None else v

    name = sec.str("leader_name", d.leader_name) or d.leader_name
    return SchedulerConfig(
        leader=leader, leader_name=name, leader_check=check, lease_ttl=ttl,
        misfire_grace=dur("misfire_grace", d.misfire_grace),
        max_workers=sec.int("max_workers", d.max_workers, min=1, max=64) or d.max_workers,
        evaluate_every=dur("evaluate_every", d.evaluate_every), max_wait=dur("max_wait", d.max_wait, 0),
        catch_up=sec.int("catch_up", d.catch_up, min=1, max=1000) or d.catch_up,
        deliver_every=dur("deliver_every", d.deliver_every), freshness_every=dur("freshness_every", d.freshness_every),
        crm_sync_every=None if cron_expr else dur("crm_sync_every", d.crm_sync_every or 3600, 60),
        crm_sync_cron=cron_expr, digest_every=dur("digest_every", d.digest_every),
        prune_every=dur("prune_every", d.prune_every, 60), reload_every=dur("reload_every", d.reload_every),
    )


def _evaluation(doc: Document) -> EvaluationConfig:
    from bot.notices import FIRST_RUN_POLICIES

    sec = doc.section("evaluation")
    sec.check_keys(("first_run",))
    d = EvaluationConfig()
    return EvaluationConfig(first_run=sec.str("first_run", d.first_run, choices=FIRST_RUN_POLICIES) or d.first_run)


def _sources(doc: Document, ingest: PushConfig | None) -> tuple[SourceConfig, ...]:
    out: list[SourceConfig] = []
    seen: dict[str, Section] = {}
    for sec in doc.sections("sources"):
        cfg = parse_source_config(sec)
        sid = sec.data.get("id")
        if isinstance(sid, str):
            if sid in seen:
                sec.problem("id", f"duplicate source id {sid!r} (also at line {seen[sid].line('id')})")
            elif ingest is not None and sid == ingest.source_id:
                sec.problem("id", f"{sid!r} is the push-ingest source id ([ingest] source_id); pick another")
            seen.setdefault(sid, sec)
        if cfg is not None:
            out.append(cfg)
    return tuple(out)


def _integrations(doc: Document) -> tuple[Any, Any, Any]:
    slack = salesforce = health = None
    if "slack" in doc.data:
        from integrations.slack.config import parse_slack_config

        slack = parse_slack_config(doc.section("slack"))
    if "salesforce" in doc.data:
        from integrations.salesforce.config import parse_salesforce_config

        salesforce = parse_salesforce_config(doc.section("salesforce"))
    if "health" in doc.data:
        from bot.health_config import parse_health_model

        health = parse_health_model(doc.section("health"))
    return slack, salesforce, health


def parse_document(doc: Document, validate_rules: bool = True) -> AppConfig:
    """Parse every section; problems accumulate on `doc` (call doc.raise_if_problems())."""
    doc.check_top_level(SECTIONS)
    storage = storage_url(doc)
    rule_paths, ruleset = _rules(doc, validate_rules)
    service = _service(doc)
    postgresql = storage.startswith(("postgresql", "postgres"))
    scheduler = _scheduler(doc, postgresql)
    evaluation = _evaluation(doc)
    ingest = parse_ingest_config(doc.section("ingest")) if "ingest" in doc.data else None
    sources = _sources(doc, ingest)
    slack, salesforce, health = _integrations(doc)
    web, slack = _web(doc, slack)
    return AppConfig(file=doc.file, storage_url=storage, rule_paths=rule_paths, service=service,
                     scheduler=scheduler, evaluation=evaluation, ingest=ingest, sources=sources, slack=slack,
                     salesforce=salesforce,
                     health=health, ruleset=ruleset, web=web)


def _web(doc: Document, slack: Any) -> tuple[Any, Any]:
    """[web], and the Slack config with the episode page links of its public_url (alert messages link there)."""
    if "web" not in doc.data:
        return None, slack
    from dataclasses import replace

    from bot.web.config import parse_web_config

    web = parse_web_config(doc.section("web"), slack_bot_token=bool(slack is not None and slack.enabled))
    if web.enabled and web.public_url and slack is not None:
        slack = replace(slack, episode_url=f"{web.public_url}/episodes/{{episode_id}}")
    return web, slack


def check_config(path: str | Path, env: Mapping[str, str] | None = None,
                 validate_rules: bool = True) -> tuple[AppConfig | None, list[ConfigProblem]]:
    """(config, []) or (None, every problem found)."""
    try:
        doc = load_document(path, env)
    except ConfigError as exc:
        return None, exc.problems
    config = parse_document(doc, validate_rules)
    if doc.problems:
        return None, sorted(doc.problems, key=lambda p: (p.file, p.line or 0))
    return config, []


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> AppConfig:
    """The validated config; raises ConfigError listing every problem."""
    config, problems = check_config(path, env)
    if problems:
        raise ConfigError(problems)
    assert config is not None
    return config

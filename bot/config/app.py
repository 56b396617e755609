"""The whole usagebot config file (TOML): every section, validated together.

    [storage]    url                       database (SQLite file or PostgreSQL)
    [rules]      paths                     rule files / directories (validated like `usagebot check`)
    [service]    host, port, logs, admin channel, shutdown timeout
    [scheduler]  leader election, job intervals, evaluation timing
    [evaluation] first_run policy (conditions already true at a first evaluation)
    [ingest]     push endpoint (CloudEvents) and its shared secret
    [[sources]]  polled usage sources (csv, http_json, sql, openmeter, stripe_meter)
    [slack]      Slack delivery and app           (integrations.slack.config)
    [[notifiers]] more notifiers side by side: webhook, console (integrations.notifiers)
    [salesforce] CRM sync                         (integrations.salesforce.config)
    [health]     usage-health model               (bot.config.health)
    [web]        the read-only web UI             (bot.config.web)

`${NAME}` / `${NAME:-default}` take values from the environment; secrets
also from `<key>_file`. `load_config` collects EVERY problem (file:line:
field: message) and raises them together as a ConfigError.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.config.storage import STORAGE, relative, storage_url
from integrations.sources.base import SourceConfig, parse_source_config
from integrations.sources.push import PushConfig, parse_ingest_config
from rules.config import (
    ConfigError,
    Document,
    Problem,
    Section,
    Table,
    load_document,
    setting,
    settings_table,
)
from rules.config import values as v
from rules.config.toml_lines import PathKey
from rules.model import RuleSet

LEADER_KINDS = ("auto", "advisory_lock", "lease", "none")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
FIRST_RUN_POLICIES = ("digest", "quiet", "notify")  # [evaluation] first_run (bot.service.notices.Notices)


def _admin_channel(w: v.Reporter, path: PathKey, value: Any) -> str | None:
    channel = v.string(w, path, value)
    if channel is not None and not channel.startswith(("#", "C", "G")):
        w.error(path, f"expected a channel name like '#usagebot-admin' or a channel id, got {channel!r}")
        return None
    return channel


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _listen_host(w: v.Reporter, path: PathKey, value: Any) -> str | None:
    """An address to listen on: an IP address (0.0.0.0, ::) or a host name of this machine."""
    host = v.string(w, path, value)
    if host is None or host == "":
        return host
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")):
        w.error(path, f"{host[:80]!r} is not an IP address or a host name (e.g. '0.0.0.0', '127.0.0.1', '::')")
        return None
    return host


def _cron(w: v.Reporter, path: PathKey, value: Any) -> str | None:
    from rules.config.cron import cron_trigger

    expr = v.string(w, path, value)
    if expr is None:
        return None
    try:
        cron_trigger(expr)
    except ValueError as exc:
        w.error(path, f"invalid crontab expression {expr!r}: {exc}")
        return None
    return expr


def _first_run(w: v.Reporter, path: PathKey, value: Any) -> str | None:
    return v.choice(FIRST_RUN_POLICIES)(w, path, value)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ServiceConfig:
    host: str = setting("0.0.0.0", _listen_host)
    port: int = setting(8080, v.integer(0, 65535, text=True))
    log_format: str = setting("json", v.choice(LOG_FORMATS))
    log_level: str = setting("info", v.choice(LOG_LEVELS))
    admin_channel: str | None = setting(None, _admin_channel)  # stale-source and rejected-file notices
    shutdown_timeout: int = setting(30, v.duration(1))
    max_body_bytes: int = setting(2_000_000, v.integer(1024, text=True))
    max_connections: int = setting(500, v.integer(1, 100_000, text=True))  # open HTTP connections at once
    # a request must arrive whole within this long of its first byte
    read_timeout: int = setting(30, v.duration(1))
    # an HTTP connection without a request in progress is closed after this long
    idle_timeout: int = setting(60, v.duration(1))
    http_threads: int = setting(8, v.integer(1, 256, text=True))  # worker threads answering HTTP requests


@dataclass(frozen=True)
class SchedulerConfig:
    leader: str = setting("auto", v.choice(LEADER_KINDS))
    leader_name: str = setting("usagebot", v.string)  # lock / lease name: replicas sharing it elect one leader
    leader_check: int = setting(5, v.duration(1))
    lease_ttl: int = setting(30, v.duration(2))
    misfire_grace: int = setting(60, v.duration(1))
    max_workers: int = setting(4, v.integer(1, 64, text=True))
    evaluate_every: int = setting(60, v.duration(1))
    max_wait: int = setting(3600, v.duration(0))
    catch_up: int = setting(3, v.integer(1, 1000, text=True))
    deliver_every: int = setting(30, v.duration(1))
    freshness_every: int = setting(60, v.duration(1))
    crm_sync_every: int | None = setting(3600, v.duration(60))  # None when crm_sync_cron is given
    crm_sync_cron: str | None = setting(None, _cron)
    digest_every: int = setting(60, v.duration(1))
    prune_every: int = setting(3600, v.duration(60))
    reload_every: int = setting(10, v.duration(1))  # how often rule files and templates are checked (also SIGHUP)


@dataclass(frozen=True)
class EvaluationConfig:
    """first_run: "digest" (record, one admin summary), "quiet" (record only) or "notify"."""

    first_run: str = setting("digest", _first_run)


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
    notifiers: tuple[Any, ...] = ()  # integrations.notifiers.NotifierSpec per [[notifiers]] entry
    web: Any = None  # bot.config.web.WebConfig, when [web] is present (the web UI is off without it)
    pricing: Any = None  # rules.impact.Pricing ([pricing]; the defaults without it)

    @property
    def is_postgresql(self) -> bool:
        return self.storage_url.startswith(("postgresql", "postgres"))


RULES = Table("rules", ("paths",))


def rule_paths(sec: Section, required: bool = False) -> tuple[str, ...]:
    """[rules] paths, relative to the config file's folder (not checked for existence)."""
    sec.check_keys(RULES)
    return tuple(relative(sec.doc, p) for p in sec.str_list("paths", required=required))


def admin_channel(doc: Document) -> str | None:
    """[service] admin_channel, read as `[service]` reads it."""
    return doc.section("service").read("admin_channel", _admin_channel)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Basics:
    """What the commands that read part of the config (slack, crm) need: the database and the rules."""

    storage_url: str
    rule_paths: tuple[str, ...]


def basics(doc: Document) -> Basics:
    """[storage] url and [rules] paths of a config, read as the whole config reads them (problems go
    to `doc`)."""
    return Basics(storage_url(doc), rule_paths(doc.section("rules")))


def _rules(doc: Document, validate: bool) -> tuple[tuple[str, ...], RuleSet | None]:
    sec = doc.section("rules", required=True)
    paths = rule_paths(sec, required=True)
    if not paths and sec.has("paths"):
        sec.problem("paths", "lists no rule files")
    missing = [p for p in paths if not Path(p).exists()]
    for p in missing:
        sec.problem("paths", f"{p}: no such file or directory")
    if not validate or missing or not paths:
        return tuple(paths), None
    from rules.loader import check_rules

    ruleset, problems = check_rules(paths)
    doc.problems.extend(problems)  # one Problem type: each with the rule file's own line
    return tuple(paths), ruleset if not problems else None


def _scheduler(doc: Document, postgresql: bool) -> SchedulerConfig:
    sec = doc.section("scheduler")
    cfg: SchedulerConfig = sec.read_settings(SchedulerConfig)
    if cfg.leader == "advisory_lock" and not postgresql:
        sec.problem("leader", "advisory_lock needs PostgreSQL storage; use \"lease\" (or \"auto\")")
    if cfg.lease_ttl < 2 * cfg.leader_check:
        sec.problem("lease_ttl", f"must be at least twice leader_check ({cfg.leader_check}s), or a healthy leader "
                                 "loses its lease between renewals")
    return replace(cfg, crm_sync_every=None) if cfg.crm_sync_cron else cfg


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
        if slack is not None and salesforce.can_connect:  # alerts get the "Log task" button (bot.crm.task_button)
            from dataclasses import replace

            slack = replace(slack, crm_tasks=True)
    if "health" in doc.data:
        from bot.config.health import parse_health_model

        health = parse_health_model(doc.section("health"))
    return slack, salesforce, health


def config_tables() -> tuple[Table, ...]:
    """Every table of the config file with the keys its parser declares (tests/test_docs_keys.py checks
    that each is documented)."""
    from bot.config.health import HEALTH
    from bot.config.pricing import PRICING
    from bot.config.web import WEB
    from integrations.notifiers import NOTIFIERS
    from integrations.salesforce.config import SALESFORCE
    from integrations.slack.config import SLACK
    from integrations.sources.base import SOURCES
    from integrations.sources.push import INGEST

    return (STORAGE, RULES, settings_table("service", ServiceConfig), settings_table("scheduler", SchedulerConfig),
            settings_table("evaluation", EvaluationConfig), INGEST, SOURCES, SLACK, SALESFORCE, HEALTH,
            NOTIFIERS, WEB, PRICING)


def parse_document(doc: Document, validate_rules: bool = True) -> AppConfig:
    """Parse every section; problems accumulate on `doc` (call doc.raise_if_problems())."""
    doc.check_top_level(t.name for t in config_tables())
    storage = storage_url(doc)
    paths, ruleset = _rules(doc, validate_rules)
    service = doc.section("service").read_settings(ServiceConfig)
    postgresql = storage.startswith(("postgresql", "postgres"))
    scheduler = _scheduler(doc, postgresql)
    evaluation = doc.section("evaluation").read_settings(EvaluationConfig)
    ingest = parse_ingest_config(doc.section("ingest")) if "ingest" in doc.data else None
    sources = _sources(doc, ingest)
    slack, salesforce, health = _integrations(doc)
    from integrations.notifiers import parse_notifiers

    notifiers = parse_notifiers(doc.sections("notifiers"))
    web, slack = _web(doc, slack)
    _post_paths_apart(doc, ingest, slack, web)
    from bot.config.pricing import parse_pricing

    pricing = parse_pricing(doc.section("pricing"))
    return AppConfig(pricing=pricing, file=doc.file, storage_url=storage, rule_paths=paths, service=service,
                     scheduler=scheduler, evaluation=evaluation, ingest=ingest, sources=sources, slack=slack,
                     salesforce=salesforce,
                     health=health, ruleset=ruleset, notifiers=notifiers, web=web)


def _post_paths_apart(doc: Document, ingest: Any, slack: Any, web: Any) -> None:
    """The service's POST endpoints are different paths: the HTTP server has one route per method and
    path, so [ingest] path = "/slack/events" silently lost every push to the Slack handler (401s)."""
    claimed: dict[str, str] = {}
    wanted = [("web", None, "/logout", web is not None and web.enabled),
              ("slack", "http_path", getattr(slack, "http_path", ""), getattr(slack, "interactive_mode", None) == "http"),
              ("ingest", "path", getattr(ingest, "path", ""), ingest is not None)]
    for section, key, path, used in wanted:
        if not used:
            continue
        if path in claimed:
            doc.section(section).problem(key, f"{path!r} is already the path of {claimed[path]}; give each its own path")
        else:
            claimed[path] = f"[{section}] {key}" if key else "the web UI's sign-out"


def _web(doc: Document, slack: Any) -> tuple[Any, Any]:
    """[web], and the Slack config with the episode page links of its public_url (alert messages link there)."""
    if "web" not in doc.data:
        return None, slack
    from dataclasses import replace

    from bot.config.web import parse_web_config

    web = parse_web_config(doc.section("web"), slack_bot_token=bool(slack is not None and slack.enabled))
    if web.enabled and web.public_url and slack is not None:
        slack = replace(slack, episode_url=f"{web.public_url}/episodes/{{episode_id}}")
    return web, slack


def check_config(path: str | Path, env: Mapping[str, str] | None = None,
                 validate_rules: bool = True) -> tuple[AppConfig | None, list[Problem]]:
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

"""`usagebot serve` and `usagebot config check` (registered by bot.cli.main.build_parser)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import TYPE_CHECKING, TextIO

from bot.cli.settings import CONFIG_ENV, resolve
from bot.cli.support import add_command, add_config_option, add_db_option, add_group, config_path, port_number

if TYPE_CHECKING:  # imported where used: every command registers this module (tests/cli/test_startup_imports.py)
    from bot.config.app import AppConfig

DEFAULT_CONFIG_ENV = CONFIG_ENV


def _config_path(args: argparse.Namespace) -> str | None:
    return config_path(getattr(args, "config", None) or getattr(args, "path", None))


def apply_overrides(config: AppConfig, args: argparse.Namespace) -> AppConfig:
    """The config with flag > environment > config file applied to the settings `serve` takes (bot.cli.settings)."""
    from bot.config.app import LOG_FORMATS, LOG_LEVELS

    svc = config.service
    db = resolve("--db", args.db, config.storage_url, config.storage_url)
    host = resolve("--host", args.host, svc.host, svc.host)
    port = resolve("--port", args.port, svc.port, svc.port, convert=port_number)
    level = resolve("--log-level", args.log_level, svc.log_level, svc.log_level)
    fmt = resolve("--log-format", args.log_format, svc.log_format, svc.log_format)
    if level.value not in LOG_LEVELS or fmt.value not in LOG_FORMATS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)} and log format one of "
                         f"{', '.join(LOG_FORMATS)} (got {level.value!r}, {fmt.value!r})")
    service = replace(svc, host=host.value, port=port.value, log_level=level.value, log_format=fmt.value)
    return replace(config, storage_url=db.value, service=service)


def _print_problems(problems: list, err: TextIO) -> None:
    for p in problems:
        print(str(p), file=err)
    print(f"{len(problems)} problem(s) in the configuration.", file=err)


def cmd_config_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.config.app import check_config

    path = _config_path(args)
    if not path:
        print(f"usagebot config check: give a config file (or set {DEFAULT_CONFIG_ENV}, or have ./config.toml)",
              file=err)
        return 2
    config, problems = check_config(path)
    if problems:
        for p in problems:
            print(str(p), file=out)
        print(f"\n{len(problems)} problem(s) found.", file=out)
        return 1
    assert config is not None
    from storage.db import redact_url

    enabled = [s for s in config.sources if s.settings.enabled]
    kinds = ", ".join(sorted({s.settings.type for s in enabled})) or "none enabled"
    n_rules = len(config.ruleset.rules) if config.ruleset else 0
    lines = [
        f"OK: {path}",
        f"  storage:    {redact_url(config.storage_url)}",
        f"  rules:      {n_rules} rule(s) in {len(config.rule_paths)} path(s)",
        f"  sources:    {len(enabled)} of {len(config.sources)} enabled ({kinds})",
        f"  ingest:     {('POST ' + config.ingest.path) if config.ingest else 'off'}",
        f"  slack:      {_slack_summary(config.slack)}",
        f"  salesforce: {_sf_summary(config.salesforce)}",
        f"  web UI:     {_web_summary(config.web)}",
        f"  leader:     {config.scheduler.leader}",
    ]
    print("\n".join(lines), file=out)
    return 0


def _slack_summary(slack: object) -> str:
    if slack is None:
        return "off (alerts go to the console)"
    if not getattr(slack, "enabled", False):
        return "no bot token (alerts go to the console)"
    return f"on ({getattr(slack, 'interactive_mode', None) or 'alerts only'})"


def _web_summary(web: object) -> str:
    if web is None or not getattr(web, "enabled", False):
        return "off (no [web] section)"
    ways = [w for w, on in (("Sign in with Slack", getattr(web, "slack_sign_in", False)),
                            ("tokens", bool(getattr(web, "tokens", ()))),
                            ("anonymous", getattr(web, "anonymous", False))) if on]
    return f"on ({', '.join(ways)}){' at ' + str(web.public_url) if getattr(web, 'public_url', None) else ''}"


def _sf_summary(sf: object) -> str:
    if sf is None:
        return "off"
    describe = getattr(sf, "describe_auth", None)
    return describe() if callable(describe) else "on"


def cmd_serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.config.app import check_config
    from bot.serve.service import Service
    from bot.service.logs import setup_logging

    path = _config_path(args)
    if not path:
        print(f"usagebot serve: give --config FILE (or set {DEFAULT_CONFIG_ENV}, or run it where config.toml is); "
              "`usagebot init DIR` writes one", file=err)
        return 2
    config, problems = check_config(path)
    if problems:
        _print_problems(problems, err)
        return 1
    assert config is not None
    try:
        config = apply_overrides(config, args)
    except ValueError as exc:
        print(f"usagebot serve: {exc}", file=err)
        return 2
    setup_logging(config.service.log_format, config.service.log_level, stream=err)
    service = Service(config)
    if args.once:
        try:
            results = service.run_once()
        finally:
            service.stop()
        print(json.dumps(results, sort_keys=True), file=out)
        return 0 if all(r in ("ok", "skipped") for r in results.values()) else 1
    from bot.serve.service import ServiceStartError

    try:
        service.serve_forever()
    except ServiceStartError as exc:
        print(f"usagebot serve: {exc}", file=err)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` and `config check` to the top-level parser."""
    s = add_command(sub, "serve", "run the service: sources, scheduler, evaluation, delivery, HTTP endpoints",
                    ["usagebot serve --config config.toml",
                     "USAGEBOT_CONFIG=/etc/usagebot/config.toml USAGEBOT_DB_URL=postgresql://... usagebot serve",
                     "usagebot serve --config config.toml --once      # every job once, then exit"])
    add_config_option(s)
    add_db_option(s)
    s.add_argument("--host", metavar="ADDR", help="HTTP listen address (default $USAGEBOT_HOST, else [service] host)")
    s.add_argument("--port", type=port_number, metavar="N", help="HTTP port (default $USAGEBOT_PORT, else [service] port)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log level (default $USAGEBOT_LOG_LEVEL, else [service] log_level)")
    s.add_argument("--log-format", choices=["json", "text"],
                   help="json (one object per line) or text (default $USAGEBOT_LOG_FORMAT, else [service] log_format)")
    s.add_argument("--once", action="store_true",
                   help="run every job once (poll, freshness, evaluate, deliver...) and exit")
    s.set_defaults(func=cmd_serve)

    csub = add_group(sub, "config", "configuration file tools")
    chk = add_command(csub, "check", "validate the whole config file; prints every problem as file:line: field: "
                                     "message", ["usagebot config check config.toml",
                                                 "USAGEBOT_CONFIG=/etc/usagebot/config.toml usagebot config check"])
    chk.add_argument("path", metavar="CONFIG", nargs="?",
                     help="the config file (default $USAGEBOT_CONFIG, else ./config.toml)")
    chk.set_defaults(func=cmd_config_check)

"""`usagebot serve` and `usagebot config check` (registered by bot.cli.build_parser)."""

from __future__ import annotations

import argparse
import json
import os
from typing import TextIO

DEFAULT_CONFIG_ENV = "USAGEBOT_CONFIG"


def _config_path(args: argparse.Namespace) -> str | None:
    return args.config or os.environ.get(DEFAULT_CONFIG_ENV)


def _print_problems(problems: list, err: TextIO) -> None:
    for p in problems:
        print(str(p), file=err)
    print(f"{len(problems)} problem(s) in the configuration.", file=err)


def cmd_config_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.config import check_config

    config, problems = check_config(args.path)
    if problems:
        for p in problems:
            print(str(p), file=out)
        print(f"\n{len(problems)} problem(s) found.", file=out)
        return 1
    assert config is not None
    from storage.db import redact_url

    kinds = ", ".join(sorted({s.settings.type for s in config.sources})) or "none"
    n_rules = len(config.ruleset.rules) if config.ruleset else 0
    lines = [
        f"OK: {args.path}",
        f"  storage:    {redact_url(config.storage_url)}",
        f"  rules:      {n_rules} rule(s) in {len(config.rule_paths)} path(s)",
        f"  sources:    {len(config.sources)} ({kinds})",
        f"  ingest:     {('POST ' + config.ingest.path) if config.ingest else 'off'}",
        f"  slack:      {_slack_summary(config.slack)}",
        f"  salesforce: {_sf_summary(config.salesforce)}",
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


def _sf_summary(sf: object) -> str:
    if sf is None:
        return "off"
    describe = getattr(sf, "describe_auth", None)
    return describe() if callable(describe) else "on"


def cmd_serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.config import check_config
    from bot.logs import setup_logging
    from bot.service import Service

    path = _config_path(args)
    if not path:
        print(f"usagebot serve: give --config FILE (or set {DEFAULT_CONFIG_ENV})", file=err)
        return 2
    config, problems = check_config(path)
    if problems:
        _print_problems(problems, err)
        return 1
    assert config is not None
    if args.port is not None:
        from dataclasses import replace

        config = replace(config, service=replace(config.service, port=args.port))
    setup_logging(config.service.log_format, config.service.log_level, stream=err)
    service = Service(config)
    if args.once:
        try:
            results = service.run_once()
        finally:
            service.stop()
        print(json.dumps(results, sort_keys=True), file=out)
        return 0 if all(r != "error" for r in results.values()) else 1
    service.serve_forever()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` and `config check` to the top-level parser."""
    s = sub.add_parser("serve", help="run the service: sources, scheduler, evaluation, delivery, HTTP endpoints")
    s.add_argument("--config", help=f"config file (TOML; default ${DEFAULT_CONFIG_ENV})")
    s.add_argument("--port", type=int, help="HTTP port (overrides [service] port)")
    s.add_argument("--once", action="store_true",
                   help="run every job once (poll, freshness, evaluate, deliver...) and exit")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("config", help="configuration file tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    chk = csub.add_parser("check", help="validate the whole config file; prints every problem as file:line: field: message")
    chk.add_argument("path", metavar="CONFIG")
    chk.set_defaults(func=cmd_config_check)

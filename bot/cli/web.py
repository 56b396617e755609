"""`usagebot ui`: the read-only web UI on this machine (registered by bot.cli.main.build_parser).

Without --db (or $USAGEBOT_DB_URL, or a --config with [storage]) it shows the demo book
(usagebot-data/demo.db, made by `usagebot demo`; made here first when it does not exist). Without
a [web] section in --config nobody signs in, so it listens on 127.0.0.1 only unless [web] says how
people sign in.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import threading
from pathlib import Path
from typing import Any, TextIO

from bot.cli.support import (
    DB_ENV,
    DEFAULT_DATA_DIR,
    SHIPPED_RULES,
    add_command,
    add_config_option,
    config_path,
    load_or_report,
    port_number,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 8050


def _demo_db(data_dir: str, err: TextIO) -> str:
    """The demo book's database, made first (`usagebot demo`, quietly) when it is not there."""
    db = Path(data_dir) / "demo.db"
    if not db.exists():
        from bot.cli.demo import run_demo
        from rules.loader import load_rules

        print(f"usagebot ui: making the demo book in {data_dir}/ first (usagebot demo)...", file=err)
        run_demo(load_rules([str(SHIPPED_RULES)]), io.StringIO(), data_dir=data_dir)
    return f"sqlite:///{db.resolve()}"


def cmd_ui(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bot.config.app import load_config
    from bot.config.web import WebConfig
    from bot.service.http_server import HttpServer, ListenError, Response, Route
    from bot.web.app import WebUI
    from rules.loader import check_rules
    from storage.db import current_revision, make_engine, redact_url, require_sqlite_file

    config = None
    path = config_path(args.config)
    if path is not None:
        config = load_or_report(lambda: load_config(path), err)
        if config is None:
            return 1
    url = args.db or os.environ.get(DB_ENV) or (config.storage_url if config else None) or _demo_db(args.data_dir, err)
    rule_paths = args.rules or (list(config.rule_paths) if config else None) or [str(SHIPPED_RULES)]
    ruleset, problems = check_rules(rule_paths)
    for p in problems:
        print(str(p), file=err)
    if ruleset is None:
        print(f"{len(problems)} problem(s) in the rules; the UI was not started.", file=err)
        return 1
    web = config.web if config is not None and config.web is not None else None
    open_access = web is None
    if open_access and args.host not in LOOPBACK:
        print(f"usagebot ui: --host {args.host}: without [web] sign-in settings (--config) the UI has no sign-in, "
              "so it only listens on 127.0.0.1; configure [web] to serve it to others", file=err)
        return 2
    engine = make_engine(require_sqlite_file(url, "the UI only reads and creates none"))  # StorageError: one line
    if current_revision(engine) is None:
        print(f"usagebot ui: {redact_url(url)} is not a usagebot database (no schema): run `usagebot ingest` or "
              "`usagebot demo` first", file=err)
        engine.dispose()
        return 1
    if web is None:
        web = WebConfig(anonymous=True, public_url=f"http://127.0.0.1:{args.port or DEFAULT_PORT}")
    ui = WebUI(web, engine, lambda: ruleset, slack=config.slack if config else None)
    routes = [Route("GET", "/healthz", lambda req: Response.json(200, {"status": "ok"}), "healthz"), *ui.routes()]
    try:
        server = HttpServer(args.host, args.port, routes)
    except ListenError as exc:
        print(f"usagebot ui: {exc}; choose another with --port / --host", file=err)
        engine.dispose()
        return 1
    server.start()
    host = args.host if ":" not in args.host else f"[{args.host}]"
    print(f"usagebot ui: http://{host}:{server.port}/ on {redact_url(url)} ({len(ruleset.rules)} rules); "
          "Ctrl-C stops it", file=out, flush=True)
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        engine.dispose()
    return 0


def register(sub: Any) -> None:
    u = add_command(sub, "ui", "the read-only web UI (alerts, episodes, accounts with charts) on this machine",
                    ["usagebot ui                                   # the demo book, http://127.0.0.1:8050/",
                     "usagebot ui --db sqlite:///usagebot-data/usagebot.db --port 9000",
                     "usagebot ui --config config.toml              # its database, rules and [web] sign-in"])
    u.add_argument("--db", metavar="URL", help=f"database URL (default: ${DB_ENV}, else [storage] url of --config, "
                                                f"else the demo book {DEFAULT_DATA_DIR}/demo.db)")
    add_config_option(u, " (its database, rules and [web] sign-in settings)")
    u.add_argument("--rules", action="append", metavar="PATH",
                   help="rule files shown with the alerts (default: the config's, else the shipped examples)")
    u.add_argument("--port", type=port_number, default=DEFAULT_PORT, metavar="N", help=f"HTTP port (default {DEFAULT_PORT})")
    u.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="listen address (default 127.0.0.1; others need [web] sign-in settings)")
    u.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR",
                   help=f"where the demo book is (default ./{DEFAULT_DATA_DIR})")
    u.set_defaults(func=cmd_ui)

"""A command imports what it uses, not the whole service: every command registers its parser from
every bot.cli module, and bot.cli.crm / serve / slack imported bot.config.app (the service's
sources, push endpoint, outbox, notifiers) at module level, ~0.3 s of CPU at the start of every
command, `usagebot ingest` of one row 1.70 -> 1.38 s CPU (docs/benchmarks.md). Each check runs in a
fresh interpreter, as a user's command does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SERVICE_ONLY = ("bot.config.app", "integrations.sources.push", "integrations.sources.http_fetch", "httpx",
                "slack_sdk", "slack_bolt", "simple_salesforce", "jinja2", "apscheduler")


def _modules_after(code: str, *args: str) -> set[str]:
    child = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", child, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_building_the_command_line_imports_no_database_nor_service_module() -> None:
    loaded = _modules_after("from bot.cli.main import build_parser\nbuild_parser()")
    assert not loaded & {*SERVICE_ONLY, "sqlalchemy", "pyarrow", "numpy", "alembic"}


def test_ingest_imports_the_storage_it_writes_with_and_nothing_of_the_service(tmp_path: Path) -> None:
    usage = tmp_path / "u.csv"
    usage.write_text("timestamp,account,metric,value\n2026-01-01T00:00:00Z,acme,api_calls,3\n")
    config = tmp_path / "config.toml"  # the database comes from [storage] url, read without bot.config.app
    config.write_text('[storage]\nurl = "sqlite:///db/usagebot.db"\n')
    code = ("import io\nfrom bot.cli.main import main\nout = io.StringIO()\n"
            "assert main(['ingest', '--usage', sys.argv[1], '--config', sys.argv[2]], out, out) == 0, out.getvalue()")
    loaded = _modules_after(code, str(usage), str(config))
    assert (tmp_path / "db" / "usagebot.db").exists()
    assert {"sqlalchemy", "pyarrow"} <= loaded
    assert not loaded & set(SERVICE_ONLY)

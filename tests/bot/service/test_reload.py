"""Hot reload of rule files and templates: on change, on SIGHUP; an invalid change keeps what runs."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.config.app import load_config
from bot.serve.service import Service
from integrations.console import ConsoleNotifier
from storage.outbox import list_outbox
from tests.bot.service.test_service import DAY, RULES, SECRET, T0, _config

EXTRA_RULE = """
[[rule]]
id = "calls-drop"
kind = "drop"
metric = "api_calls"
bucket = "1d"
[rule.baseline]
window = "7d"
min_points = 3
[rule.threshold]
ratio = 0.5
"""


def _service(tmp_path: Path, extra: str = "", out: io.StringIO | None = None) -> Service:
    cfg = load_config(_config(tmp_path, f"sqlite:///{tmp_path}/r.db", extra), env={"INGEST_SECRET": SECRET})
    svc = Service(cfg, clock=lambda: T0 + 10 * DAY + 60, notifier=ConsoleNotifier(out=out or io.StringIO()))
    svc.prepare()
    return svc


def test_a_valid_change_is_in_force_for_the_next_evaluation(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    try:
        assert [r.id for r in svc.evaluator.ruleset.rules] == ["calls-spike"]
        assert svc.reload().changed is False  # nothing changed
        (tmp_path / "rules.toml").write_text(RULES + EXTRA_RULE)
        outcome = svc.reload()
        assert outcome.changed and outcome.ok
        assert [r.id for r in svc.evaluator.ruleset.rules] == ["calls-spike", "calls-drop"]
        assert [r.id for r in svc.ruleset.rules] == ["calls-spike", "calls-drop"]
        assert svc.metrics.value("usagebot_rules_reloads_total", result="ok") == 1
        assert svc.metrics.value("usagebot_rules_loaded") == 2
        assert svc.metrics.value("usagebot_alerts_total", rule="calls-drop", event="fired") == 0  # initialised
    finally:
        svc.stop()


def test_an_invalid_change_keeps_the_running_rules_logs_every_problem_and_tells_the_admin(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    svc = _service(tmp_path, out=out)
    try:
        broken = RULES.replace('kind = "spike"', 'kind = "spik"').replace("ratio = 3.0", "ratio = -1")
        (tmp_path / "rules.toml").write_text(broken)
        with caplog.at_level(logging.WARNING):
            outcome = svc.reload()
        assert outcome.changed and not outcome.ok and len(outcome.problems) >= 1
        assert [r.id for r in svc.evaluator.ruleset.rules] == ["calls-spike"]  # still in force
        logged = [r.getMessage() for r in caplog.records]
        for p in outcome.problems:
            assert f"rule reload: {p}" in logged
        assert any("was not loaded" in m and "stay in force" in m for m in logged)
        rows = [r for r in list_outbox(svc.engine) if r.idempotency_key.startswith("rules-invalid:")]  # type: ignore[arg-type]
        assert len(rows) == 1 and rows[0].payload["routing"]["channels"] == ["#usagebot-admin"]
        assert "NOT loaded" in rows[0].payload["message"] and "spik" in rows[0].payload["message"]
        assert svc.reload().changed is False  # the same broken content is not reported again
        svc.deliver_job(T0 + 10 * DAY + 60)
        assert "To: #usagebot-admin" in out.getvalue() and "NOT loaded" in out.getvalue()
        assert svc.metrics.value("usagebot_rules_reloads_total", result="invalid") == 1
        (tmp_path / "rules.toml").write_text(RULES + EXTRA_RULE)  # fixed: taken
        assert svc.reload().ok and len(svc.evaluator.ruleset.rules) == 2
    finally:
        svc.stop()


TEMPLATES = """
[slack]
template_dir = "tpl"
"""


def test_templates_reload_and_a_broken_one_keeps_the_running_template(tmp_path: Path) -> None:
    (tmp_path / "tpl" / "console").mkdir(parents=True)
    tpl = tmp_path / "tpl" / "console" / "alert.txt.j2"
    tpl.write_text("OLD {{ a.rule }} {{ a.event }}")
    svc = _service(tmp_path, TEMPLATES)
    svc.notifier = ConsoleNotifier(out=io.StringIO(), template_dir=str(tmp_path / "tpl"))
    svc.reloader = svc._make_reloader()  # as the service does with its own notifier
    alert = {"rule": "r1", "event": "fired", "template": None}
    try:
        assert svc.notifier.render(alert).startswith("OLD r1")
        tpl.write_text("NEW {{ a.rule }} {{ a.event ")  # a syntax error
        outcome = svc.reload()
        assert not outcome.ok and any("alert.txt.j2" in p for p in outcome.problems)
        assert svc.notifier.render(alert).startswith("OLD r1")  # the running template, not the broken file
        tpl.write_text("NEW {{ a.rule }} {{ a.event }}")
        assert svc.reload().ok
        assert svc.notifier.render(alert).startswith("NEW r1")
    finally:
        svc.stop()


def test_sighup_reloads_the_running_service(tmp_path: Path) -> None:
    path = _config(tmp_path, f"sqlite:///{tmp_path}/h.db")
    path.write_text(path.read_text().replace("[scheduler]\n", "[scheduler]\nreload_every = \"1h\"\n")
                    .replace('port = 0', 'port = 0\nlog_format = "text"'))
    env = {**os.environ, "INGEST_SECRET": SECRET}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("usagebot")), "serve", "--config", str(path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def wait_for(needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            lines.append(line)
            if needle in line:
                return
        raise AssertionError(f"{needle!r} not logged:\n{''.join(lines)}")

    try:
        wait_for("started")
        (tmp_path / "rules.toml").write_text(RULES + EXTRA_RULE)
        proc.send_signal(signal.SIGHUP)
        wait_for("reloaded the rules and templates: 2 rule(s) in force (was 1)")
        (tmp_path / "rules.toml").write_text("[[rule]]\nid = 1\n")
        proc.send_signal(signal.SIGHUP)
        wait_for("stay in force")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

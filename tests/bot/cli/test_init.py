"""`usagebot init [--demo]`, the example config as shipped, and the commands the demo suggests.

The newcomer's path end to end: init --demo, then serve, and an alert on the console; the example
config passes `config check` as shipped; what `demo` prints under "Try next" works in a fresh shell
(PATH without the virtualenv).
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.cli.init import example_config
from bot.cli.main import main
from bot.config.app import check_config

ROOT = Path(__file__).resolve().parents[3]
USAGEBOT = Path(sys.executable).with_name("usagebot")
FRESH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main(list(argv), out=out, err=err)
    finally:  # serve installs its log handler on the root logger
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if not getattr(h, "_usagebot", False)]
    return code, out.getvalue(), err.getvalue()


def test_init_demo_then_serve_alerts_on_the_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # nothing of the repository is used: the example files are package data
    monkeypatch.delenv("USAGEBOT_DB_URL", raising=False)
    code, out, err = _run("init", "mine", "--demo")
    assert code == 0, err
    assert "demo book (60 accounts" in out and "serve --config mine/config.toml" in out
    for f in ("config.toml", "rules/default.toml", "usagebot-data/accounts.csv", "usagebot-data/drops/demo-usage.csv"):
        assert (tmp_path / "mine" / f).is_file(), f
    code, out, err = _run("config", "check", "mine/config.toml")
    assert code == 0 and out.startswith("OK: mine/config.toml"), out + err
    code, out, err = _run("serve", "--config", "mine/config.toml", "--once")
    assert code == 0, err
    out += capsys.readouterr().out  # the console notifier writes to stdout
    assert "FIRED ·" in out  # an alert printed by the console notifier, from the very first poll
    # ... with the accounts read in the same first poll: owners get their DM, quota rules have quotas
    assert out.count("FIRED ·") >= 5 and "To: DM " in out and "of the monthly quota" in out
    assert '"poll:drops": "ok"' in out
    assert (tmp_path / "mine" / "usagebot-data" / "usagebot.db").is_file()
    assert "left until they are complete" not in err  # the demo file was not skipped for min_age


def test_init_without_demo_is_a_working_empty_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run("init", "svc")[0] == 0
    code, out, err = _run("serve", "--config", "svc/config.toml", "--once")
    assert code == 0, err
    assert "FIRED" not in out and '"poll:drops": "ok"' in out
    code, _, err = _run("init", "svc")
    assert code == 2 and "exists; pass --force" in err
    assert _run("init", "svc", "--force")[0] == 0


def test_a_new_file_younger_than_min_age_is_announced_not_silently_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run("init", "svc")[0] == 0
    (tmp_path / "svc" / "usagebot-data" / "drops" / "new.csv").write_text(
        "timestamp,account,metric,value\n2026-11-01,acme,api_calls,5\n")
    code, out, err = _run("serve", "--config", "svc/config.toml", "--once", "--log-format", "text")
    assert code == 0
    assert "drops: 1 file(s) modified less than min_age ago, left until they are complete" in err
    assert "new.csv" in err


def test_the_example_config_passes_check_as_shipped() -> None:
    config, problems = check_config(ROOT / "config.example.toml", env={})
    assert problems == [], [str(p) for p in problems]
    assert config is not None and config.ingest is None  # [ingest] enabled = false needs no secret


def test_enabled_sources_still_need_their_environment(tmp_path: Path) -> None:
    text = (ROOT / "config.example.toml").read_text().replace(
        'paths = ["rules/examples/default.toml"]', f'paths = ["{ROOT}/rules/examples/default.toml"]')
    block = text.index('id = "billing-api"')
    text = text[:block] + text[block:].replace("enabled = false", "enabled = true", 1)
    p = tmp_path / "config.toml"
    p.write_text(text)
    _, problems = check_config(p, env={})
    assert [p.message for p in problems] == ["environment variable BILLING_API_TOKEN is not set"]


def test_the_packaged_example_config_is_the_repository_one() -> None:
    # `usagebot init` works from a pip install, so the example ships inside the package too
    assert example_config() == (ROOT / "config.example.toml").read_text()


def _try_next(out: str) -> list[str]:
    block = out.split("Try next", 1)[1].splitlines()[1:]
    return [line.strip().split("   #")[0].strip() for line in block if line.startswith("  ")]


def test_the_demo_suggests_commands_that_work_in_a_fresh_shell(tmp_path: Path) -> None:
    proc = subprocess.run([str(USAGEBOT), "demo", "--accounts", "12", "--days", "45", "--replay-days", "3"],
                          cwd=tmp_path, env=FRESH_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    commands = _try_next(proc.stdout)
    assert len(commands) == 4 and all(not c.startswith("usagebot ") for c in commands), commands
    ui = [c for c in commands if c.endswith(" ui")]
    assert len(ui) == 1
    commands.remove(ui[0])
    _serves_the_ui(ui[0] + " --port 0", tmp_path)
    for cmd in commands:
        cmd = re.sub(r"(serve --config \S+)$", r"\1 --once", cmd)  # the service itself would run forever
        began = time.monotonic()
        done = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=FRESH_ENV, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:], time.monotonic() - began)
    assert "FIRED" in done.stdout  # the last one: init --demo && serve


def _serves_the_ui(cmd: str, cwd: Path) -> None:
    """`usagebot ui` runs until stopped: it must say where it listens, and answer there."""
    import httpx

    proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=cwd, env=FRESH_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, (cmd, line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        assert httpx.get(m.group(1), timeout=30, follow_redirects=True).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_init_demo_then_the_running_service_alerts_within_its_first_poll(tmp_path: Path) -> None:
    """The real `serve` (not --once), its output a pipe as under systemd or docker: the first alert arrives
    right after the first poll, and is flushed at once."""
    assert subprocess.run([str(USAGEBOT), "init", "svc", "--demo"], cwd=tmp_path, env=FRESH_ENV,
                          capture_output=True, timeout=120).returncode == 0
    proc = subprocess.Popen([str(USAGEBOT), "serve", "--config", "svc/config.toml", "--port", "0"], cwd=tmp_path,
                            env=FRESH_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        deadline = time.monotonic() + 90
        line = ""
        while "FIRED ·" not in line:
            assert sel.select(timeout=max(0.1, deadline - time.monotonic())), "no alert within 90 s"
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, "the service ended without an alert"
    finally:
        proc.send_signal(__import__("signal").SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "evaluation waits for the first poll of drops" in err or err.index("polled drops") < err.index(
        "evaluated 10 rule(s)")


def test_init_demo_alerts_at_once_even_just_after_midnight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Between 00:00 and 01:00 UTC (before [scheduler] max_wait) the latest closed day is evaluated only when a
    source shows it complete: the demo book runs through today, so the first poll does."""
    from freezegun import freeze_time

    monkeypatch.chdir(tmp_path)
    with freeze_time("2026-12-02 00:20:00"):
        assert _run("init", "mine", "--demo")[0] == 0
        code, out, err = _run("serve", "--config", "mine/config.toml", "--once")
    assert code == 0, err
    assert "FIRED ·" in out + capsys.readouterr().out

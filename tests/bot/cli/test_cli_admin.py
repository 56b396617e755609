"""The command line as an admin meets it: --version, help everywhere, one settings precedence,
`db upgrade|current`, read-only commands that never create a database, progress and summaries."""

from __future__ import annotations

import argparse
import io
import logging
import re
from pathlib import Path

import pytest

from bot import __version__
from bot.cli.main import build_parser, main
from bot.cli.settings import SETTINGS, markdown_table, resolve
from tests.bot.service.test_service import SECRET, _config

ROOT = Path(__file__).resolve().parents[3]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(*argv: str, err: io.StringIO | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), err or io.StringIO()
    try:
        code = main(list(argv), out=out, err=err)
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if not getattr(h, "_usagebot", False)]
    return code, out.getvalue(), err.getvalue()


def test_version_and_bare_usagebot_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"usagebot {__version__}"
    code, out, err = _run()
    assert code == 0 and err == ""
    assert out.startswith("usage: usagebot") and "usagebot init my-usagebot --demo" in out
    for command in ("check", "backtest", "demo", "ingest", "evaluate", "init", "serve", "db", "slack", "crm", "config"):
        assert re.search(rf"^    {command}\s", out, re.M), command


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    out = []
    for name, child in subs[0].choices.items():
        out += _leaves(child, (*path, name))
    return out


def test_every_command_has_an_example_and_every_option_a_help_text() -> None:
    leaves = _leaves(build_parser())
    assert len(leaves) >= 16
    for path, parser in leaves:
        cmd = "usagebot " + " ".join(path)
        examples = [line.strip() for line in (parser.epilog or "").splitlines()[1:]]
        assert any(cmd in e for e in examples), (cmd, parser.epilog)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{cmd}: {action.option_strings or action.dest} has no help text"


def test_the_settings_table_in_the_docs_is_the_one_in_the_code() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert markdown_table() in doc
    flags = {a for _, p in _leaves(build_parser()) for act in p._actions for a in act.option_strings}
    for s in SETTINGS:
        assert s.flag in flags, s.flag


def test_flag_beats_environment_beats_config_file_beats_default() -> None:
    env = {"USAGEBOT_PORT": "9000"}
    assert resolve("--port", 7000, 8081, 8080, env, int).value == 7000
    assert resolve("--port", None, 8081, 8080, env, int).value == 9000
    assert resolve("--port", None, 8081, 8080, {}, int).value == 8081
    assert resolve("--port", None, None, 8080, {}, int) .value == 8080
    with pytest.raises(ValueError, match=r"\$USAGEBOT_PORT: 'x' is not a valid HTTP port"):
        resolve("--port", None, None, 8080, {"USAGEBOT_PORT": "x"}, int)


def test_serve_honours_usagebot_db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_SECRET", SECRET)
    cfg = _config(tmp_path, f"sqlite:///{tmp_path}/from-config.db")
    monkeypatch.setenv("USAGEBOT_DB_URL", f"sqlite:///{tmp_path}/from-env.db")
    assert _run("serve", "--config", str(cfg), "--once")[0] == 0
    assert (tmp_path / "from-env.db").exists() and not (tmp_path / "from-config.db").exists()
    assert _run("serve", "--config", str(cfg), "--once", "--db", f"sqlite:///{tmp_path}/from-flag.db")[0] == 0
    assert (tmp_path / "from-flag.db").exists()
    monkeypatch.delenv("USAGEBOT_DB_URL")
    monkeypatch.setenv("USAGEBOT_CONFIG", str(cfg))  # and the config file from the environment
    assert _run("serve", "--once")[0] == 0
    assert (tmp_path / "from-config.db").exists()


@pytest.mark.parametrize("argv", [["crm", "status"], ["slack", "feedback"], ["db", "current"],
                                  ["crm", "sync", "--dry-run"]])
def test_read_only_commands_never_create_a_database(tmp_path: Path, argv: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "usagebto.db"
    code, out, err = _run(*argv, "--db", f"sqlite:///{typo}")
    assert code == 1 and f"no database at {typo}" in err and "never creates one" in err, err
    assert not typo.exists() and list(tmp_path.iterdir()) == []


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/u.db"
    code, out, _ = _run("db", "upgrade", "--db", url)
    assert code == 0 and "upgraded from an empty database to revision 0" in out
    code, out, _ = _run("db", "upgrade", "--db", url)
    assert code == 0 and "already at revision" in out
    code, out, _ = _run("db", "current", "--db", url)
    assert code == 0 and "(the newest this usagebot knows)" in out
    code, out, _ = _run("crm", "status", "--db", url)  # now it exists: the read-only command works
    assert code == 0 and "No CRM sync has run yet" in out
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    engine.dispose()
    code, out, _ = _run("db", "current", "--db", url)
    assert code == 1 and "migrated by a newer version" in out
    code, _, err = _run("crm", "status", "--db", url)
    assert code == 1 and "migrated by a newer usagebot version" in err


def test_ingest_shows_progress_on_a_terminal_and_ends_with_a_summary(tmp_path: Path) -> None:
    usage = tmp_path / "u.csv"
    usage.write_text("timestamp,account,metric,value\n" + "".join(
        f"2026-11-{d:02d},acct{a},api_calls,{a + d}\n" for a in range(50) for d in range(1, 29)))
    url = f"sqlite:///{tmp_path}/u.db"
    term = Terminal()
    code, out, err = _run("ingest", "--usage", str(usage), "--db", url, err=term)
    assert code == 0
    assert "loading u.csv" in err and "/1.40k" in err  # the bar (total: the rows of the file), on stderr
    assert "1,400 row(s) read, 1,400 bucket(s) written" in out and re.search(r"done in \d+\.\d s", out)
    code, out, err = _run("ingest", "--usage", str(usage), "--db", url)  # not a terminal: no bar
    assert code == 0 and err == ""


def test_skipped_rows_are_summarised_unless_verbose(tmp_path: Path) -> None:
    usage = tmp_path / "u.csv"
    usage.write_text("timestamp,account,metric,value\n" + "".join(
        f"2026-11-01,acct{a},api_calls,{'x' if a % 2 else a}\n" for a in range(100)))
    url = f"sqlite:///{tmp_path}/u.db"
    code, _, err = _run("ingest", "--usage", str(usage), "--db", url, "--on-error", "skip")
    assert code == 0 and err.count("skipped: ") == 20 and "... and 30 more skipped row(s)" in err
    code, _, err = _run("ingest", "--usage", str(usage), "--db", url, "--on-error", "skip", "--verbose")
    assert err.count("skipped: ") == 50


def test_readiness_probes_do_not_log_alembic(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bot.config.app import load_config
    from bot.serve.service import Service

    cfg = load_config(_config(tmp_path, f"sqlite:///{tmp_path}/r.db"), env={"INGEST_SECRET": SECRET})
    svc = Service(cfg)
    try:
        with caplog.at_level(logging.INFO):
            svc.prepare()  # migrates: Alembic may speak here
            caplog.clear()
            for _ in range(3):
                assert svc.readiness()[0]
        assert [r for r in caplog.records if r.name.startswith("alembic")] == []
    finally:
        svc.leadership.release()  # type: ignore[union-attr]
        svc.engine.dispose()  # type: ignore[union-attr]


def test_service_log_messages_show_times_not_epoch_seconds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bot.config.app import load_config
    from bot.serve.service import Service
    from integrations.console import ConsoleNotifier
    from tests.bot.service.test_service import DAY, T0

    cfg = load_config(_config(tmp_path, f"sqlite:///{tmp_path}/l.db"), env={"INGEST_SECRET": SECRET})
    rows = [f"2026-11-{d:02d}T00:00:00Z,acme,api_calls,{500 if d == 10 else 100}" for d in range(1, 11)]
    (tmp_path / "drops" / "usage.csv").write_text("timestamp,account,metric,value\n" + "\n".join(rows) + "\n")
    now = [T0 + 10 * DAY + 60]
    svc = Service(cfg, clock=lambda: now[0], notifier=ConsoleNotifier(out=io.StringIO()))
    try:
        with caplog.at_level(logging.DEBUG):
            svc.run_once()
            now[0] += 3 * DAY  # stale source, more evaluations
            svc.scheduler.run_all_once()
    finally:
        svc.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("evaluated" in m for m in messages)
    epochs = [m for m in messages if re.search(r"(?<![\d.])1[5-9]\d{8}(?![\d.])", m)]
    assert epochs == []


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv("INGEST_SECRET", SECRET)
    cfg = _config(tmp_path, f"sqlite:///{tmp_path}/u.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = _run("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port))
    assert code == 1, (out, err)
    assert f"usagebot serve: cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert "Traceback" not in err + out


def test_serve_and_ui_on_an_address_or_port_they_cannot_use_say_so_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A host that resolves to nothing was 'unexpected ValueError ... this is a bug'; `ui` on a port in
    use was 'unexpected OSError'; --port / $USAGEBOT_PORT 70000 listened on port 4464 (70000 - 65536)."""
    import socket

    monkeypatch.setenv("INGEST_SECRET", SECRET)
    cfg = _config(tmp_path, f"sqlite:///{tmp_path}/u.db")
    code, out, err = _run("serve", "--config", str(cfg), "--host", "no-such-host.invalid", "--port", "0")
    assert code == 1 and "usagebot serve: cannot listen on no-such-host.invalid:0: 'no-such-host.invalid' is not " \
                          "an address or host name of this machine" in err, err
    monkeypatch.setenv("USAGEBOT_PORT", "70000")
    code, out, err = _run("serve", "--config", str(cfg))
    assert code == 2 and "$USAGEBOT_PORT: '70000' is not a valid HTTP port" in err, err
    for argv in (["serve", "--config", str(cfg), "--port", "70000"], ["ui", "--port", "70000"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and "argument --port: invalid port_number value: '70000'" in capsys.readouterr().err
    book = tmp_path / "book"
    code, _, err = _run("demo", "--data-dir", str(book), "--accounts", "5", "--days", "40")
    assert code == 0, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = _run("ui", "--port", str(port), "--data-dir", str(book))
    assert code == 1 and f"usagebot ui: cannot listen on 127.0.0.1:{port}: Address already in use" in err, err
    assert "Traceback" not in err + out and "bug" not in err

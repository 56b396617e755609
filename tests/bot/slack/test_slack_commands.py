"""`usagebot slack manifest | check | deliver | feedback`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bot.cli.main import main
from integrations.slack.config import SlackConfig
from integrations.slack.manifest import BOT_SCOPES, app_manifest, manifest_yaml
from storage.db import make_engine, migrate
from storage.slack import add_feedback
from tests.fakes.slack_server import FakeSlack
from tests.integrations.slack.scenario import FIRED, SPIKE_DAY, T0, Scenario, TestClock

ROOT = Path(__file__).resolve().parents[3]


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _config(tmp_path: Path, fake: FakeSlack | None, db: str, extra: str = "") -> str:
    base = f'base_url = "{fake.api_url}"\nbot_token = "xoxb-test-token"\n' if fake else ""
    p = tmp_path / "config.toml"
    p.write_text(f'[storage]\nurl = "{db}"\n\n[slack]\n{base}default_channel = "#usage-alerts"\n'
                 f'min_post_interval = 0.0\n{extra}')
    return str(p)


def test_docs_manifest_is_the_generated_default():
    assert (ROOT / "docs" / "slack-manifest.yaml").read_text() == manifest_yaml(SlackConfig())


def test_manifest_command(tmp_path):
    code, out, _ = _run("slack", "manifest", "--config", _config(tmp_path, None, "sqlite://"))
    assert code == 0 and 'command: "/usage"' in out and "socket_mode_enabled: true" in out
    for scope in BOT_SCOPES:
        assert f'- "{scope}"' in out
    cfg = _config(tmp_path, None, "sqlite://", 'request_url = "https://bot.example.com/slack/events"\n')
    code, out, _ = _run("slack", "manifest", "--config", cfg, "--format", "json")
    m = json.loads(out)
    assert m["settings"]["socket_mode_enabled"] is False
    assert m["settings"]["interactivity"]["request_url"] == "https://bot.example.com/slack/events"
    assert m["features"]["slash_commands"][0]["url"] == "https://bot.example.com/slack/events"
    assert m == app_manifest(SlackConfig(request_url="https://bot.example.com/slack/events"))


def test_config_problems_are_reported(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[slack]\nbot_token = "xoxb-1"\ndefault_chanel = "#x"\n')
    code, _, err = _run("slack", "manifest", "--config", str(p))
    assert code == 1 and f"{p}:3: slack.default_chanel: unknown key; did you mean 'default_channel'?" in err


def test_check_and_deliver_against_a_fake_slack(tmp_path):
    clock = TestClock()
    db = f"sqlite:///{tmp_path / 'u.db'}"
    with FakeSlack.running(clock=clock) as fake:
        fake.add_user("U0ALICE01", "alice@example.com")
        fake.add_channel("usage-alerts", "C0ALERTS1")
        cfg = _config(tmp_path, fake, db, "[slack.channels]\ncritical = \"#usage-critical\"\n")
        code, out, _ = _run("slack", "check", "--config", cfg)
        assert code == 1 and "token OK: bot usagebot" in out and "channel #usage-alerts: C0ALERTS1" in out
        assert "#usage-critical not found" in out
        fake.add_channel("usage-critical")
        code, out, _ = _run("slack", "check", "--config", cfg)
        assert code == 0 and out.rstrip().endswith("OK")

        engine = make_engine(db)
        migrate(engine)
        sc = Scenario(engine, clock)
        sc.cycle(SPIKE_DAY)
        sc.cycle(FIRED)
        engine.dispose()
        at = "2026-10-02T00:05:00Z"
        code, out, err = _run("slack", "deliver", "--config", cfg, "--at", at)
        assert code == 0, err
        assert "1 alert(s) delivered, 0 not delivered" in out
        assert len(fake.channel("#usage-alerts").messages) == 1 and len(fake.dm_with("U0ALICE01").messages) == 1
        code, out, _ = _run("slack", "deliver", "--config", cfg, "--at", at)
        assert "0 alert(s) delivered" in out and len(fake.channel("#usage-alerts").messages) == 1

        fake.outage = True
        sc.cycle(FIRED + 2)  # resolves
        code, out, err = _run("slack", "deliver", "--config", cfg, "--at", "2026-10-04T00:05:00Z")
        assert code == 1 and "HTTP 503" in err and "1 not delivered" in out


def test_check_without_token_and_bad_token(tmp_path):
    code, out, _ = _run("slack", "check", "--config", _config(tmp_path, None, "sqlite://"))
    assert code == 0 and "alerts go to the console" in out
    with FakeSlack.running(token="xoxb-other") as fake:
        code, out, _ = _run("slack", "check", "--config", _config(tmp_path, fake, "sqlite://"))
    assert code == 1 and "invalid_auth" in out and "xoxb-test-token" not in out


def test_feedback_report(tmp_path):
    db = f"sqlite:///{tmp_path / 'f.db'}"
    engine = make_engine(db)
    migrate(engine)
    sc = Scenario(engine, TestClock())
    sc.cycle(SPIKE_DAY)
    sc.cycle(FIRED)
    with engine.connect() as c:
        eid = c.exec_driver_sql("select id from alert_episodes").scalar_one()
    add_feedback(engine, "calls-spike", eid, "U0ALICE01", "not_useful", T0)
    engine.dispose()
    code, out, _ = _run("slack", "feedback", "--db", db)
    assert code == 0 and "calls-spike" in out and out.rstrip().endswith("1")


@pytest.mark.parametrize("argv", [["slack"], ["slack", "nope"]])
def test_usage_errors(argv):
    with pytest.raises(SystemExit) as exc:
        _run(*argv)
    assert exc.value.code == 2

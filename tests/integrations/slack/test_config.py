"""[slack] config: values, every problem with file:line and field, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from integrations.slack.config import parse_slack_config
from rules.config import ConfigError, document_from_text, load_document

ROOT = Path(__file__).resolve().parents[3]


def _parse(text: str, env: dict[str, str] | None = None):
    doc = document_from_text(text, "usagebot.toml", env=env or {})
    cfg = parse_slack_config(doc.section("slack"))
    return cfg, doc


def test_full_config(tmp_path):
    (tmp_path / "tpl" / "slack").mkdir(parents=True)
    text = f"""
[slack]
bot_token = "${{SLACK_BOT_TOKEN}}"
signing_secret = "${{SLACK_SIGNING_SECRET}}"
app_token = "${{SLACK_APP_TOKEN}}"
default_channel = "#usage-alerts"
owner_only = true
allowed_users = ["U0ALICE01"]
allowed_usergroups = ["S0CSTEAM1"]
crm_url = "https://acme.lightning.force.com/lightning/r/Account/{{crm_id}}/view"
dashboard_url = "https://app.example.com/a/{{account}}?m={{metric}}"
template_dir = "{tmp_path / 'tpl'}"
min_post_interval = 1.5
max_inline_wait = "10s"
[slack.channels]
critical = "#usage-critical"
info = "C0INFO0001"
[slack.digest]
enabled = true
at = "08:30"
timezone = "Europe/Berlin"
immediate_severities = ["critical", "warning"]
"""
    env = {"SLACK_BOT_TOKEN": "xoxb-1-2-abc", "SLACK_SIGNING_SECRET": "s3cr3t", "SLACK_APP_TOKEN": "xapp-1-x"}
    cfg, doc = _parse(text, env)
    doc.raise_if_problems()
    assert cfg.enabled and cfg.bot_token.reveal() == "xoxb-1-2-abc" and "xoxb" not in repr(cfg)
    assert cfg.interactive_mode == "socket"  # an app token means Socket Mode
    assert cfg.severity_channels == {"info": "C0INFO0001", "critical": "#usage-critical"}
    assert cfg.digest.enabled and (cfg.digest.hour, cfg.digest.minute) == (8, 30)
    assert cfg.digest.timezone == "Europe/Berlin" and cfg.digest.immediate == ("critical", "warning")
    assert cfg.restricted and cfg.owner_only and cfg.max_inline_wait == 10 and cfg.min_post_interval == 1.5
    assert cfg.template_dir == str(tmp_path / "tpl")


def test_no_token_means_console_and_empty_env_is_allowed():
    cfg, doc = _parse('[slack]\nbot_token = "${SLACK_BOT_TOKEN:-}"\ndefault_channel = "#a"\n')
    doc.raise_if_problems()
    assert not cfg.enabled and cfg.interactive_mode is None


def test_modes():
    base = '[slack]\nbot_token = "xoxb-1"\n'
    assert _parse(base + 'signing_secret = "abc"\n')[0].interactive_mode == "http"
    assert _parse(base)[0].interactive_mode is None  # alerts only
    _, doc = _parse(base + 'mode = "socket"\n')
    assert "Socket Mode needs app_token" in str(doc.problems[0])
    _, doc = _parse(base + 'mode = "sockets"\n')
    assert "did you mean 'socket'" in str(doc.problems[0])


def test_problems_name_file_line_and_field_and_never_the_secret():
    text = """[slack]
bot_token = "xoxp-NOPE-but-a-user-token-is-fine"
app_token = "xoxb-wrong-kind-SECRET"
default_channel = "usage alerts"
allowed_users = ["alice"]
crm_url = "https://crm/{crm}"
dashboard_url = "ftp://x/{account}"
deafult_channel = "#x"
[slack.channels]
urgent = "#x"
[slack.digest]
at = "25:00"
timezone = "Mars/Olympus"
"""
    _, doc = _parse(text)
    with pytest.raises(ConfigError) as exc:
        doc.raise_if_problems()
    msg = str(exc.value)
    assert "SECRET" not in msg
    lines = msg.splitlines()
    assert any(line.startswith("usagebot.toml:3: slack.app_token:") and "xapp-" in line for line in lines)
    assert any(line.startswith("usagebot.toml:4: slack.default_channel:") and "'#name'" in line for line in lines)
    assert any("slack.allowed_users" in line and "U0123ABCD" in line for line in lines)
    assert any("slack.crm_url" in line and "{crm}" in line and "{crm_id}" in line for line in lines)
    assert any("slack.dashboard_url" in line and "https://" in line for line in lines)
    assert any(line.startswith("usagebot.toml:8: slack.deafult_channel: unknown key; did you mean 'default_channel'")
               for line in lines)
    assert any("slack.channels.urgent" in line for line in lines)
    assert any(line.startswith("usagebot.toml:12: slack.digest.at:") for line in lines)
    assert any("slack.digest.timezone" in line and "Mars/Olympus" in line for line in lines)


def test_missing_env_var_is_named_not_its_value():
    _, doc = _parse('[slack]\nbot_token = "${MY_SLACK_TOKEN}"\n')
    assert "environment variable MY_SLACK_TOKEN is not set" in str(doc.problems[0])


def test_template_dir_relative_to_config_file(tmp_path):
    (tmp_path / "templates" / "slack").mkdir(parents=True)
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text('[slack]\ntemplate_dir = "templates"\n')
    doc = load_document(cfg_file, env={})
    cfg = parse_slack_config(doc.section("slack"))
    doc.raise_if_problems()
    assert cfg.template_dir == str((tmp_path / "templates").resolve())
    cfg_file.write_text('[slack]\ntemplate_dir = "nowhere"\n')
    doc = load_document(cfg_file, env={})
    parse_slack_config(doc.section("slack"))
    assert "is not a directory" in str(doc.problems[0]) and ":2:" in str(doc.problems[0])


def test_example_config_slack_block_parses_without_env():
    doc = load_document(ROOT / "config.example.toml", env={})
    cfg = parse_slack_config(doc.section("slack"))
    assert [p for p in doc.problems if p.field and p.field.startswith("slack")] == []
    assert not cfg.enabled and cfg.default_channel == "#usage-alerts"


def test_a_url_template_with_a_format_spec_is_refused_naming_the_key():
    _, doc = _parse('[slack]\ncrm_url = "https://crm/{crm_id:>99999999}"\n')
    assert [str(p) for p in doc.problems] == [
        "usagebot.toml:2: slack.crm_url: invalid URL template: placeholder {crm_id:>99999999} has a format "
        "spec; write {crm_id} (placeholders look like {crm_id})"]

"""`usagebot slack check` checks every channel alerts are routed to, rule routings included."""

from __future__ import annotations

from pathlib import Path

from tests.bot.slack.test_slack_commands import _config, _run
from tests.fakes.slack_server import FakeSlack

RULES = """
[[rule]]
id = "calls-spike"
kind = "spike"
metric = "api_calls"
bucket = "1d"
[rule.baseline]
window = "7d"
[rule.threshold]
ratio = 3.0
[rule.routing]
channels = ["#ae-team", "#usage-alerts"]
"""


def test_a_rule_routing_to_a_missing_channel_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    extra = '\n[rules]\npaths = ["rules.toml"]\n[service]\nadmin_channel = "#usagebot-admin"\n'
    with FakeSlack.running() as fake:
        fake.add_channel("usage-alerts", "C0ALERTS1")
        fake.add_channel("usagebot-admin", "C0ADMIN01")
        cfg = _config(tmp_path, fake, "sqlite://")
        Path(cfg).write_text(Path(cfg).read_text().replace("[slack]", extra + "[slack]", 1))
        code, out, _ = _run("slack", "check", "--config", cfg)
        assert code == 1, out
        assert "channel #ae-team (rule 'calls-spike'): Slack channel #ae-team not found" in out
        assert "channel #usagebot-admin: C0ADMIN01" in out and "1 problem(s)." in out
        fake.add_channel("ae-team")
        code, out, _ = _run("slack", "check", "--config", cfg)
        assert code == 0 and out.rstrip().endswith("OK"), out
        (tmp_path / "rules.toml").write_text(RULES.replace('kind = "spike"', 'kind = "spiek"'))
        code, out, _ = _run("slack", "check", "--config", cfg)
        assert code == 1 and "rules: " in out and "spiek" in out

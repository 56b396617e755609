"""The whole config file: every section, every problem as file:line: field: message, `usagebot config check`."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from bot.cli.main import main
from bot.config.app import check_config, load_config
from rules.config import ConfigError

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "rules" / "examples" / "default.toml"


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, f'[rules]\npaths = ["{RULES}"]\n[storage]\nurl = "sqlite:///data/u.db"\n'))
    assert cfg.storage_url == f"sqlite:///{tmp_path / 'data' / 'u.db'}"  # relative to the config file
    assert cfg.ruleset is not None and len(cfg.ruleset.rules) == 10
    assert (cfg.service.port, cfg.service.log_format, cfg.scheduler.leader, cfg.ingest, cfg.sources) == (
        8080, "json", "auto", None, ())
    assert (cfg.slack, cfg.salesforce, cfg.health) == (None, None, None)


def test_env_substitution_and_secrets_stay_hidden(tmp_path: Path) -> None:
    p = _write(tmp_path, f"""
[rules]
paths = ["{RULES}"]
[service]
port = "${{PORT:-9000}}"
admin_channel = "${{ADMIN}}"
[ingest]
secret = "${{INGEST_SECRET}}"
""")
    cfg = load_config(p, env={"ADMIN": "#ops", "INGEST_SECRET": "s3cr3t-value-of-ingest"})
    assert (cfg.service.port, cfg.service.admin_channel) == (9000, "#ops")
    assert cfg.ingest is not None and cfg.ingest.secret.reveal() == "s3cr3t-value-of-ingest"
    assert "s3cr3t-value" not in repr(cfg) and "s3cr3t-value" not in str(cfg)


def test_every_problem_of_every_section_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    bad_rules = _write(tmp_path, '[[rule]]\nid = "r"\nkind = "spik"\nmetric = "m"\n', "rules.toml")
    p = _write(tmp_path, f"""[storage]
url = "sqlite:///u.db"
[rules]
paths = ["{bad_rules}", "missing.toml"]
[service]
port = 70000
log_format = "yaml"
host = "https://0.0.0.0"
[scheduler]
leader = "advisory_lock"
leader_check = "20s"
lease_ttl = "30s"
crm_sync_cron = "0 25 * * *"
[ingest]
secret = "${{NOPE}}"
[[sources]]
id = "a"
type = "csv"
path = "x"
[[sources]]
id = "a"
type = "csv"
path = "y"
[sourcez]
x = 1
""")
    config, problems = check_config(p, env={})
    assert config is None
    text = [str(x) for x in problems]
    f = str(p)
    expected = [
        f"{f}:4: rules.paths: {tmp_path / 'missing.toml'}: no such file or directory",
        f"{f}:6: service.port: must be between 0 and 65535 (got 70000)",
        f"{f}:7: service.log_format: must be one of json, text (got 'yaml')",
        f"{f}:8: service.host: 'https://0.0.0.0' is not an IP address or a host name",
        f"{f}:10: scheduler.leader: advisory_lock needs PostgreSQL storage; use \"lease\" (or \"auto\")",
        f"{f}:12: scheduler.lease_ttl: must be at least twice leader_check (20s)",
        f"{f}:15: ingest.secret: environment variable NOPE is not set",
        f"{f}:21: sources[1].id: duplicate source id 'a' (also at line 17)",
        f"{f}:24: sourcez: unknown section; did you mean 'sources'?",
    ]
    for e in expected:
        assert any(t.startswith(e) for t in text), (e, text)
    assert any(t.startswith(f"{f}:13: scheduler.crm_sync_cron: invalid crontab expression") for t in text)
    # the rules are not checked while a path is missing; fix it and the rule file's own problems appear
    p.write_text(p.read_text().replace(', "missing.toml"', ""))
    _, problems = check_config(p, env={})
    assert any(str(x).startswith(f"{bad_rules}:3: rule 'r': kind: ") for x in problems)
    with pytest.raises(ConfigError):
        load_config(p, env={})


def test_integration_sections_use_their_own_parsers(tmp_path: Path) -> None:
    p = _write(tmp_path, f"""[rules]
paths = ["{RULES}"]
[slack]
bot_token = "not-a-token"
[salesforce]
domain = "login"
[health]
primary_metric = "api_calls"
""")
    config, problems = check_config(p, env={})
    assert any(str(x).startswith(f"{p}:4: slack.bot_token:") for x in problems), problems
    p.write_text(p.read_text().replace("not-a-token", "xoxb-123"))
    config, problems = check_config(p, env={})
    assert problems == [] and config is not None
    assert config.slack.enabled and config.salesforce is not None and config.health.primary_metric == "api_calls"


def test_the_example_config_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "config.example.toml").read_text()
    names = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    env = {n: ("xoxb-1" if "BOT_TOKEN" in n else "xapp-1" if "APP_TOKEN" in n
               else "postgresql://reader@db.internal/analytics" if n.endswith("_URL") else "value") for n in names}
    example = tmp_path / "config.toml"
    example.write_text(text.replace('paths = ["rules/examples/default.toml"]', f'paths = ["{RULES}"]'))
    config, problems = check_config(example, env=env)
    assert problems == [], [str(p) for p in problems]
    assert config is not None and {s.settings.type for s in config.sources} == {"csv", "http_json", "sql",
                                                                                  "openmeter"}


def test_cli_config_check(tmp_path: Path) -> None:
    good = _write(tmp_path, f'[rules]\npaths = ["{RULES}"]\n[ingest]\nsecret = "x-long-enough-secret"\n')
    out, err = io.StringIO(), io.StringIO()
    assert main(["config", "check", str(good)], out=out, err=err) == 0
    assert out.getvalue().startswith(f"OK: {good}\n") and "ingest:     POST /ingest/events" in out.getvalue()
    bad = _write(tmp_path, f'[rules]\npaths = ["{RULES}"]\n[service]\nprot = 1\n', "bad.toml")
    out = io.StringIO()
    assert main(["config", "check", str(bad)], out=out, err=err) == 1
    assert out.getvalue() == f"{bad}:4: service.prot: unknown key; did you mean 'port'?\n\n1 problem(s) found.\n"
    port = _write(tmp_path, f'[storage]\nurl = "postgresql://u:s3cr%40t@db:99999/x"\n[rules]\npaths = ["{RULES}"]\n',
                  "port.toml")
    out = io.StringIO()  # passed the check; `usagebot serve` said so only when it connected
    assert main(["config", "check", str(port)], out=out, err=err) == 1
    assert out.getvalue().startswith(f"{port}:2: storage.url: database URL 'postgresql://u:***@db:99999/x': port "
                                     "99999 is not between 1 and 65535\n") and "s3cr" not in out.getvalue()
    out = io.StringIO()
    assert main(["config", "check", str(tmp_path / "nope.toml")], out=out, err=err) == 1
    assert f"{tmp_path / 'nope.toml'}: no such file" in out.getvalue()


@pytest.mark.parametrize("key, value", [
    ("[web]\nanonymous = true\npublic_url", "https://admin:Sup3r%2BS3cret@usagebot.example.com/x?token=T0kenS3cret9"),
    ("[salesforce]\nusername = 'a@b.c'\npassword = 'pw-1'\ninstance_url", "http://u:Sup3r%2BS3cret@sf.example.com"),
    ("[service]\nadmin_channel", "https://u:Sup3r%2BS3cret@hooks.example.com/?api_key=T0kenS3cret9"),
])
def test_a_url_echoed_by_a_problem_has_its_password_and_keys_masked(tmp_path: Path, key: str, value: str) -> None:
    """Any key's value that holds a URL (a public_url with user info, a channel given as a webhook
    URL) was printed whole by the problem that quotes it, password and api key included."""
    p = _write(tmp_path, f'[rules]\npaths = ["{RULES}"]\n{key} = "{value}"\n')
    out, err = io.StringIO(), io.StringIO()
    assert main(["config", "check", str(p)], out=out, err=err) == 1
    said = out.getvalue() + err.getvalue()
    assert "***@" in said, said
    for secret in ("Sup3r", "S3cret", "T0ken"):
        assert secret not in said, said


@pytest.mark.parametrize("nested", ["[" * 400 + "]" * 400, "[" * 5000 + "]" * 5000, "{a = " * 200 + "1" + "}" * 200])
def test_a_config_or_rule_file_nested_too_deeply_is_one_problem_not_a_recursion_error(tmp_path: Path,
                                                                                     nested: str) -> None:
    """tomllib recurses once per level: 500 levels were 'unexpected RecursionError ... this is a bug'
    from `usagebot config check` and `usagebot check`, and 400 levels passed tomllib but not the rule
    loader's messages."""
    cfg = _write(tmp_path, f'[rules]\npaths = ["{RULES}"]\n[service]\nport = {nested}\n')
    rules = _write(tmp_path, f'[[rule]]\nid = "r"\nkind = "spike"\nmetric = {nested}\n', "rules.toml")
    for argv, path in ((["config", "check", str(cfg)], cfg), (["check", str(rules)], rules)):
        out, err = io.StringIO(), io.StringIO()
        assert main(argv, out=out, err=err) == 1, argv
        said = out.getvalue() + err.getvalue()
        assert f"{path}: TOML nested too deeply (more than 64 levels" in said and "bug" not in said, said


@pytest.mark.parametrize("ingest_path, other, says", [
    ("/slack/events", "[slack]\nbot_token = 'xoxb-1'\nsigning_secret = 'abcdefgh'\n", "[slack] http_path"),
    ("/logout", "[web]\nanonymous = true\n", "the web UI's sign-out"),
])
def test_two_post_endpoints_on_one_path_are_a_problem(tmp_path: Path, ingest_path: str, other: str, says: str) -> None:
    """The HTTP server keeps one route per method and path: the push endpoint on Slack's path (or on
    the web UI's /logout) passed the check and every push then went to the other handler."""
    p = _write(tmp_path, f'[rules]\npaths = ["{RULES}"]\n[ingest]\nsecret = "s-long-enough-secret" \npath = "{ingest_path}"\n{other}')
    _, problems = check_config(p, env={})
    assert [str(x) for x in problems] == [f"{p}:5: ingest.path: {ingest_path!r} is already the path of {says}; "
                                          "give each its own path"]


_SRC = 'every = "5m"\nrecords = "d"\n[sources.fields]\naccount = "a"\nmetric = "m"\nvalue = "q"\ntimestamp = "t"\n'


@pytest.mark.parametrize("table, key, extra", [
    ("[web]\nanonymous = true", "public_url", ""),
    ("[[notifiers]]\ntype = 'webhook'\nname = 'ops'\nsecret = 'abcdefghijklmnopqrstuv'", "url", ""),
    ("[salesforce]\nusername = 'a@b.c'\npassword = 'pw-1'", "instance_url", ""),
    ("[[sources]]\nid = 'b'\ntype = 'http_json'", "url", _SRC),
    ("[[sources]]\nid = 'o'\ntype = 'openmeter'\ntoken = 'x'\nmeters = { a = 'b' }\nevery = '10m'", "url", ""),
    ("[slack]\nbot_token = 'xoxb-1'", "base_url", ""),
    ("[slack]\nbot_token = 'xoxb-1'", "crm_url", ""),
    ("[slack]\nbot_token = 'xoxb-1'", "request_url", ""),
])
@pytest.mark.parametrize("url, says", [
    ("https://u:pw-9x@host.example.com:99999/x", "Port out of range"),
    ("https://host.example.com:8o8o/x", "Port could not be cast"),
    ("https://[::1/x", "Invalid IPv6 URL"),
    ("https://ho st.example.com/x", "whitespace in its host name"),
    ("https://:443/x", "has no host name"),
])
def test_an_unusable_url_is_a_problem_at_its_key(tmp_path: Path, table: str, key: str, extra: str, url: str,
                                                 says: str) -> None:
    """Every http(s) URL key goes through rules.config.values.url_problem: a port past 65535 or not a
    number, no host or a host with a space passed the check (and failed at the first request), and
    web.public_url = "https://[::1" was 'unexpected ValueError ... this is a bug'."""
    p = _write(tmp_path, f'[rules]\npaths = ["{RULES}"]\n{table}\n{key} = "{url}"\n{extra}')
    out, err = io.StringIO(), io.StringIO()
    assert main(["config", "check", str(p)], out=out, err=err) == 1
    said = out.getvalue() + err.getvalue()
    assert says in said and f".{key}: " in said and "pw-9x" not in said and "bug" not in said, said


@pytest.mark.parametrize("path", ["/slack/../events", "/slack//events", "/events?x=1", "/ev ents", "/a/./b", "/%2e%2e"])
def test_a_served_path_a_proxy_would_rewrite_is_a_problem(tmp_path: Path, path: str) -> None:
    """[ingest] path and [slack] http_path with '..', '//', a query or a space passed the check; the
    route then never matched what Slack or a proxy sends (they normalise such a path)."""
    p = _write(tmp_path, f'[rules]\npaths = ["{RULES}"]\n[ingest]\nsecret = "s-long-enough-secret"\npath = "{path}"\n'
                         f'[slack]\nbot_token = "xoxb-1"\nsigning_secret = "abcdefgh"\nhttp_path = "{path}"\n')
    _, problems = check_config(p, env={})
    said = [str(x) for x in problems]
    assert [s.split(": ", 2)[1] for s in said] == ["ingest.path", "slack.http_path"], said
    assert all("must be a plain path" in s for s in said), said


def test_slack_request_url_is_an_https_url(tmp_path: Path) -> None:
    """request_url (the manifest's Slack-facing URL) was not checked: 'http://...' or 'usagebot.example.com'
    went into the manifest, and Slack calls only https URLs."""
    for url in ("http://usagebot.example.com/slack/events", "usagebot.example.com/slack/events"):
        p = _write(tmp_path, f'[rules]\npaths = ["{RULES}"]\n[slack]\nbot_token = "xoxb-1"\nrequest_url = "{url}"\n')
        _, problems = check_config(p, env={})
        assert [str(x).split(": ", 2)[1:] for x in problems] == [[
            "slack.request_url", "must be an https:// URL (Slack calls no other), e.g. "
            "https://usagebot.example.com/slack/events"]], problems

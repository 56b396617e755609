"""[salesforce] parsing: auth modes, secrets, domains, field mapping, tasks; problems carry file:line."""

from __future__ import annotations

import pytest

from integrations.salesforce.config import DEFAULT_FIELDS, SalesforceConfig, parse_salesforce_config
from rules.config import ConfigError, document_from_text


def parse(text: str, env: dict[str, str] | None = None) -> SalesforceConfig:
    doc = document_from_text(text, "usagebot.toml", env or {})
    cfg = parse_salesforce_config(doc.section("salesforce"))
    doc.raise_if_problems()
    return cfg


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(text, env)
    return [str(p) for p in e.value.problems]


def test_no_section_means_no_credentials_and_default_mapping():
    cfg = parse("")
    assert cfg.auth == "none" and not cfg.can_connect
    assert cfg.domain == "login" and cfg.object == "Account" and cfg.match == "id"
    assert dict(cfg.fields) == dict(DEFAULT_FIELDS) and cfg.batch_size == 200 and cfg.max_api_share == 0.5
    assert not cfg.tasks.enabled


def test_empty_env_defaults_mean_no_credentials():
    cfg = parse('[salesforce]\nusername = "${SF_USERNAME:-}"\npassword = "${SF_PASSWORD:-}"\n')
    assert cfg.auth == "none"


def test_password_auth_from_environment_keeps_secrets_hidden():
    cfg = parse('[salesforce]\nusername = "bot@acme.com"\npassword = "${SF_PASSWORD}"\n'
                'security_token = "${SF_TOKEN}"\nsandbox = true\n',
                {"SF_PASSWORD": "hunter2", "SF_TOKEN": "TOK"})
    assert cfg.auth == "password" and cfg.domain == "test" and cfg.login_host == "test.salesforce.com"
    assert cfg.password is not None and cfg.password.reveal() == "hunter2"
    assert "hunter2" not in repr(cfg) and "TOK" not in repr(cfg)
    assert cfg.describe_auth() == "username bot@acme.com at test.salesforce.com"


def test_missing_env_var_is_named_with_its_line():
    assert problems('[salesforce]\nusername = "u"\npassword = "${SF_PASSWORD}"\n') == [
        "usagebot.toml:3: salesforce.password: environment variable SF_PASSWORD is not set",
        'usagebot.toml:3: salesforce.password: is required for auth = "password" (or password_file)',
    ]


def test_jwt_auth_reads_the_private_key_file(tmp_path):
    key = tmp_path / "server.key"
    key.write_text("-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----\n")
    cfg = parse(f'[salesforce]\nusername = "bot@acme.com"\nconsumer_key = "CK"\nprivate_key_file = "{key}"\n'
                'domain = "acme.my"\n')
    assert cfg.auth == "jwt" and cfg.domain == "acme.my" and cfg.private_key is not None
    assert "BEGIN RSA PRIVATE KEY" in cfg.private_key.reveal() and "BEGIN" not in repr(cfg)


def test_jwt_problems_missing_key_file_and_not_a_key(tmp_path):
    out = problems('[salesforce]\nusername = "u"\nconsumer_key = "CK"\nprivate_key_file = "/nope/key.pem"\n')
    assert out[0].startswith("usagebot.toml:4: salesforce.private_key_file: cannot read the secret file /nope/key.pem")
    bad = tmp_path / "k.pem"
    bad.write_text("not a key")
    out = problems(f'[salesforce]\nusername = "u"\nconsumer_key = "CK"\nprivate_key_file = "{bad}"\n')
    assert out == ["usagebot.toml:4: salesforce.private_key_file: does not hold a PEM private key "
                   "(-----BEGIN ... PRIVATE KEY-----)"]


def test_session_auth_needs_an_https_instance_url():
    cfg = parse('[salesforce]\nsession_id = "${SID}"\ninstance_url = "https://acme.my.salesforce.com"\n',
                {"SID": "00D!abc"})
    assert cfg.auth == "session" and cfg.instance_url == "https://acme.my.salesforce.com"
    out = problems('[salesforce]\nsession_id = "x"\n')
    assert out == ['usagebot.toml:1: salesforce.instance_url: is required with a session_id (e.g. '
                   '"https://mycompany.my.salesforce.com")']
    out = problems('[salesforce]\nsession_id = "x"\ninstance_url = "acme.my.salesforce.com"\n')
    assert "usagebot.toml:3: salesforce.instance_url: must be an https:// URL" in out[0]


def test_domain_mistakes():
    out = problems('[salesforce]\ndomain = "test.salesforce.com"\n')
    assert out == ['usagebot.toml:2: salesforce.domain: give the part before ".salesforce.com" (e.g. "login", '
                   '"test", "mycompany.my"), not \'test.salesforce.com\'']
    out = problems('[salesforce]\ndomain = "login"\nsandbox = true\n')
    assert out == ['usagebot.toml:3: salesforce.sandbox: sandbox = true but domain = "login" (production); '
                   'drop one of them']


def test_unknown_keys_get_a_suggestion():
    out = problems('[salesforce]\nbatchsize = 100\n[salesforce.tasks]\nseverity = ["critical"]\n')
    assert out == ["usagebot.toml:2: salesforce.batchsize: unknown key; did you mean 'batch_size'?",
                   "usagebot.toml:4: salesforce.tasks.severity: unknown key; did you mean 'severities'?"]


def test_field_mapping_custom_and_disabled():
    cfg = parse('[salesforce.fields]\nscore = "Health__c"\ntrend = ""\nexplanation = "Health_Why__c"\n')
    assert dict(cfg.fields) == {"score": "Health__c", "explanation": "Health_Why__c"}


def test_field_mapping_problems():
    out = problems('[salesforce.fields]\nscore = "Health Score"\nband = "Dup__c"\ntrend = "dup__c"\nscor = "X__c"\n')
    assert out == [
        "usagebot.toml:5: salesforce.fields.scor: unknown key; did you mean 'score'?",
        "usagebot.toml:2: salesforce.fields.score: 'Health Score' is not a Salesforce API name (letters, digits "
        "and _, starting with a letter)",
        "usagebot.toml:4: salesforce.fields.trend: field dup__c already receives 'band'",
    ]
    assert problems('[salesforce.fields]\nscore = ""\n') == [
        'usagebot.toml:1: salesforce.fields: maps no health value to a field; map at least one (e.g. score = '
        '"Usage_Health_Score__c")']


def test_external_id_matching_needs_the_field():
    cfg = parse('[salesforce]\nmatch = "external_id"\nexternal_id_field = "Usagebot_Id__c"\n')
    assert cfg.match == "external_id" and cfg.external_id_field == "Usagebot_Id__c"
    assert problems('[salesforce]\nmatch = "external_id"\n')[0].startswith(
        "usagebot.toml:1: salesforce.external_id_field: is required with match = \"external_id\"")


def test_limits_and_batches_are_bounded():
    out = problems('[salesforce]\nbatch_size = 500\nmax_api_share = 1.5\n')
    assert out == ["usagebot.toml:2: salesforce.batch_size: must be between 1 and 200 (got 500)",
                   "usagebot.toml:3: salesforce.max_api_share: must be between 0.01 and 1 (got 1.5)"]


def test_tasks_section():
    cfg = parse('[salesforce.tasks]\nseverities = ["critical", "warning"]\nkinds = []\nowner = "api_user"\n'
                'subject = "[{severity}] {account}: {message}"\nmax_age = "2d"\n[salesforce.tasks.priority]\n'
                'warning = "Low"\n')
    t = cfg.tasks
    assert t.enabled and t.severities == ("critical", "warning") and t.kinds == () and t.owner == "api_user"
    assert t.max_age == 2 * 86_400 and t.priority["warning"] == "Low" and t.priority["critical"] == "High"
    assert t.wants("warning", "drop", "r") and not t.wants("info", "expansion", "r")


def test_tasks_key_field():
    assert parse('[salesforce.tasks]\nkey_field = "Usagebot_Key__c"\n').tasks.key_field == "Usagebot_Key__c"
    assert parse('[salesforce.tasks]\n').tasks.key_field is None
    assert problems('[salesforce.tasks]\nkey_field = "usagebot key"\n')[0].startswith(
        "usagebot.toml:2: salesforce.tasks.key_field: 'usagebot key' is not a Salesforce API name")


def test_tasks_problems():
    out = problems('[salesforce.tasks]\nseverities = ["urgent"]\nkinds = ["spikes"]\nsubject = "{acount}"\n')
    assert out[0] == "usagebot.toml:2: salesforce.tasks.severities: unknown severity urgent; severities are " \
                     "info, warning, critical"
    assert out[1].startswith("usagebot.toml:3: salesforce.tasks.kinds: unknown rule kind spikes")
    assert out[2].startswith("usagebot.toml:4: salesforce.tasks.subject: bad template (unknown placeholder "
                             "{acount}); placeholders: {account} {message}")


@pytest.mark.parametrize(("subject", "why"), [
    ("{account!r:>99999999}", "placeholder {account!r:>99999999} has a conversion; write {account}"),
    ("{message:>{rule}}", "placeholder {message:>{rule}} has a format spec; write {message}"),
    ("{account.__class__}", "unknown placeholder {account.__class__}"),
    ("{account", "expected '}' before end of string"),
])
def test_a_task_subject_names_facts_and_never_formats_them(subject, why):
    """A format spec or a conversion is refused at load: a width of 99,999,999 made each Task subject
    a 100 MB string before it was cut to 255 characters."""
    out = problems(f'[salesforce.tasks]\nsubject = "{subject}"\n')
    assert out == [f"usagebot.toml:2: salesforce.tasks.subject: bad template ({why}); placeholders: "
                   "{account} {message} {rule} {severity} {kind} {metric}"]


def test_the_shipped_example_config_parses():
    from pathlib import Path

    from bot.cli.crm import load_crm_settings

    example = Path(__file__).resolve().parents[3] / "config.example.toml"
    settings = load_crm_settings(str(example), env={})
    assert settings.salesforce.auth == "none" and dict(settings.salesforce.fields) == dict(DEFAULT_FIELDS)
    assert not settings.salesforce.tasks.enabled and settings.health.problems() == []

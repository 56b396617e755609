"""rules.config: one Problem type, one set of value readers and one TOML parser for rule files and the
service config; declarative settings sections."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bot.config import ServiceConfig, check_config
from rules.config import ConfigError, Problem, Table, document_from_text, load_document, setting
from rules.config import values as v
from rules.loader import RuleFileError, check_rules, load_rules_text


def problems(text: str, env: dict[str, str] | None = None, cls: type = ServiceConfig) -> tuple[object, list[str]]:
    doc = document_from_text(text, "usagebot.toml", env=env)
    got = doc.section("service").read_settings(cls)
    return got, [str(p) for p in doc.problems]


def test_one_problem_type_for_rule_files_and_the_config(tmp_path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "r"\nkind = "spike"\nmetric = "m"\n[rule.threshold]\nratio = 0.5\n')
    config = tmp_path / "usagebot.toml"
    config.write_text(f'[rules]\npaths = ["{rules}"]\n[service]\nport = 70000\n')
    _, found = check_config(config)
    assert all(type(p) is Problem for p in found)
    assert [str(p) for p in found] == [
        f"{rules}:6: rule 'r': threshold.ratio: must be > 1 for a spike rule (got 0.5)",
        f"{config}:4: service.port: must be between 0 and 65535 (got 70000)",
    ]
    _, rule_problems = check_rules([rules])
    assert rule_problems == [p for p in found if p.file == str(rules)]
    assert issubclass(RuleFileError, ConfigError)


def test_the_same_readers_spell_values_as_each_file_does() -> None:
    """The reader is shared; a rule file spells values as TOML does, the service config as before."""
    _, found = problems('[service]\nlog_format = "yml"\n')
    assert found == ["usagebot.toml:2: service.log_format: must be one of json, text (got 'yml')"]
    with pytest.raises(RuleFileError) as info:
        load_rules_text('[[rule]]\nid = "r"\nkind = "spike"\nmetric = "m"\nseverity = "warn"\n', "r.toml")
    assert str(info.value) == ('r.toml:5: rule \'r\': severity: must be one of "info", "warning", "critical" '
                               '(got "warn"); did you mean "warning"?')


def test_declarative_settings_keep_defaults_for_bad_values_and_report_unknown_keys() -> None:
    cfg, found = problems('[service]\nport = "eighty"\nhttp_threads = 0\nprot = 1\nhost = "${HOST:-}"\n'
                          'read_timeout = "${READ_TIMEOUT}"\n', env={"READ_TIMEOUT": "2m"})
    assert found == [
        "usagebot.toml:4: service.prot: unknown key; did you mean 'port'?",
        "usagebot.toml:2: service.port: must be an integer, got str 'eighty'",
        "usagebot.toml:3: service.http_threads: must be between 1 and 256 (got 0)",
    ]
    assert (cfg.port, cfg.http_threads, cfg.host, cfg.read_timeout) == (8080, 8, "0.0.0.0", 120)


def test_a_settings_dataclass_is_a_declared_table() -> None:
    @dataclass(frozen=True)
    class Limits:
        rate: float = setting(1.0, v.number(0, 10))
        window: int = setting(60, v.duration(1), key="window_size")

    cfg, found = problems("[service]\nrate = nan\nwindow_size = \"5m\"\n", cls=Limits)
    assert found == ["usagebot.toml:2: service.rate: must be a finite number, got nan"]  # nan was accepted before
    assert cfg == Limits(1.0, 300)


def test_toml_syntax_errors_and_bad_bytes_name_their_line(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[service]\nport = \n")
    with pytest.raises(ConfigError) as info:
        load_document(bad)
    assert [str(p) for p in info.value.problems] == [f"{bad}:2: TOML syntax error: Invalid value (column 8)"]
    bad.write_bytes(b"[service]\nhost = \"\xff\"\n")
    with pytest.raises(ConfigError) as info:
        load_document(bad)
    assert [str(p) for p in info.value.problems] == [f"{bad}:2: not valid UTF-8 text (byte 18)"]


def test_free_tables_take_any_key_and_declared_tables_check_theirs() -> None:
    doc = document_from_text('[x]\na = 1\n[x.headers]\nAnything = "1"\n[x.sub]\nb = 1\nc = 2\n', "c.toml")
    table = Table("x", ("a",), (Table("headers", free=True), Table("sub", ("b",))))
    sec = doc.section("x")
    sec.check_keys(table)
    sec.table("headers").check_keys(table.table("headers"))
    sec.table("sub").check_keys(table.table("sub"))
    assert [str(p) for p in doc.problems] == ["c.toml:7: x.sub.c: unknown key; allowed: b"]


def test_the_config_primitives_import_only_each_other_and_durations() -> None:
    """rules.config is the layer under storage, integrations and bot (and beside the pure core): it
    may import nothing of usagebot but itself and the leaf rules.durations."""
    import ast
    from pathlib import Path

    import rules.config

    ours = ("rules", "bot", "integrations", "storage")
    for path in Path(rules.config.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.split(".")[0] in ours:
                    assert name.startswith("rules.config") or name == "rules.durations", f"{path.name}: {name}"

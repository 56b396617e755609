"""Fuzz: rule TOML (through the loader, as `usagebot check` reads it) and the service config TOML.
Whatever the file holds, the answer is a rule set / config or a list of problems naming file and line:
never an exception."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config.app import check_config
from rules.loader import check_rules
from tests.fuzz.strategies import cases, json_values, nasty_text, numbers

KINDS = ["spike", "drop", "inactivity", "quota", "expansion", "anomaly", "", "SPIKE"]
DURATIONS = ["1d", "1h", "0", "100000000w", "-1d", "1.5d", "99999999999999999999d", "1e9s", "7", "", "1d1h", "P1D"]


def toml_value(v: object) -> str:
    """A TOML literal for a JSON-like value (strings JSON-escaped, which TOML basic strings accept)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        text = repr(v)
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(text, text)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    return '""'


field_values = st.one_of(st.sampled_from(DURATIONS), nasty_text, numbers.filter(lambda x: x == x), st.booleans(),
                         json_values)


@st.composite
def rule_files(draw: st.DrawFn) -> str:
    lines = []
    if draw(st.booleans()):
        lines += ["[defaults]", f"bucket = {toml_value(draw(field_values))}",
                  f"severity = {toml_value(draw(st.sampled_from(['info', 'warning', 'loud', 3])))}"]
    for i in range(draw(st.integers(0, 3))):
        lines += ["[[rule]]", f"id = {toml_value(draw(st.one_of(st.just(f'r{i}'), nasty_text)))}",
                  f"kind = {toml_value(draw(st.sampled_from(KINDS)))}",
                  f"metric = {toml_value(draw(st.one_of(st.just('api_calls'), nasty_text)))}"]
        for key in draw(st.lists(st.sampled_from(["bucket", "window", "cooldown", "renotify", "for", "severity",
                                                  "description", "template", "segment", "threshold", "quota"]),
                                 max_size=5, unique=True)):
            lines.append(f"{key} = {toml_value(draw(field_values))}")
        for table in draw(st.lists(st.sampled_from(["baseline", "threshold", "guards", "routing", "quota",
                                                    "forecast", "segment"]), max_size=3, unique=True)):
            lines.append(f"[rule.{table}]")
            for key in draw(st.lists(st.sampled_from(["window", "ratio", "zscore", "min_points", "method",
                                                      "seasonality", "min_baseline", "owner", "channels",
                                                      "thresholds", "pct", "drop", "plans", "x"]),
                                     max_size=4, unique=True)):
                lines.append(f"{key} = {toml_value(draw(field_values))}")
    if draw(st.integers(0, 9)) == 0:  # sometimes plain garbage
        lines.append(draw(nasty_text))
    return "\n".join(lines) + "\n"


DEFAULT_RULES = tomllib.loads((Path(__file__).resolve().parents[2] / "rules" / "examples" / "default.toml").read_text())


@st.composite
def mutated_rules(draw: st.DrawFn) -> str:
    """The shipped rules with one to three values replaced: most of each file is valid, so every
    field's validation is reached."""
    doc = copy.deepcopy(DEFAULT_RULES)
    for _ in range(draw(st.integers(1, 3))):
        rule = draw(st.sampled_from(doc["rule"]))
        table = rule
        while True:
            key = draw(st.sampled_from(sorted(table)))
            if isinstance(table[key], dict) and table[key] and draw(st.booleans()):
                table = table[key]
                continue
            table[key] = draw(field_values)
            break
    lines = []
    if "defaults" in doc:
        lines.append("[defaults]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc["defaults"].items()]
    for rule in doc["rule"]:
        lines.append("[[rule]]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in rule.items()]
    for inhibit in doc.get("inhibit", []):
        lines.append("[[inhibit]]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in inhibit.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=cases(300))
@given(text=mutated_rules())
def test_mutated_shipped_rules_load_or_list_problems(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    _check_rules_text(tmp_path_factory.mktemp("rules"), text)


def _check_rules_text(tmp: Path, text: str) -> None:
    path = tmp / "rules.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    ruleset, problems = check_rules([str(path)])
    assert (ruleset is None) == bool(problems)
    for p in problems:
        assert str(path) in str(p) or "rules.toml" in str(p), str(p)


@settings(max_examples=cases(300))
@given(text=rule_files())
def test_rule_files_load_or_list_problems(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    _check_rules_text(tmp_path_factory.mktemp("rules"), text)


@settings(max_examples=cases(100))
@given(text=st.text(max_size=300))
def test_any_text_as_rules_is_a_problem_not_a_crash(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    _check_rules_text(tmp_path_factory.mktemp("rules"), text)


SECTIONS = {
    "storage": ["url"], "service": ["host", "port", "log_format", "log_level", "admin_channel", "max_body_bytes",
                                    "shutdown_timeout"],
    "scheduler": ["leader", "leader_check", "lease_ttl", "evaluate_every", "max_workers", "crm_sync_cron",
                  "catch_up"],
    "ingest": ["secret", "path", "max_events", "max_body_bytes", "max_age", "max_future", "metric_map"],
    "slack": ["bot_token", "signing_secret", "mode", "default_channel", "allowed_users", "crm_url", "timeout",
              "min_post_interval", "digest"],
    "salesforce": ["auth", "username", "password", "security_token", "domain", "object", "fields", "batch_size",
                   "max_api_share", "tasks"],
    "health": ["weights", "bands", "x"],
}
SOURCE_KEYS = ["id", "type", "every", "cron", "overlap", "url", "path", "pattern", "records", "fields", "params",
               "headers", "auth", "timeout", "retries", "max_response_bytes", "request_deadline", "poll_deadline",
               "pagination", "table", "query", "meters", "customers", "api_key", "token", "min_age", "on_error"]


@st.composite
def config_files(draw: st.DrawFn, rules: str) -> str:
    lines = ["[rules]", f"paths = [{json.dumps(rules)}]"]
    for name in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        lines.append(f"[{name}]")
        for key in draw(st.lists(st.sampled_from(SECTIONS[name]), max_size=4, unique=True)):
            lines.append(f"{key} = {toml_value(draw(field_values))}")
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[sources]]")
        lines.append(f"type = {toml_value(draw(st.sampled_from(['csv', 'http_json', 'sql', 'openmeter', 'stripe_meter', 'x'])))}")
        for key in draw(st.lists(st.sampled_from(SOURCE_KEYS), max_size=6, unique=True)):
            lines.append(f"{key} = {toml_value(draw(field_values))}")
    return "\n".join(lines) + "\n"


@settings(max_examples=cases(300))
@given(data=st.data())
def test_service_config_loads_or_lists_problems(tmp_path_factory, data) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("cfg")
    rules = Path(__file__).resolve().parents[2] / "rules" / "examples" / "default.toml"
    path = tmp / "usagebot.toml"
    path.write_text(data.draw(config_files(str(rules))), encoding="utf-8", errors="surrogatepass")
    config, problems = check_config(path, env={"X": "1"})
    assert (config is None) == bool(problems)
    for p in problems:
        assert p.file and p.message, p

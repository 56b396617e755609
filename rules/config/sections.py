"""Sections of the service config file (usagebot.toml), read with the shared value readers.

Every section parser (storage, rules, service, scheduler, slack, salesforce, health, sources, ingest)
reads its table through a `Section`, which

- substitutes `${NAME}` / `${NAME:-default}` from the environment in string values (`$${` is a
  literal `${`, `$$${X}` a `$` and X's value; a missing variable is a problem naming the variable,
  never its value; not in a table with `enabled = false` and its sub-tables, which are checked but
  not used),
- records every problem (rules.config.problems.Problem: file, line, dotted field) instead of
  stopping at the first one, spelling values as Python does (values.PYTHON),
- rejects unknown keys with a "did you mean" suggestion,
- wraps secrets in `Secret`, whose repr/str never shows the value.

Declarative sections (rules.config.tables): a settings dataclass is read whole by
`Section.read_settings(cls)`; a `Table` declares the keys of a section read by hand, for
`Section.check_keys`.

Like rules.loader, this module reads files (the config file, `<key>_file` secrets) and the
process environment; everything it hands on is validated, typed data.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rules.config import redaction
from rules.config import values as v
from rules.config.problems import ConfigError, Problem
from rules.config.secrets import Secret
from rules.config.tables import Table, settings_keys
from rules.config.toml import field_name, parse_toml, read_toml
from rules.config.toml_lines import LineMap, PathKey

# A run of "$" before "{" is halved, as Docker Compose reads "$$": "$${X}" is the text "${X}" (a URL
# template the remote API expands itself; without it there was no way to write one) and "$$${X}" is
# "$" then X's value. Elsewhere "$$" stays as written ("pa$$word" is not changed).
_ENV = re.compile(r"((?:\$\$)+)(?=\$?\{)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

__all__ = ["ConfigError", "Document", "Problem", "Secret", "Section", "document_from_text", "load_document"]


# ------------------------------------------------------------------------------------- documents


@dataclass
class Document:
    """A parsed config file: data, line map, and the problems found so far."""

    file: str
    data: dict[str, Any]
    lines: LineMap
    env: Mapping[str, str]
    problems: list[Problem] = field(default_factory=list)

    def add(self, path: PathKey, message: str) -> None:
        self.problems.append(Problem(self.file, self.lines.line_of(path), None, field_name(path) or None, message))

    def section(self, name: str, required: bool = False) -> Section:
        raw = self.data.get(name)
        path: PathKey = (name,)
        if raw is None:
            if required:
                self.problems.append(Problem(self.file, None, None, name, f"missing [{name}] table"))
            raw = {}
        elif not isinstance(raw, dict):
            self.add(path, f"must be a table ([{name}]), got {type(raw).__name__}")
            raw = {}
        return Section(self, path, raw, dormant=_disabled(raw))

    def sections(self, name: str) -> list[Section]:
        """An array of tables ([[name]]), e.g. [[sources]]."""
        raw = self.data.get(name, [])
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            self.add((name,), f"must be an array of tables ([[{name}]])")
            return []
        return [Section(self, (name, i), t, dormant=_disabled(t)) for i, t in enumerate(raw)]

    def check_top_level(self, allowed: Iterable[str]) -> None:
        _unknown(self, (), self.data, set(allowed), kind="section")

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def _disabled(table: Mapping[str, Any]) -> bool:
    """`enabled = false`: the table is validated, but its environment variables need not be set."""
    return table.get("enabled") is False


def _unknown(doc: Document, path: PathKey, data: Mapping[str, Any], allowed: set[str], kind: str = "key") -> None:
    for key in data:
        if key in allowed:
            continue
        hint = v.suggest(key, sorted(allowed)) or f"; allowed: {', '.join(sorted(allowed))}"
        doc.add((*path, key), f"unknown {kind}{hint}")


@dataclass
class Section:
    doc: Document
    path: PathKey
    data: Mapping[str, Any]
    dormant: bool = False  # inside a table with enabled = false
    notation: v.Notation = v.PYTHON

    @property
    def name(self) -> str:
        return field_name(self.path)

    def field_name(self, key: str) -> str:
        return f"{self.name}.{key}"

    def line(self, key: str | None = None) -> int | None:
        return self.doc.lines.line_of((*self.path, key) if key else self.path)

    # Reporter (rules.config.values): problems at a path inside this table
    def error(self, path: PathKey, message: str) -> None:
        self.doc.add((*self.path, *path), message)

    def count(self) -> int:
        return len(self.doc.problems)

    def problem(self, key: str | None, message: str) -> None:
        self.error((key,) if key else (), message)

    def check_keys(self, allowed: Iterable[str] | Table) -> None:
        if isinstance(allowed, Table):
            if allowed.free:
                return
            allowed = allowed.allowed
        _unknown(self.doc, self.path, self.data, set(allowed))

    def has(self, key: str) -> bool:
        return key in self.data

    def table(self, key: str) -> Section:
        raw = self.data.get(key, {})
        if not isinstance(raw, dict):
            self.problem(key, f"must be a table, got {type(raw).__name__}")
            raw = {}
        return Section(self.doc, (*self.path, key), raw, dormant=self.dormant or _disabled(raw))

    # ------------------------------------------------------------------------------ reading

    def read(self, key: str, reader: v.Reader, default: Any = None, required: bool = False) -> Any:
        """The value of `key` read with `reader` (strings after ${ENV} substitution); `default` when
        it is absent or invalid (the problem is recorded)."""
        if key not in self.data:
            if required:
                self.problem(key, "is required")
            return default
        raw = self.data[key]
        if isinstance(raw, str):
            raw = self._subst(key, raw)
            if raw is None:
                return default
        value = reader(self, (key,), raw)
        return default if value is None else value

    def read_settings(self, cls: type) -> Any:
        """A settings dataclass (fields declared with rules.config.tables.setting) read from this
        table; unknown keys are reported. Invalid values keep their defaults, and so does an empty
        string when the default is not empty (host = "${HOST:-}")."""
        self.check_keys(settings_keys(cls))
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if "read" in f.metadata:
                got = self.read(f.metadata.get("key") or f.name, f.metadata["read"])
                if got is not None and not (got == "" and f.default):
                    values[f.name] = got
        return cls(**values)

    def _subst(self, key: str, value: str) -> str | None:
        if "${" in _ENV.sub("", value) or any("${" in (m.group(3) or "") for m in _ENV.finditer(value)):
            # "${TOKEN" or "${X:-${Y}}" was kept as literal text: a token of "${BILLING_API_TOKEN" went to
            # the API. The value is not quoted (it may be a secret written in the file).
            self.problem(key, "has an unterminated or malformed ${...} reference; use ${NAME} or "
                              "${NAME:-default} (NAME: letters, digits, _; references do not nest)")
            return None
        missing: list[str] = []

        def repl(m: re.Match[str]) -> str:
            if m.group(1):
                return m.group(1)[: len(m.group(1)) // 2]
            name, default = m.group(2), m.group(3)
            if name in self.doc.env:
                if redaction.looks_secret(name):  # "${BILLING_API_KEY}" in a plain string key
                    redaction.register(self.doc.env[name])
                return self.doc.env[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        out = _ENV.sub(repl, value)
        if "://" in out:  # a URL in any key (public_url, instance_url, a channel typo'd as a URL) may be
            redaction.register_url(out)  # echoed by a problem or a log line: its password and keys are masked
        if missing:
            if not self.dormant:
                self.problem(key, f"environment variable {', '.join(missing)} is not set")
            return None
        return out

    def str(self, key: str, default: builtins.str | None = None, required: bool = False,
            choices: Sequence[builtins.str] | None = None) -> builtins.str | None:
        return self.read(key, v.string if choices is None else v.choice(choices), default, required)

    def int(self, key: str, default: builtins.int | None = None, required: bool = False,
            min: builtins.int | None = None, max: builtins.int | None = None) -> builtins.int | None:
        return self.read(key, v.integer(min, max, text=True), default, required)

    def float(self, key: str, default: builtins.float | None = None, required: bool = False,
              min: builtins.float | None = None, max: builtins.float | None = None) -> builtins.float | None:
        return self.read(key, v.number(min, max), default, required)

    def bool(self, key: str, default: builtins.bool | None = None, required: bool = False) -> builtins.bool | None:
        return self.read(key, v.boolean, default, required)

    def duration(self, key: str, default: builtins.int | None = None, required: bool = False,
                 min: builtins.int | None = None) -> builtins.int | None:
        return self.read(key, v.duration(min), default, required)

    def secret(self, key: str, required: bool = False) -> Secret | None:
        """A secret: from the value (usually "${ENV}"), or from `<key>_file` (a file's contents)."""
        file_key = f"{key}_file"
        if key in self.data and file_key in self.data:
            self.problem(key, f"give either {key} or {file_key}, not both")
            return None
        if file_key in self.data:
            path = self.str(file_key)
            if path is None:
                return None
            try:
                return Secret(Path(path).read_text().strip())
            except OSError as exc:
                self.problem(file_key, f"cannot read the secret file {path}: {exc.strerror or exc}")
                return None
        if key not in self.data:
            if required:
                self.problem(key, "is required")
            return None
        raw = self.data[key]
        if not isinstance(raw, builtins.str):
            self.problem(key, "must be a string (use \"${ENV_VAR}\" to take it from the environment)")
            return None
        value = self._subst(key, raw)
        if value is None:
            return None
        if required and not value:
            self.problem(key, "is empty")
            return None
        return Secret(value) if value else None

    def str_list(self, key: str, default: Sequence[builtins.str] = (), required: bool = False) -> list[builtins.str]:
        if key not in self.data:
            if required:
                self.problem(key, "is required")
            return list(default)
        raw = self.data[key]
        if not isinstance(raw, list) or not all(isinstance(x, builtins.str) for x in raw):
            self.problem(key, "must be a list of strings")
            return list(default)
        return [s for s in (self._subst(key, x) for x in raw) if s is not None]


def load_document(path: str | Path, env: Mapping[str, str] | None = None) -> Document:
    """Read and parse a TOML config file. Problems reading or parsing it raise ConfigError (file:line)."""
    parsed = read_toml(path)
    return Document(parsed.file, parsed.data, parsed.lines, dict(os.environ if env is None else env))


def document_from_text(text: str, filename: str = "<string>", env: Mapping[str, str] | None = None) -> Document:
    parsed = parse_toml(text, filename)
    return Document(filename, parsed.data, parsed.lines, dict(env or {}))

"""Building blocks for reading usagebot's TOML configuration.

Every section parser (storage, rules, slack, salesforce, health, sources,
scheduler, server) reads its table through a `Section`, which

- substitutes `${NAME}` / `${NAME:-default}` from the environment (a missing
  variable is a problem naming the variable, never its value; not in a table
  with `enabled = false` and its sub-tables, which are checked but not used),
- records every problem with file, line and dotted field name instead of
  stopping at the first one,
- rejects unknown keys with a "did you mean" suggestion,
- wraps secrets in `Secret`, whose repr/str never shows the value.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot import redaction
from rules.durations import DurationError, parse_duration
from rules.toml_lines import LineMap, scan_lines

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class Secret:
    """A secret string. str() and repr() never reveal it; use .reveal().

    Making one registers the value with bot.redaction, so it is masked in every log line, error
    message and notice from then on, in any encoding.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        redaction.register(value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Document:
    """A parsed config file: data, line map, and the problems found so far."""

    file: str
    data: dict[str, Any]
    lines: LineMap
    env: Mapping[str, str]
    problems: list[ConfigProblem] = field(default_factory=list)

    def section(self, name: str, required: bool = False) -> Section:
        raw = self.data.get(name)
        path: tuple[str | int, ...] = (name,)
        if raw is None:
            if required:
                self.problems.append(ConfigProblem(self.file, None, name, f"missing [{name}] table"))
            raw = {}
        elif not isinstance(raw, dict):
            self.problems.append(ConfigProblem(self.file, self.lines.line_of(path), name,
                                               f"must be a table ([{name}]), got {type(raw).__name__}"))
            raw = {}
        return Section(self, path, raw, dormant=_disabled(raw))

    def sections(self, name: str) -> list[Section]:
        """An array of tables ([[name]]), e.g. [[sources]]."""
        raw = self.data.get(name, [])
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            self.problems.append(ConfigProblem(self.file, self.lines.line_of((name,)), name,
                                               f"must be an array of tables ([[{name}]])"))
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


def dotted_name(path: Sequence[str | int]) -> str:
    """("sources", 0, "every") -> "sources[0].every"."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _unknown(doc: Document, path: tuple[str | int, ...], data: Mapping[str, Any], allowed: set[str],
             kind: str = "key") -> None:
    for key in data:
        if key in allowed:
            continue
        hint = difflib.get_close_matches(key, sorted(allowed), n=1)
        dotted = dotted_name((*path, key))
        doc.problems.append(ConfigProblem(
            doc.file, doc.lines.line_of((*path, key)), dotted,
            f"unknown {kind}" + (f"; did you mean '{hint[0]}'?" if hint else
                                 f"; allowed: {', '.join(sorted(allowed))}")))


@dataclass
class Section:
    doc: Document
    path: tuple[str | int, ...]
    data: Mapping[str, Any]
    dormant: bool = False  # inside a table with enabled = false

    @property
    def name(self) -> str:
        return dotted_name(self.path)

    def field_name(self, key: str) -> str:
        return f"{self.name}.{key}"

    def line(self, key: str | None = None) -> int | None:
        return self.doc.lines.line_of((*self.path, key) if key else self.path)

    def problem(self, key: str | None, message: str) -> None:
        self.doc.problems.append(ConfigProblem(self.doc.file, self.line(key),
                                               self.field_name(key) if key else self.name, message))

    def check_keys(self, allowed: Iterable[str]) -> None:
        _unknown(self.doc, self.path, self.data, set(allowed))

    def has(self, key: str) -> bool:
        return key in self.data

    def table(self, key: str) -> Section:
        raw = self.data.get(key, {})
        if not isinstance(raw, dict):
            self.problem(key, f"must be a table, got {type(raw).__name__}")
            raw = {}
        return Section(self.doc, (*self.path, key), raw, dormant=self.dormant or _disabled(raw))

    # ---------------------------------------------------------------- scalar getters

    def _raw(self, key: str, default: Any, required: bool) -> tuple[bool, Any]:
        if key not in self.data:
            if required:
                self.problem(key, "is required")
            return False, default
        return True, self.data[key]

    def _subst(self, key: str, value: str, secret: bool) -> str | None:
        missing: list[str] = []

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.doc.env:
                if redaction.looks_secret(name):  # "${BILLING_API_KEY}" in a plain string key
                    redaction.register(self.doc.env[name])
                return self.doc.env[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        out = _ENV.sub(repl, value)
        if missing:
            if not self.dormant:
                self.problem(key, f"environment variable {', '.join(missing)} is not set")
            return None
        return out

    def str(self, key: str, default: str | None = None, required: bool = False,
            choices: Sequence[str] | None = None) -> str | None:
        present, v = self._raw(key, default, required)
        if not present:
            return v
        if not isinstance(v, str):
            self.problem(key, f"must be a string, got {type(v).__name__} {v!r}")
            return default
        v2 = self._subst(key, v, secret=False)
        if v2 is None:
            return default
        if choices is not None and v2 not in choices:
            hint = difflib.get_close_matches(v2, list(choices), n=1)
            self.problem(key, f"must be one of {', '.join(choices)} (got {v2!r})"
                         + (f"; did you mean '{hint[0]}'?" if hint else ""))
            return default
        return v2

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
        present, v = self._raw(key, None, required)
        if not present:
            return None
        if not isinstance(v, str):
            self.problem(key, "must be a string (use \"${ENV_VAR}\" to take it from the environment)")
            return None
        v2 = self._subst(key, v, secret=True)
        if v2 is None:
            return None
        if required and not v2:
            self.problem(key, "is empty")
            return None
        return Secret(v2) if v2 else None

    def int(self, key: str, default: int | None = None, required: bool = False,
            min: int | None = None, max: int | None = None) -> int | None:
        present, v = self._raw(key, default, required)
        if not present:
            return v
        if isinstance(v, str):
            v = self._subst(key, v, secret=False)
            try:
                v = int(v) if v is not None else None
            except ValueError:
                self.problem(key, f"must be an integer, got {v!r}")
                return default
        if isinstance(v, bool) or not isinstance(v, int):
            if v is not None:
                self.problem(key, f"must be an integer, got {type(v).__name__} {v!r}")
            return default
        if (min is not None and v < min) or (max is not None and v > max):
            rng = f">= {min}" if max is None else f"<= {max}" if min is None else f"between {min} and {max}"
            self.problem(key, f"must be {rng} (got {v})")
            return default
        return v

    def float(self, key: str, default: float | None = None, required: bool = False,
              min: float | None = None, max: float | None = None) -> float | None:
        present, v = self._raw(key, default, required)
        if not present:
            return v
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.problem(key, f"must be a number, got {type(v).__name__} {v!r}")
            return default
        v = float(v)
        if (min is not None and v < min) or (max is not None and v > max):
            rng = f">= {min:g}" if max is None else f"<= {max:g}" if min is None else f"between {min:g} and {max:g}"
            self.problem(key, f"must be {rng} (got {v:g})")
            return default
        return v

    def bool(self, key: str, default: bool | None = None, required: bool = False) -> bool | None:
        present, v = self._raw(key, default, required)
        if not present:
            return v
        if not isinstance(v, bool):
            self.problem(key, f"must be true or false, got {v!r}")
            return default
        return v

    def duration(self, key: str, default: int | None = None, required: bool = False,
                 min: int | None = None) -> int | None:
        present, v = self._raw(key, default, required)
        if not present:
            return v
        try:
            seconds = parse_duration(v)
        except DurationError as exc:
            self.problem(key, str(exc))
            return default
        if min is not None and seconds < min:
            self.problem(key, f"must be at least {min}s (got {v!r})")
            return default
        return seconds

    def str_list(self, key: str, default: Sequence[str] = (), required: bool = False) -> list[str]:
        present, v = self._raw(key, list(default), required)
        if not present:
            return list(v)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.problem(key, "must be a list of strings")
            return list(default)
        out = []
        for x in v:
            s = self._subst(key, x, secret=False)
            if s is not None:
                out.append(s)
        return out


def load_document(path: str | Path, env: Mapping[str, str] | None = None) -> Document:
    """Parse a TOML config file. Syntax errors raise ConfigError with file:line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(p), None, None, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(p), None, None, f"cannot read: {exc}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        raise ConfigError([ConfigProblem(str(p), int(m.group(1)) if m else None, None,
                                         f"TOML syntax error: {exc}")]) from None
    return Document(str(p), data, scan_lines(text), dict(os.environ if env is None else env))


def document_from_text(text: str, filename: str = "<string>", env: Mapping[str, str] | None = None) -> Document:
    data = tomllib.loads(text)
    return Document(filename, data, scan_lines(text), dict(env or {}))

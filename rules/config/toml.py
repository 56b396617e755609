"""TOML files with line numbers: one parser for rule files and the service config.

`parse_toml(text, file)` returns the parsed tables and a `LineMap` (the line of every key, table
and array element, rules.config.toml_lines), or raises ConfigError with ONE problem naming the
line: a TOML syntax error says its line and column (or "at end of file"), bytes that are not UTF-8
say their line and byte offset. A UTF-8 byte-order mark is ignored.

`field_name(path)` is how a problem names a field: ("rule", 0, "threshold", "ratio") ->
"rule[0].threshold.ratio"; keys that are not bare TOML keys are quoted.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rules.config.problems import ConfigError, Problem
from rules.config.toml_lines import LineMap, PathKey, scan_lines


@dataclass(frozen=True)
class TomlFile:
    """A parsed TOML file: its tables and where each key is."""

    file: str
    data: dict[str, Any]
    lines: LineMap


def decode(data: bytes, file: str) -> str:
    """`data` as text (UTF-8, a byte-order mark dropped); ConfigError naming the line of a bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([Problem(file, line, None, None, f"not valid UTF-8 text (byte {exc.start})")]) from None
    return text.removeprefix("\ufeff")


def parse_toml(text: str, file: str) -> TomlFile:
    """Parse TOML text; a syntax error raises ConfigError with its line and column."""
    text = text.removeprefix("\ufeff")
    too_deep = ConfigError([Problem(file, None, None, None, f"TOML nested too deeply (more than {MAX_DEPTH} "
                                                            "levels of tables and arrays inside each other)")])
    try:
        data = tomllib.loads(text)
        if _depth(data) > MAX_DEPTH:  # every reader and message after this walks values recursively
            raise too_deep
        lines = scan_lines(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([syntax_problem(file, text, str(exc))]) from None
    except RecursionError:  # tomllib (and the line scan) recurse once per level of [ or {
        raise too_deep from None
    return TomlFile(file, data, lines)


MAX_DEPTH = 64  # levels of nested tables / arrays a config or rule file may have (they need fewer than 10)


def _depth(value: object) -> int:
    """How deeply tables and arrays nest in `value`, without recursion (stops past MAX_DEPTH)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d + 1)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def read_toml(path: str | Path) -> TomlFile:
    """Read and parse a TOML file; ConfigError when it is missing, unreadable or not valid TOML."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem(str(p), None, None, None, "no such file")]) from None
    except OSError as exc:
        raise ConfigError([Problem(str(p), None, None, None, f"cannot read: {exc.strerror or exc}")]) from None
    return parse_toml(decode(data, str(p)), str(p))


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


def syntax_problem(file: str, text: str, message: str) -> Problem:
    """tomllib's error message as a Problem on its line: "TOML syntax error: Invalid value (column 8)"."""
    line: int | None = None
    match = _TOML_POSITION.search(message)
    if match:
        line = int(match.group(1))
        message = f"{message[: match.start()]} (column {match.group(2)})"
    elif _TOML_AT_END.search(message):
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        message = f"{_TOML_AT_END.sub('', message)} (at end of file)"
    return Problem(file, line, None, None, f"TOML syntax error: {message}")


def field_name(path: PathKey) -> str:
    """("sources", 0, "every") -> "sources[0].every"; a key that is not a bare TOML key is quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if part and all(c.isalnum() or c in "_-" for c in part) else json.dumps(part)
            out += f".{text}" if out else text
    return out

"""Line numbers for the keys of a TOML document.

`tomllib` returns plain dicts and lists without positions, so error messages
could not say *where* a bad value is. `scan_lines` walks the raw text once
and records the 1-based line on which every table, key and array element
starts, keyed by its path in the parsed document:

    [[rule]]                 ("rule",)  and  ("rule", 0)
    id = "x"                 ("rule", 0, "id")
    [rule.threshold]         ("rule", 0, "threshold")
    ratio = 2.0              ("rule", 0, "threshold", "ratio")
    routing.channels = [     ("rule", 0, "routing") and (..., "channels")
      "#a",                  ("rule", 0, "routing", "channels", 0)
    ]
    guards = { min_value = 5 }   ("rule", 0, "guards", "min_value")

It expects text that `tomllib` has already accepted; on anything it does
not understand it stops and keeps what it has found so far (never raises).
"""

from __future__ import annotations

import bisect
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PathKey = tuple[str | int, ...]

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\r\n")


@dataclass(frozen=True)
class LineMap:
    """Path in the parsed document -> 1-based line where it is defined."""

    lines: Mapping[PathKey, int]

    def exact(self, path: Sequence[str | int]) -> int | None:
        return self.lines.get(tuple(path))

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """Line of `path`, else of its nearest enclosing table/array that has one, else None."""
        key = tuple(path)
        while key:
            line = self.lines.get(key)
            if line is not None:
                return line
            key = key[:-1]
        return None


def scan_lines(text: str) -> LineMap:
    scanner = _Scanner(text)
    try:
        scanner.run()
    except (IndexError, ValueError, tomllib.TOMLDecodeError):
        pass  # keep the positions found so far; tomllib is the authority on syntax
    return LineMap(dict(scanner.lines))


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.newlines = [k for k, c in enumerate(text) if c == "\n"]
        self.lines: dict[PathKey, int] = {}
        self.array_counts: dict[PathKey, int] = {}

    # ---------------------------------------------------------------- helpers

    def line(self, at: int | None = None) -> int:
        return bisect.bisect_left(self.newlines, self.i if at is None else at) + 1

    def record(self, path: PathKey, line: int) -> None:
        self.lines.setdefault(path, line)

    def record_prefixes(self, path: PathKey, line: int, start: int = 1) -> None:
        for k in range(start, len(path) + 1):
            self.record(path[:k], line)

    def skip(self, newlines: bool) -> None:
        s, n = self.s, self.n
        while self.i < n:
            c = s[self.i]
            if c in " \t":
                self.i += 1
            elif c == "#":
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end
            elif newlines and c in "\r\n":
                self.i += 1
            else:
                return

    # -------------------------------------------------------------- statements

    def run(self) -> None:
        table: PathKey = ()
        while True:
            self.skip(newlines=True)
            if self.i >= self.n:
                return
            before = self.i
            if self.s.startswith("[[", self.i):
                table = self.header(array=True)
            elif self.s[self.i] == "[":
                table = self.header(array=False)
            else:
                self.keyval(table)
            if self.i <= before:
                raise ValueError("scanner made no progress")

    def header(self, array: bool) -> PathKey:
        line = self.line()
        self.i += 2 if array else 1
        parts = self.key()
        self.skip(newlines=False)
        self.i += 2 if array else 1  # "]]" or "]"
        path: PathKey = ()
        for name in parts[:-1] if array else parts:
            path += (name,)
            if path in self.array_counts:
                path += (self.array_counts[path] - 1,)
        if array:
            path += (parts[-1],)
            index = self.array_counts.get(path, 0)
            self.array_counts[path] = index + 1
            path += (index,)
        self.record_prefixes(path, line)
        return path

    def keyval(self, base: PathKey) -> None:
        line = self.line()
        path = base + tuple(self.key())
        self.skip(newlines=False)
        if self.s[self.i] != "=":
            raise ValueError(f"expected '=' at offset {self.i}")
        self.i += 1
        self.skip(newlines=False)
        self.record_prefixes(path, line, start=len(base) + 1)
        self.value(path)

    def key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip(newlines=False)
            c = self.s[self.i]
            if c in "\"'":
                start = self.i
                self.string()
                parts.append(_decode_string(self.s[start : self.i]))
            else:
                start = self.i
                while self.i < self.n and self.s[self.i] in _BARE_KEY:
                    self.i += 1
                if self.i == start:
                    raise ValueError(f"expected a key at offset {start}")
                parts.append(self.s[start : self.i])
            self.skip(newlines=False)
            if self.i < self.n and self.s[self.i] == ".":
                self.i += 1
                continue
            return parts

    # ------------------------------------------------------------------ values

    def value(self, path: PathKey) -> None:
        c = self.s[self.i]
        if c in "\"'":
            self.string()
        elif c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        else:
            start = self.i
            while self.i < self.n and self.s[self.i] not in _SCALAR_END:
                self.i += 1
            if self.i == start:
                raise ValueError(f"expected a value at offset {start}")

    def array(self, path: PathKey) -> None:
        self.i += 1
        index = 0
        while True:
            self.skip(newlines=True)
            if self.s[self.i] == "]":
                self.i += 1
                return
            element = path + (index,)
            self.record(element, self.line())
            self.value(element)
            self.skip(newlines=True)
            if self.s[self.i] == ",":
                self.i += 1
                index += 1
            elif self.s[self.i] != "]":
                raise ValueError(f"expected ',' or ']' at offset {self.i}")

    def inline_table(self, path: PathKey) -> None:
        self.i += 1
        while True:
            self.skip(newlines=True)
            if self.s[self.i] == "}":
                self.i += 1
                return
            self.keyval(path)
            self.skip(newlines=True)
            if self.s[self.i] == ",":
                self.i += 1
            elif self.s[self.i] != "}":
                raise ValueError(f"expected ',' or '}}' at offset {self.i}")

    def string(self) -> None:
        """Advance past a basic, literal or multi-line string starting at self.i."""
        s = self.s
        quote = s[self.i]
        if s.startswith(quote * 3, self.i):
            self.i += 3
            while True:
                if quote == '"' and s[self.i] == "\\":
                    self.i += 2
                    continue
                if s.startswith(quote * 3, self.i):
                    end = self.i + 3
                    # up to two quote characters may end the content itself
                    while end < self.n and s[end] == quote and end - self.i < 5:
                        end += 1
                    self.i = end
                    return
                self.i += 1
        self.i += 1
        while s[self.i] != quote:
            self.i += 2 if quote == '"' and s[self.i] == "\\" else 1
        self.i += 1


def _decode_string(raw: str) -> str:
    if raw.startswith("'"):
        return raw[1:-1]
    value = tomllib.loads(f"k = {raw}")["k"]
    return str(value)

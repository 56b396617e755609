"""The value readers of every configuration file: numbers, integers, booleans, strings, choices, durations.

A reader checks one raw TOML value and returns it converted, or reports what is wrong and returns
None:

    read(where, path, value) -> converted value | None

`where` is a `Reporter`: the rule loader's location in a rule file, or a config `Section`. It
records the problem at `path` (the key inside its table, e.g. ("threshold", "ratio")) with the
file's line, and says how values are spelled in messages (its `notation`):

- TOML: as the admin writes them in a rule file: ``must be one of "median", "mean" (got "mode")``;
- PYTHON: the service config's long-standing spelling: ``must be one of json, text (got 'yaml')``.

Both spellings are pinned by tests and by what admins have seen; everything else about a message
(its wording, the range, the "did you mean" hint) is the same whichever file it is about.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rules.config.toml_lines import PathKey
from rules.durations import DurationError, parse_duration


def show(value: Any) -> str:
    """A value as it would be written in TOML, shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        text = "[" + ", ".join(show(v) for v in value) + "]"
        return text if len(text) <= 60 else text[:56] + " ...]"
    return str(value)


_TYPE_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"), (list, "an array"),
    (dict, "a table"), ((dt.date, dt.time), "a date/time"))


def type_name(value: Any) -> str:
    """What a TOML value is, with its article: "a string", "an integer", "a table"... (bool before int:
    True is an int to Python)."""
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), type(value).__name__)


def got(value: Any) -> str:
    """ "got ..." for a message about a value of the wrong type (TOML spelling)."""
    if isinstance(value, dict):
        return "got a table"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"got {show(value)}"
    return f"got {type_name(value)} {show(value)}"


@dataclass(frozen=True)
class Notation:
    """How messages spell values: `show` a value, `got` a value of the wrong type, `listing` choices."""

    show: Callable[[Any], str]
    got: Callable[[Any], str]
    listing: Callable[[Sequence[str]], str]


TOML = Notation(show, got, lambda choices: ", ".join(f'"{c}"' for c in choices))
PYTHON = Notation(repr, lambda v: f"got {type(v).__name__} {v!r}", ", ".join)


class Reporter(Protocol):
    """Where a value is read: records problems at a path inside its table."""

    notation: Notation

    def error(self, path: PathKey, message: str) -> None: ...

    def count(self) -> int: ...


Reader = Callable[[Reporter, PathKey, Any], Any]


def suggest(word: str, choices: Iterable[str], value: bool = False, notation: Notation = TOML) -> str:
    """A "did you mean" hint naming the closest choice (a key; with value=True a string value), or ""."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not match:
        return ""
    return f"; did you mean {notation.show(match[0])}?" if value else f"; did you mean '{match[0]}'?"


def _number_text(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(minimum: float | int | None, maximum: float | int | None, value: float | int) -> str | None:
    """The range message for `value`, or None when it is inside [minimum, maximum]."""
    if (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return None
    if maximum is None:
        bound = f">= {_number_text(minimum)}"  # type: ignore[arg-type]
    elif minimum is None:
        bound = f"<= {_number_text(maximum)}"
    else:
        bound = f"between {_number_text(minimum)} and {_number_text(maximum)}"
    return f"must be {bound} (got {_number_text(value)})"


# ---------------------------------------------------------------------------------------- readers


def number(minimum: float | None = None, maximum: float | None = None) -> Reader:
    """A finite number (an integer or a float), as a float, within [minimum, maximum]."""

    def read(w: Reporter, path: PathKey, value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            w.error(path, f"must be a number, {w.notation.got(value)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            w.error(path, f"must be a finite number, got {w.notation.show(value)}")
            return None
        problem = _range(minimum, maximum, value)
        if problem:
            w.error(path, problem)
            return None
        return float(value)

    return read


def integer(minimum: int | None = 1, maximum: int | None = None, text: bool = False) -> Reader:
    """An integer within [minimum, maximum]; with text=True also one written as a string
    ("${PORT}" in the service config)."""

    def read(w: Reporter, path: PathKey, value: Any) -> int | None:
        if text and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                w.error(path, f"must be an integer, {w.notation.got(value)}")
                return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                w.error(path, f"must be an integer: write {int(value)} instead of {w.notation.show(value)}")
            else:
                w.error(path, f"must be an integer, {w.notation.got(value)}")
            return None
        problem = _range(minimum, maximum, value)
        if problem:
            w.error(path, problem)
            return None
        return value

    return read


def boolean(w: Reporter, path: PathKey, value: Any) -> bool | None:
    if not isinstance(value, bool):
        w.error(path, f"must be true or false, {w.notation.got(value)}")
        return None
    return value


def string(w: Reporter, path: PathKey, value: Any) -> str | None:
    if not isinstance(value, str):
        w.error(path, f"must be a string, {w.notation.got(value)}")
        return None
    return value


def name(w: Reporter, path: PathKey, value: Any) -> str | None:
    """A non-empty string without surrounding whitespace (a metric, a plan, an account id)."""
    text = string(w, path, value)
    if text is None:
        return None
    if not text.strip():
        w.error(path, "must not be empty")
        return None
    if text != text.strip():
        w.error(path, f"must not start or end with whitespace (got {w.notation.show(text)})")
        return None
    return text


def choice(choices: Sequence[str]) -> Reader:
    """One of `choices` (strings), with a "did you mean" hint."""

    def read(w: Reporter, path: PathKey, value: Any) -> str | None:
        text = string(w, path, value)
        if text is None:
            return None
        if text not in choices:
            n = w.notation
            w.error(path, f"must be one of {n.listing(choices)} (got {n.show(text)})"
                          f"{suggest(text, choices, value=True, notation=n)}")
            return None
        return text

    return read


def duration(minimum: int | None = None) -> Reader:
    """A duration ("15m", "7d", "0") in seconds, at least `minimum` seconds."""

    def read(w: Reporter, path: PathKey, value: Any) -> int | None:
        try:
            seconds = parse_duration(value)
        except DurationError as exc:
            w.error(path, str(exc))
            return None
        if minimum is not None and seconds < minimum:
            w.error(path, f"must be at least {minimum}s (got {w.notation.show(value)})")
            return None
        return seconds

    return read


any_duration = duration()


def positive_duration(w: Reporter, path: PathKey, value: Any) -> int | None:
    """A duration longer than 0."""
    seconds = any_duration(w, path, value)
    if seconds == 0:
        w.error(path, "must be longer than 0")
        return None
    return seconds


def names(w: Reporter, path: PathKey, value: Any) -> tuple[str, ...] | None:
    """An array of unique `name`s."""
    if not isinstance(value, list):
        w.error(path, f"must be an array of strings, {w.notation.got(value)}")
        return None
    before = w.count()
    out: list[str] = []
    for index, item in enumerate(value):
        text = name(w, path + (index,), item)
        if text is None:
            continue
        if text in out:
            w.error(path + (index,), f"{w.notation.show(text)} is listed twice")
            continue
        out.append(text)
    return tuple(out) if w.count() == before else None


def in_range(reader: Reader, low: float, high: float, message: str) -> Reader:
    """`reader`'s number, which must also lie in (low, high]; else `message` with " (got <value>)"."""

    def read(w: Reporter, path: PathKey, value: Any) -> float | None:
        number_ = reader(w, path, value)
        if number_ is None:
            return None
        if not low < number_ <= high:
            w.error(path, f"{message} (got {w.notation.show(value)})")
            return None
        return number_  # type: ignore[no-any-return]

    return read


class FormattedPlaceholder(ValueError):
    """A template's placeholder with a conversion or a format spec (template_fields)."""


def template_fields(text: str) -> list[str]:
    """The {placeholder} names of a str.format template: plain `{name}` fields only.

    ValueError when it does not parse; FormattedPlaceholder when a field has a conversion or a format spec
    (`{account!r:>99999999}` made one alert message of 100 MB, and a spec's `{x:{y}}` nests fields):
    a template names facts, it does not format them."""
    from string import Formatter  # the module name `string` is this module's string reader

    names = []
    for _, name, spec, conv in Formatter().parse(text):
        if name is None:
            continue
        if conv or spec:
            written = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise FormattedPlaceholder(f"placeholder {written} has a {'conversion' if conv else 'format spec'}; "
                             f"write {{{name}}}")
        names.append(name)
    return names


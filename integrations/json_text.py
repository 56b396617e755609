"""JSON read from outside (a pushed request, an HTTP source's response): one parse whose every
failure is a short sentence for the sender, never Python's own wording. Why: a number of more than
4,300 digits made json.loads raise "Exceeds the limit (4300 digits) for integer string conversion
... use sys.set_int_max_str_digits() to increase the limit", which the push endpoint answered in its
400 (an interpreter setting told to an HTTP client)."""

from __future__ import annotations

import json
import sys
from typing import Any


class JSONProblem(ValueError):
    """The text is not JSON this service can read; str() says why, in the sender's terms."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose every key appears once (json.loads' object_pairs_hook): a repeated key is a
    JSONProblem, not the last copy silently kept (`{"value": 1, "value": 1000}` stored 1000)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONProblem(f"the key {json.dumps(key)[:80]} appears twice in one object")
            seen.add(key)
    return out


def loads(raw: bytes | str, unique_keys: bool = True) -> Any:
    """The JSON value of `raw`; JSONProblem (never another exception) when it cannot be read.

    unique_keys: an object that repeats a key is a JSONProblem (RFC 8259 leaves its meaning open);
    False keeps the last copy, as most JSON libraries do (for a peer's response the admin cannot fix)."""
    try:
        return json.loads(raw, object_pairs_hook=_unique if unique_keys else None)
    except JSONProblem:
        raise
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise JSONProblem(f"not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise JSONProblem("nested too deeply to read") from None
    except ValueError:
        # the one other ValueError json.loads raises: an integer longer than the interpreter reads
        raise JSONProblem(f"a number has more than {sys.get_int_max_str_digits()} digits") from None

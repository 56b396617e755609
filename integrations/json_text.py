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


def loads(raw: bytes | str) -> Any:
    """The JSON value of `raw`; JSONProblem (never another exception) when it cannot be read."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise JSONProblem(f"not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise JSONProblem("nested too deeply to read") from None
    except ValueError:
        # the one other ValueError json.loads raises: an integer longer than the interpreter reads
        raise JSONProblem(f"a number has more than {sys.get_int_max_str_digits()} digits") from None

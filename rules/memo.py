"""Results derived from an immutable value, remembered by the value's identity (pure, no I/O).

A replay evaluates the same account facts at every bucket close; what detectors derive from them
(quota arrays, billing groups) is the same every time. `by_identity` remembers the last few results
of a function whose first argument is a tuple (immutable, so the same object always holds the same
facts; the memo holds a reference, so its id cannot be reused). Other arguments are part of the key
and must be hashable; a first argument that is not a tuple (a list may change) is never remembered.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def by_identity(size: int = 8) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        memo: dict[tuple[Any, ...], tuple[Any, Any]] = {}

        @wraps(fn)
        def call(first: Any, *rest: Any) -> Any:
            if type(first) is not tuple:
                return fn(first, *rest)
            key = (id(first), *rest)
            hit = memo.get(key)
            if hit is not None and hit[0] is first:
                return hit[1]
            value = fn(first, *rest)
            if len(memo) >= size:
                memo.pop(next(iter(memo)))
            memo[key] = (first, value)
            return value

        return call  # type: ignore[return-value]

    return wrap

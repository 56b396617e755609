"""Make values storable in JSON columns on both SQLite and PostgreSQL.

PostgreSQL's json type rejects NaN/Infinity, and numpy scalars/arrays are not
JSON-serialisable; missing numbers are stored as null (NaN is "no data").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def json_safe(value: Any, where: str, lenient: bool = False) -> Any:
    """A JSON-ready copy of `value`: NaN/inf -> None, numpy -> Python, tuples -> lists.

    Unsupported types raise TypeError naming `where` and the path inside the
    value, or are stored as their str() when `lenient` (audit explanations).
    """
    return _convert(value, where, "$", lenient)


def _convert(v: Any, where: str, path: str, lenient: bool) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _convert(x, where, f"{path}.{k}", lenient) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_convert(x, where, f"{path}[{i}]", lenient) for i, x in enumerate(v)]
    if lenient:
        return str(v)
    raise TypeError(f"{where}: value at {path} of type {type(v).__name__} cannot be stored as JSON")

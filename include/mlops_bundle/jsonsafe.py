"""Plain-JSON coercion shared by the audit log, promotion decisions and monitoring reports.

The audit log hashes ``canonical_json`` of this function's output, so its rules are part of the audit
format: change them only together with a new audit record version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any


def json_safe(value: Any) -> Any:
    """Coerce to plain JSON types: NaN/inf -> None, datetimes/dates -> ISO, enums -> value, numpy scalars ->
    Python, sets -> sorted lists, tuples -> lists, mapping keys -> str, anything else -> str."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [json_safe(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "value") and isinstance(value.value, str | int):  # enums (Airflow states...)
        return value.value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        with contextlib.suppress(Exception):
            return json_safe(value.item())
    return str(value)

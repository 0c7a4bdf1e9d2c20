"""The identifiers people type or read back: data-set names, batch dates and who acted.

One home for each rule, so the config, the ingest/train Params, the report URLs and the audit log agree on
what a valid name or date is and on how an actor is written.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

# A data-set name: lower-case letter first, then letters, digits and "_"; it appears in storage keys,
# URLs, MLflow names and (later) DAG ids, so nothing that needs escaping anywhere.
# (the pattern is also the config's pydantic rule; the compiled forms end in \Z because Python's "$"
# also matches before a trailing newline)
DATASET_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
DATASET_NAME_RE = re.compile(DATASET_NAME_PATTERN[:-1] + r"\Z")
# A batch date is exactly YYYY-MM-DD (date.fromisoformat alone also takes 20260105 and 2026-W01-1)
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
DATE_RE = re.compile(DATE_PATTERN[:-1] + r"\Z")

# What started a run when no user did: Airflow's run types, as the audit log and MLflow tags show them.
_RUN_TYPE_ACTORS = {
    "scheduled": "scheduler",
    "asset_triggered": "asset-trigger",
    "asset_materialization": "asset-materialization",
    "backfill": "backfill",
}


def parse_date(value: Any) -> str:
    """``value`` as a canonical ISO date string (YYYY-MM-DD); ValueError naming it and the format."""
    text = value.isoformat() if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else value
    if not isinstance(text, str) or not DATE_RE.match(text):
        raise ValueError(f"date {value!r} is not an ISO date: use YYYY-MM-DD, e.g. 2026-01-05")
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"date {value!r} is not a calendar date: use YYYY-MM-DD, e.g. 2026-01-05") from None


def valid_dataset_name(value: Any) -> str:
    """``value`` if it is a valid data-set name, else ValueError naming it and the rule."""
    if not isinstance(value, str) or not DATASET_NAME_RE.match(value):
        raise ValueError(
            f"data set name {value!r} is invalid: a lower-case letter, then up to 62 lower-case letters, "
            "digits or '_'"
        )
    return value


def actor(run_type: Any, triggering_user: str | None = None, triggered_by: Any = None) -> str:
    """Who caused a run, one spelling everywhere: the triggering user's name, else what triggered it
    (``scheduler``, ``asset-trigger``, ``asset-materialization``, ``backfill``, else the run type). The run
    type itself is recorded next to the actor (audit payload, MLflow tags), which tells a user apart from
    a system actor of the same name."""
    if triggering_user:
        return str(triggering_user)
    rt = getattr(run_type, "value", run_type)
    if rt in _RUN_TYPE_ACTORS:
        return _RUN_TYPE_ACTORS[rt]
    return str(getattr(triggered_by, "value", triggered_by) or rt or "airflow")

"""The schedule of a data set's cron-driven DAG (``ingest.schedule``, ``monitoring.schedule``), validated.

A five-field cron expression or one of Airflow's presets, in UTC; None = only when triggered (the UI, the
REST API). Checked when the config loads, so a typo is its config file's error and never breaks the DAG
file that builds every data set's DAGs.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly")
_CRON_FIELD = re.compile(
    r"(?:[0-9*/,-]|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|SUN|MON|TUE|WED|THU|FRI|SAT)+", re.I
)


def _cron_or_preset(value: str | None) -> str | None:
    """`value` if it is a schedule this module accepts (see the module doc), else ValueError naming the
    valid forms."""
    if value is None or value in _PRESETS:
        return value
    from croniter import croniter  # Airflow's own cron parser (a dependency of the scheduler)

    # standard fields only: croniter also takes R (random, a new schedule at every parse), H, L, W, # and ?
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields) or not croniter.is_valid(value):
        raise ValueError(
            f"{value!r} is not a five-field cron expression (minute hour day month weekday, UTC) nor one of "
            f"{', '.join(_PRESETS)}; use null for a DAG that only runs when triggered"
        )
    return value


Schedule = Annotated[str | None, AfterValidator(_cron_or_preset)]

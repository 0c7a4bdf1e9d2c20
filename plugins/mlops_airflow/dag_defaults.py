"""What every DAG of the bundle shares, stated once: owner, retries, a static start date, no catch-up, tags.

A DAG file spreads ``**dag_args(...)`` into its ``@dag`` and keeps only what is its own in view: the
schedule, max_active_runs, Params and ``doc_md=__doc__``. Import-light (``airflow.sdk`` only), like the DAG
files that import it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param

OWNER = "ml-platform"
# Every task gets at least two retries for transient faults (a store or MLflow hiccup); bad data fails at
# once instead (the task raises AirflowFailException).
RETRIES = 2
# Static, in the past: the scheduler never backfills it (catchup=False) and DAG versions stay stable.
START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TAG = "mlops"


def dag_args(*tags: str, dataset: str | None = None, retry_delay_s: int = 20) -> dict[str, Any]:
    """The ``@dag`` keyword arguments shared by the bundle's DAGs; ``tags`` follow the common 'mlops' tag
    and ``dataset:<name>`` (filter the UI's DAG list by it; prefixed, so a data set named like a kind tag
    does not merge with it)."""
    return {
        "start_date": START_DATE,
        "catchup": False,
        "tags": [TAG, *([f"dataset:{dataset}"] if dataset else []), *tags],
        "default_args": {
            "owner": OWNER,
            "retries": RETRIES,
            "retry_delay": dt.timedelta(seconds=retry_delay_s),
        },
    }


def date_param(description: str) -> Param:
    """An optional YYYY-MM-DD Param (empty = the DAG's default day, which ``description`` states)."""
    return Param(None, type=["null", "string"], format="date", description=description)

"""The DAG factory's input: which data sets get DAGs, and which config files get a placeholder instead.

Each file under dags/ builds its DAG once per data set of the catalog (``mlops_bundle.catalog``): same
code, ids ``<dataset>__<kind>``. Parse-time cost is reading and validating the config files (YAML and
pydantic, no heavy imports; benchmarks/bench_dag_parse.py); a task reads its data set's config again when
it runs, so a config edit applies to the next task without waiting for a re-parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlops_airflow import names

if TYPE_CHECKING:
    from mlops_bundle.catalog import Entry


@dataclass(frozen=True)
class DatasetDags:
    """What a DAG file needs to build one data set's DAG."""

    name: str
    source: str  # the config file
    task: str  # binary | multiclass | regression
    pool_slots: int
    ingest_schedule: str | None  # cron or preset (UTC); None: triggered only
    monitor_schedule: str | None

    def dag_id(self, kind: str) -> str:
        return names.dag_id(self.name, kind)

    def doc(self, module_doc: str | None) -> str:
        """The DAG file's doc, headed by the data set it runs for."""
        head = f"**Data set `{self.name}`** ({self.task}; config `{self.source}`)\n\n"
        return head + (module_doc or "")


def _entries() -> list[Entry]:
    from mlops_bundle.catalog import Entry, scan
    from mlops_bundle.config import ConfigError, config_location

    try:
        return scan()
    except ConfigError as exc:  # no catalog at all (MLOPS_CONFIG names a missing path): say so in one DAG
        return [Entry("catalog", config_location(), error=str(exc))]


def datasets() -> list[DatasetDags]:
    """The data sets whose config is valid, sorted by name (a broken one is left to config_errors())."""
    return [
        DatasetDags(
            e.name,
            str(e.path),
            e.config.dataset.task,
            e.config.training.pool_slots,
            e.config.ingest.schedule,
            e.config.monitoring.schedule,
        )
        for e in _entries()
        if e.config is not None
    ]


def config_errors() -> list[Entry]:
    """The config files that yield no data set, each with its error (naming the file and the field)."""
    return [e for e in _entries() if e.config is None]

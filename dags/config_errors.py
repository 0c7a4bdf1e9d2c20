"""
### Config error: this data set's config file is broken, so it has no DAGs

Every file in the data set catalog (`config/datasets/`, or the folder `MLOPS_CONFIG` names) is one data
set. This file could not be loaded, so its data set's DAGs (`<dataset>__ingest`, `__train`, ...) are not
registered until it is fixed; the other data sets keep running. The error above names the file and the
field. Fix the file (or move it out of the folder); the next DAG parse replaces this placeholder with the
data set's DAGs. Its one task, **config_error**, fails with the same message, so a trigger of this DAG
(by hand, the REST API or a script that expected the data set) fails loudly instead of doing nothing.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from mlops_airflow import names
from mlops_airflow.dag_defaults import dag_args
from mlops_airflow.factory import config_errors


def build(name: str, source: str, error: str) -> None:
    @dag(
        dag_id=names.dag_id(name, names.CONFIG_ERROR),
        schedule=None,
        max_active_runs=1,
        doc_md=f"**Config file `{source}` is broken:**\n\n```\n{error}\n```\n\n{__doc__}",
        description=error[:200],
        **dag_args("config-error", dataset=name),
    )
    def config_error_dag():
        @task(retries=0)
        def config_error() -> None:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(error)

        config_error()

    config_error_dag()


for _entry in config_errors():
    build(_entry.name, str(_entry.path), _entry.error or "unknown error")

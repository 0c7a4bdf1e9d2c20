"""
### Registry watch: the champion is what the last decision set

Anyone with write access to MLflow's registry can move the `champion` or `previous` alias without the
gate, the promotion lock or the audit trail. One per data set (`<dataset>__registry_watch`). Every 10 minutes this DAG compares both aliases with the
decision ledger (every decision the data set's `train` and `rollback` made) under the promotion lock, and

1. succeeds when they match the last decision (or a decision whose interrupted attempt is being retried);
2. otherwise **restores** them to the last decided state, writes the audit record
   `registry.alias_restored` (what was found, what was restored) and **fails** with that message, so the
   failure is seen (hook a notifier to this DAG's failures, or to the ERROR log line `ALIAS TAMPERED`).

Then find out who wrote to the registry (MLflow's access logs, its auth database) and revoke that access.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from mlops_airflow import names
from mlops_airflow.dag_defaults import dag_args
from mlops_airflow.factory import DatasetDags, datasets


def build(ds: DatasetDags) -> None:
    @dag(
        dag_id=ds.dag_id(names.REGISTRY_WATCH),
        schedule="*/10 * * * *",
        max_active_runs=1,
        doc_md=ds.doc(__doc__),
        **dag_args("mlflow", "security", dataset=ds.name, retry_delay_s=30),
    )
    def registry_watch():
        @task
        def check_aliases() -> dict:
            from mlops_airflow.watch_tasks import check_aliases

            return check_aliases()

        check_aliases()

    registry_watch()


for _ds in datasets():
    build(_ds)

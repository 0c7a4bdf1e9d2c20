"""
### Registry watch: the champion is what the last decision set

Anyone with write access to MLflow's registry can move the `champion` or `previous` alias without the
gate, the promotion lock or the audit trail. Every 10 minutes this DAG compares both aliases with the
decision ledger (every decision `train` and `rollback` made) under the promotion lock, and

1. succeeds when they match the last decision (or a decision whose interrupted attempt is being retried);
2. otherwise **restores** them to the last decided state, writes the audit record
   `registry.alias_restored` (what was found, what was restored) and **fails** with that message, so the
   failure is seen (hook a notifier to this DAG's failures, or to the ERROR log line `ALIAS TAMPERED`).

Then find out who wrote to the registry (MLflow's access logs, its auth database) and revoke that access.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from mlops_airflow.dag_defaults import dag_args


@dag(
    schedule="*/10 * * * *",
    max_active_runs=1,
    doc_md=__doc__,
    **dag_args("mlflow", "security", retry_delay_s=30),
)
def registry_watch():
    @task
    def check_aliases() -> dict:
        from mlops_airflow.watch_tasks import check_aliases

        return check_aliases()

    check_aliases()


registry_watch()

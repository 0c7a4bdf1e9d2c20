"""
### Rollback: move the champion back

Manual / API only. Moves the `champion` alias of the registered model back to the `previous` champion,
or to the version given in `to_version`, under the same lock as promotions. A written `reason` is
required; the rollback is recorded like a promotion (MLflow artifact on the target version's run plus
version tags) and emits **`mlops.champion_model`**.

**Params**: `reason` (required, at least 10 characters), `to_version` (optional version number).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from mlops_airflow.assets import CHAMPION_MODEL


@dag(
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "rollback", "mlflow"],
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": dt.timedelta(seconds=15)},
    params={
        "reason": Param(
            "", type="string", minLength=10, description="Why the champion is rolled back (recorded)"
        ),
        "to_version": Param(
            None, type=["null", "string"], pattern=r"^[0-9]+$", description="Default: previous"
        ),
    },
    doc_md=__doc__,
)
def rollback():
    @task(outlets=[CHAMPION_MODEL])
    def roll_back(params=None, dag_run=None, outlet_events=None) -> dict:
        from mlops_airflow.train_tasks import roll_back as run

        record = run(params, dag_run)
        outlet_events[CHAMPION_MODEL].extra = {
            "model": record["model_name"],
            "version": record["challenger"]["version"],
            "previous": record.get("previous_champion"),
            "verdict": record["verdict"],
            "decision_id": record["decision_id"],
        }
        return record

    roll_back()


rollback()

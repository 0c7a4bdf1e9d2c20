"""
### Rollback: move the champion back

One per data set (`<dataset>__rollback`). Manual / API only. Moves the `champion` alias of the registered model back to the `previous` champion,
or to the version given in `to_version`, under the same lock as promotions. A written `reason` is
required; the rollback is recorded like a promotion (MLflow artifact on the target version's run plus
version tags) and emits **`mlops.<dataset>.champion_model`**. The target is fixed in the decision ledger by the
first attempt: a retry completes that rollback and never reverses it. A default rollback of a champion
that a rollback set is refused (it would restore what that rollback removed); name `to_version` for that.

**Params**: `reason` (required, at least 10 characters), `to_version` (optional version number).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from mlops_airflow import assets, names
from mlops_airflow.dag_defaults import dag_args
from mlops_airflow.factory import DatasetDags, datasets


def build(ds: DatasetDags) -> None:
    champion_model = assets.champion_model(ds.name)

    @dag(
        dag_id=ds.dag_id(names.ROLLBACK),
        schedule=None,
        max_active_runs=1,
        params={
            "reason": Param(
                "", type="string", minLength=10, description="Why the champion is rolled back (recorded)"
            ),
            "to_version": Param(
                None, type=["null", "string"], pattern=r"^[0-9]+$", description="Default: previous"
            ),
        },
        doc_md=ds.doc(__doc__),
        **dag_args("rollback", "mlflow", dataset=ds.name, retry_delay_s=15),
    )
    def rollback():
        @task(outlets=[champion_model])
        def roll_back(params=None, dag_run=None, outlet_events=None) -> dict:
            from mlops_airflow.train_tasks import champion_event
            from mlops_airflow.train_tasks import roll_back as run

            record = run(params, dag_run, "roll_back")
            outlet_events[champion_model].extra = champion_event(record)
            return record

        roll_back()

    rollback()


for _ds in datasets():
    build(_ds)

"""
### Backfill: ingest a date range with training held, then one train run on the whole window

One per data set (`<dataset>__backfill`). For onboarding a data set (or reloading history): give `start_date` and `end_date` and this DAG

1. **plan** lists the days (at most a year per run);
2. **ingest_day** runs the data set's ingest DAG's own steps for every day (landing files -> GX gate -> staging, or
   quarantine), four days at a time. These tasks publish **no** `mlops.<dataset>.validated_data` event, so
   the train DAG is not started once per day on a partial window;
3. **summarize** (runs whatever the days' outcomes) names the days that have a validated partition and
   the ones that do not (no landing files, quarantined: see that day's log), records the audit event
   `backfill.summary`, and hands the window to
4. **start_training**, which triggers **one** train run with `end_date` = the last day and `window_days`
   = the length of the range (run id `backfill__<this run id>`: a retry never starts a second one).
   `train=false` ingests only.

**Params**: `start_date`, `end_date` (YYYY-MM-DD, required), `train` (default true).
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

from mlops_airflow import names
from mlops_airflow.dag_defaults import dag_args
from mlops_airflow.factory import DatasetDags, datasets


def build(ds: DatasetDags) -> None:
    @dag(
        dag_id=ds.dag_id(names.BACKFILL),
        schedule=None,
        max_active_runs=1,
        params={
            "start_date": Param(type="string", format="date", description="First day of the range"),
            "end_date": Param(type="string", format="date", description="Last day of the range"),
            "train": Param(True, type="boolean", description="Start one train run on the range at the end"),
        },
        doc_md=ds.doc(__doc__),
        **dag_args("ingest", "onboarding", dataset=ds.name),
    )
    def backfill():
        @task
        def plan(params=None) -> list[str]:
            from mlops_airflow.backfill_tasks import plan as run

            return run(params)

        @task(max_active_tis_per_dagrun=4)
        def ingest_day(date: str, run_id=None, ti=None) -> dict:
            from mlops_airflow.backfill_tasks import ingest_day as run

            return run(date, run_id, ti.try_number, ti)

        @task(trigger_rule="all_done")
        def summarize(dates: list[str], params=None, dag_run=None, ti=None) -> dict:
            from mlops_airflow.backfill_tasks import summarize as run

            return run(dates, params, dag_run, ti)

        dates = plan()
        window = summarize(dates)
        ingest_day.expand(date=dates) >> window
        window >> TriggerDagRunOperator(
            task_id="start_training",
            trigger_dag_id=ds.dag_id(names.TRAIN),
            trigger_run_id="backfill__{{ run_id }}",
            conf=window,
            skip_when_already_exists=True,
        )

    backfill()


for _ds in datasets():
    build(_ds)

"""
### Monitor: score with the champion -> Evidently drift report -> guarded retrain trigger

One per data set (`<dataset>__monitor`). Runs on the config's `monitoring.schedule` (default daily at 06:00 UTC) for the day before (and on demand with a `date` Param).

1. **score_batch** scores the day's validated partition with `models:/<registered model>@champion`
   and writes `predictions/<dataset>/ds=<date>/predictions.parquet` (a rerun replaces it). No champion
   yet, or no validated partition for the day: the run is skipped with the reason in the log.
2. **drift_report** builds an Evidently report of the day against the champion's reference (a sample of
   its training data recorded at training time, so the reference follows the champion): data drift on
   the features and the prediction with pinned methods (normed Wasserstein for numbers, Jensen-Shannon for
   categories), and the task's quality metrics (classification or regression) when labels exist. HTML, JSON and a summary go to
   `reports/<dataset>/<date>/`; the numbers and operational figures go to the MLflow experiment
   `<dataset>-monitoring`. The task's **Drift report** link opens the HTML.
3. **decide_retrain** emits **`mlops.<dataset>.drift_detected`** (which schedules the data set's train DAG) only if the share
   of drifted features reaches `monitoring.drift_share_threshold`, the cooldown since the last
   drift-triggered retrain has passed and the daily maximum is not reached (a retry keeps the first
   attempt's verdict). Only validated partitions are scored, so a batch the GX gate rejected never gets
   here; a retrain it starts still goes through the data and promotion gates.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from mlops_airflow import assets, names
from mlops_airflow.dag_defaults import dag_args, date_param
from mlops_airflow.factory import DatasetDags, datasets


def build(ds: DatasetDags) -> None:
    drift_detected = assets.drift_detected(ds.name)

    @dag(
        dag_id=ds.dag_id(names.MONITOR),
        schedule=ds.monitor_schedule,  # monitoring.schedule of the config
        max_active_runs=1,  # the retrain history is read-modify-write
        params={
            "date": date_param("Day to monitor YYYY-MM-DD; empty = the day before the run's logical date")
        },
        doc_md=ds.doc(__doc__),
        **dag_args("monitor", "evidently", dataset=ds.name),
    )
    def monitor():
        @task
        def score_batch(params=None, logical_date=None, dag_run=None, ti=None) -> dict:
            from mlops_airflow.monitor_tasks import score

            return score(params, logical_date, dag_run.run_after, ti)

        @task
        def drift_report(scored: dict, dag_run=None, ti=None) -> dict:
            from mlops_airflow.monitor_tasks import report

            return report(scored, dag_run, ti)

        @task(outlets=[drift_detected])
        def decide_retrain(result: dict, outlet_events=None, dag_run=None, ti=None) -> dict:
            from mlops_airflow.monitor_tasks import decide_retrain as decide

            record = decide(result, dag_run, ti)
            outlet_events[drift_detected].extra = record
            return record

        decide_retrain(drift_report(score_batch()))

    monitor()


for _ds in datasets():
    build(_ds)

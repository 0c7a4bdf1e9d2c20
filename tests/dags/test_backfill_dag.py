"""The backfill DAG under dag.test(): a date range is ingested with training held, then exactly one train
run is started on the whole window; days without a validated partition are named, not lost.

(dag.test() creates the triggered train run without running it; what a train run does with such a window,
and that a run Airflow creates after a busy period trains on the newest day, is in tests/dags/test_train_dag.py
and tests/integration/test_drift_loop.py.)
"""

from __future__ import annotations

import datetime as dt

import pytest

from mlops_bundle import audit
from mlops_bundle.config import load_config
from mlops_bundle.sample import generate_batch, write_landing
from tests.asset_events import asset_event_extras
from tests.conftest import LAKE

pytestmark = pytest.mark.usefixtures("airflow_db")

START = dt.date(2026, 5, 1)
DAYS = [(START + dt.timedelta(days=i)).isoformat() for i in range(14)]


def _train_runs(run_id: str):
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [
            (r.run_id, r.conf, r.state)
            for r in session.query(DagRun).filter(DagRun.dag_id == "churn__train", DagRun.run_id == run_id)
        ]


def test_a_range_is_ingested_with_training_held_then_one_train_run_on_the_whole_window(dagbag, task_errors):
    missing, corrupt = DAYS[5], DAYS[9]
    for i, day in enumerate(DAYS):
        if day != missing:
            batch = generate_batch(
                day, rows=400, seed=100 + i, corrupt="unknown_category" if day == corrupt else None
            )
            write_landing(batch, LAKE / "landing" / "churn" / day)
    events_before = len(asset_event_extras("mlops.churn.validated_data"))

    dag = dagbag.get_dag("churn__backfill")
    dr = dag.test(run_conf={"start_date": DAYS[0], "end_date": DAYS[-1], "train": True})
    states = {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}
    assert states[("plan", -1)] == states[("summarize", -1)] == states[("start_training", -1)] == "success"
    day_states = [states[("ingest_day", i)] for i in range(len(DAYS))]
    assert day_states.count("failed") == 2 and day_states[5] == day_states[9] == "failed", day_states

    # nothing reached training through asset events: the days were staged with training held
    assert len(asset_event_extras("mlops.churn.validated_data")) == events_before
    for day in DAYS:
        staged = (LAKE / "staging" / "churn" / f"ds={day}" / "_manifest.json").exists()
        assert staged == (day not in (missing, corrupt)), day

    summary = dr.get_task_instance("summarize").xcom_pull(task_ids="summarize")
    assert summary == {"end_date": DAYS[-1], "window_days": 14}
    [record] = [
        r
        for r in audit.iter_records(load_config().audit_uri)
        if r["event"] == "backfill.summary" and r["payload"]["run_id"] == dr.run_id
    ]
    assert record["payload"]["missing"] == [missing, corrupt]
    assert len(record["payload"]["validated"]) == 12

    # exactly one train run, on the whole window, with an id a retry cannot duplicate
    [(run_id, conf, _)] = _train_runs(f"backfill__{dr.run_id}")
    assert conf == {"end_date": DAYS[-1], "window_days": 14}


def test_bad_ranges_fail_before_any_work(dagbag, task_errors):
    dag = dagbag.get_dag("churn__backfill")
    dr = dag.test(run_conf={"start_date": "2026-05-10", "end_date": "2026-05-01", "train": True})
    assert dr.state == "failed"
    assert "is after end_date" in task_errors["plan"]
    dr = dag.test(run_conf={"start_date": "2024-01-01", "end_date": "2026-05-01", "train": True})
    assert "split the range" in task_errors["plan"]

"""The monitor DAG via dag.test() against a real MLflow server: a champion trained by the train DAG, then
same-distribution, drifted and broken days."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from mlops_bundle import ingest
from mlops_bundle.config import load_config
from mlops_bundle.sample import generate_batch
from mlops_bundle.storage import LocalStorage
from tests.asset_events import asset_event_extras
from tests.conftest import LAKE

pytestmark = pytest.mark.usefixtures("airflow_db")

MODEL = f"churn-monitor-{uuid.uuid4().hex[:8]}"
TRAIN_DAYS = [f"2026-09-0{d}" for d in range(1, 6)]


def _stage(cfg, day, df, check=True):
    coerced, problems = ingest.coerce(df, cfg)
    assert not (check and problems), problems
    ingest.write_staging(
        LocalStorage(LAKE), cfg, day, coerced, {"rows": len(coerced), "fingerprint": "x", "gx_success": True}
    )


@pytest.fixture(scope="module")
def champion(mlflow_server, dagbag, airflow_db):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_MLFLOW__TRACKING_URI", mlflow_server)
    mp.setenv("MLOPS_MLFLOW__REGISTERED_MODEL", MODEL)
    mp.setenv("MLOPS_MLFLOW__EXPERIMENT", f"{MODEL}-training")
    mp.setenv(
        "MLOPS_TRAINING__CANDIDATES",
        json.dumps([{"name": "logreg", "family": "logistic_regression", "params": {"C": 1.0}}]),
    )
    mp.setenv("MLOPS_MONITORING__COOLDOWN_HOURS", "6")
    cfg = load_config()
    for day in TRAIN_DAYS:
        _stage(cfg, day, generate_batch(day, rows=3000))
    conf = {
        "end_date": TRAIN_DAYS[-1],
        "window_days": 5,
        "candidates": None,
        "force": False,
        "justification": None,
    }
    dr = dagbag.get_dag("churn__train").test(run_conf=conf)
    assert dr.state == "success"
    yield cfg
    mp.undo()


def _monitor(dagbag, date):
    dr = dagbag.get_dag("churn__monitor").test(run_conf={"date": date})
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    return dr, states


def _xcom(dr, task_id):
    return dr.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def _drift_events():
    return asset_event_extras("mlops.churn.drift_detected")


def _queued_train_runs():
    """Asset-triggered runs the scheduler will create: Airflow's AssetDagRunQueue for the train DAG."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        session.expire_all()
        return (
            session.query(AssetDagRunQueue).filter(AssetDagRunQueue.target_dag_id == "churn__train").count()
        )


def _unpause(dag_id):
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(DagModel).filter(DagModel.dag_id == dag_id).update({"is_paused": False})


def test_same_distribution_gives_no_drift_and_no_retrain(dagbag, champion):
    cfg = champion
    day = "2026-09-06"
    _stage(cfg, day, generate_batch(day, rows=3000))
    events_before = len(_drift_events())
    dr, states = _monitor(dagbag, day)
    assert dr.state == "success", states
    assert states == {"score_batch": "success", "drift_report": "success", "decide_retrain": "skipped"}
    result = _xcom(dr, "drift_report")
    assert result["dataset_drift"] is False and result["champion_version"] == "1"
    assert result["quality"]["current"]["roc_auc"] > 0.7
    assert (LAKE / f"reports/churn/{day}/report.html").stat().st_size > 100_000
    assert json.loads((LAKE / f"reports/churn/{day}/summary.json").read_text())["dataset_drift"] is False
    assert (LAKE / f"predictions/churn/ds={day}/predictions.parquet").exists()
    assert len(_drift_events()) == events_before


def test_drift_emits_the_asset_that_schedules_training_and_cooldown_holds_the_next(dagbag, champion):
    cfg = champion
    for day in ("2026-09-07", "2026-09-08"):
        _stage(cfg, day, generate_batch(day, rows=3000, drift=1.0))
    _unpause("churn__train")  # Airflow queues asset-triggered runs only for unpaused DAGs
    queued_before = _queued_train_runs()
    dr, states = _monitor(dagbag, "2026-09-07")
    assert dr.state == "success", states
    assert states["decide_retrain"] == "success"
    result = _xcom(dr, "drift_report")
    assert result["dataset_drift"] is True and "monthly_charges" in result["drifted_columns"]
    assert result["prediction_drift"]["drifted"] is True
    assert (LAKE / "reports/churn/2026-09-07/report.html").exists()
    assert (LAKE / "reports/churn/2026-09-07/report.json").exists()
    [event] = [e for e in _drift_events() if e.get("date") == "2026-09-07"]
    assert event["drift_share"] >= cfg.monitoring.drift_share_threshold
    assert _queued_train_runs() == queued_before + 1, "the train DAG is queued by the drift asset event"

    # the train run that consumes the event marks the retrain started (train_tasks.prepare does this);
    # from then on the cooldown holds the next trigger back
    from mlops_bundle.monitoring.guard import mark_started

    assert mark_started(
        cfg,
        LocalStorage(LAKE),
        [f"churn__monitor/{dr.run_id}"],
        "churn__train/manual",
        dt.datetime.now(dt.UTC),
    )
    dr2, states2 = _monitor(dagbag, "2026-09-08")
    assert dr2.state == "success"
    assert _xcom(dr2, "drift_report")["dataset_drift"] is True
    assert states2["decide_retrain"] == "skipped", "cooldown suppresses a second trigger"
    assert "cooldown" in _skip_reason(dr2, "decide_retrain")
    assert [e for e in _drift_events() if e.get("date") == "2026-09-08"] == []


def test_labels_not_yet_available_skip_quality_but_not_drift(dagbag, champion):
    cfg = champion
    day = "2026-09-10"
    df = generate_batch(day, rows=2000)
    df["churned"] = None
    coerced, _ = ingest.coerce(df, cfg)
    ingest.write_staging(LocalStorage(LAKE), cfg, day, coerced, {"rows": len(coerced), "gx_success": True})
    dr, states = _monitor(dagbag, day)
    assert dr.state == "success", states
    result = _xcom(dr, "drift_report")
    assert result["quality"] is None and "churned" in result["quality_skipped_reason"]
    assert result["drift_share"] is not None


def test_missing_columns_fail_clearly(dagbag, champion, task_errors):
    cfg = champion
    day = "2026-09-11"
    coerced, _ = ingest.coerce(generate_batch(day, rows=500), cfg)
    ingest.write_staging(LocalStorage(LAKE), cfg, day, coerced.drop(columns=["region"]), {"rows": 500})
    dr, states = _monitor(dagbag, day)
    assert dr.state == "failed" and states["score_batch"] == "failed"
    assert "region" in task_errors["score_batch"] and "lacks columns" in task_errors["score_batch"]


def _skip_reason(dr, task_id):
    return dr.get_task_instance(task_id).xcom_pull(task_ids=task_id, key="skip_reason")


def test_no_rows_for_the_day_is_a_clear_skip(dagbag, champion):
    dr, states = _monitor(dagbag, "2026-09-20")
    assert dr.state == "success" and states["score_batch"] == "skipped"
    assert "no validated partition for churn/2026-09-20" in _skip_reason(dr, "score_batch")


def test_no_champion_yet_is_a_clear_skip(dagbag, champion, monkeypatch):
    monkeypatch.setenv("MLOPS_MLFLOW__REGISTERED_MODEL", f"nobody-{uuid.uuid4().hex[:6]}")
    dr, states = _monitor(dagbag, "2026-09-06")
    assert states["score_batch"] == "skipped"
    assert "no champion yet" in _skip_reason(dr, "score_batch")

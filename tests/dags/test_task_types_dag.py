"""The train DAG end to end (dag.test, a real MLflow server) for each task type on scikit-learn's bundled
data: a first model becomes champion, a better challenger is promoted, a worse one is rejected (for
regression: the lower rmse wins), and a run that picks an already registered model reuses its version.

Weak models are scikit-learn's dummies (prior / mean): a real baseline every task type must beat.
"""

from __future__ import annotations

import os
import uuid

import pytest

from mlops_bundle.config import load_config
from mlops_bundle.storage import LocalStorage
from tests import sk_data

pytestmark = pytest.mark.usefixtures("airflow_db")

DAYS = [f"2026-07-{d:02d}" for d in range(1, 7)]
CASES = {
    # task: (data set, weak candidate, strong candidate, floor that the weak one still clears)
    "binary": (
        "cancer",
        {"name": "weak", "estimator": "sklearn.dummy.DummyClassifier", "params": {"strategy": "prior"}},
        {"name": "strong", "family": "logistic_regression", "params": {"C": 1.0}},
        0.4,
    ),
    "multiclass": (
        "wine",
        {"name": "weak", "estimator": "sklearn.dummy.DummyClassifier", "params": {"strategy": "prior"}},
        {"name": "strong", "family": "logistic_regression", "params": {"C": 1.0}},
        0.1,
    ),
    "regression": (
        "diabetes",
        {"name": "weak", "estimator": "sklearn.dummy.DummyRegressor", "params": {"strategy": "mean"}},
        {"name": "strong", "family": "ridge", "params": {"alpha": 0.1}},
        1000.0,  # rmse: a ceiling
    ),
}


def _train(dag, candidate: str) -> dict:
    conf = {"end_date": DAYS[-1], "window_days": 30, "candidates": [candidate], "force": False}
    dr = dag.test(run_conf={**conf, "justification": None})
    assert dr.state == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}
    return dr.get_task_instance("promote").xcom_pull(task_ids="promote", key="decision")


@pytest.mark.parametrize("task", list(CASES))
def test_the_gate_promotes_the_better_and_rejects_the_worse_model_per_task_type(
    task, mlflow_server, tmp_path, monkeypatch
):
    from airflow.dag_processing.dagbag import DagBag

    from mlops_airflow import names
    from mlops_bundle import tracking
    from tests.conftest import REPO

    name, weak, strong, floor = CASES[task]
    model = f"{name}-{task}-{uuid.uuid4().hex[:6]}"
    path = sk_data.write_config(tmp_path, name, [weak, strong])
    for key in list(os.environ):  # the session's lake/MLflow overrides: this data set brings its own
        if key.startswith(("MLOPS_STORAGE__", "MLOPS_MLFLOW__", "MLOPS_VALIDATION__")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MLOPS_CONFIG", str(path))
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLOPS_MLFLOW__REGISTERED_MODEL", model)
    monkeypatch.setenv("MLOPS_MLFLOW__EXPERIMENT", f"{model}-training")
    monkeypatch.setenv("MLOPS_PROMOTION__FLOOR", str(floor))
    monkeypatch.setenv("MLOPS_PROMOTION__LOCK_URI", "")
    cfg = load_config()
    assert cfg.dataset.task == task and cfg.dataset.id_column is None and cfg.dataset.timestamp_column is None
    sk_data.stage_days(LocalStorage(tmp_path / "lake"), cfg, DAYS)
    metric = cfg.training.metric
    # the DAGs of this data set: the factory builds them from the catalog MLOPS_CONFIG names (set above,
    # and kept while the runs' tasks load the config of the data set their DAG id names)
    dagbag = DagBag(dag_folder=str(REPO / "dags"))
    assert dagbag.import_errors == {}, dagbag.import_errors
    assert sorted(dagbag.dag_ids) == sorted(
        [names.AUDIT_VERIFY_DAG, *(names.dag_id(name, kind) for kind in names.DAG_KINDS)]
    )
    dag = dagbag.get_dag(names.dag_id(name, names.TRAIN))

    first = _train(dag, "weak")
    assert first["verdict"] == "promote" and "no champion" in first["reason"], first
    better = _train(dag, "strong")
    assert better["verdict"] == "promote" and better["applied"], better
    a, b = first["challenger"]["metrics"][metric], better["challenger"]["metrics"][metric]
    assert (a > b) if task == "regression" else (a < b), (metric, a, b)  # lower rmse wins
    worse = _train(dag, "weak")
    assert worse["verdict"] == "reject" and not worse["applied"], worse
    # the weak model was registered once: the third run reused version 1 (the winning model's own key)
    assert worse["challenger"]["version"] == first["challenger"]["version"] == "1"
    client = tracking.client(cfg)
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{model}'")) == [1, 2]
    assert tracking.alias_version(client, model, "champion") == better["challenger"]["version"] == "2"
    kind = "regressor" if task == "regression" else "classifier"
    assert cfg.model_name == model and load_config(path, environ={}).model_name == f"{name}-{kind}"

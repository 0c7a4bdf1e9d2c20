"""The train and rollback DAGs via dag.test() against a real MLflow tracking server subprocess.

The tests of this module build on each other (first champion, rejected challenger, rerun, forced
promotion, rollback), like the life of one registered model; they share one model name.
"""

from __future__ import annotations

import json
import re
import uuid

import airflow  # noqa: F401  (importing Airflow puts plugins/ on sys.path, as in a worker)
import pytest

from mlops_airflow import names
from mlops_bundle import ingest
from mlops_bundle.config import load_config
from mlops_bundle.sample import generate_batch
from mlops_bundle.storage import LocalStorage
from tests.conftest import LAKE

pytestmark = pytest.mark.usefixtures("airflow_db")

MODEL = f"churn-test-{uuid.uuid4().hex[:8]}"
CLEAN_DAYS = [f"2026-06-0{d}" for d in range(1, 6)]
NOISY_DAYS = ["2026-06-06", "2026-06-07", "2026-06-08"]
# a clean day after the noisy ones, sized so that a window over both has exactly this day as its holdout
# (1125 rows = 20% of 3 x 1500 + 1125): trained on noise only, judged on clean data
CLEAN_AFTER_NOISE, CLEAN_AFTER_NOISE_ROWS = "2026-06-09", 1125


@pytest.fixture(scope="module")
def mlflow_env(mlflow_server, session_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_MLFLOW__TRACKING_URI", mlflow_server)
    mp.setenv("MLOPS_MLFLOW__REGISTERED_MODEL", MODEL)
    mp.setenv("MLOPS_MLFLOW__EXPERIMENT", f"{MODEL}-training")
    mp.setenv("MLOPS_PROMOTION__LOCK_URI", "")
    mp.setenv("MLOPS_TRAINING__CANDIDATES", json.dumps(_candidates()))
    cfg = load_config()
    store = LocalStorage(LAKE)
    for day in CLEAN_DAYS:
        _stage(cfg, store, day, generate_batch(day, rows=1500))
    for day in NOISY_DAYS:  # labels carry no signal: any model trained on them is worse
        _stage(cfg, store, day, generate_batch(day, rows=1500, label_noise=0.5))
    _stage(cfg, store, CLEAN_AFTER_NOISE, generate_batch(CLEAN_AFTER_NOISE, rows=CLEAN_AFTER_NOISE_ROWS))
    yield load_config()
    mp.undo()


def _candidates():
    return [
        {"name": "logreg", "family": "logistic_regression", "params": {"C": 1.0}},
        {"name": "hist_gbm", "family": "hist_gradient_boosting", "params": {"max_iter": 60}},
    ]


def _stage(cfg, store, day, df):
    coerced, problems = ingest.coerce(df, cfg)
    assert not problems
    ingest.write_staging(
        store, cfg, day, coerced, {"rows": len(coerced), "fingerprint": ingest.fingerprint(coerced)}
    )


def _client(cfg):
    from mlops_bundle import tracking

    return tracking.client(cfg)


def _champion(cfg):
    from mlops_bundle import tracking

    return tracking.alias_version(_client(cfg), cfg.model_name, "champion")


DEFAULTS = {
    "train": {
        "end_date": None,
        "window_days": None,
        "candidates": None,
        "force": False,
        "justification": None,
    },
    "rollback": {"to_version": None},
    "registry_watch": {},
}


def _run(dagbag, kind, conf):
    # dag.test() keeps run_conf values in the (cached) DAG's params: always pass every param
    dr = dagbag.get_dag(names.dag_id("churn", kind)).test(run_conf={**DEFAULTS[kind], **conf})
    return dr, {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}


def _decision(dr):
    ti = dr.get_task_instance("promote")
    return ti.xcom_pull(task_ids="promote", key="decision")


def _versions(cfg):
    return sorted(int(v.version) for v in _client(cfg).search_model_versions(f"name='{cfg.model_name}'"))


def test_first_run_promotes_the_first_model(dagbag, mlflow_env):
    cfg = mlflow_env
    dr, states = _run(dagbag, "train", {"end_date": CLEAN_DAYS[-1], "window_days": 5})
    assert dr.state == "success", states
    assert states[("train_candidate", 0)] == states[("train_candidate", 1)] == "success"
    decision = _decision(dr)
    assert decision["verdict"] == "promote" and decision["applied"] is True
    assert "no champion" in decision["reason"]
    assert _champion(cfg) == decision["challenger"]["version"] == "1"
    assert states[("publish_champion", -1)] == "success"
    run = _client(cfg).get_run(decision["challenger"]["run_id"])
    assert run.data.tags["airflow.dag_id"] == "churn__train" and run.data.tags["airflow.run_id"] == dr.run_id
    artifacts = [a.path for a in _client(cfg).list_artifacts(run.info.run_id, "decisions")]
    assert len(artifacts) == 1


def test_worse_data_is_rejected_and_champion_stays(dagbag, mlflow_env, monkeypatch):
    """A challenger trained on labels without signal loses to the champion on the same (clean) holdout.

    The floor is 0 and there are no guard metrics, so the comparison with the champion is the only rule
    that can fail: the reason must be exactly that rule's text, blaming nothing else.
    """
    cfg = mlflow_env
    monkeypatch.setenv("MLOPS_PROMOTION__FLOOR", "0")
    monkeypatch.setenv("MLOPS_PROMOTION__GUARD_METRICS", "{}")
    dr, states = _run(dagbag, "train", {"end_date": CLEAN_AFTER_NOISE, "window_days": 4})
    assert dr.state == "success", states
    registered = dr.get_task_instance("register_best").xcom_pull(task_ids="register_best")
    assert registered["window"]["split_ts"].startswith(CLEAN_AFTER_NOISE), "holdout = the clean day only"
    decision = _decision(dr)
    assert decision["verdict"] == "reject" and decision["applied"] is False
    assert decision["policy"]["floor"] == 0 and decision["policy"]["guard_metrics"] == {}
    reason = decision["reason"]
    assert re.fullmatch(
        r"vs champion version 1: roc_auc \S+ does not beat champion \S+ "
        r"\(improvement -\S+; needs > 0 and >= min_improvement \S+\)",
        reason,
    ), reason
    assert "floor" not in reason and "guard" not in reason
    assert states[("publish_champion", -1)] == "skipped"
    assert _champion(cfg) == "1"
    version = _client(cfg).get_model_version(cfg.model_name, decision["challenger"]["version"])
    assert version.tags["gate.verdict"] == "reject"


def test_champion_loads_and_predicts(mlflow_env):
    import mlflow
    from sklearn.metrics import roc_auc_score

    from mlops_bundle import tracking

    cfg = mlflow_env
    tracking.use(cfg)
    model = mlflow.sklearn.load_model(f"models:/{cfg.model_name}@champion")
    df = generate_batch("2026-06-20", rows=2000)
    coerced, _ = ingest.coerce(df, cfg)
    proba = model.predict_proba(coerced[cfg.dataset.feature_columns])[:, 1]
    assert roc_auc_score(coerced[cfg.dataset.target], proba) > 0.7


def test_rerun_with_same_data_and_params_registers_no_duplicate(dagbag, mlflow_env):
    cfg = mlflow_env
    before = _versions(cfg)
    dr, states = _run(dagbag, "train", {"end_date": CLEAN_DAYS[-1], "window_days": 5})
    assert dr.state == "success", states
    registered = dr.get_task_instance("register_best").xcom_pull(task_ids="register_best")
    assert registered["reused"] is True and registered["version"] == "1"
    assert _versions(cfg) == before
    assert _champion(cfg) == "1"


def _logged_metrics(cfg, version: str) -> dict[str, float]:
    """The holdout metrics training logged for a version (what the gate would score it at)."""
    client = _client(cfg)
    return dict(client.get_run(client.get_model_version(cfg.model_name, version).run_id).data.metrics)


def test_forced_promotion_requires_a_justification(dagbag, mlflow_env, task_errors):
    """force without a justification fails before anyone is asked; with one, the run waits for a second
    person's approval (answered through the REST API in tests/integration/test_approval.py). For the
    rollback test below, the approved forced promotion is then made through the library, as promote does."""
    from mlops_bundle import promotion

    cfg = mlflow_env
    dr, states = _run(dagbag, "train", {"end_date": NOISY_DAYS[-1], "window_days": 3, "force": True})
    assert dr.state == "failed" and states[("evaluate_gate", -1)] == "failed"
    assert "justification" in "".join(task_errors.values())
    assert states[("promote", -1)] not in ("success", "running")
    assert _champion(cfg) == "1"
    noisy = str(max(_versions(cfg)))
    decision = promotion.gate(
        cfg,
        _client(cfg),
        challenger_version=noisy,
        score=lambda uri: _logged_metrics(cfg, uri.rsplit("/", 1)[-1]),
        actor="user:alice",
        force=True,
        justification="incident 4711: ship the retrained model for the audit",
        triggered_by="alice",
        approved_by="bob",
        decision_key=f"test/{uuid.uuid4().hex}/promote",
    )
    assert (decision.verdict, decision.forced, decision.approved_by) == ("promote", True, "bob")
    assert _champion(cfg) == noisy != "1"


def test_rollback_restores_the_previous_champion(dagbag, mlflow_env):
    from mlops_bundle import tracking

    cfg = mlflow_env
    current = _champion(cfg)
    dr, states = _run(dagbag, "rollback", {"reason": "forced model misbehaves in shadow traffic"})
    assert dr.state == "success", states
    assert _champion(cfg) == "1"
    assert tracking.alias_version(_client(cfg), cfg.model_name, "previous") == current
    record = dr.get_task_instance("roll_back").xcom_pull(task_ids="roll_back")
    assert record["verdict"] == "rollback" and "shadow traffic" in record["reason"]


def test_registry_watch_restores_an_alias_no_decision_set(dagbag, mlflow_env, task_errors):
    """Someone moves `champion` straight in MLflow: the registry_watch DAG puts the decided champion back,
    audits it and fails naming what it found; the next run is green."""
    from mlops_bundle import audit

    cfg = mlflow_env
    decided = _champion(cfg)
    other = next(str(v) for v in _versions(cfg) if str(v) != decided)
    _client(cfg).set_registered_model_alias(cfg.model_name, "champion", other)
    dr, states = _run(dagbag, "registry_watch", {})
    assert dr.state == "failed" and states[("check_aliases", -1)] == "failed", states
    assert f"ALIAS TAMPERED on {cfg.model_name}: found champion={other}" in task_errors["check_aliases"]
    assert _champion(cfg) == decided
    restored = [r for r in audit.iter_records(cfg.audit_uri) if r["event"] == "registry.alias_restored"]
    assert restored and restored[-1]["payload"]["found"]["champion"] == other
    dr, states = _run(dagbag, "registry_watch", {})
    assert dr.state == "success", states


def test_rollback_needs_a_reason(dagbag, mlflow_env):
    from airflow.sdk.exceptions import ParamValidationError

    cfg = mlflow_env
    current = _champion(cfg)
    with pytest.raises(ParamValidationError, match="Invalid input for param reason: 'oops' is too short"):
        _run(dagbag, "rollback", {"reason": "oops"})
    assert _champion(cfg) == current, "a refused rollback must leave the champion where it was"


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"end_date": "2030-01-01", "window_days": 3}, "no validated partitions"),
        ({"end_date": CLEAN_DAYS[-1], "candidates": ["xgboost_deluxe"]}, "xgboost_deluxe"),
    ],
    ids=["empty-window", "unknown-candidate"],
)
def test_bad_training_input_fails_clearly(dagbag, mlflow_env, task_errors, conf, message):
    cfg = mlflow_env
    before = _versions(cfg)
    dr, states = _run(dagbag, "train", conf)
    assert dr.state == "failed" and states[("prepare_window", -1)] == "failed"
    assert message in "".join(task_errors.values())
    assert _versions(cfg) == before


def test_one_class_window_fails_clearly(dagbag, mlflow_env, task_errors):
    cfg = mlflow_env
    day = "2026-07-01"
    df = generate_batch(day, rows=800)
    df["churned"] = 0
    _stage(cfg, LocalStorage(LAKE), day, df)
    dr, states = _run(dagbag, "train", {"end_date": day, "window_days": 1})
    assert dr.state == "failed" and states[("prepare_window", -1)] == "failed", states
    assert "only class 0" in "".join(task_errors.values())


def test_unknown_model_family_in_config_fails_clearly(dagbag, mlflow_env, task_errors, monkeypatch):
    monkeypatch.setenv(
        "MLOPS_TRAINING__CANDIDATES", json.dumps([{"name": "boosted", "family": "xgboost", "params": {}}])
    )
    dr, states = _run(dagbag, "train", {"end_date": CLEAN_DAYS[-1]})
    assert dr.state == "failed"
    out = "".join(task_errors.values())
    assert "unknown model family 'xgboost'" in out


def test_unreachable_mlflow_retries_then_fails_clearly(dagbag, mlflow_env, task_errors, monkeypatch):
    from tests.services import free_port

    cfg = mlflow_env
    before = _versions(cfg)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", dead)
    dr, states = _run(dagbag, "train", {"end_date": CLEAN_DAYS[-1], "window_days": 5})
    assert dr.state == "failed" and states[("prepare_window", -1)] == "failed"
    ti = dr.get_task_instance("prepare_window")
    assert ti.try_number == 3, "retried twice before failing"
    assert dead in task_errors["prepare_window"] and "TrackingUnavailable" in task_errors["prepare_window"]
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", cfg.tracking_uri)
    assert _versions(cfg) == before, "nothing half-registered"

"""Training against real staged partitions and a real MLflow store (SQLite folder; one test on the server).

Partitions are written the way ingest writes them (``ingest.coerce`` -> ``ingest.write_staging`` with a
manifest carrying rows and fingerprint) from ``generate_batch`` frames; only the GX gate is skipped, it is
tested with ingest.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_bundle import provenance, tracking, training
from mlops_bundle.config import DEFAULT_CONFIG_PATH, CandidateSpec, load_config
from mlops_bundle.storage import LocalStorage
from tests import lake
from tests.conftest import REPO

DAYS = [f"2026-02-{d:02d}" for d in range(1, 7)]
ROWS = 1500
CATEGORICAL = ["contract_type", "payment_method", "region"]


def make_cfg(root: Path, **env: str):
    environ = {
        "MLOPS_STORAGE__ROOT_URI": (root / "lake").as_uri(),
        "MLOPS_MLFLOW__TRACKING_URI": str(root / "mlflow"),
        **env,
    }
    return load_config(DEFAULT_CONFIG_PATH, environ=environ)


def stage(store, cfg, date: str, rows: int = ROWS, mutate=None) -> None:
    """One validated partition, written as the ingest DAG writes it (minus the GX run)."""
    lake.stage(store, cfg, date, rows, mutate)


def with_candidates(cfg, candidates: list[dict]):
    specs = [CandidateSpec(**c) for c in candidates]
    return cfg.model_copy(update={"training": cfg.training.model_copy(update={"candidates": specs})})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    cfg = make_cfg(root)
    store = LocalStorage(root / "lake")
    for date in DAYS:
        stage(store, cfg, date)
    return cfg, store, root


@pytest.fixture(scope="module")
def window(env):
    cfg, store, _ = env
    return training.assemble_window(store, cfg, DAYS[-1])


@pytest.fixture(scope="module")
def trained(env, window):
    """Every configured candidate fitted once: {name: (spec, model, metrics)}."""
    cfg, _, _ = env
    out = {}
    for spec in training.resolve_candidates(cfg):
        model, metrics = training.train_candidate(spec, window, cfg)
        out[spec.name] = (spec, model, metrics)
    return out


# ---------------------------------------------------------------- window


def test_window_is_split_by_time_with_holdout_strictly_later(env, window):
    cfg, store, _ = env
    ts = cfg.dataset.timestamp_column
    assert len(window.train) + len(window.holdout) == ROWS * len(DAYS)
    assert len(window.holdout) == pytest.approx(0.2 * ROWS * len(DAYS), abs=5)
    assert window.train[ts].max() < pd.Timestamp(window.split_ts) <= window.holdout[ts].min()
    assert [p["date"] for p in window.partitions] == DAYS
    assert all(p["rows"] == ROWS and p["fingerprint"].startswith("sha256:") for p in window.partitions)
    assert window.partitions[0]["uri"].endswith("staging/churn/ds=2026-02-01")
    # same data -> same fingerprint; a shorter window is different data
    again = training.assemble_window(store, cfg, DAYS[-1])
    assert again.fingerprint == window.fingerprint
    short = training.assemble_window(store, cfg, DAYS[-1], window_days=2)
    assert [p["date"] for p in short.partitions] == DAYS[-2:]
    assert short.fingerprint != window.fingerprint
    # category columns keep pandas 'category' dtype after concat
    assert all(isinstance(window.train[c].dtype, pd.CategoricalDtype) for c in CATEGORICAL)


def test_empty_window_names_the_range_and_where_it_looked(env):
    cfg, store, _ = env
    with pytest.raises(training.TrainingError) as err:
        training.assemble_window(store, cfg, "2025-06-30", window_days=7)
    msg = str(err.value)
    assert "no validated partitions between 2025-06-24 and 2025-06-30" in msg
    assert store.uri("staging/churn") in msg and "run the ingest DAG" in msg


def test_too_few_rows(env):
    _, store, root = env
    cfg = make_cfg(root, MLOPS_TRAINING__MIN_ROWS="100000")
    with pytest.raises(
        training.TrainingError, match=r"fewer than training.min_rows=100000: widen the window"
    ):
        training.assemble_window(store, cfg, DAYS[-1])


def test_holdout_with_one_class_is_refused(tmp_path):
    cfg = make_cfg(tmp_path)
    store = LocalStorage(tmp_path / "lake")
    stage(store, cfg, "2026-03-01", rows=1000)
    stage(store, cfg, "2026-03-02", rows=1000, mutate=lambda df: df.assign(churned=0))
    with pytest.raises(training.TrainingError) as err:
        training.assemble_window(store, cfg, "2026-03-02", window_days=2)
    msg = str(err.value)
    assert "holdout" in msg and "only class 0 of 'churned' (400 rows)" in msg and "widen the window" in msg


def test_saved_window_loads_back_identically(env, window):
    cfg, store, _ = env
    info = training.save_window(store, cfg, window, "test-key")
    assert json.loads(json.dumps(info)) == info  # XCom-safe
    assert info["train_uri"].endswith("work/churn/train/test-key/train.parquet")
    back = training.load_window(store, cfg, info)
    pd.testing.assert_frame_equal(back.train, window.train)
    pd.testing.assert_frame_equal(back.holdout, window.holdout)
    assert (back.fingerprint, back.split_ts, back.partitions) == (
        window.fingerprint,
        window.split_ts,
        window.partitions,
    )
    store.delete(info["train_key"])
    with pytest.raises(training.TrainingError, match="re-run the window assembly task"):
        training.load_window(store, cfg, info)


# ---------------------------------------------------------------- candidates


def test_unknown_family_names_candidate_family_and_config(env):
    cfg = with_candidates(env[0], [{"name": "boost", "family": "xgboost"}])
    with pytest.raises(training.TrainingError) as err:
        training.resolve_candidates(cfg)
    msg = str(err.value)
    assert "candidate 'boost' names unknown model family 'xgboost'" in msg
    assert "logistic_regression" in msg and "fix training.candidates in" in msg and cfg.source in msg


def test_unknown_candidate_name_lists_configured(env):
    with pytest.raises(training.TrainingError) as err:
        training.resolve_candidates(env[0], ["logreg", "svm"])
    assert "['svm']" in str(err.value) and "'hist_gbm'" in str(err.value)


@pytest.mark.parametrize(
    "params, param",
    [({"C": -1.0}, "C"), ({"n_neighbors": 3}, "n_neighbors"), ({"max_iter": "lots"}, "max_iter")],
)
def test_bad_param_names_the_parameter(env, params, param):
    cfg = with_candidates(env[0], [{"name": "lr", "family": "logistic_regression", "params": params}])
    with pytest.raises(training.TrainingError) as err:
        training.resolve_candidates(cfg)
    assert f"candidate 'lr' (family 'logistic_regression') has a bad parameter '{param}'" in str(err.value)


def test_subset_in_given_order(env):
    names = [s.name for s in training.resolve_candidates(env[0], ["random_forest", "logreg"])]
    assert names == ["random_forest", "logreg"]


# ---------------------------------------------------------------- model behaviour


@pytest.mark.parametrize(
    "family", sorted(n for n, f in training.FAMILIES.items() if f.kind == "classification")
)
def test_each_family_learns_beyond_a_constant_predictor(trained, window, family):
    name, (_, _, metrics) = next((n, t) for n, t in trained.items() if t[0].family == family)
    base = window.holdout["churned"].mean()
    constant_log_loss = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert metrics["roc_auc"] > 0.70, name
    assert metrics["log_loss"] < constant_log_loss, name
    assert metrics["rows"] == len(window.holdout)
    assert metrics["fit_seconds"] > 0 and metrics["train_rows"] == len(window.train)


def test_longer_tenure_lowers_churn_probability(trained, window):
    _, model, _ = trained["logreg"]
    x = window.holdout.head(500)
    p0 = model.predict_proba(x)[:, 1]
    p1 = model.predict_proba(x.assign(tenure_months=x["tenure_months"] + 24))[:, 1]
    assert (p1 < p0).all()


@pytest.mark.parametrize("name", ["logreg", "hist_gbm", "random_forest"])
def test_object_strings_score_like_categories_and_unseen_values_do_not_fail(trained, window, name):
    _, model, _ = trained[name]
    x = window.holdout.head(200)
    as_object = x.astype({c: object for c in CATEGORICAL})
    np.testing.assert_allclose(model.predict_proba(x), model.predict_proba(as_object))
    unseen = as_object.assign(region="atlantis")
    assert np.isfinite(model.predict_proba(unseen)).all()


def test_evaluate_is_deterministic_and_reports_all_metrics(env, trained, window):
    cfg = env[0]
    spec, model, metrics = trained["hist_gbm"]
    again, _ = training.train_candidate(spec, window, cfg)
    assert training.evaluate(again, window.holdout, cfg) == training.evaluate(model, window.holdout, cfg)
    keys = {"roc_auc", "f1", "precision", "recall", "accuracy", "log_loss", "rows", "positive_rate"}
    assert keys <= set(metrics)


# ---------------------------------------------------------------- MLflow


def test_log_candidate_records_lineage_and_model_loads_back(env, trained, window):
    import mlflow

    cfg = env[0]
    spec, model, metrics = trained["random_forest"]
    run_id = training.log_candidate(
        cfg, spec, model, metrics, window, {"dag_id": "train", "run_id": "manual__1", "triggered_by": "test"}
    )
    client = tracking.client(cfg)
    run = client.get_run(run_id)
    assert run.info.experiment_id == tracking.ensure_experiment(cfg)
    assert run.data.params["family"] == "random_forest" and run.data.params["model.n_estimators"] == "150"
    assert run.data.metrics["roc_auc"] == pytest.approx(metrics["roc_auc"])
    tags = run.data.tags
    assert tags["dag_id"] == "train" and tags["triggered_by"] == "test"
    assert tags["data_fingerprint"] == window.fingerprint
    # inside a git checkout (this repo) the lineage tag is the real HEAD; "unknown" only where git cannot say
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert tags["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown"), head.stderr
    assert len(tags["lock_sha256"]) == 64
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "holdout"}
    assert json.loads(inputs["training"].profile)["num_rows"] == len(window.train)
    assert inputs["training"].digest != inputs["holdout"].digest

    x = window.holdout.head(50)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    np.testing.assert_array_equal(pyfunc.predict(training.model_input(x, cfg)), model.predict(x))
    # the bundle's loader takes registered, signed versions only (tests/unit/test_loading.py)
    with pytest.raises(provenance.ProvenanceError, match="registered versions only"):
        training.load_model(cfg, f"runs:/{run_id}/model")


def test_register_best_is_idempotent_per_train_key(env, trained, window):
    cfg = env[0]
    results = []
    for name in ("logreg", "hist_gbm"):
        spec, model, metrics = trained[name]
        run_id = training.log_candidate(cfg, spec, model, metrics, window, {"dag_id": "train"})
        results.append({"candidate": name, "run_id": run_id, "metrics": metrics})
    best = max(results, key=lambda r: r["metrics"]["roc_auc"])
    key = training.train_key(window.fingerprint, [trained[n][0] for n in ("logreg", "hist_gbm")], cfg)

    first = training.register_best(cfg, results, key)
    assert first["reused"] is False and first["candidate"] == best["candidate"]
    assert first["model_uri"] == f"models:/{cfg.model_name}/{first['version']}"
    assert isinstance(first["version"], str)
    second = training.register_best(cfg, results, key)
    assert (second["version"], second["reused"], second["run_id"]) == (
        first["version"],
        True,
        first["run_id"],
    )
    client = tracking.client(cfg)
    assert len(client.search_model_versions(f"name = '{cfg.model_name}' AND tags.train_key = '{key}'")) == 1
    mv = client.get_model_version(cfg.model_name, first["version"])
    assert mv.tags["candidate"] == best["candidate"] and mv.tags["data_fingerprint"] == window.fingerprint
    assert str(mv.status) == "READY"
    model = training.load_model(cfg, first["model_uri"])
    assert training.evaluate(model, window.holdout, cfg)["roc_auc"] == pytest.approx(
        best["metrics"]["roc_auc"]
    )

    other = training.register_best(cfg, results, "0" * 64)
    assert other["reused"] is False and int(other["version"]) == int(first["version"]) + 1

    # ties go to the first candidate by name; NaN never wins
    tied = [
        {"candidate": "zeta", "run_id": results[0]["run_id"], "metrics": {"roc_auc": 0.8}},
        {"candidate": "alpha", "run_id": results[1]["run_id"], "metrics": {"roc_auc": 0.8}},
        {"candidate": "nan", "run_id": results[1]["run_id"], "metrics": {"roc_auc": float("nan")}},
    ]
    assert training.register_best(cfg, tied, "1" * 64)["candidate"] == "alpha"

    c = tracking.client(cfg)
    assert tracking.alias_version(c, cfg.model_name, "champion") is None
    assert tracking.alias_version(c, "no-such-model", "champion") is None
    c.set_registered_model_alias(cfg.model_name, "champion", first["version"])
    assert tracking.alias_version(c, cfg.model_name, "champion") == first["version"]


def test_register_best_without_the_metric_says_which(env):
    with pytest.raises(training.TrainingError, match="reported training.metric 'roc_auc'"):
        training.register_best(env[0], [{"candidate": "a", "run_id": "x", "metrics": {"f1": 0.5}}], "k")


def test_train_key_is_stable_and_sensitive(env, window):
    cfg = env[0]
    specs = training.resolve_candidates(cfg)
    key = training.train_key(window.fingerprint, specs, cfg)
    assert key == training.train_key(window.fingerprint, list(reversed(specs)), cfg)
    assert len(key) == 64
    assert key != training.train_key("sha256:other", specs, cfg)
    assert key != training.train_key(window.fingerprint, specs[:1], cfg)
    reseeded = cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": 1})})
    assert key != training.train_key(window.fingerprint, specs, reseeded)


def test_unreachable_server_is_named(env):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_cfg(env[2], MLOPS_MLFLOW__TRACKING_URI=f"http://127.0.0.1:{port}")
    with pytest.raises(tracking.TrackingUnavailable, match=rf"127.0.0.1:{port} is not reachable.*start it"):
        tracking.check_reachable(cfg, timeout=1)


def test_log_and_register_against_mlflow_server(env, trained, window, mlflow_server):
    cfg = make_cfg(env[2], MLOPS_MLFLOW__TRACKING_URI=mlflow_server)
    assert cfg.artifact_root is None
    spec, model, metrics = trained["logreg"]
    run_id = training.log_candidate(cfg, spec, model, metrics, window, {"dag_id": "train"})
    results = [{"candidate": spec.name, "run_id": run_id, "metrics": metrics}]
    key = training.train_key(window.fingerprint, spec, cfg)
    first = training.register_best(cfg, results, key)
    again = training.register_best(cfg, results, key)
    assert again["version"] == first["version"] and again["reused"] is True
    c = tracking.client(cfg)
    c.set_registered_model_alias(cfg.model_name, "champion", first["version"])
    assert tracking.alias_version(c, cfg.model_name, "champion") == first["version"]
    assert tracking.alias_version(c, cfg.model_name, "nope") is None
    loaded = training.load_model(cfg, f"models:/{cfg.model_name}@champion")
    np.testing.assert_allclose(loaded.predict_proba(window.holdout), model.predict_proba(window.holdout))

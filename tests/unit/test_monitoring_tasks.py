"""Monitoring per ``dataset.task`` on real data: binary (breast cancer), multiclass (wine), regression
(diabetes), each with a small scikit-learn Pipeline fitted here.

The report goes through ``monitoring.report_day``, the call the monitor DAG's drift_report task makes:
the reference is recorded with ``log_reference`` in a real (SQLite) MLflow store, the day's scores are
written with ``write_predictions``, and the numbers land in the MLflow monitoring experiment. Quality is
checked against scikit-learn on the same rows; a shifted batch must be flagged for every task.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_bundle.config import load_config
from mlops_bundle.monitoring import (
    CATEGORICAL_DRIFT,
    NUMERIC_DRIFT,
    MonitoringError,
    build_report,
    log_reference,
    report_day,
    score_batch,
    write_predictions,
)
from mlops_bundle.monitoring.calibration import CalibrationCache, size_bucket
from mlops_bundle.monitoring.drift import QUALITY_METRICS
from mlops_bundle.monitoring.runs import calibration_prefix
from mlops_bundle.monitoring.scoring import class_proba_columns, proba_column
from mlops_bundle.storage import LocalStorage
from mlops_bundle.task_types import TASKS

REPO = Path(__file__).resolve().parents[2]
DATE = "2026-03-01"
# (loader, task, label style): wine twice, with integer labels and with text labels that need sanitising
CASES = {
    "cancer": ("load_breast_cancer", "binary", "int"),
    "wine": ("load_wine", "multiclass", "text"),
    "wine_int": ("load_wine", "multiclass", "int"),
    # labels that sanitise to one text ("a b", "a_b") or to nothing safe at all (高/中/低), and a feature
    # whose name is no valid MLflow metric key ("income ($)")
    "wine_ab": ("load_wine", "multiclass", "ab"),
    "wine_cjk": ("load_wine", "multiclass", "cjk"),
    "diabetes": ("load_diabetes", "regression", "float"),
}


ODD_LABELS = {"ab": ["a b", "a_b", "c"], "cjk": ["高", "中", "低"]}


def _frame(loader: str, style: str) -> tuple[pd.DataFrame, list[str]]:
    """The data set with safe feature names, an id and a timestamp column; target column ``y``."""
    import sklearn.datasets

    X, y = getattr(sklearn.datasets, loader)(return_X_y=True, as_frame=True)
    X = X.rename(columns=lambda c: c.replace(" ", "_"))
    df = X.astype("float64")
    if style == "text":  # "cultivar 0" ... : a space, so the probability columns are sanitised
        y = y.map(lambda v: f"cultivar {v}")
    elif style in ODD_LABELS:
        y = y.map(dict(enumerate(ODD_LABELS[style])))
        X = X.rename(columns={X.columns[0]: "income ($)"})
        df = X.astype("float64")
    df.insert(0, "row_id", np.arange(len(df), dtype="int64"))
    df.insert(1, "ts", pd.date_range("2026-01-01", periods=len(df), freq="h", tz="UTC"))
    df["y"] = y.to_numpy()
    return df, list(X.columns)


def _config(root: Path, name: str, task: str, features: list[str], style: str):
    data = yaml.safe_load((REPO / "config" / "datasets" / "churn.yaml").read_text())
    target_dtype = {"int": "int", "text": "string", "float": "float", "ab": "string", "cjk": "string"}[style]
    data["dataset"] = {
        "name": name,
        "task": task,
        "id_column": "row_id",
        "timestamp_column": "ts",
        "target": "y",
        "columns": [
            {"name": "row_id", "dtype": "int"},
            {"name": "ts", "dtype": "datetime"},
            *({"name": c, "dtype": "float"} for c in features),
            {"name": "y", "dtype": target_dtype},
        ],
    }
    data["storage"]["root_uri"] = str(root / "lake")
    data["mlflow"]["tracking_uri"] = str(root / "mlflow")
    data["mlflow"]["registered_model"] = "{dataset}-{kind}"
    data["validation"]["gx_root"] = str(REPO / "great_expectations")
    data["training"]["metric"] = ""
    data["promotion"]["guard_metrics"] = {}
    data["audit"]["store_uri"] = str(root / "audit.db")
    data["audit"]["gap_dir"] = str(root / "gaps")
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, environ={})


def _fit(task: str, train: pd.DataFrame, features: list[str]):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    est = Ridge() if task == "regression" else LogisticRegression(max_iter=1000)
    return make_pipeline(StandardScaler(), est).fit(train[features], train["y"])


def _shifted(df: pd.DataFrame, train: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Every feature moved by 1.5 reference standard deviations."""
    return df.assign(**{c: df[c] + 1.5 * train[c].std() for c in features})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Per case: config, model, the training half (reference source) and the scored other half."""
    root = tmp_path_factory.mktemp("tasks")
    out = {}
    for name, (loader, task, style) in CASES.items():
        df, features = _frame(loader, style)
        train = df.sample(frac=0.5, random_state=0).sort_index()
        rest = df.drop(train.index)
        cfg = _config(root, name, task, features, style)
        model = _fit(task, train, features)
        out[name] = (cfg, model, train, rest, features)
    return root, out


# ------------------------------------------------------------------------------------------- scoring


def test_scoring_columns_per_task(setup):
    _, cases = setup
    for name, (cfg, model, _train, rest, features) in cases.items():
        task = cfg.dataset.task
        scored = score_batch(model, rest, cfg, chunk_rows=7)  # many chunks: same result as one call
        pd.testing.assert_frame_equal(scored, score_batch(model, rest, cfg), rtol=1e-9)
        slim = score_batch(model, rest, cfg, keep_features=False)
        added = [c for c in slim.columns if c not in ("row_id", "ts")]
        if task == "binary":
            assert added == ["prediction", "prediction_proba"], name
            np.testing.assert_allclose(slim["prediction_proba"], model.predict_proba(rest[features])[:, 1])
        elif task == "multiclass":
            expected = [proba_column(c) for c in model.classes_]
            assert added == ["prediction", *expected] and class_proba_columns(slim) == expected, name
            proba = slim[expected].to_numpy()
            np.testing.assert_allclose(proba, model.predict_proba(rest[features]))
            np.testing.assert_allclose(proba.sum(axis=1), 1.0)
            assert (slim["prediction"].to_numpy() == model.predict(rest[features])).all()
            assert slim["prediction"].dtype == np.asarray(model.classes_).dtype
        else:
            assert added == ["prediction"], name
            assert slim["prediction"].dtype == "float64"
            np.testing.assert_allclose(slim["prediction"], model.predict(rest[features]))
    # a safe label as is; any other sanitised, plus a hash of the label, so the name is one per label
    assert proba_column(2) == "proba__2" and proba_column("a_b") == "proba__a_b"
    assert re.fullmatch(r"proba__cultivar_0_[0-9a-f]{8}", proba_column("cultivar 0"))
    assert re.fullmatch(r"proba__a_b_c_[0-9a-f]{8}", proba_column("a/b:c"))
    odd = ["a b", "a_b", "a/b", "高", "中", "低", "Ä", "Ö", ""]
    assert len({proba_column(v) for v in odd}) == len(odd)


def test_scoring_refuses_what_it_cannot_name_or_fit(setup):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, cases = setup
    cfg, _model, train, rest, features = cases["wine"]
    # two labels whose columns collide: only a label spelled like another's hashed column can do that
    forged = proba_column("a b")[len("proba__") :]
    y = np.where(train["y"] == "cultivar 0", "a b", np.where(train["y"] == "cultivar 1", forged, "c"))
    clashing = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(train[features], y)
    with pytest.raises(
        MonitoringError, match=rf"give the same probability column\(s\) \['{proba_column('a b')}'\]"
    ):
        score_batch(clashing, rest, cfg)
    # a regressor where the config says multiclass
    _, regressor, *_ = cases["diabetes"]
    with pytest.raises(MonitoringError, match="dataset.task is 'multiclass'.*no predict_proba"):
        score_batch(regressor, rest, cfg)


def test_scoring_without_id_and_timestamp_columns(setup):
    """dataset.id_column / timestamp_column may be absent (None): only the scores and features are kept."""
    _, cases = setup
    cfg, model, _train, rest, features = cases["diabetes"]
    ds = cfg.dataset.model_copy(
        update={
            "id_column": None,
            "timestamp_column": None,
            "columns": [c for c in cfg.dataset.columns if c.name not in ("row_id", "ts")],
        }
    )
    bare = cfg.model_copy(update={"dataset": ds})
    scored = score_batch(model, rest.drop(columns=["row_id", "ts"]), bare, keep_features=False)
    assert list(scored.columns) == ["prediction"]
    assert list(score_batch(model, rest, bare).columns) == [*features, "y", "prediction"]


# ------------------------------------------------------------------------------------ reports per task


@pytest.fixture(scope="module")
def days(setup):
    """Each case through the monitor DAG's report call: reference in MLflow, predictions in the lake."""
    from mlops_bundle import tracking

    root, cases = setup
    out = {}
    for name, (cfg, model, train, rest, _features) in cases.items():
        store = LocalStorage(root / "lake")
        client = tracking.client(cfg)
        run_id = client.create_run(tracking.ensure_experiment(cfg)).info.run_id
        log_reference(cfg, client, run_id, model, train)
        scored = score_batch(model, rest, cfg)
        uri = write_predictions(store, cfg, DATE, scored)
        info = {
            "dataset": cfg.dataset.name,
            "date": DATE,
            "champion_version": "1",
            "champion_run_id": run_id,
            "rows_scored": len(scored),
            "rows_rejected": 0,
            "predictions_uri": uri,
            "score_seconds": 0.01,
            "rows_per_second": 1.0,
        }
        out[name] = (report_day(cfg, store, client, info), client, scored)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_report_per_task_through_report_day(setup, days, name):
    from sklearn import metrics as skm

    root, cases = setup
    cfg, model, _train, rest, features = cases[name]
    day, client, scored = days[name]
    r = day.result
    task = cfg.dataset.task
    # files: Evidently's HTML and JSON, our summary
    store = LocalStorage(root / "lake")
    prefix = f"reports/{name}/{DATE}"
    html = store.read_bytes(f"{prefix}/report.html").decode()
    report_json = json.loads(store.read_bytes(f"{prefix}/report.json"))
    summary = json.loads(store.read_bytes(f"{prefix}/summary.json"))
    assert "<html" in html[:500].lower() and report_json["metrics"]
    assert summary["task"] == task and summary["verdict"] == r.verdict
    # same distribution (the other half of the data set): no drift
    assert r.verdict == "no_drift" and not r.prediction_drift["drifted"], r.describe()
    # prediction drift on the task's output
    expected = {
        "binary": ("prediction_proba", "wasserstein"),
        "multiclass": ("prediction", "jensenshannon"),
        "regression": ("prediction", "wasserstein"),
    }[task]
    assert (r.prediction_drift["column"], r.prediction_drift["method"]) == expected
    # its threshold is calibrated for that kind (the cached calibration report_day made), from the floor up
    kind, pinned = {
        "wasserstein": ("numerical", NUMERIC_DRIFT),
        "jensenshannon": ("categorical", CATEGORICAL_DRIFT),
    }[expected[1]]
    cache = CalibrationCache(store, calibration_prefix(cfg, day.scored["champion_run_id"]))
    cal = json.loads(store.read_bytes(cache.key(f"prediction-{size_bucket(len(rest))}")))
    assert cal["kinds"] == {expected[0]: kind} and cal["floors"] == {expected[0]: pinned.threshold}
    assert r.prediction_drift["threshold"] == pytest.approx(cal["thresholds"][expected[0]])
    # quality under the training metrics' names, equal to scikit-learn's on the same rows
    q = r.quality
    assert q is not None and set(q["current"]) <= set(TASKS[task].metrics)
    assert set(q["current"]) == set(QUALITY_METRICS[task].values())
    assert set(q["reference"]) == set(q["current"])
    y = rest["y"].to_numpy()
    cur = q["current"]
    if task == "binary":
        assert cur["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scored["prediction_proba"]), abs=1e-6)
        assert cur["f1"] == pytest.approx(skm.f1_score(y, scored["prediction"]), abs=1e-6)
        assert cur["roc_auc"] > 0.9
    elif task == "multiclass":
        proba = scored[[proba_column(c) for c in model.classes_]].to_numpy()
        pred = scored["prediction"].to_numpy()
        assert cur["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
        assert cur["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
        assert cur["precision_macro"] == pytest.approx(
            skm.precision_score(y, pred, average="macro"), abs=1e-6
        )
        assert cur["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), abs=1e-6)
        assert cur["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=model.classes_), abs=1e-6)
        assert cur["f1_macro"] > 0.9
    else:
        pred = scored["prediction"].to_numpy()
        rmse = skm.root_mean_squared_error(y, pred)
        assert cur["rmse"] > 0 and cur["rmse"] == pytest.approx(rmse, abs=1e-6)
        assert cur["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), abs=1e-6)
        assert cur["r2"] == pytest.approx(skm.r2_score(y, pred), abs=1e-6)
        assert cur["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred), abs=1e-6)
        assert 0.2 < cur["r2"] < 0.8
    # the MLflow monitoring run carries the same names as training: quality.current.<metric>
    run = client.get_run(day.mlflow_run_id)
    assert run.data.tags["task"] == task
    logged = run.data.metrics
    for metric, value in cur.items():
        assert logged[f"quality.current.{metric}"] == pytest.approx(value)
    assert "prediction_drift_score" in logged


def test_odd_labels_and_column_names_get_their_own_columns_and_metric_keys(setup, days, tmp_path):
    """F5/F7: labels 高/中/低 and "a b"/"a_b" get one probability column each (scored and reported above
    like every case); a column MLflow cannot name ("income ($)") is logged under a safe key that the
    run's summary.json maps back to the column."""
    from mlops_bundle.monitoring.runs import metric_key

    _, cases = setup
    for name in ("wine_ab", "wine_cjk"):
        _cfg, model, _train, _rest, _ = cases[name]
        day, client, scored = days[name]
        cols = class_proba_columns(scored)
        assert cols == [proba_column(c) for c in model.classes_] and len(set(cols)) == 3, cols
        assert sorted(map(str, model.classes_)) == sorted(ODD_LABELS[name[len("wine_") :]])
        assert day.result.quality is not None and day.result.quality["current"]["f1_macro"] > 0.9
        run = client.get_run(day.mlflow_run_id)
        key = metric_key("drift.", "income ($)")
        assert re.fullmatch(r"drift\.income ____[0-9a-f]{8}", key)
        score = day.result.summary()["column_scores"]["income ($)"]["score"]
        assert run.data.metrics[key] == pytest.approx(score)
        summary = json.loads(
            Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read_text()
        )
        assert summary["metric_columns"] == {key: "income ($)"}
        assert "income ($)" in summary["column_scores"]
        tmp_path.joinpath("summary.json").unlink()


@pytest.mark.parametrize("name", list(CASES))
def test_shifted_batch_is_flagged_per_task(setup, days, name):
    from mlops_bundle import tracking
    from mlops_bundle.monitoring import load_reference

    _, cases = setup
    cfg, model, train, rest, features = cases[name]
    day, client, _ = days[name]
    reference = load_reference(tracking.client(cfg), day.scored["champion_run_id"])
    shifted = score_batch(model, _shifted(rest, train, features), cfg)
    r = build_report(reference, shifted, cfg)
    assert r.verdict == "drift" and r.dataset_drift, r.describe()
    assert r.drift_share == 1.0 and r.prediction_drift["drifted"], r.describe()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_multiclass_quality_with_a_class_missing_and_partial_labels(setup, days):
    """A class absent from the current labels: Evidently cannot use the probabilities (it fails), so quality
    comes from the labels alone, with a note; partly labeled: quality on the labeled rows, probabilities used."""
    from sklearn import metrics as skm

    from mlops_bundle import tracking
    from mlops_bundle.monitoring import load_reference

    _, cases = setup
    cfg, model, _train, rest, _ = cases["wine"]
    day, *_ = days["wine"]
    reference = load_reference(tracking.client(cfg), day.scored["champion_run_id"])
    scored = score_batch(model, rest, cfg)
    two = scored[scored["y"] != "cultivar 2"]
    r = build_report(reference, two, cfg)
    q = r.quality["current"]
    assert (
        q["roc_auc_ovr"] is None and r.quality["reference"]["roc_auc_ovr"] > 0.9
    )  # undefined without class 2
    assert q["f1_macro"] == pytest.approx(
        skm.f1_score(two["y"], two["prediction"], average="macro"), abs=1e-6
    )
    proba = two[[proba_column(c) for c in model.classes_]].to_numpy()
    assert q["log_loss"] == pytest.approx(skm.log_loss(two["y"], proba, labels=model.classes_), abs=1e-6)
    assert any("classes ['cultivar 2'] have no rows in the current labels" in n for n in r.notes), r.notes

    partial = scored.assign(y=scored["y"].where(np.arange(len(scored)) % 4 != 0))
    r = build_report(reference, partial, cfg)
    lab = partial.dropna(subset=["y"])
    proba = lab[[proba_column(c) for c in model.classes_]].to_numpy()
    assert r.quality["current"]["roc_auc_ovr"] == pytest.approx(
        skm.roc_auc_score(lab["y"], proba, multi_class="ovr"), abs=1e-6
    )
    assert "Classification quality (labeled rows only)" in r.html


def test_regression_report_checks_its_columns(setup, days):
    _, cases = setup
    cfg, model, _train, rest, _ = cases["diabetes"]
    with pytest.raises(
        MonitoringError, match=r"prediction value column 'prediction' \(dataset.task 'regression'\)"
    ):
        build_report(score_batch(model, rest, cfg), rest, cfg)


def test_multiclass_without_probability_columns_uses_the_labels_or_skips(setup, days):
    """Frames without the proba__<label> columns: quality from the labels (macro averages) with 3+ classes;
    with fewer Evidently would compute binary metrics, so quality is skipped, saying why."""
    from sklearn import metrics as skm

    from mlops_bundle import tracking
    from mlops_bundle.monitoring import load_reference

    _, cases = setup
    cfg, model, _train, rest, _ = cases["wine_int"]
    day, *_ = days["wine_int"]
    reference = load_reference(tracking.client(cfg), day.scored["champion_run_id"])
    probas = class_proba_columns(reference)
    scored = score_batch(model, rest, cfg)
    r = build_report(reference.drop(columns=probas), scored.drop(columns=probas), cfg)
    assert set(r.quality["current"]) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
    assert r.quality["current"]["recall_macro"] == pytest.approx(
        skm.recall_score(scored["y"], scored["prediction"], average="macro"), abs=1e-6
    )
    assert any("no per-class probability columns" in n for n in r.notes), r.notes
    two = scored[scored["prediction"] != 2]
    two = two[two["y"] != 2].drop(columns=probas)
    r = build_report(reference.drop(columns=probas), two, cfg)
    assert r.quality is None and "fewer than 3 classes" in r.quality_skipped_reason
    assert r.prediction_drift["method"] == "jensenshannon"

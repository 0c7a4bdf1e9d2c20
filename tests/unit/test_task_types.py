"""Training for every ``dataset.task`` (binary, multiclass, regression) on scikit-learn's bundled data sets,
through the library and a real MLflow store: metrics and their direction, the families of each task,
estimators named by import path (accepted and refused), skops safety, the dedupe of registered versions by
the winning model's own key, and windows of data sets without id/timestamp columns (tests/sk_data.py).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mlops_bundle import training
from mlops_bundle.config import CandidateSpec, ConfigError, load_config
from mlops_bundle.storage import LocalStorage
from mlops_bundle.task_types import TASKS
from tests import sk_data

DAYS = [f"2026-04-{d:02d}" for d in range(1, 7)]
EXTRAS = {"rows", "fit_seconds", "train_rows"}


def setup(tmp_path, name: str, candidates: list[dict], days=DAYS, **kw):
    """(cfg, store, staged rows) of data set ``name`` staged over ``days`` in ``tmp_path``."""
    cfg = load_config(sk_data.write_config(tmp_path, name, candidates, **kw), environ={})
    store = LocalStorage(tmp_path / "lake")
    return cfg, store, sk_data.stage_days(store, cfg, days)


def with_candidates(cfg, candidates: list[dict]):
    specs = [CandidateSpec(**c) for c in candidates]
    return cfg.model_copy(update={"training": cfg.training.model_copy(update={"candidates": specs})})


def fit_all(cfg, window) -> dict[str, tuple]:
    out = {}
    for spec in training.resolve_candidates(cfg):
        model, metrics = training.train_candidate(spec, window, cfg)
        out[spec.name] = (spec, model, metrics)
    return out


REGRESSION = [
    {"name": "ridge", "family": "ridge", "params": {"alpha": 1.0}},
    # so strongly regularised it predicts about the mean: the worse regressor
    {"name": "ridge_flat", "family": "ridge", "params": {"alpha": 100000.0}},
    {"name": "forest", "family": "random_forest_regressor", "params": {"n_estimators": 40, "max_depth": 4}},
    {"name": "hgb", "family": "hist_gradient_boosting_regressor", "params": {"max_iter": 40}},
    {"name": "extra", "estimator": "sklearn.ensemble.ExtraTreesRegressor", "params": {"n_estimators": 40}},
]


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    root = tmp_path_factory.mktemp("diabetes")
    cfg, store, staged = setup(root, "diabetes", REGRESSION)
    window = training.assemble_window(store, cfg, DAYS[-1])
    return cfg, store, window, fit_all(cfg, window), staged


# ------------------------------------------------------------------------------------------- metrics


def test_binary_on_breast_cancer(tmp_path):
    cands = [
        {"name": "logreg", "family": "logistic_regression"},
        {"name": "forest", "family": "random_forest", "params": {"n_estimators": 30}},
    ]
    cfg, store, _ = setup(tmp_path, "cancer", cands)
    assert cfg.training.metric == "roc_auc" and cfg.model_name == "cancer-classifier"
    with pytest.raises(
        training.TrainingError, match=r"names 'ridge', a regression family.*use 'logistic_regression'"
    ):
        training.resolve_candidates(with_candidates(cfg, [{"name": "r", "family": "ridge"}]))
    window = training.assemble_window(store, cfg, DAYS[-1])
    for name, (_, _, metrics) in fit_all(cfg, window).items():
        assert set(metrics) == set(TASKS["binary"].metrics) | EXTRAS | {
            "positive_rate",
            "predicted_positive_rate",
        }
        assert metrics["roc_auc"] > 0.95 and metrics["accuracy"] > 0.85, (name, metrics)


def test_multiclass_on_wine_and_a_missing_class_is_nan_not_a_crash(tmp_path):
    cands = [
        {"name": "logreg", "family": "logistic_regression"},
        {"name": "hgb", "family": "hist_gradient_boosting", "params": {"max_iter": 30}},
        {
            "name": "extra",
            "estimator": "sklearn.ensemble.ExtraTreesClassifier",
            "params": {"n_estimators": 30},
        },
    ]
    cfg, store, _ = setup(tmp_path, "wine", cands)
    assert cfg.training.metric == "f1_macro" and cfg.model_name == "wine-classifier"
    window = training.assemble_window(store, cfg, DAYS[-1])
    trained = fit_all(cfg, window)
    for name, (_, model, metrics) in trained.items():
        assert set(metrics) == set(TASKS["multiclass"].metrics) | EXTRAS, name
        assert list(model.classes_) == [0, 1, 2]
        assert metrics["f1_macro"] > 0.85 and metrics["roc_auc_ovr"] > 0.9, (name, metrics)
        assert 0 < metrics["log_loss"] < math.log(3), (name, metrics)  # better than a uniform guess
    _, model, _ = trained["logreg"]
    two = window.holdout[window.holdout["target"] != 2]
    scored = training.evaluate(model, two, cfg)
    assert math.isnan(scored["roc_auc_ovr"]) and scored["rows"] == len(two)
    assert all(math.isfinite(scored[m]) for m in ("f1_macro", "accuracy", "log_loss", "recall_macro"))
    # a holdout class the model never saw: no probability for it, so no log loss/AUC, still no crash
    unseen = window.holdout.assign(target=window.holdout["target"].where(window.holdout["target"] != 2, 7))
    scored = training.evaluate(model, unseen, cfg)
    assert math.isnan(scored["log_loss"]) and math.isnan(scored["roc_auc_ovr"])
    assert scored["accuracy"] < training.evaluate(model, window.holdout, cfg)["accuracy"]


def test_regression_on_diabetes_and_lower_rmse_wins(regression):
    cfg, _, window, trained, _ = regression
    assert cfg.training.metric == "rmse" and cfg.model_name == "diabetes-regressor"
    y = window.holdout["target"]
    for name, (_, _, metrics) in trained.items():
        assert set(metrics) == set(TASKS["regression"].metrics) | EXTRAS, name
    rmse = {name: m["rmse"] for name, (_, _, m) in trained.items()}
    # the flat model is about as good as predicting the mean; the real ones beat it clearly
    assert rmse["ridge_flat"] == pytest.approx(float(np.sqrt(((y - y.mean()) ** 2).mean())), rel=0.05)
    assert rmse["ridge"] < 0.9 * rmse["ridge_flat"] and trained["ridge"][2]["r2"] > 0.3
    results = [{"candidate": n, "run_id": "", "metrics": m} for n, (_, _, m) in trained.items()]
    _, best = training.select_best(cfg, results)
    assert best["candidate"] == min(rmse, key=rmse.get) != "ridge_flat"
    # the worse regressor loses even when listed first, and NaN never wins a lower-is-better metric
    nan = {"candidate": "aaa", "run_id": "", "metrics": {"rmse": float("nan")}}
    pair = [nan, results[1], results[0]]
    assert training.select_best(cfg, pair)[1]["candidate"] == "ridge"


def test_evaluate_regression_by_hand(regression):
    cfg, _, window, trained, _ = regression
    _, model, metrics = trained["ridge"]
    y, pred = window.holdout["target"].to_numpy(float), model.predict(window.holdout)
    assert metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean((y - pred) ** 2))))
    assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(y - pred))))
    assert metrics["mape"] == pytest.approx(float(np.mean(np.abs(y - pred) / np.abs(y))))


# ------------------------------------------------------------------------------------------- families


def test_classifier_family_on_regression_is_refused_naming_the_field_and_fitting_families(regression):
    cfg = with_candidates(regression[0], [{"name": "lr", "family": "logistic_regression"}])
    with pytest.raises(training.TrainingError) as err:
        training.resolve_candidates(cfg)
    msg = str(err.value)
    assert "candidate 'lr' (training.candidates[].family) names 'logistic_regression'" in msg
    assert "dataset.task is 'regression'" in msg and "use 'ridge' instead" in msg
    assert "['hist_gradient_boosting_regressor', 'random_forest_regressor', 'ridge']" in msg
    assert cfg.source in msg


def test_every_family_fitted_types_are_what_skops_needs(regression, tmp_path):
    """The trust list loading uses (Family.fitted_types) is exactly what a fitted model of each family asks."""
    cfg = regression[0]
    window = regression[2]
    wine_cfg, wine_store, _ = setup(tmp_path, "wine", [{"name": "x", "family": "logistic_regression"}])
    wine_window = training.assemble_window(wine_store, wine_cfg, DAYS[-1])
    for family_name, family in training.FAMILIES.items():
        c, w = (cfg, window) if family.kind == "regression" else (wine_cfg, wine_window)
        small = (
            {"n_estimators": 5}
            if "forest" in family_name
            else {"max_iter": 5}
            if "hist" in family_name
            else {}
        )
        c = with_candidates(c, [{"name": "f", "family": family_name, "params": small}])
        spec = c.training.candidates[0]
        model, _ = training.train_candidate(spec, w, c)
        needed = set(training.check_saveable(spec, model, c))
        assert needed - {"numpy.dtype"} == set(family.fitted_types), family_name


# ------------------------------------------------------------------------------------------- estimators


@pytest.mark.parametrize(
    "candidate, expected",
    [
        ({"estimator": "collections.OrderedDict"}, "not a dotted import path under training.estimator_modules"),
        ({"estimator": "sklearn_evil.Model"}, "not a dotted import path under training.estimator_modules"),
        ({"estimator": "sklearn"}, "not a dotted import path under training.estimator_modules"),
        ({"estimator": "sklearn.ensemble.NoSuchForest"}, "cannot be imported"),
        ({"estimator": "sklearn.metrics.mean_squared_error"}, "is a function, not a class"),
        ({"estimator": "sklearn.ensemble.ExtraTreesClassifier"}, "is a classifier, but dataset.task is 'regression'"),
        ({"estimator": "sklearn.preprocessing.StandardScaler"}, "is not scikit-learn compatible (lacks ['predict'])"),
        ({"estimator": "sklearn.ensemble.StackingRegressor"}, "cannot be built without arguments"),
        ({"estimator": "sklearn.ensemble.ExtraTreesRegressor", "params": {"n_estimators": -3}}, "bad parameter 'n_estimators'"),
        ({"estimator": "sklearn.ensemble.ExtraTreesRegressor", "params": {"n_neighbors": 3}}, "bad parameter 'n_neighbors'"),
    ],
)  # fmt: skip
def test_estimator_import_path_is_refused_before_training(regression, candidate, expected):
    cfg = with_candidates(regression[0], [{"name": "est", **candidate}])
    with pytest.raises(training.TrainingError) as err:
        training.resolve_candidates(cfg)
    msg = str(err.value)
    assert "candidate 'est'" in msg and candidate["estimator"] in msg and expected in msg, msg
    if "estimator_modules" in expected:
        assert "['sklearn.']" in msg and "runs its code" in msg


def test_estimator_outside_the_allowlist_is_never_imported(regression):
    import sys

    cfg = with_candidates(regression[0], [{"name": "est", "estimator": "antigravity.Fly"}])
    with pytest.raises(training.TrainingError, match="not a dotted import path under"):
        training.resolve_candidates(cfg)
    assert "antigravity" not in sys.modules


def test_classifier_without_predict_proba_is_refused_for_a_classification_task(tmp_path):
    cfg, _, _ = setup(tmp_path, "wine", [{"name": "svc", "estimator": "sklearn.svm.SVC"}])
    with pytest.raises(training.TrainingError, match=r"candidate 'svc'.*has no predict_proba"):
        training.resolve_candidates(cfg)
    ok = with_candidates(
        cfg, [{"name": "svc", "estimator": "sklearn.svm.SVC", "params": {"probability": True}}]
    )
    assert [s.name for s in training.resolve_candidates(ok)] == ["svc"]


def test_estimator_modules_widens_the_allowlist_on_whole_segments(tmp_path):
    cfg, _, _ = setup(
        tmp_path,
        "diabetes",
        [{"name": "est", "estimator": "sklearn.ensemble.ExtraTreesRegressor"}],
        estimator_modules=["sklearn.linear_model"],
    )
    with pytest.raises(
        training.TrainingError, match=r"under training.estimator_modules \['sklearn.linear_model'\]"
    ):
        training.resolve_candidates(cfg)
    ok = with_candidates(cfg, [{"name": "est", "estimator": "sklearn.linear_model.Lasso"}])
    assert training.resolve_candidates(ok)[0].estimator == "sklearn.linear_model.Lasso"


def test_estimator_skops_cannot_load_safely_is_refused_unless_its_types_are_listed(regression):
    """KNeighborsRegressor holds a KDTree and a distance metric, neither trusted by skops nor the bundle."""
    cfg, _, window, _, _ = regression
    knn = with_candidates(cfg, [{"name": "knn", "estimator": "sklearn.neighbors.KNeighborsRegressor"}])
    spec = training.resolve_candidates(knn)[0]
    with pytest.raises(training.TrainingError) as err:
        training.train_candidate(spec, window, knn)
    msg = str(err.value)
    assert "candidate 'knn' (sklearn.neighbors.KNeighborsRegressor)" in msg
    assert "'sklearn.neighbors._kd_tree.KDTree'" in msg and "could not be loaded back safely" in msg
    assert "trusted_types" in msg
    # listing them (reviewed, under estimator_modules) makes it trainable, and loading trusts the same list
    types = ["sklearn.metrics._dist_metrics.EuclideanDistance64", "sklearn.neighbors._kd_tree.KDTree"]
    listed = with_candidates(cfg, [{"name": "knn", "estimator": spec.estimator, "trusted_types": types}])
    model, metrics = training.train_candidate(listed.training.candidates[0], window, listed)
    assert math.isfinite(metrics["rmse"])
    assert set(types) <= set(training.trusted_types(listed))
    assert not set(types) & set(training.trusted_types(cfg))


@pytest.mark.parametrize(
    "entry, expected",
    [
        # subprocess.check_output, re-exported by sklearn: trusting it would let a skops file run commands
        ("sklearn.utils._testing.check_output", "is a function, not a class (it is subprocess.check_output)"),
        # a real class, but named through a re-export: skops names types where they are defined
        ("sklearn.neighbors.KDTree", "is the class sklearn.neighbors._kd_tree.KDTree re-exported"),
        ("sklearn.neighbors._kd_tree.NoSuchTree", "cannot be imported"),
    ],
)
def test_trusted_types_must_name_a_class_where_it_is_defined(regression, entry, expected):
    """The config accepts these (its check is on the text, no import at parse time); training and loading
    import each entry and refuse anything but a class defined at that very path."""
    cfg = regression[0]
    types = ["sklearn.neighbors._kd_tree.KDTree", entry]
    bad = with_candidates(
        cfg, [{"name": "knn", "estimator": "sklearn.neighbors.KNeighborsRegressor", "trusted_types": types}]
    )
    for refuse in (training.resolve_candidates, training.trusted_types):
        with pytest.raises(training.TrainingError) as err:
            refuse(bad)
        msg = str(err.value)
        assert f"candidate 'knn': trusted_types entry {entry!r}" in msg and expected in msg, msg
    # load_model refuses before it downloads (or loads) anything: no MLflow is reachable at this URI
    with pytest.raises(training.TrainingError, match="check_output|re-exported|cannot be imported"):
        training.load_model(bad, "models:/nothing-here/1", client=object())
    # the real, defining path is accepted by both
    ok = with_candidates(
        cfg,
        [{"name": "knn", "estimator": "sklearn.neighbors.KNeighborsRegressor", "trusted_types": types[:1]}],
    )
    assert training.resolve_candidates(ok)[0].name == "knn"
    assert "sklearn.neighbors._kd_tree.KDTree" in training.trusted_types(ok)


def test_estimator_must_be_a_class_defined_under_the_allowlist(regression):
    """A public re-export by the class's own package is fine (sklearn.ensemble.X is defined in
    sklearn.ensemble._forest); a class an allowed module imports from elsewhere is not."""
    cfg = regression[0]
    ok = with_candidates(cfg, [{"name": "est", "estimator": "sklearn.ensemble.ExtraTreesRegressor"}])
    assert training.resolve_candidates(ok)[0].estimator == "sklearn.ensemble.ExtraTreesRegressor"
    # sklearn.utils._testing imports collections.defaultdict: a class, but defined outside 'sklearn.'
    foreign = with_candidates(cfg, [{"name": "est", "estimator": "sklearn.utils._testing.defaultdict"}])
    with pytest.raises(training.TrainingError) as err:
        training.resolve_candidates(foreign)
    msg = str(err.value)
    assert "candidate 'est': estimator 'sklearn.utils._testing.defaultdict'" in msg
    assert "is the class collections.defaultdict, defined outside training.estimator_modules" in msg


def test_trusted_types_outside_the_allowlist_and_spec_shape_are_config_errors(tmp_path):
    bad = [
        ({"name": "a", "estimator": "sklearn.svm.SVR", "trusted_types": ["builtins.eval"]}, "outside training.estimator_modules"),
        ({"name": "a", "family": "ridge", "estimator": "sklearn.svm.SVR"}, "exactly one of family"),
        ({"name": "a"}, "exactly one of family"),
        ({"name": "a", "family": "ridge", "trusted_types": ["sklearn.x"]}, "estimator candidates only"),
    ]  # fmt: skip
    for candidate, expected in bad:
        with pytest.raises(ConfigError, match=expected):
            load_config(sk_data.write_config(tmp_path, "diabetes", [candidate]), environ={})


def test_estimator_candidate_is_logged_registered_and_loads_back(regression):
    cfg, _, window, trained, _ = regression
    spec, model, metrics = trained["extra"]
    run_id = training.log_candidate(cfg, spec, model, metrics, window, {"dag_id": "test"})
    from mlops_bundle import tracking

    run = tracking.client(cfg).get_run(run_id)
    assert run.data.params["estimator"] == "sklearn.ensemble.ExtraTreesRegressor"
    assert run.data.tags["estimator"] == spec.estimator and run.data.tags["task"] == "regression"
    import mlflow.models

    signature = mlflow.models.get_model_info(f"runs:/{run_id}/model").signature
    assert signature.outputs.to_dict() == [{"type": "double", "name": "target", "required": True}]
    key = training.model_key(window.fingerprint, spec, cfg)
    out = training.register_best(cfg, [{"candidate": "extra", "run_id": run_id, "metrics": metrics}], key)
    assert out["train_key"] == key
    loaded = training.load_model(cfg, out["model_uri"])
    np.testing.assert_allclose(loaded.predict(window.holdout), model.predict(window.holdout))
    assert training.evaluate(loaded, window.holdout, cfg)["rmse"] == pytest.approx(metrics["rmse"])


# ------------------------------------------------------------------------------------------- dedupe


def test_a_run_with_fewer_candidates_that_picks_the_same_model_reuses_its_version(regression):
    cfg, _, window, trained, _ = regression
    a, b = "hgb", "ridge_flat"  # a wins (lower rmse)
    assert trained[a][2]["rmse"] < trained[b][2]["rmse"]

    def results(names):
        out = []
        for n in names:
            spec, model, metrics = trained[n]
            run_id = training.log_candidate(cfg, spec, model, metrics, window, {"dag_id": "test"})
            key = training.model_key(window.fingerprint, spec, cfg)
            out.append({"candidate": n, "run_id": run_id, "metrics": metrics, "model_key": key})
        return out

    specs = {n: trained[n][0] for n in (a, b)}
    key_ab = training.train_key(window.fingerprint, list(specs.values()), cfg)
    key_a = training.train_key(window.fingerprint, [specs[a]], cfg)
    assert key_ab != key_a  # the run keys differ ...
    first = training.register_best(cfg, results([a, b]), key_ab)
    assert first["reused"] is False and first["candidate"] == a
    assert first["train_key"] == training.model_key(window.fingerprint, specs[a], cfg)
    second = training.register_best(cfg, results([a]), key_a)  # ... the winner's own key does not
    assert (second["version"], second["reused"], second["run_id"]) == (
        first["version"],
        True,
        first["run_id"],
    )
    # the same rerun reuses it too; without model_key in the results the run key decides (as before)
    assert training.register_best(cfg, results([b, a]), key_ab)["version"] == first["version"]
    plain = [{k: v for k, v in r.items() if k != "model_key"} for r in results([a, b])]
    by_run_key = training.register_best(cfg, plain, key_ab)
    assert by_run_key["version"] != first["version"] and by_run_key["train_key"] == key_ab
    assert training.register_best(cfg, plain, key_ab)["version"] == by_run_key["version"]


# ------------------------------------------------------------------------------------------- windows


def test_window_without_id_or_timestamp_splits_by_batch_date_in_file_order(regression):
    cfg, _, window, _, staged = regression
    assert cfg.dataset.id_column is None and cfg.dataset.timestamp_column is None
    sizes = [p["rows"] for p in window.partitions]
    n_hold = len(window.holdout)
    # whole days go to the holdout: the most recent ones, at least holdout_fraction of the rows
    assert n_hold >= math.ceil(0.2 * sum(sizes)) and n_hold in np.cumsum(sizes[::-1])
    hold_days = len(np.cumsum(sizes[::-1])[: list(np.cumsum(sizes[::-1])).index(n_hold) + 1])
    assert window.split_ts == pd.Timestamp(DAYS[-hold_days]).isoformat()
    # rows keep partition date then file order
    pd.testing.assert_frame_equal(window.train, staged.iloc[: len(window.train)].reset_index(drop=True))
    pd.testing.assert_frame_equal(window.holdout, staged.iloc[len(window.train) :].reset_index(drop=True))
    assert cfg.dataset.feature_columns == [c for c in staged.columns if c != "target"]


def test_window_with_timestamp_and_id_still_sorts_by_time_then_id(tmp_path):
    cfg, store, _ = setup(tmp_path, "diabetes", REGRESSION[:1], id_column=True, timestamp_column=True)
    window = training.assemble_window(store, cfg, DAYS[-1])
    both = pd.concat([window.train, window.holdout], ignore_index=True)
    assert both["event_ts"].is_monotonic_increasing
    assert window.train["event_ts"].max() < pd.Timestamp(window.split_ts) <= window.holdout["event_ts"].min()
    assert "row_id" not in cfg.dataset.feature_columns and "event_ts" not in cfg.dataset.feature_columns


def test_window_with_id_only_orders_each_batch_by_id(tmp_path):
    cfg, store, _ = setup(tmp_path, "diabetes", REGRESSION[:1], id_column=True)
    window = training.assemble_window(store, cfg, DAYS[-1])
    ids = pd.concat([window.train, window.holdout], ignore_index=True)["row_id"]
    # ids count down in each file and from day to day: sorted within each batch date, days in date order
    starts = np.cumsum([0] + [p["rows"] for p in window.partitions])
    for lo, hi in zip(starts[:-1], starts[1:], strict=True):
        assert ids.iloc[lo:hi].is_monotonic_increasing
    assert (ids.diff() < 0).sum() == len(window.partitions) - 1


def test_window_of_one_batch_date_without_timestamp_has_nothing_to_train_on(tmp_path):
    cfg, store, _ = setup(tmp_path, "diabetes", REGRESSION[:1], days=DAYS[:1])
    with pytest.raises(training.TrainingError, match=r"every row has the batch date .* >= 2026-04-01.*widen"):
        training.assemble_window(store, cfg, DAYS[0])


def test_constant_regression_target_is_refused(tmp_path):
    cfg, store, _ = setup(tmp_path, "diabetes", REGRESSION[:1])
    store2 = LocalStorage(tmp_path / "lake2")
    flat = sk_data.frame("diabetes").assign(target=100.0)
    sk_data.stage_days(store2, cfg, DAYS, flat)
    with pytest.raises(training.TrainingError) as err:
        training.assemble_window(store2, cfg, DAYS[-1])
    assert "the single value 100.0 for target 'target'" in str(err.value)
    assert "a regressor needs a target that varies" in str(err.value)


def test_binary_task_with_three_classes_points_at_multiclass(tmp_path):
    cfg, store, _ = setup(tmp_path, "wine", [{"name": "x", "family": "logistic_regression"}])
    binary = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"task": "binary"})})
    with pytest.raises(
        training.TrainingError, match=r"'binary' needs exactly two; set dataset.task: multiclass"
    ):
        training.assemble_window(store, binary, DAYS[-1])


def test_dataset_config_roles(tmp_path):
    path = sk_data.write_config(tmp_path, "diabetes", REGRESSION[:1], timestamp_column=True)
    text = path.read_text().replace("dtype: datetime", "dtype: int")
    path.write_text(text)
    with pytest.raises(ConfigError, match="timestamp_column 'event_ts' must have dtype 'datetime'"):
        load_config(path, environ={})
    path = sk_data.write_config(tmp_path, "wine", [{"name": "x", "family": "ridge"}])
    path.write_text(
        path.read_text()
        .replace("task: multiclass", "task: regression")
        .replace("name: target\n    dtype: int", "name: target\n    dtype: string")
    )
    with pytest.raises(ConfigError, match="task 'regression' needs a numeric target"):
        load_config(path, environ={})


def test_score_column_names_are_reserved(tmp_path):
    """F5: a column named like a score (proba__<x>, prediction, prediction_proba) is refused by the config,
    naming it: scoring would overwrite it, and monitoring would read proba__x as a class probability."""
    for reserved in ("proba__x", "prediction", "prediction_proba"):
        path = sk_data.write_config(tmp_path, "wine", [{"name": "x", "family": "logistic_regression"}])
        text = path.read_text()
        first = text.split("- name: ", 2)[1].split("\n", 1)[0]  # the first declared column
        path.write_text(text.replace(f"- name: {first}\n", f"- name: {reserved}\n", 1))
        with pytest.raises(
            ConfigError, match=rf"column\(s\) \['{reserved}'\] take a name reserved for the scores"
        ):
            load_config(path, environ={})


def test_multiclass_labels_sharing_a_probability_column_are_refused_at_training(tmp_path):
    """F5: only a label spelled like another label's hashed column collides; training refuses it (before a
    model that could never be monitored is registered), naming both labels and the column."""
    from mlops_bundle.features import proba_column
    from mlops_bundle.training.window import _check_classes

    cfg = load_config(sk_data.write_config(tmp_path, "wine", [{"name": "x", "family": "ridge"}]), environ={})
    target = cfg.dataset.target
    _check_classes(pd.DataFrame({target: ["高", "中", "低", "a b", "a_b"]}), cfg, "the train set")
    forged = proba_column("a b")[len("proba__") :]
    with pytest.raises(training.TrainingError) as err:
        _check_classes(pd.DataFrame({target: ["a b", forged, "c"]}), cfg, "the train set")
    msg = str(err.value)
    assert f"the classes ['a b', '{forged}'] of {target!r}" in msg and proba_column("a b") in msg, msg

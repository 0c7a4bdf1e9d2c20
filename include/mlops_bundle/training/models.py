"""Model families, candidate pipelines, fitting and the holdout score.

:func:`resolve_candidates` turns ``training.candidates`` into checked specs (unknown family, unknown
candidate name and bad hyper-parameters are refused before any data is read). :func:`train_candidate` fits
one sklearn Pipeline (imputation + scaling/one-hot + estimator) and scores it on the holdout with
:func:`evaluate`; the promotion gate uses the same function to score the champion on the challenger's
holdout. scikit-learn is imported inside the functions that need it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlops_bundle.config import BundleConfig, CandidateSpec
from mlops_bundle.features import feature_types, positive_class_index, predict_positive
from mlops_bundle.task_types import task_type
from mlops_bundle.training.window import TrainingError, Window

log = logging.getLogger(__name__)

# Bump when the way pipelines are built changes: it is part of train_key, so a rerun after such a change
# registers a new version instead of reusing one built the old way.
PIPELINE_VERSION = 1


@dataclass(frozen=True)
class Family:
    """A model family a candidate can name: which estimator, how its numeric inputs are prepared."""

    estimator: str  # dotted path of the sklearn estimator class
    scale_numeric: bool  # linear models need standardised inputs; trees do not care
    dense: bool = False  # the estimator refuses sparse input (HistGradientBoosting)
    defaults: dict[str, Any] = field(default_factory=dict)
    # types a fitted estimator of this family holds beyond skops' defaults: what loading must trust
    # (tests/unit/test_loading.py checks this list against a fitted model of every family)
    fitted_types: tuple[str, ...] = ()
    # the kind of task it fits: "classification" (binary, multiclass) or "regression" (TaskType.evidently_kind)
    kind: str = "classification"

    def make(self, params: dict[str, Any], seed: int):
        """A fresh, unfitted estimator with defaults < params, seeded when it takes a random_state."""
        module, _, cls = self.estimator.rpartition(".")
        est = getattr(importlib.import_module(module), cls)()
        merged = {**self.defaults, **params}
        if "random_state" in est.get_params() and "random_state" not in params:
            merged["random_state"] = seed
        est.set_params(**merged)
        return est


_TREE = ("sklearn.tree._tree.Tree",)
_HIST_TREE = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
FAMILIES: dict[str, Family] = {
    # lbfgs needs more than the default 100 iterations on one-hot + scaled data of this size
    "logistic_regression": Family(
        "sklearn.linear_model.LogisticRegression", scale_numeric=True, defaults={"max_iter": 2000}
    ),
    "random_forest": Family(
        "sklearn.ensemble.RandomForestClassifier", scale_numeric=False, fitted_types=_TREE
    ),
    "hist_gradient_boosting": Family(
        "sklearn.ensemble.HistGradientBoostingClassifier",
        scale_numeric=False,
        dense=True,
        fitted_types=_HIST_TREE,
    ),
    # the regression counterparts (dataset.task: regression)
    "ridge": Family("sklearn.linear_model.Ridge", scale_numeric=True, kind="regression"),
    "random_forest_regressor": Family(
        "sklearn.ensemble.RandomForestRegressor", scale_numeric=False, fitted_types=_TREE, kind="regression"
    ),
    "hist_gradient_boosting_regressor": Family(
        "sklearn.ensemble.HistGradientBoostingRegressor",
        scale_numeric=False,
        dense=True,
        fitted_types=_HIST_TREE,
        kind="regression",
    ),
}
# what to name instead when a family of the other kind is configured (named in the refusal)
COUNTERPARTS = {
    "logistic_regression": "ridge",
    "random_forest": "random_forest_regressor",
    "hist_gradient_boosting": "hist_gradient_boosting_regressor",
}
COUNTERPARTS.update({v: k for k, v in COUNTERPARTS.items()})
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _where(cfg: BundleConfig) -> str:
    return f"training.candidates in {cfg.source or 'the config file'}"


def families_for(cfg: BundleConfig) -> list[str]:
    """The built-in family names that fit ``dataset.task``."""
    kind = task_type(cfg.dataset.task).evidently_kind
    return sorted(n for n, f in FAMILIES.items() if f.kind == kind)


def import_class(path: str, cfg: BundleConfig, what: str, *, exact: bool) -> type:
    """The class ``path`` names, after checking it may be imported and is what it claims to be.

    ``path`` must be a dotted name under ``training.estimator_modules`` (checked on the text, before any
    import: importing a module runs its code). The object must be a class whose own name is the last
    segment and which is *defined* under ``estimator_modules`` (its ``__module__``), so a function or a
    foreign class that an allowed module merely re-exports (``sklearn.utils._testing.check_output`` is
    ``subprocess.check_output``) is refused. With ``exact`` (skops trusted types, which skops names by
    where the type is defined) ``path`` must be the class's ``__module__.__qualname__`` itself; without it
    (an estimator) a public re-export of the same class by its own package (``sklearn.ensemble.X`` for
    ``sklearn.ensemble._forest.X``) is accepted. ``what`` starts the TrainingError message.
    """
    allowed = cfg.training.estimator_modules
    if not _DOTTED.fullmatch(path) or not cfg.training.module_allowed(path):
        raise TrainingError(
            f"{what} {path!r} is not a dotted import path under training.estimator_modules {allowed} "
            f"(importing a module runs its code, so only those modules are allowed); fix {_where(cfg)} or, if "
            "you trust that library, add its prefix there"
        )
    module, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise TrainingError(f"{what} {path!r} cannot be imported ({exc}); fix {_where(cfg)}") from None
    if not inspect.isclass(obj):
        raise TrainingError(
            f"{what} {path!r} is a {type(obj).__name__}, not a class (it is {_defined_as(obj)}); name a class "
            f"defined under training.estimator_modules in {_where(cfg)}"
        )
    defined = _defined_as(obj)
    if exact and defined != path:
        raise TrainingError(
            f"{what} {path!r} is the class {defined} re-exported under another name: name it where it is "
            f"defined ({defined!r}, if that is under training.estimator_modules {allowed}) in {_where(cfg)}"
        )
    if obj.__qualname__ != name or not cfg.training.module_allowed(obj.__module__):
        raise TrainingError(
            f"{what} {path!r} is the class {defined}, defined outside training.estimator_modules {allowed} or "
            f"under another name (an allowed module re-exports it); name a class defined under those modules "
            f"in {_where(cfg)}"
        )
    return obj


def _defined_as(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def check_trusted_types(spec: CandidateSpec, cfg: BundleConfig) -> None:
    """Each of an estimator candidate's ``trusted_types`` names a real class where it says it is defined
    (:func:`import_class` with ``exact``): skops instantiates what the list trusts, so a function or a
    re-exported alias there would make loading run whatever it is. TrainingError naming the entry."""
    for entry in spec.trusted_types:
        import_class(entry, cfg, f"candidate {spec.name!r}: trusted_types entry", exact=True)


def _estimator_family(spec: CandidateSpec, cfg: BundleConfig) -> Family:
    """A :class:`Family` for a candidate naming an estimator by import path, after checking the path
    (:func:`import_class`) and its ``trusted_types`` (:func:`check_trusted_types`)."""
    path = str(spec.estimator)
    cls = import_class(path, cfg, f"candidate {spec.name!r}: estimator", exact=False)
    check_trusted_types(spec, cfg)
    try:
        from sklearn.base import is_classifier, is_regressor

        probe = cls()
        classifier, regressor = is_classifier(probe), is_regressor(probe)
    except Exception as exc:  # noqa: BLE001 - any failure to build it bare is the config's problem
        raise TrainingError(
            f"candidate {spec.name!r}: estimator {path!r} cannot be built without arguments ({exc}); "
            f"name an estimator whose required settings all have defaults in {_where(cfg)}"
        ) from None
    task = task_type(cfg.dataset.task)
    missing = [
        m for m in ("get_params", "set_params", "fit", "predict") if not callable(getattr(probe, m, None))
    ]
    if missing:
        raise TrainingError(
            f"candidate {spec.name!r}: estimator {path!r} is not scikit-learn compatible (lacks {missing}); "
            f"fix {_where(cfg)}"
        )
    if task.is_classification and not classifier or not task.is_classification and not regressor:
        what = (
            "classifier" if classifier else "regressor" if regressor else "neither classifier nor regressor"
        )
        raise TrainingError(
            f"candidate {spec.name!r}: estimator {path!r} is a {what}, but dataset.task is {task.name!r} "
            f"(needs a {task.model_kind}); fix {_where(cfg)}"
        )
    return Family(path, scale_numeric=True, dense=True, kind=task.evidently_kind)


def _family(spec: CandidateSpec, cfg: BundleConfig) -> Family:
    if spec.estimator:
        return _estimator_family(spec, cfg)
    fam = FAMILIES.get(str(spec.family))
    task = task_type(cfg.dataset.task)
    if fam is None:
        raise TrainingError(
            f"candidate {spec.name!r} names unknown model family {spec.family!r}; known families for task "
            f"{task.name!r}: {families_for(cfg)} (or name an estimator by import path); fix {_where(cfg)}"
        )
    if fam.kind != task.evidently_kind:
        instead = COUNTERPARTS.get(str(spec.family))
        raise TrainingError(
            f"candidate {spec.name!r} (training.candidates[].family) names {spec.family!r}, a "
            f"{fam.kind} family, but dataset.task is {task.name!r}; families for it: {families_for(cfg)}"
            + (f" (use {instead!r} instead)" if instead else "")
            + f"; fix {_where(cfg)}"
        )
    return fam


def build_estimator(spec: CandidateSpec, cfg: BundleConfig):
    """The candidate's unfitted estimator; TrainingError naming the parameter if a param is wrong.

    Checks names (set_params) and values (sklearn's own parameter constraints) now, so a typo in the
    config fails in seconds instead of after the data has been read.
    """
    fam = _family(spec, cfg)
    try:
        est = fam.make(dict(spec.params), cfg.training.seed)
        validate = getattr(est, "_validate_params", None)  # sklearn's declared constraints, if any
        if validate is not None:
            validate()
    except (ValueError, TypeError) as exc:
        bad = [p for p in spec.params if f"'{p}'" in str(exc)]
        which = f"parameter {bad[0]!r}" if bad else f"params {dict(spec.params)}"
        kind = f"family {spec.family!r}" if spec.family else f"estimator {spec.estimator!r}"
        raise TrainingError(
            f"candidate {spec.name!r} ({kind}) has a bad {which}: {exc}; fix {_where(cfg)}"
        ) from None
    if task_type(cfg.dataset.task).probabilistic and not callable(getattr(est, "predict_proba", None)):
        raise TrainingError(
            f"candidate {spec.name!r}: {spec.model!r} with params {dict(spec.params)} has no predict_proba, "
            f"which task {cfg.dataset.task!r} needs (its metrics score probabilities); fix {_where(cfg)}"
        )
    return est


def build_pipeline(spec: CandidateSpec, cfg: BundleConfig):
    """Preprocessing + estimator as one sklearn Pipeline, so the logged model takes raw feature columns.

    Categorical columns arrive as pandas ``category`` (staging) or plain object strings (scoring input);
    SimpleImputer + OneHotEncoder treat both alike, and ``handle_unknown="ignore"`` maps categories the
    model never saw to all zeros instead of failing a scoring run.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    fam = _family(spec, cfg)
    estimator = build_estimator(spec, cfg)
    numeric, categorical, _ = feature_types(cfg)
    num_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if fam.scale_numeric:
        num_steps.append(("scale", StandardScaler()))
    cat_steps = [
        ("impute", SimpleImputer(strategy="most_frequent")),
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=not fam.dense)),
    ]
    transformers = []
    if numeric:
        transformers.append(("num", Pipeline(num_steps), numeric))
    if categorical:
        transformers.append(("cat", Pipeline(cat_steps), categorical))
    if not transformers:
        raise TrainingError(
            f"data set {cfg.dataset.name!r} has no usable feature columns (int/float/category/string/bool) "
            f"besides id, timestamp and target; declare them in dataset.columns of {cfg.source}"
        )
    prep = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0 if fam.dense else 0.3)
    return Pipeline([("prep", prep), ("model", estimator)])


def resolve_candidates(cfg: BundleConfig, names: list[str] | None = None) -> list[CandidateSpec]:
    """The configured candidates (or the named subset, in the given order), each checked to build.

    Why up front: the train DAG maps one task per candidate; a wrong name, family or parameter should
    fail the first task with a message pointing at the config, not N mapped tasks half way through.
    """
    configured = list(cfg.training.candidates)
    where = cfg.source or "the config file"
    if not configured:
        raise TrainingError(f"no candidates configured: add at least one to training.candidates in {where}")
    if names:
        by_name = {c.name: c for c in configured}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise TrainingError(
                f"unknown candidate name(s) {unknown}; configured candidates: {sorted(by_name)} "
                f"(training.candidates in {where})"
            )
        chosen = [by_name[n] for n in dict.fromkeys(names)]
    else:
        chosen = configured
    for spec in chosen:
        build_estimator(spec, cfg)
    return chosen


def _model_features(model, cfg: BundleConfig) -> list[str]:
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return [str(c) for c in names]
    numeric, categorical, _ = feature_types(cfg)
    return numeric + categorical


def model_input(df: pd.DataFrame, cfg: BundleConfig) -> pd.DataFrame:
    """The feature columns of ``df`` as a logged model's pyfunc flavor accepts them.

    Why: pyfunc enforces the signature, and MLflow 3.17 refuses pandas ``category`` columns for a
    ``string`` input ("Can not safely convert category to <U0"); staging frames have category dtype.
    The sklearn flavor (:func:`~mlops_bundle.training.registry.load_model`) takes either.
    """
    numeric, categorical, _ = feature_types(cfg)
    out = df[numeric + categorical].copy()
    for col in categorical:
        if isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(object)
    return out


def evaluate(model, df: pd.DataFrame, cfg: BundleConfig) -> dict[str, float]:
    """Score a fitted model on ``df`` with the metrics of ``dataset.task`` (``task_types.TASKS``) + ``rows``.

    - binary: roc_auc, f1, precision, recall, accuracy, log_loss (``features.THRESHOLD`` on the
      positive-class probability), positive_rate (share of actual positives), predicted_positive_rate;
      roc_auc/log_loss are NaN when ``df`` has one class only;
    - multiclass: f1_macro, accuracy, log_loss (over the model's classes), precision_macro, recall_macro,
      roc_auc_ovr; the last is NaN unless every class of the model occurs in ``df``, log_loss/roc_auc_ovr
      NaN when ``df`` holds a class the model never saw;
    - regression: rmse, mae, r2 (NaN below two rows), mape.

    The promotion gate calls this on the challenger's holdout for both models, so they are compared on
    identical rows with identical code.
    """
    target = cfg.dataset.target
    features = _model_features(model, cfg)
    missing = [c for c in features + [target] if c not in df.columns]
    if missing:
        raise TrainingError(
            f"evaluation data lacks column(s) {missing} that the model/config needs; "
            f"it has {list(df.columns)}"
        )
    task = task_type(cfg.dataset.task)
    X, y = df[features], df[target].to_numpy()
    if task.name == "regression":
        out = _regression_metrics(model.predict(X), y)
    elif task.name == "multiclass":
        out = _multiclass_metrics(model, X, y, cfg)
    else:
        out = _binary_metrics(model, X, y, cfg)
    out["rows"] = float(len(df))
    return out


def _binary_metrics(model, X: pd.DataFrame, y_raw: np.ndarray, cfg: BundleConfig) -> dict[str, float]:
    from sklearn import metrics as skm

    classes = list(model.classes_)
    try:
        pos = positive_class_index(classes)
    except ValueError as exc:
        raise TrainingError(
            f"{exc}: target {cfg.dataset.target!r} must have exactly two classes for dataset.task 'binary' "
            f"(use 'multiclass' for more); check the window's data and dataset.task in {cfg.source or 'the config'}"
        ) from None
    proba = model.predict_proba(X)[:, pos]
    y = (y_raw == classes[pos]).astype(int)
    pred = predict_positive(proba)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(skm.roc_auc_score(y, proba)) if both else float("nan"),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "log_loss": float(skm.log_loss(y, proba, labels=[0, 1])) if both else float("nan"),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "predicted_positive_rate": float(pred.mean()) if len(pred) else float("nan"),
    }


def _multiclass_metrics(model, X: pd.DataFrame, y: np.ndarray, cfg: BundleConfig) -> dict[str, float]:
    from sklearn import metrics as skm

    classes = np.asarray(model.classes_)
    if len(classes) < 2:
        raise TrainingError(
            f"the model knows {len(classes)} class(es) of {cfg.dataset.target!r}; dataset.task 'multiclass' "
            "needs at least two: widen the training window"
        )
    proba = np.asarray(model.predict_proba(X))
    pred = classes[proba.argmax(axis=1)] if len(proba) else np.asarray([], dtype=classes.dtype)
    nan = float("nan")
    seen = set(np.unique(y).tolist()) if len(y) else set()
    known = set(classes.tolist())
    out = {
        "f1_macro": float(skm.f1_score(y, pred, average="macro", zero_division=0)) if len(y) else nan,
        "accuracy": float(skm.accuracy_score(y, pred)) if len(y) else nan,
        "precision_macro": float(skm.precision_score(y, pred, average="macro", zero_division=0))
        if len(y)
        else nan,
        "recall_macro": float(skm.recall_score(y, pred, average="macro", zero_division=0)) if len(y) else nan,
        # a holdout class the model never saw has no probability column: no log loss or AUC
        "log_loss": float(skm.log_loss(y, proba, labels=classes)) if len(y) and seen <= known else nan,
        # one-vs-rest AUC is undefined for a class with no holdout rows
        "roc_auc_ovr": float(skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
        if seen == known
        else nan,
    }
    return out


def _regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    nan = float("nan")
    y = y.astype("float64")
    pred = np.asarray(pred, dtype="float64")
    if not len(y):
        return {"rmse": nan, "mae": nan, "r2": nan, "mape": nan}
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)) if len(y) >= 2 else nan,
        "mape": float(skm.mean_absolute_percentage_error(y, pred)),
    }


def train_candidate(spec: CandidateSpec, window: Window, cfg: BundleConfig) -> tuple[Any, dict[str, float]]:
    """Fit the candidate's pipeline on ``window.train`` and score it on ``window.holdout``.

    The fitted pipeline must be one the bundle can save and load back safely with skops (TrainingError
    otherwise, see :func:`~mlops_bundle.training.runs.check_saveable`). Returns (fitted Pipeline, metrics); metrics also carry fit_seconds and train_rows. Convergence
    warnings are logged, not raised: a slightly under-converged model is still judged by its holdout score.
    """
    from sklearn.exceptions import ConvergenceWarning

    pipe = build_pipeline(spec, cfg)
    numeric, categorical, dropped = feature_types(cfg)
    if dropped:
        log.info("dropping datetime feature column(s) %s (see feature_types)", dropped)
    features = numeric + categorical
    X, y = window.train[features], window.train[cfg.dataset.target]
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        pipe.fit(X, y)
    fit_s = time.perf_counter() - t0
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            log.warning("candidate %s: %s", spec.name, w.message)
    from mlops_bundle.training.runs import check_saveable  # runs imports this module

    check_saveable(spec, pipe, cfg)
    metrics = evaluate(pipe, window.holdout, cfg)
    metrics.update({"fit_seconds": round(fit_s, 3), "train_rows": float(len(window.train))})
    log.info(
        "candidate %s (%s): fit %d rows in %.2fs, holdout %s=%.4f",
        spec.name,
        spec.model,
        len(X),
        fit_s,
        cfg.training.metric,
        metrics.get(cfg.training.metric, float("nan")),
    )
    return pipe, metrics

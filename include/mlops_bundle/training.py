"""Training: validated partitions -> a time-split window -> candidate pipelines -> MLflow runs -> one version.

The stage in five calls, each usable from its own Airflow task (possibly on different workers):

1. :func:`assemble_window` reads every validated partition (one with a manifest) of the training window
   and splits it *by time*: the most recent ``training.holdout_fraction`` of rows is the holdout, never
   trained on, so the score is what the model would have scored on the days that followed its data.
   :func:`save_window`/:func:`load_window` hand it between tasks as Parquet under ``work/`` in the store
   and a small JSON-safe dict through XCom.
2. :func:`resolve_candidates` turns ``training.candidates`` into checked specs (unknown family, unknown
   candidate name and bad hyper-parameters are refused before any data is read).
3. :func:`train_candidate` fits one sklearn Pipeline (imputation + scaling/one-hot + estimator) and
   scores it on the holdout with :func:`evaluate` (the promotion gate uses the same function to score the
   champion on the challenger's holdout).
4. :func:`log_candidate` records the run: params, metrics, lineage tags (data fingerprint, git commit,
   lock file hash, Airflow ids), the two datasets, and the model.
5. :func:`register_best` registers the best run as a version of the registered model, idempotently:
   a rerun with the same :func:`train_key` returns the existing version instead of adding a duplicate.

Nothing here imports Airflow; MLflow and scikit-learn are imported inside the functions that need them.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import importlib
import importlib.metadata
import io
import json
import logging
import math
import re
import subprocess
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_bundle import tracking
from mlops_bundle.config import PROJECT_ROOT, BundleConfig, CandidateSpec
from mlops_bundle.features import feature_types, positive_class_index, predict_positive
from mlops_bundle.ingest import MANIFEST_FILE, parse_date
from mlops_bundle.storage import Storage, join

log = logging.getLogger(__name__)

# skops finds a type's module by getattr() on every loaded module; Airflow's modules answer that with one
# "The `airflow.utils.x.<name>` attribute is deprecated" warning per name, >1,000 lines per training task log
warnings.filterwarnings("ignore", module=r"skops\.io\._utils")

# Bump when the way pipelines are built changes: it is part of train_key, so a rerun after such a change
# registers a new version instead of reusing one built the old way.
PIPELINE_VERSION = 1
MODEL_ARTIFACT = "model"
# skops (MLflow 3's default) is safe to load without executing pickled code paths and needs no
# cloudpickle of our own modules; see log_candidate for why it works here and what it does not protect.
SERIALIZATION_FORMAT = "skops"
_DS_RE = re.compile(r"ds=(\d{4}-\d{2}-\d{2})/" + re.escape(MANIFEST_FILE) + "$")


class TrainingError(ValueError):
    """Training cannot proceed; the message names the window/candidate/family/column and what to do."""


# ---------------------------------------------------------------- model families


@dataclass(frozen=True)
class Family:
    """A model family a candidate can name: which estimator, how its numeric inputs are prepared."""

    estimator: str  # dotted path of the sklearn classifier
    scale_numeric: bool  # linear models need standardised inputs; trees do not care
    dense: bool = False  # the estimator refuses sparse input (HistGradientBoosting)
    defaults: dict[str, Any] = field(default_factory=dict)

    def make(self, params: dict[str, Any], seed: int):
        """A fresh, unfitted estimator with defaults < params, seeded when it takes a random_state."""
        module, _, cls = self.estimator.rpartition(".")
        est = getattr(importlib.import_module(module), cls)()
        merged = {**self.defaults, **params}
        if "random_state" in est.get_params() and "random_state" not in params:
            merged["random_state"] = seed
        est.set_params(**merged)
        return est


FAMILIES: dict[str, Family] = {
    # lbfgs needs more than the default 100 iterations on one-hot + scaled data of this size
    "logistic_regression": Family(
        "sklearn.linear_model.LogisticRegression", scale_numeric=True, defaults={"max_iter": 2000}
    ),
    "random_forest": Family("sklearn.ensemble.RandomForestClassifier", scale_numeric=False),
    "hist_gradient_boosting": Family(
        "sklearn.ensemble.HistGradientBoostingClassifier", scale_numeric=False, dense=True
    ),
}


def _family(spec: CandidateSpec, cfg: BundleConfig) -> Family:
    fam = FAMILIES.get(spec.family)
    if fam is None:
        raise TrainingError(
            f"candidate {spec.name!r} names unknown model family {spec.family!r}; known families: "
            f"{sorted(FAMILIES)}; fix training.candidates in {cfg.source or 'the config file'}"
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
        raise TrainingError(
            f"candidate {spec.name!r} (family {spec.family!r}) has a bad {which}: {exc}; fix "
            f"training.candidates in {cfg.source or 'the config file'}"
        ) from None
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


# ---------------------------------------------------------------- the training window


@dataclass
class Window:
    """The data of one training run: train and holdout frames split by time, plus where they came from.

    ``split_ts`` is the ISO timestamp of the boundary: every holdout row has ``timestamp >= split_ts``
    and every train row ``timestamp < split_ts``. ``fingerprint`` identifies the window's input data.
    ``train_uri``/``holdout_uri`` are set once the window was saved with :func:`save_window`.
    """

    train: pd.DataFrame
    holdout: pd.DataFrame
    partitions: list[dict[str, Any]]
    fingerprint: str
    start: str
    end: str
    split_ts: str
    train_uri: str | None = None
    holdout_uri: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (no frames) for logs, XCom and MLflow."""
        return {
            "start": self.start,
            "end": self.end,
            "split_ts": self.split_ts,
            "fingerprint": self.fingerprint,
            "train_rows": int(len(self.train)),
            "holdout_rows": int(len(self.holdout)),
            "partitions": self.partitions,
        }


def window_fingerprint(partitions: Iterable[dict[str, Any]]) -> str:
    """sha256 over the partitions' (date, fingerprint) pairs sorted by date.

    The date is included so that the same batch staged under another date is a different window.
    """
    lines = sorted(f"{p['date']}={p['fingerprint']}" for p in partitions)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _dates(end_date: str, window_days: int) -> tuple[dt.date, dt.date]:
    end = dt.date.fromisoformat(parse_date(end_date))
    if window_days < 1:
        raise TrainingError(f"window_days must be at least 1, got {window_days}")
    return end - dt.timedelta(days=window_days - 1), end


def _read_parquet(store: Storage, key: str) -> pd.DataFrame:
    path = store.local_path(key)
    if path is not None:
        return pq.read_table(path).to_pandas()
    return pq.read_table(io.BytesIO(store.read_bytes(key))).to_pandas()


def _check_classes(df: pd.DataFrame, cfg: BundleConfig, what: str) -> None:
    target = cfg.dataset.target
    classes = df[target].dropna().unique().tolist()
    if len(classes) < 2:
        only = f"only class {classes[0]}" if len(classes) else "no labelled rows"
        raise TrainingError(
            f"{what} contains {only} of {target!r} ({len(df)} rows): a classifier needs both classes; "
            "widen the window (training.window_days or the window_days param) or ingest more days"
        )


def assemble_window(
    store: Storage, cfg: BundleConfig, end_date: str, window_days: int | None = None
) -> Window:
    """Read the validated partitions for dates in (end_date - window_days, end_date] and split by time.

    Only partitions with a manifest count: ingest writes the manifest last, so a half-written or
    quarantined batch is never trained on. The holdout is the most recent ``holdout_fraction`` of rows by
    ``dataset.timestamp_column``; rows sharing the boundary timestamp all go to the holdout so no instant
    is on both sides. Raises TrainingError for an empty window, too few rows, or a side with one class.
    """
    days = window_days or cfg.training.window_days
    start, end = _dates(end_date, days)
    base = join(cfg.storage.staging_prefix, cfg.dataset.name)
    base_uri = store.uri(base)
    dates = []
    for obj in store.list(base):
        m = _DS_RE.search(obj.key)
        if m and start.isoformat() <= m.group(1) <= end.isoformat():
            dates.append(m.group(1))
    dates.sort()
    log.info("window %s..%s: %d validated partition(s) under %s", start, end, len(dates), base_uri)
    if not dates:
        raise TrainingError(
            f"no validated partitions between {start} and {end} under {base_uri}: run the ingest DAG for "
            "those dates or widen the window (training.window_days or the window_days param)"
        )

    frames, partitions = [], []
    for date in dates:
        prefix = join(base, f"ds={date}")
        manifest = json.loads(store.read_bytes(join(prefix, MANIFEST_FILE)))
        df = _read_parquet(store, join(prefix, manifest["data"]))
        if "rows" in manifest and int(manifest["rows"]) != len(df):
            raise TrainingError(
                f"partition {store.uri(prefix)} holds {len(df)} rows but its manifest says {manifest['rows']}: "
                f"it was modified outside the ingest DAG; re-run the ingest DAG for {date}"
            )
        frames.append(df)
        partitions.append(
            {
                "date": date,
                "rows": int(len(df)),
                "fingerprint": manifest["fingerprint"],
                "uri": store.uri(prefix),
            }
        )
        log.info("  %s: %d rows (%s)", date, len(df), manifest["fingerprint"][:19])
    data = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
    del frames
    data = _normalise_dtypes(data, cfg)

    n = len(data)
    if n < cfg.training.min_rows:
        raise TrainingError(
            f"window {start}..{end} under {base_uri} holds {n} rows in {len(dates)} partition(s), fewer than "
            f"training.min_rows={cfg.training.min_rows}: widen the window or ingest more days"
        )
    ts_col, target = cfg.dataset.timestamp_column, cfg.dataset.target
    for col in (ts_col, target):
        missing = int(data[col].isna().sum())
        if missing:
            raise TrainingError(
                f"column {col!r} has {missing} missing values in window {start}..{end} under {base_uri}; "
                "the GX suite should have rejected those batches: check it and re-run the ingest DAG"
            )

    data = data.sort_values([ts_col, cfg.dataset.id_column], kind="stable", ignore_index=True)
    n_hold = max(1, math.ceil(n * cfg.training.holdout_fraction))
    boundary = data[ts_col].iloc[n - n_hold]
    is_hold = (data[ts_col] >= boundary).to_numpy()
    train, holdout = data.loc[~is_hold].reset_index(drop=True), data.loc[is_hold].reset_index(drop=True)
    window_name = f"window {start}..{end}"
    if len(train) == 0:
        raise TrainingError(
            f"{window_name}: every row has a timestamp >= {boundary} ({ts_col!r}), so nothing is left to "
            "train on before the holdout; widen the window"
        )
    _check_classes(train, cfg, f"the train set of {window_name} ({ts_col} < {boundary})")
    _check_classes(holdout, cfg, f"the holdout of {window_name} ({ts_col} >= {boundary})")
    window = Window(
        train=train,
        holdout=holdout,
        partitions=partitions,
        fingerprint=window_fingerprint(partitions),
        start=start.isoformat(),
        end=end.isoformat(),
        split_ts=pd.Timestamp(boundary).isoformat(),
    )
    log.info(
        "%s: %d rows -> train %d, holdout %d (%s >= %s), fingerprint %s",
        window_name,
        n,
        len(train),
        len(holdout),
        ts_col,
        window.split_ts,
        window.fingerprint,
    )
    return window


def _normalise_dtypes(df: pd.DataFrame, cfg: BundleConfig) -> pd.DataFrame:
    """Category columns as pandas ``category`` again after concat (differing categories turn them object)."""
    for spec in cfg.dataset.columns:
        if spec.dtype == "category" and spec.name in df.columns and df[spec.name].dtype != "category":
            df[spec.name] = df[spec.name].astype("category")
    return df


def _work_prefix(cfg: BundleConfig, key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._=-]{1,128}", key):
        raise TrainingError(f"work key {key!r} must be 1-128 characters of letters, digits and ._=-")
    return join(cfg.storage.work_prefix, cfg.dataset.name, "train", key)


def _write_parquet(store: Storage, key: str, df: pd.DataFrame) -> str:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="snappy")
    return store.write_bytes(key, buf.getvalue())


def save_window(store: Storage, cfg: BundleConfig, window: Window, key: str) -> dict[str, Any]:
    """Persist the window under ``work/<dataset>/train/<key>/`` and return a small JSON-safe dict.

    Why: the candidates train in separate (mapped, pool-limited) tasks, maybe on other workers; they
    share the exact same split through the store, and XCom carries only this dict. Sets
    ``window.train_uri``/``holdout_uri``.
    """
    prefix = _work_prefix(cfg, key)
    train_key, holdout_key = join(prefix, "train.parquet"), join(prefix, "holdout.parquet")
    window.train_uri = _write_parquet(store, train_key, window.train)
    window.holdout_uri = _write_parquet(store, holdout_key, window.holdout)
    info = {
        "key": key,
        "prefix": prefix,
        "train_key": train_key,
        "holdout_key": holdout_key,
        "train_uri": window.train_uri,
        "holdout_uri": window.holdout_uri,
        **window.summary(),
    }
    store.write_bytes(join(prefix, "window.json"), json.dumps(info, indent=2, sort_keys=True).encode())
    log.info("saved window (%d + %d rows) to %s", len(window.train), len(window.holdout), store.uri(prefix))
    return info


def load_window(store: Storage, cfg: BundleConfig, info: dict[str, Any]) -> Window:
    """The window saved by :func:`save_window`, from its dict; TrainingError if the objects are gone."""
    frames = {}
    for side in ("train", "holdout"):
        key = info[f"{side}_key"]
        if not store.exists(key):
            raise TrainingError(
                f"saved window data {store.uri(key)} is missing (cleaned up or another storage root?): "
                "re-run the window assembly task of this DAG run"
            )
        frames[side] = _read_parquet(store, key)
    return Window(
        train=frames["train"],
        holdout=frames["holdout"],
        partitions=list(info["partitions"]),
        fingerprint=info["fingerprint"],
        start=info["start"],
        end=info["end"],
        split_ts=info["split_ts"],
        train_uri=info.get("train_uri"),
        holdout_uri=info.get("holdout_uri"),
    )


# ---------------------------------------------------------------- fit and score


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
    The sklearn flavor (:func:`load_model`) takes either.
    """
    numeric, categorical, _ = feature_types(cfg)
    out = df[numeric + categorical].copy()
    for col in categorical:
        if isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(object)
    return out


def evaluate(model, df: pd.DataFrame, cfg: BundleConfig) -> dict[str, float]:
    """Score a fitted classifier on ``df`` (``features.THRESHOLD`` on the positive-class probability).

    Returns roc_auc, f1, precision, recall, accuracy, log_loss, rows, positive_rate (share of actual
    positives) and predicted_positive_rate. roc_auc/log_loss are NaN when ``df`` has one class only.
    The promotion gate calls this on the challenger's holdout for both models, so they are compared on
    identical rows with identical code.
    """
    from sklearn import metrics as skm

    target = cfg.dataset.target
    features = _model_features(model, cfg)
    missing = [c for c in features + [target] if c not in df.columns]
    if missing:
        raise TrainingError(
            f"evaluation data lacks column(s) {missing} that the model/config needs; "
            f"it has {list(df.columns)}"
        )
    classes = list(model.classes_)
    pos = positive_class_index(classes)
    proba = model.predict_proba(df[features])[:, pos]
    y = (df[target].to_numpy() == classes[pos]).astype(int)
    pred = predict_positive(proba)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(skm.roc_auc_score(y, proba)) if both else float("nan"),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "log_loss": float(skm.log_loss(y, proba, labels=[0, 1])) if both else float("nan"),
        "rows": float(len(df)),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "predicted_positive_rate": float(pred.mean()) if len(pred) else float("nan"),
    }


def train_candidate(spec: CandidateSpec, window: Window, cfg: BundleConfig) -> tuple[Any, dict[str, float]]:
    """Fit the candidate's pipeline on ``window.train`` and score it on ``window.holdout``.

    Returns (fitted Pipeline, metrics); metrics also carry fit_seconds and train_rows. Convergence
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
    metrics = evaluate(pipe, window.holdout, cfg)
    metrics.update({"fit_seconds": round(fit_s, 3), "train_rows": float(len(window.train))})
    log.info(
        "candidate %s (%s): fit %d rows in %.2fs, holdout %s=%.4f",
        spec.name,
        spec.family,
        len(X),
        fit_s,
        cfg.training.metric,
        metrics.get(cfg.training.metric, float("nan")),
    )
    return pipe, metrics


# ---------------------------------------------------------------- lineage


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the project checkout, or "unknown" (a wheel install or an image without .git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha) else "unknown"


@functools.lru_cache(maxsize=1)
def lock_sha256() -> str:
    """sha256 of requirements.lock (the exact environment that installs), or "unknown" if absent."""
    path = PROJECT_ROOT / "requirements.lock"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unknown"


def pip_requirements(serialization_format: str = SERIALIZATION_FORMAT) -> list[str]:
    """Pinned requirements of a logged model, read from the installed distributions.

    Passed explicitly because MLflow's inference of them loads the model in a subprocess (~9 s a model).
    """
    names = ["mlflow", "scikit-learn", "numpy", "pandas", "scipy"]
    names.append("skops" if serialization_format == "skops" else "cloudpickle")
    out = []
    for name in names:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


_MLFLOW_TYPES = {
    "int": "long",
    "float": "double",
    "string": "string",
    "category": "string",
    "bool": "boolean",
    "datetime": "datetime",
}


def _schema(cfg: BundleConfig, columns: list[str], for_model: bool):
    """MLflow schema from the config, not inferred from the data.

    Why: MLflow infers dataset schemas value by value (~2 s for 100k rows); the config already knows.
    For the model signature an int column that may hold missing values is declared double, because
    pandas cannot hold NaN in int64 and pyfunc's schema enforcement would reject it.
    """
    from mlflow.types import ColSpec, Schema

    specs = []
    for name in columns:
        col = cfg.dataset.column(name)
        kind = _MLFLOW_TYPES[col.dtype]
        if for_model and col.dtype == "int" and col.nullable:
            kind = "double"
        specs.append(ColSpec(kind, name, required=not col.nullable))
    return Schema(specs)


def _dataset(df: pd.DataFrame, cfg: BundleConfig, name: str, digest: str, source: str):
    import mlflow.data

    with warnings.catch_warnings():
        # a file:// source matches two equivalent source classes; MLflow warns and picks one
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(df, source=source, targets=cfg.dataset.target, name=name, digest=digest)
    # PandasDataset.schema is a functools.cached_property that would infer per value; seed it
    ds.__dict__["schema"] = _schema(cfg, [str(c) for c in df.columns if c in cfg.dataset.column_names], False)
    return ds


def _digest(window: Window, side: str) -> str:
    # MLflow's SQL store keeps dataset digests in a 36-character column
    return hashlib.sha256(f"{window.fingerprint}|{window.split_ts}|{side}".encode()).hexdigest()[:32]


def _skeleton(model):
    """A shallow stand-in of ``model`` with homogeneous ensembles cut to one member.

    skops can only list a model's types by serialising it; a 150-tree forest costs ~0.3 s to dump, one
    tree ~2 ms, and 150 trees of one class contribute no type that one tree does not. Heterogeneous
    ensembles (stacking, voting) are left whole.
    """
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        sk = copy.copy(model)
        sk.steps = [(name, _skeleton(step)) for name, step in model.steps]
        return sk
    members = getattr(model, "estimators_", None)
    if isinstance(members, list) and len(members) > 1 and len({type(m) for m in members}) == 1:
        sk = copy.copy(model)
        sk.estimators_ = members[:1]
        return sk
    return model


def skops_trusted_types(model) -> list[str]:
    """The non-default types skops must be told to trust to load ``model`` back (e.g. sklearn's Tree).

    Computed from the fitted model (via :func:`_skeleton`), never a hand-kept list, so a new family
    cannot silently fail to load; MLflow re-loads the saved model with this list and refuses on a miss.
    """
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(_skeleton(model))))


def close_interrupted_runs(c, experiment_id: str, owner_tags: dict[str, str]) -> list[str]:
    """Mark runs an interrupted earlier attempt left RUNNING as FAILED (and their unfinished logged models).

    Why: an attempt that dies while logging (worker killed, tracking server gone) cannot end its own run,
    so MLflow would show it RUNNING forever; the retry is the first process that can. Only runs carrying
    all of ``owner_tags`` (the caller's run identity plus the candidate name) are touched, and at least
    two tags are required: one orchestrator task attempt runs at a time, so a RUNNING run with those tags
    belongs to an attempt that is gone. Returns the run ids closed.
    """
    from mlflow.entities import LoggedModelStatus

    if len(owner_tags) < 2:
        return []
    safe = {k: v for k, v in owner_tags.items() if "'" not in k + v and "`" not in k}
    clauses = ["attributes.status = 'RUNNING'", *(f"tags.`{k}` = '{v}'" for k, v in safe.items())]
    closed = []
    for run in c.search_runs([experiment_id], filter_string=" AND ".join(clauses)):
        if any(run.data.tags.get(k) != v for k, v in owner_tags.items()):
            continue
        run_id = run.info.run_id
        for lm in c.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"):
            if str(lm.status) == str(LoggedModelStatus.PENDING):
                c.finalize_logged_model(lm.model_id, LoggedModelStatus.FAILED)
        c.set_tag(run_id, "mlops.interrupted", "an earlier attempt ended while logging; closed by its retry")
        c.set_terminated(run_id, "FAILED")
        closed.append(run_id)
        log.warning("closed MLflow run %s, left RUNNING by an interrupted attempt, as FAILED", run_id)
    return closed


def log_candidate(
    cfg: BundleConfig,
    spec: CandidateSpec,
    model,
    metrics: dict[str, float],
    window: Window,
    tags: dict[str, Any],
    parent_run_id: str | None = None,
) -> str:
    """Record one trained candidate as an MLflow run in the config's experiment; return the run id.

    The run holds: params (family, hyper-parameters, window bounds, seed), metrics, tags (the caller's,
    e.g. Airflow dag_id/run_id/triggered_by, plus data_fingerprint, git_commit, lock_sha256), the train
    and holdout datasets (``log_input``, contexts "training"/"holdout", config-derived schema, digest
    derived from the window fingerprint), the window summary with its partitions (``data/window.json``)
    and the model (signature from the config; see :func:`model_input` for what pyfunc accepts).

    Serialization: skops, MLflow 3.17's default. It loads all three families back with both
    ``mlflow.sklearn.load_model`` and ``mlflow.pyfunc.load_model`` once ``skops_trusted_types`` lists the
    estimator's internal types (computed from the fitted model, e.g. ``sklearn.tree._tree.Tree``,
    ``...TreePredictor``, ``numpy.dtype``), and unlike cloudpickle it does not capture module code by
    value or emit MLflow's pickle warning. What it does *not* give: protection against a malicious
    artifact, because MLflow reads the trusted list from the model's own MLmodel file; the registry's
    artifact store must be trusted either way. Cost: ~0.2 s of extra dump for a 150-tree forest.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import ModelSignature

    tracking.use(cfg)
    exp_id = tracking.ensure_experiment(cfg)
    features = _model_features(model, cfg)
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    all_tags.update(
        {
            "candidate": spec.name,
            "family": spec.family,
            "data_fingerprint": window.fingerprint,
            "data_partitions": str(len(window.partitions)),
            "git_commit": git_commit(),
            "lock_sha256": lock_sha256(),
        }
    )
    owner = {str(k): str(v) for k, v in (tags or {}).items()}
    if owner:  # a retry of the same candidate in the same caller run: close what the last attempt left open
        close_interrupted_runs(tracking.client(cfg), exp_id, {**owner, "candidate": spec.name})
    params: dict[str, Any] = {"family": spec.family, "candidate": spec.name}
    params.update({f"model.{k}": v for k, v in spec.params.items()})
    params.update(
        {
            "window_start": window.start,
            "window_end": window.end,
            "split_ts": window.split_ts,
            "holdout_fraction": cfg.training.holdout_fraction,
            "seed": cfg.training.seed,
            "features": ",".join(features),
        }
    )
    t0 = time.perf_counter()
    with mlflow.start_run(
        experiment_id=exp_id, run_name=spec.name, tags=all_tags, parent_run_id=parent_run_id
    ) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_dict(window.summary(), "data/window.json")
        default_source = f"{cfg.root_uri}/{cfg.storage.staging_prefix}/{cfg.dataset.name}"
        mlflow.log_inputs(
            datasets=[
                _dataset(window.train, cfg, f"{cfg.dataset.name}-train", _digest(window, "train"),
                         window.train_uri or default_source),
                _dataset(window.holdout, cfg, f"{cfg.dataset.name}-holdout", _digest(window, "holdout"),
                         window.holdout_uri or default_source),
            ],
            contexts=["training", "holdout"],
            tags_list=[None, None],
        )  # fmt: skip
        example = model_input(window.train.head(5), cfg)[features]
        signature = ModelSignature(
            inputs=_schema(cfg, features, True), outputs=_schema(cfg, [cfg.dataset.target], True)
        )
        trusted = skops_trusted_types(model) if SERIALIZATION_FORMAT == "skops" else None
        mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(SERIALIZATION_FORMAT),
            serialization_format=SERIALIZATION_FORMAT,
            skops_trusted_types=trusted,
        )
        run_id = run.info.run_id
    log.info(
        "logged candidate %s as run %s in experiment %r (%.2fs)",
        spec.name,
        run_id,
        cfg.experiment_name,
        time.perf_counter() - t0,
    )
    return run_id


# ---------------------------------------------------------------- registration


def train_key(
    window_fingerprint: str, spec_or_specs: CandidateSpec | list[CandidateSpec], cfg: BundleConfig
) -> str:
    """A stable sha256 (hex) of everything that determines the trained models.

    Data fingerprint, candidate specs (order-insensitive), selection metric, holdout fraction, seed,
    features/target and their dtypes, scikit-learn version and PIPELINE_VERSION. A rerun of the same
    train run on the same data and params gets the same key, so :func:`register_best` can recognise it.
    """
    specs = spec_or_specs if isinstance(spec_or_specs, list) else [spec_or_specs]
    payload = {
        "data": window_fingerprint,
        "candidates": sorted((s.model_dump(mode="json") for s in specs), key=lambda d: d["name"]),
        "metric": cfg.training.metric,
        "holdout_fraction": cfg.training.holdout_fraction,
        "seed": cfg.training.seed,
        "columns": [
            [c.name, c.dtype]
            for c in cfg.dataset.columns
            if c.name in cfg.dataset.feature_columns or c.name == cfg.dataset.target
        ],
        "target": cfg.dataset.target,
        "timestamp": cfg.dataset.timestamp_column,
        "sklearn": importlib.metadata.version("scikit-learn"),
        "pipeline_version": PIPELINE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _versions_with_key(c, name: str, key: str) -> list:
    found = c.search_model_versions(f"name = '{name}' AND tags.train_key = '{key}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _version_result(c, cfg: BundleConfig, mv, reused: bool, fallback: dict[str, Any]) -> dict[str, Any]:
    run_id = mv.run_id or fallback.get("run_id")
    metrics = dict(fallback.get("metrics") or {})
    candidate = (mv.tags or {}).get("candidate") or fallback.get("candidate")
    if reused and run_id:
        try:
            metrics = dict(c.get_run(run_id).data.metrics)
        except Exception as exc:  # the version still exists; its run's metrics are a nicety
            log.warning("could not read metrics of run %s: %s", run_id, exc)
    version = str(mv.version)
    return {
        "version": version,
        "run_id": run_id,
        "candidate": candidate,
        "metrics": metrics,
        "reused": reused,
        "model_uri": f"models:/{cfg.model_name}/{version}",
    }


def _logged_model_id(c, run_id: str) -> str | None:
    """The MLflow 3 logged-model id of the run's ``model`` artifact (what a version's source must name)."""
    run = c.get_run(run_id)
    outputs = getattr(run, "outputs", None)
    ids = [o.model_id for o in (outputs.model_outputs if outputs else [])]
    if len(ids) == 1:
        return ids[0]
    found = c.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_ARTIFACT}'",
    )
    return found[0].model_id if found else (ids[-1] if ids else None)


def _wait_ready(c, name: str, version: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        mv = c.get_model_version(name, version)
        status = str(mv.status)
        if status == "READY":
            return mv
        if "FAILED" in status:
            raise TrainingError(
                f"registration of {name} version {version} failed ({mv.status_message}); "
                "check the registry server's logs, then clear the task to retry"
            )
        if time.monotonic() > deadline:
            raise TrainingError(f"{name} version {version} still {status} after {timeout:.0f}s")
        time.sleep(0.5)


def register_best(
    cfg: BundleConfig, results: list[dict[str, Any]], key: str, tags: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Register the best candidate's model as a version of ``cfg.model_name``, once per ``key``.

    ``results``: ``[{"candidate", "run_id", "metrics"}]``. Best = highest ``training.metric`` (ties: first by
    candidate name; NaN never wins). Idempotency: a version tagged ``train_key == key`` is looked up first
    and returned with ``reused: True``. The tags are written in the same create call as the version
    (one transaction in MLflow's SQL store), so a version either exists *with* its key or not at all: if
    the server dies after creating it and before answering, the retry finds it by the tag instead of adding
    a second. Two workers registering the same key at the same moment can still both create one; the
    loser notices (a lower version carries the same key), deletes its own fresh, un-aliased version and
    returns the winner's. Returns {version, run_id, candidate, metrics, reused, model_uri}.
    """
    metric = cfg.training.metric
    scored = []
    for r in results:
        value = (r.get("metrics") or {}).get(metric)
        if value is not None and not math.isnan(float(value)):
            scored.append((float(value), r))
    if not scored:
        raise TrainingError(
            f"none of the candidates {[r.get('candidate') for r in results]} reported training.metric "
            f"{metric!r} (a number): check the metric name in {cfg.source} (evaluate() reports "
            "roc_auc, f1, precision, recall, accuracy, log_loss)"
        )
    top = max(v for v, _ in scored)
    best = sorted((r for v, r in scored if v == top), key=lambda r: str(r["candidate"]))[0]
    name = cfg.model_name
    tracking.check_reachable(cfg)
    c = tracking.client(cfg)

    existing = _versions_with_key(c, name, key)
    if existing:
        log.info("%s version %s already holds train_key %s: reusing it", name, existing[0].version, key[:12])
        return _version_result(c, cfg, existing[0], True, best)

    try:
        c.create_registered_model(name, description=f"{cfg.dataset.name} classifier (mlops_bundle)")
    except Exception as exc:
        if tracking.error_code(exc) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    run_id = best["run_id"]
    run_tags = c.get_run(run_id).data.tags
    version_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    version_tags.update(
        {
            "train_key": key,
            "candidate": str(best["candidate"]),
            "family": run_tags.get("family", ""),
            "data_fingerprint": run_tags.get("data_fingerprint", ""),
            "metric": metric,
            **{f"metric.{k}": f"{float(v):.6g}" for k, v in best["metrics"].items()},
        }
    )
    model_id = _logged_model_id(c, run_id)
    source = f"models:/{model_id}" if model_id else f"runs:/{run_id}/{MODEL_ARTIFACT}"
    mv = c.create_model_version(
        name, source, run_id=run_id, tags=version_tags, model_id=model_id, await_creation_for=0
    )
    mv = _wait_ready(c, name, str(mv.version))
    same = _versions_with_key(c, name, key)
    if same and str(same[0].version) != str(mv.version):
        log.warning(
            "another worker registered train_key %s as version %s at the same time; deleting duplicate %s",
            key[:12],
            same[0].version,
            mv.version,
        )
        c.delete_model_version(name, str(mv.version))
        return _version_result(c, cfg, same[0], True, best)
    log.info(
        "registered %s version %s from run %s (candidate %s, %s=%.4f)",
        name,
        mv.version,
        run_id,
        best["candidate"],
        metric,
        top,
    )
    return _version_result(c, cfg, mv, False, best)


def load_model(cfg: BundleConfig, model_uri: str):
    """The scikit-learn pipeline behind a ``models:/name/version``, ``models:/name@alias`` or ``runs:/`` URI."""
    tracking.use(cfg)
    import mlflow.sklearn

    return mlflow.sklearn.load_model(model_uri)

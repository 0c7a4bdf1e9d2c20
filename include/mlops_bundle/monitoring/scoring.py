"""Scoring a batch with the champion, the day's stored predictions and the champion's drift reference.

The reference is what a model is monitored against: a sample of its own training data, scored by itself
and recorded as an artifact of its MLflow run at training time, so it follows whichever version is
champion (a rollback brings its own reference back).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

# PROBA_PREFIX and proba_column live in features (one home for model outputs); re-exported here
from mlops_bundle.features import (
    PROBA_PREFIX,
    positive_class_index,
    predict_positive,
    proba_collisions,
    proba_column,
)
from mlops_bundle.task_types import task_type

if TYPE_CHECKING:
    import pandas as pd

    from mlops_bundle.config import BundleConfig
    from mlops_bundle.storage import Storage

REFERENCE_ARTIFACT_DIR = "reference"
REFERENCE_FILE = "reference.parquet"
# Rows per predict_proba call: bounds the model's intermediate matrices (one-hot encodings...) on huge
# batches, large enough that the fixed per-call overhead stays negligible (benchmarks/README.md).
SCORE_CHUNK_ROWS = 1_000_000

log = logging.getLogger(__name__)


class MonitoringError(ValueError):
    """Monitoring cannot run on these inputs; the message names the column/file and what to do."""


def sample(df: pd.DataFrame, cap: int, seed: int = 0) -> pd.DataFrame:
    """At most ``cap`` rows, drawn uniformly without replacement; the same seed gives the same rows.

    Rows keep their original order (timestamps stay sorted). A frame that already fits is returned
    as is, without a copy, because copying a million-row frame costs memory for nothing.
    """
    if cap < 1:
        raise MonitoringError(f"sample cap must be >= 1, got {cap}")
    if len(df) <= cap:
        return df
    import numpy as np

    idx = np.random.default_rng(seed).choice(len(df), size=cap, replace=False)
    idx.sort()
    return df.iloc[idx]


def class_proba_columns(df: pd.DataFrame) -> list[str]:
    """The per-class probability columns (``proba__<label>``) of a scored multiclass frame, in order
    (no data set column starts with ``proba__``: DatasetConfig reserves the prefix)."""
    return [c for c in df.columns if isinstance(c, str) and c.startswith(PROBA_PREFIX)]


def score_batch(
    model: Any,
    df: pd.DataFrame,
    cfg: BundleConfig,
    *,
    prediction_col: str = "prediction",
    proba_col: str = "prediction_proba",
    keep_features: bool = True,
    chunk_rows: int = SCORE_CHUNK_ROWS,
) -> pd.DataFrame:
    """Score a batch with the fitted model; the columns added depend on ``dataset.task``:

    - binary: ``prediction`` (0/1 at ``features.THRESHOLD``) and ``prediction_proba`` (probability of
      the positive class, ``features.positive_class_index``);
    - multiclass: ``prediction`` (the class label, the most probable class) and one probability column
      per class of ``model.classes_``, named by :func:`proba_column` (``proba__<label>``);
    - regression: ``prediction`` (the predicted value, float64); no probabilities.

    The id and timestamp columns (when configured) are always kept, so scores can be joined back and
    audited; with ``keep_features`` the features (and the target, if present) are kept too, which is the
    frame ``build_report`` wants as "current". Scoring runs in chunks of ``chunk_rows`` so the model's
    intermediate matrices stay bounded on very big batches; each chunk pays the pipeline's fixed
    preprocessing overhead, so chunks are large (a batch up to SCORE_CHUNK_ROWS is one call, as fast as
    calling ``predict_proba`` directly).
    """
    ds = cfg.dataset
    task = task_type(ds.task)
    features = ds.feature_columns
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise MonitoringError(
            f"batch to score lacks columns {missing} that the champion was trained on; "
            f"check the batch against config {cfg.source or 'config/datasets/<name>.yaml'} (dataset.columns)"
        )
    X = df[features]
    step = max(1, int(chunk_rows))
    if task.name == "binary":
        added = _score_binary(model, X, step, prediction_col, proba_col)
    elif task.name == "multiclass":
        added = _score_multiclass(model, X, step, prediction_col)
    else:
        added = _score_regression(model, X, step, prediction_col)
    keys = [c for c in (ds.id_column, ds.timestamp_column) if c and c in df.columns]
    keep = keys + features + ([ds.target] if ds.target in df.columns else []) if keep_features else keys
    clash = sorted(set(added) & set(keep))
    if clash:
        raise MonitoringError(
            f"the scores would overwrite the batch's columns {clash}: rename those columns in "
            f"dataset.columns of {cfg.source or 'the config'} (or pass prediction_col=/proba_col=)"
        )
    out_df = df.loc[:, keep]  # a new frame with the input's dtypes (category stays category)
    return out_df.assign(**added)


def _score_binary(
    model: Any, X: pd.DataFrame, step: int, prediction_col: str, proba_col: str
) -> dict[str, Any]:
    import numpy as np

    try:
        pos = positive_class_index(getattr(model, "classes_", []))
    except ValueError as exc:
        raise MonitoringError(f"{exc}; dataset.task is 'binary'") from None
    proba = np.empty(len(X), dtype="float64")
    for start in range(0, len(X), step):
        out = model.predict_proba(X.iloc[start : start + step])
        proba[start : start + step] = np.asarray(out)[:, pos]
    _check_finite(proba, "probabilities")
    return {prediction_col: predict_positive(proba), proba_col: proba}


def _score_multiclass(model: Any, X: pd.DataFrame, step: int, prediction_col: str) -> dict[str, Any]:
    import numpy as np

    classes = list(getattr(model, "classes_", []))
    if len(classes) < 2 or not hasattr(model, "predict_proba"):
        raise MonitoringError(
            f"dataset.task is 'multiclass' but the model has classes {classes} and "
            f"{'a' if hasattr(model, 'predict_proba') else 'no'} predict_proba: a multiclass champion must be "
            "a classifier with predict_proba; check dataset.task and retrain"
        )
    names = [proba_column(c) for c in classes]
    same = proba_collisions(classes)
    if same:
        raise MonitoringError(
            f"class labels {sorted(t for texts in same.values() for t in texts)} give the same probability "
            f"column(s) {sorted(same)} (features.proba_column); make the target's labels distinct and retrain"
        )
    proba = np.empty((len(X), len(classes)), dtype="float64")
    for start in range(0, len(X), step):
        proba[start : start + step] = np.asarray(model.predict_proba(X.iloc[start : start + step]))
    _check_finite(proba, "probabilities")
    # the most probable class (what Evidently derives from the probabilities too), in classes_' dtype
    labels = np.asarray(model.classes_)[proba.argmax(axis=1)]
    return {prediction_col: labels} | {n: proba[:, i] for i, n in enumerate(names)}


def _score_regression(model: Any, X: pd.DataFrame, step: int, prediction_col: str) -> dict[str, Any]:
    import numpy as np

    pred = np.empty(len(X), dtype="float64")
    for start in range(0, len(X), step):
        pred[start : start + step] = np.asarray(
            model.predict(X.iloc[start : start + step]), dtype="float64"
        ).ravel()
    _check_finite(pred, "predictions")
    return {prediction_col: pred}


def _check_finite(values: Any, what: str) -> None:
    import numpy as np

    if not len(values):
        return
    bad = int((~np.isfinite(values.reshape(len(values), -1))).any(axis=1).sum())
    if bad:
        raise MonitoringError(
            f"the model returned non-finite {what} for {bad} rows; "
            "check the batch for values the model's preprocessing cannot handle"
        )


# ------------------------------------------------------------------------------------ stored predictions


def predictions_key(cfg: BundleConfig, date: str) -> str:
    """Where a day's scores live: next to the validated partition, one object per day (rerun = replace)."""
    return f"{cfg.storage.predictions_prefix}/{cfg.dataset.name}/ds={date}/predictions.parquet"


def write_predictions(store: Storage, cfg: BundleConfig, date: str, scored: pd.DataFrame) -> str:
    """Store a day's scored batch as Parquet (replacing an earlier run's, atomically); returns its URI."""
    buf = io.BytesIO()
    scored.to_parquet(buf, index=False)
    return store.write_bytes(predictions_key(cfg, date), buf.getvalue())


def read_predictions(store: Storage, cfg: BundleConfig, date: str) -> pd.DataFrame:
    """The scored batch ``write_predictions`` stored for ``date``."""
    import pandas as pd

    key = predictions_key(cfg, date)
    if not store.exists(key):
        raise MonitoringError(
            f"no predictions for {cfg.dataset.name}/{date} at {store.uri(key)}: score the day first "
            "(the monitor DAG's score_batch task)"
        )
    return pd.read_parquet(io.BytesIO(store.read_bytes(key)))


# ------------------------------------------------------------------------------------------- reference


def _sealing_store(cfg: BundleConfig, store: Storage | None, run_id: str) -> Any:
    """The lake's encrypting store that seals data artifacts, or None when encryption is off.

    Why: MLflow's artifact store is outside the lake's encryption, so with encryption on the reference
    (rows of training data) goes there only sealed with the lake's keyring (``mlops_bundle.crypto``).
    """
    if not cfg.encryption.enabled:
        return None
    if getattr(store, "keyring", None) is None:
        raise MonitoringError(
            f"encryption is enabled, so the drift reference of run {run_id} (rows of training data) is "
            "sealed with the lake's keyring: pass the lake's encrypting store (store=...) to this function"
        )
    return store


def log_reference(
    cfg: BundleConfig,
    client: Any,
    run_id: str,
    model: Any,
    train: pd.DataFrame,
    *,
    store: Storage | None = None,
) -> str:
    """Record the drift reference of a model at training time: a sample of its training data (capped at
    monitoring.sample_cap rows) scored by the model itself, as an artifact of its MLflow run.

    With encryption on the artifact is sealed (same name, ciphertext content; ``store`` is the lake's
    encrypting store), or not logged at all when ``encryption.data_artifacts`` is "omit" (returns "").
    Returns the artifact path.
    """
    import tempfile
    from pathlib import Path

    artifact = f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}"
    if cfg.encryption.enabled and cfg.encryption.data_artifacts == "omit":
        log.warning("drift reference of run %s not logged: encryption.data_artifacts is 'omit'", run_id)
        return ""
    sealer = _sealing_store(cfg, store, run_id)
    ref = score_batch(model, sample(train, cfg.monitoring.sample_cap, seed=cfg.training.seed), cfg)
    with tempfile.TemporaryDirectory(prefix="mlops-reference-") as tmp:
        path = Path(tmp) / REFERENCE_FILE
        if sealer is None:
            ref.to_parquet(path, index=False)
        else:
            from mlops_bundle.crypto import seal_artifact

            buf = io.BytesIO()
            ref.to_parquet(buf, index=False)
            path.write_bytes(seal_artifact(sealer, run_id, artifact, buf.getvalue()))
        client.log_artifact(run_id, str(path), REFERENCE_ARTIFACT_DIR)
    return artifact


def has_reference(client: Any, run_id: str) -> bool:
    """Whether the MLflow run holds the drift reference that log_reference records."""
    listed = client.list_artifacts(run_id, REFERENCE_ARTIFACT_DIR)
    return f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}" in {a.path for a in listed}


def reference_needed(client: Any, run_id: str, *, reused: bool) -> bool:
    """Whether a just-registered version must (still) have its drift reference recorded.

    A new version always does. A reused one (the same training ran before) normally has it already, but
    not if the attempt that registered it died (worker lost, MLflow down) before recording the
    reference: without this repair that champion could never be monitored.
    """
    return not reused or not has_reference(client, run_id)


def load_reference(
    client: Any, run_id: str, *, cfg: BundleConfig | None = None, store: Storage | None = None
) -> pd.DataFrame:
    """The reference recorded by log_reference for the run that produced a model version.

    With encryption on (``cfg``), the artifact must be sealed for this lake and this run; a plaintext one
    is refused (``mlops_bundle.crypto.open_artifact``) unless the migration setting allows it.
    """
    import tempfile
    from pathlib import Path

    import pandas as pd

    artifact = f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}"
    encrypted = cfg is not None and cfg.encryption.enabled
    with tempfile.TemporaryDirectory(prefix="mlops-reference-") as tmp:
        try:
            local = client.download_artifacts(run_id, artifact, tmp)
        except Exception as exc:
            omitted = encrypted and cfg.encryption.data_artifacts == "omit"
            raise MonitoringError(
                f"MLflow run {run_id} has no drift reference ({artifact}): "
                + (
                    "encryption.data_artifacts is 'omit', so no reference is recorded; set it to 'encrypt' "
                    "and retrain to get drift reports"
                    if omitted
                    else "the champion was trained before references were recorded; retrain it with the train DAG"
                )
            ) from exc
        if not encrypted:
            return pd.read_parquet(local)
        from mlops_bundle.crypto import open_artifact

        blob = Path(local).read_bytes()
        return pd.read_parquet(
            io.BytesIO(open_artifact(_sealing_store(cfg, store, run_id), run_id, artifact, blob))
        )

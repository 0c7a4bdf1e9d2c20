"""Scoring a batch with the champion, the day's stored predictions and the champion's drift reference.

The reference is what a model is monitored against: a sample of its own training data, scored by itself
and recorded as an artifact of its MLflow run at training time, so it follows whichever version is
champion (a rollback brings its own reference back).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

from mlops_bundle.features import positive_class_index, predict_positive

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
    """Score a batch with a fitted binary classifier: adds ``prediction`` (0/1 at ``features.THRESHOLD``)
    and ``prediction_proba`` (probability of the positive class).

    The id and timestamp columns are always kept (so scores can be joined back and audited); with
    ``keep_features`` the features (and the target, if present) are kept too, which is the frame
    ``build_report`` wants as "current". Scoring runs in chunks of ``chunk_rows`` so the model's
    intermediate matrices stay bounded on very big batches; each chunk pays the pipeline's fixed
    preprocessing overhead, so chunks are large (a batch up to SCORE_CHUNK_ROWS is one call, as fast as
    calling ``predict_proba`` directly).
    """
    import numpy as np

    ds = cfg.dataset
    features = ds.feature_columns
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise MonitoringError(
            f"batch to score lacks columns {missing} that the champion was trained on; "
            f"check the batch against config {cfg.source or 'config/churn.yaml'} (dataset.columns)"
        )
    try:
        pos = positive_class_index(getattr(model, "classes_", []))
    except ValueError as exc:
        raise MonitoringError(str(exc)) from None
    X = df[features]
    proba = np.empty(len(df), dtype="float64")
    step = max(1, int(chunk_rows))
    for start in range(0, len(df), step):
        out = model.predict_proba(X.iloc[start : start + step])
        proba[start : start + step] = np.asarray(out)[:, pos]
    if len(proba) and not np.isfinite(proba).all():
        raise MonitoringError(
            f"the model returned {int((~np.isfinite(proba)).sum())} non-finite probabilities; "
            "check the batch for values the model's preprocessing cannot handle"
        )
    keys = [c for c in (ds.id_column, ds.timestamp_column) if c in df.columns]
    keep = keys + features + ([ds.target] if ds.target in df.columns else []) if keep_features else keys
    out_df = df.loc[:, keep]  # a new frame with the input's dtypes (category stays category)
    out_df[prediction_col] = predict_positive(proba)
    out_df[proba_col] = proba
    return out_df


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

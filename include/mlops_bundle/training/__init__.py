"""Training: validated partitions -> a time-split window -> candidate pipelines -> MLflow runs -> one version.

The stage in five calls, each usable from its own Airflow task (possibly on different workers):

1. :func:`assemble_window` reads every validated partition (one with a manifest) of the training window
   and splits it *by time*: the most recent ``training.holdout_fraction`` of rows is the holdout, never
   trained on. :func:`save_window`/:func:`load_window` hand it between tasks as Parquet under the work
   prefix in the store and a small JSON-safe dict through XCom (module :mod:`.window`).
2. :func:`resolve_candidates` turns ``training.candidates`` into checked specs (unknown family, a family
   or estimator that does not fit ``dataset.task``, an estimator import path outside
   ``training.estimator_modules``, unknown candidate name and bad hyper-parameters are refused before any
   data is read) (:mod:`.models`).
3. :func:`train_candidate` fits one sklearn Pipeline, refuses one skops could not load back with the
   bundle's trust list, and scores it on the holdout with :func:`evaluate` (the metrics of
   ``dataset.task``), which the promotion gate also uses to score the champion on the challenger's
   holdout (:mod:`.models`).
4. :func:`log_candidate` records the run: params, metrics, lineage tags (data fingerprint, git commit,
   lock file hash, Airflow ids), the two datasets, and the model (:mod:`.runs`).
5. :func:`register_best` registers the best run (:func:`select_best`: lower-is-better metrics such as
   rmse honoured) as a version of the registered model, idempotently: a rerun with the same key (the
   winner's :func:`model_key` when the results carry it, else the run's :func:`train_key`) returns the
   existing version instead of adding a duplicate (:mod:`.registry`).

Every public name is importable from this package, as before the split. Nothing here imports Airflow;
MLflow and scikit-learn are imported inside the functions that need them.
"""

from __future__ import annotations

from mlops_bundle.training.loading import candidate_trusted_types, load_model, trusted_types
from mlops_bundle.training.models import (
    COUNTERPARTS,
    FAMILIES,
    PIPELINE_VERSION,
    Family,
    build_estimator,
    build_pipeline,
    evaluate,
    families_for,
    model_input,
    resolve_candidates,
    train_candidate,
)
from mlops_bundle.training.registry import model_key, register_best, select_best, train_key
from mlops_bundle.training.runs import (
    MODEL_ARTIFACT,
    SERIALIZATION_FORMAT,
    check_saveable,
    close_interrupted_runs,
    git_commit,
    lock_sha256,
    log_candidate,
    pip_requirements,
    skops_trusted_types,
)
from mlops_bundle.training.window import (
    TrainingError,
    Window,
    assemble_window,
    load_window,
    save_window,
    window_fingerprint,
)

__all__ = [
    "COUNTERPARTS",
    "FAMILIES",
    "MODEL_ARTIFACT",
    "PIPELINE_VERSION",
    "SERIALIZATION_FORMAT",
    "Family",
    "TrainingError",
    "Window",
    "assemble_window",
    "build_estimator",
    "build_pipeline",
    "candidate_trusted_types",
    "check_saveable",
    "close_interrupted_runs",
    "evaluate",
    "families_for",
    "git_commit",
    "load_model",
    "trusted_types",
    "load_window",
    "lock_sha256",
    "log_candidate",
    "model_input",
    "model_key",
    "pip_requirements",
    "register_best",
    "resolve_candidates",
    "save_window",
    "select_best",
    "skops_trusted_types",
    "train_candidate",
    "train_key",
    "window_fingerprint",
]

"""Registration: the best candidate's run -> one version of the registered model, idempotently.

:func:`train_key` hashes everything that determines the trained models; :func:`register_best` registers
the best run under that key, so a rerun with the same key returns the existing version instead of adding
a duplicate, signed for provenance (:mod:`mlops_bundle.provenance`) in the call that creates it. Loading is
:mod:`mlops_bundle.training.loading`. MLflow is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import shutil
import tempfile
import time
from typing import Any

from mlops_bundle import provenance, tracking
from mlops_bundle.config import BundleConfig, CandidateSpec
from mlops_bundle.task_types import lower_is_better, task_type
from mlops_bundle.training.models import PIPELINE_VERSION
from mlops_bundle.training.runs import MODEL_ARTIFACT
from mlops_bundle.training.window import TrainingError

log = logging.getLogger(__name__)


def _spec_payload(spec: CandidateSpec) -> dict[str, Any]:
    """A spec as hashed: fields at their "absent" value are left out, so keys of configs written before
    those fields existed do not change."""
    d = spec.model_dump(mode="json")
    for k in ("family", "estimator", "trusted_types"):
        if not d.get(k):
            d.pop(k, None)
    return d


def train_key(
    window_fingerprint: str, spec_or_specs: CandidateSpec | list[CandidateSpec], cfg: BundleConfig
) -> str:
    """A stable sha256 (hex) of everything that determines the trained models.

    Data fingerprint, candidate specs (order-insensitive), selection metric, holdout fraction, seed,
    features/target and their dtypes, the task, how the window is split, scikit-learn version and
    PIPELINE_VERSION. A rerun of the same train run on the same data and params gets the same key. Called
    with one spec it is that candidate's own key (:func:`model_key`), which :func:`register_best` dedupes
    versions by.
    """
    specs = spec_or_specs if isinstance(spec_or_specs, list) else [spec_or_specs]
    payload = {
        "data": window_fingerprint,
        "candidates": sorted((_spec_payload(s) for s in specs), key=lambda d: d["name"]),
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
    if cfg.dataset.task != "binary":  # binary keys stay as they were before tasks existed
        payload["task"] = cfg.dataset.task
    if cfg.dataset.timestamp_column is None:  # row order (so the split) then depends on the id column
        payload["id"] = cfg.dataset.id_column
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def model_key(window_fingerprint: str, spec: CandidateSpec, cfg: BundleConfig) -> str:
    """One candidate's own key: its spec + the data + the rest of :func:`train_key`, not the other
    candidates. A training result carrying it as ``model_key`` makes :func:`register_best` reuse the
    version of the same model however many other candidates ran beside it."""
    return train_key(window_fingerprint, spec, cfg)


def select_best(cfg: BundleConfig, results: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """(value, result) of the best candidate by ``training.metric``: highest, or lowest for a metric in
    ``task_types.LOWER_IS_BETTER`` (rmse, log_loss, ...). Ties: first by candidate name; NaN never wins."""
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
            f"{', '.join(task_type(cfg.dataset.task).metrics)} for dataset.task {cfg.dataset.task!r})"
        )
    top = min(v for v, _ in scored) if lower_is_better(metric) else max(v for v, _ in scored)
    best = sorted((r for v, r in scored if v == top), key=lambda r: str(r["candidate"]))[0]
    return top, best


def _versions_with_key(c, name: str, key: str) -> list:
    found = c.search_model_versions(f"name = '{name}' AND tags.train_key = '{key}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _version_result(
    c, cfg: BundleConfig, mv, reused: bool, fallback: dict[str, Any], key: str
) -> dict[str, Any]:
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
        "train_key": key,
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


def _model_digest(cfg: BundleConfig, source: str) -> str:
    """SHA-256 of the skops file of a logged model (what the provenance signature covers)."""
    tracking.use(cfg)
    import mlflow.artifacts

    folder = tempfile.mkdtemp(prefix="mlops-register-")
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=folder)
        return provenance.file_sha256(provenance.model_file(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def register_best(
    cfg: BundleConfig, results: list[dict[str, Any]], key: str, tags: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Register the best candidate's model as a version of ``cfg.model_name``, once per ``key``.

    ``results``: ``[{"candidate", "run_id", "metrics"}]``, each optionally with ``model_key`` (that
    candidate's :func:`model_key`). Best: :func:`select_best`. Idempotency: the version is keyed by the
    winner's ``model_key`` when it carries one (so a run with a different subset of candidates that picks
    the same model reuses its version), else by ``key``; a version tagged ``train_key == that key`` is
    looked up first and returned with ``reused: True``. The tags are written in the same create call as
    the version (one transaction in MLflow's SQL store), so a version either exists *with* its key or not
    at all: if the server dies after creating it and before answering, the retry finds it by the tag
    instead of adding a second. Two workers registering the same key at the same moment can still both
    create one; the loser notices (a lower version carries the same key), deletes its own fresh,
    un-aliased version and returns the winner's. Returns {version, run_id, candidate, metrics, reused,
    model_uri, train_key} (``train_key``: the key the version carries).
    """
    metric = cfg.training.metric
    top, best = select_best(cfg, results)
    key = str(best.get("model_key") or key)
    name = cfg.model_name
    tracking.check_reachable(cfg)
    c = tracking.client(cfg)

    existing = _versions_with_key(c, name, key)
    if existing:
        log.info("%s version %s already holds train_key %s: reusing it", name, existing[0].version, key[:12])
        return _version_result(c, cfg, existing[0], True, best, key)

    try:
        kind = task_type(cfg.dataset.task).model_kind
        c.create_registered_model(name, description=f"{cfg.dataset.name} {kind} (mlops_bundle)")
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
            **({"estimator": run_tags["estimator"]} if run_tags.get("estimator") else {}),
            "data_fingerprint": run_tags.get("data_fingerprint", ""),
            "metric": metric,
            **{f"metric.{k}": f"{float(v):.6g}" for k, v in best["metrics"].items()},
        }
    )
    model_id = _logged_model_id(c, run_id)
    source = f"models:/{model_id}" if model_id else f"runs:/{run_id}/{MODEL_ARTIFACT}"
    # signed in the same call that creates the version: no window in which it exists unsigned
    version_tags.update(provenance.signed_tags(run_id, key, _model_digest(cfg, source)))
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
        return _version_result(c, cfg, same[0], True, best, key)
    log.info(
        "registered %s version %s from run %s (candidate %s, %s=%.4f)",
        name,
        mv.version,
        run_id,
        best["candidate"],
        metric,
        top,
    )
    return _version_result(c, cfg, mv, False, best, key)

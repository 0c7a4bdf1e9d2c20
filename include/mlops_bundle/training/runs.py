"""One trained candidate -> one MLflow run with its lineage (data, code, environment) and its model.

:func:`log_candidate` records params, metrics, lineage tags (data fingerprint, :func:`git_commit`,
:func:`lock_sha256`, the caller's Airflow ids), the train and holdout datasets with config-derived schemas,
and the model in skops format with the types it needs trusted (:func:`skops_trusted_types`). A retry of an
attempt that died while logging first closes the run that attempt left open
(:func:`close_interrupted_runs`). MLflow and skops are imported inside the functions that need them.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import logging
import re
import subprocess
import time
import warnings
from typing import Any

import pandas as pd

from mlops_bundle import tracking
from mlops_bundle.config import PROJECT_ROOT, BundleConfig, CandidateSpec
from mlops_bundle.training.loading import candidate_trusted_types
from mlops_bundle.training.models import _model_features, model_input
from mlops_bundle.training.window import TrainingError, Window

log = logging.getLogger(__name__)

# skops finds a type's module by getattr() on every loaded module; Airflow's modules answer that with one
# "The `airflow.utils.x.<name>` attribute is deprecated" warning per name, flooding every training task log
warnings.filterwarnings("ignore", module=r"skops\.io\._utils")

MODEL_ARTIFACT = "model"
# skops (MLflow 3's default) is safe to load without executing pickled code paths and needs no
# cloudpickle of our own modules; see log_candidate for why it works here and what it does not protect.
SERIALIZATION_FORMAT = "skops"


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

    Passed explicitly because MLflow's inference of them loads the model in a subprocess, which costs many
    times more than reading the installed versions (measured: benchmarks/README.md, "Training").
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

    Why: MLflow infers dataset schemas value by value, which is slow on a training-sized frame (measured:
    benchmarks/README.md, "Training"); the config already knows.
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

    skops can only list a model's types by serialising it; dumping a whole forest costs orders of
    magnitude more than dumping one tree (benchmarks/README.md, "Training"), and N trees of one class
    contribute no type that one tree does not. Heterogeneous ensembles (stacking, voting) are left whole.
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


def check_saveable(spec: CandidateSpec, model, cfg: BundleConfig) -> list[str]:
    """The types skops must trust to load ``model`` back; TrainingError if any is outside the bundle's list.

    The allowed list is :func:`~mlops_bundle.training.loading.candidate_trusted_types` (skops' defaults +
    the base list + the family's fitted types, or an estimator candidate's explicit ``trusted_types``):
    loading uses the same list, so a model that passes here loads, and a type nobody vetted (an estimator
    holding, say, a custom function or an unknown helper class) is refused now, before it is logged,
    instead of being trusted because the fitted object asked for it.
    """
    needed = skops_trusted_types(model)
    allowed = candidate_trusted_types(spec)
    outside = sorted(set(needed) - set(allowed))
    if outside:
        hint = (
            "if those types are safe to instantiate, list them in the candidate's trusted_types (under "
            "training.estimator_modules)"
            if spec.estimator
            else "this family's fitted_types in mlops_bundle.training.models is out of date (a bug)"
        )
        raise TrainingError(
            f"candidate {spec.name!r} ({spec.model}): the fitted model holds type(s) {outside} that skops "
            f"does not trust by default and the bundle was not told to trust (trusted: {allowed}), so it "
            f"could not be loaded back safely; {hint} in {cfg.source or 'the config file'}, or choose "
            "another estimator"
        )
    return needed


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
    artifact store must be trusted either way. Cost: some extra dump time for large ensembles
    (benchmarks/README.md, "Training").
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
            "family": spec.family or "",
            **({"estimator": spec.estimator} if spec.estimator else {}),
            "task": cfg.dataset.task,
            "data_fingerprint": window.fingerprint,
            "data_partitions": str(len(window.partitions)),
            "git_commit": git_commit(),
            "lock_sha256": lock_sha256(),
        }
    )
    owner = {str(k): str(v) for k, v in (tags or {}).items()}
    if owner:  # a retry of the same candidate in the same caller run: close what the last attempt left open
        close_interrupted_runs(tracking.client(cfg), exp_id, {**owner, "candidate": spec.name})
    params: dict[str, Any] = {"candidate": spec.name}
    params.update({"family": spec.family} if spec.family else {"estimator": spec.estimator})
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
        # the input example is rows of training data, stored by MLflow as plaintext JSON next to the model:
        # with encryption on it is not logged (the signature still declares the input schema)
        example = None if cfg.encryption.enabled else model_input(window.train.head(5), cfg)[features]
        if cfg.dataset.task == "regression":  # a regressor predicts floats, whatever the target's dtype
            from mlflow.types import ColSpec, Schema

            outputs = Schema([ColSpec("double", cfg.dataset.target)])
        else:
            outputs = _schema(cfg, [cfg.dataset.target], True)
        signature = ModelSignature(inputs=_schema(cfg, features, True), outputs=outputs)
        trusted = check_saveable(spec, model, cfg) if SERIALIZATION_FORMAT == "skops" else None
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

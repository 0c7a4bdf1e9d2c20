"""The tiny sklearn models the promotion tests gate (one home: the unit tests, the fault-injection tests
and their attempt processes use the same models, holdout and scorer).

``FEATURE_SETS`` names models by the informative columns they see; each extra column clearly improves
roc_auc (``noise`` sees only the noise column), so "f5" beats "f3" beats "f1" on the fixed holdout.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

WEIGHTS = (1.6, 1.1, 0.8, 0.6, 0.6, 0.0)  # feature 5 is pure noise
# name -> feature columns; each extra informative column clearly improves roc_auc
FEATURE_SETS = {
    "noise": [5],
    "f1": [0],
    "f2": [0, 1],
    "f3": [0, 1, 2],
    "f4": [0, 1, 2, 3],
    "f5": [0, 1, 2, 3, 4],
}


def data(seed: int, n: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(WEIGHTS)))
    p = 1 / (1 + np.exp(-(x @ np.array(WEIGHTS) - 0.3)))
    return x, (rng.random(n) < p).astype(int)


def holdout():
    return data(2, 2000)


def metrics_of(model, x, y) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    proba = model.predict_proba(x)[:, 1]
    return {
        "roc_auc": float(roc_auc_score(y, proba)),
        "f1": float(f1_score(y, proba >= 0.5)),
        "accuracy": float(accuracy_score(y, proba >= 0.5)),
        "log_loss": float(log_loss(y, proba)),
    }


def make_scorer(download_dir: Path):
    """model URI -> metrics on the fixed holdout (cached per URI), like training.evaluate would give.

    Models are downloaded under download_dir (MLflow's default is a temp dir that is never removed).
    """
    import tempfile

    import mlflow.sklearn

    x, y = holdout()
    cache: dict[str, dict[str, float]] = {}

    def score(uri: str) -> dict[str, float]:
        if uri not in cache:
            dst = tempfile.mkdtemp(dir=download_dir)
            cache[uri] = metrics_of(mlflow.sklearn.load_model(uri, dst_path=dst), x, y)
        return cache[uri]

    return score


def register(cfg, names: list[str]) -> dict[str, str]:
    """Train and register one tiny sklearn model per feature-set name; returns name -> version."""
    import mlflow
    import mlflow.sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from mlops_bundle.training import skops_trusted_types

    mlflow.set_tracking_uri(cfg.tracking_uri)

    client = mlflow.MlflowClient(cfg.tracking_uri)
    exp_name = f"promotion-test-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(exp_name, artifact_location=cfg.artifact_root)
    x, y = data(1, 3000)
    versions = {}
    for name in names:
        model = make_pipeline(
            ColumnTransformer([("keep", "passthrough", FEATURE_SETS[name])]), LogisticRegression()
        ).fit(x, y)
        with mlflow.start_run(experiment_id=exp_id, run_name=name):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                pip_requirements=["scikit-learn", "skops"],
                serialization_format="skops",
                skops_trusted_types=skops_trusted_types(model),
                registered_model_name=cfg.model_name,
            )
        versions[name] = str(info.registered_model_version)
        sign(client, cfg.model_name, versions[name])
    return versions


def sign(client, name: str, version: str) -> None:
    """Sign a registered version as the bundle's registration does (mlops_bundle.provenance), so the gate
    and rollback accept it; the key is the test session's $MLOPS_PROVENANCE_KEY (tests/conftest.py)."""
    import shutil
    import tempfile

    import mlflow.artifacts

    from mlops_bundle import provenance

    mv = client.get_model_version(name, version)
    folder = tempfile.mkdtemp(prefix="gate-models-")
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=folder)
        digest = provenance.file_sha256(provenance.model_file(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for key, value in provenance.signed_tags(mv.run_id, (mv.tags or {}).get("train_key", ""), digest).items():
        client.set_model_version_tag(name, version, key, value)


def decisions_of(client, cfg, version: str, download_dir: Path, folder: str = "decisions") -> list[dict]:
    """The JSON records under ``folder`` of the version's run (``decisions`` or ``evaluations``)."""
    run_id = client.get_model_version(cfg.model_name, version).run_id
    out = []
    for item in client.list_artifacts(run_id, folder):
        local = client.download_artifacts(run_id, item.path, dst_path=str(download_dir))
        out.append(json.loads(Path(local).read_text()))
    return out

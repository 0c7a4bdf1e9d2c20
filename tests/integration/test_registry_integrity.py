"""Registry integrity on a real MLflow server: only models the bundle made are loaded, only decisions move
the champion.

An insider with write access to MLflow registers a version carrying a pickle payload (it touches a marker
file when unpickled) and points `@champion` at it. Monitoring, the gate and rollback refuse it without
deserializing it (no marker); the control shows the same payload does run under `mlflow.pyfunc.load_model`.
Signing it with the provenance key does not help a pickle (skops only), a signed skops file with a type
outside the trust list is refused too, the alias watch puts the decided champion back and audits it, and
`adopt` signs an older version only after a person confirmed it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import uuid
import warnings

import pytest

from mlops_bundle import audit, ingest, promotion, provenance, tracking, training
from mlops_bundle.config import load_config
from mlops_bundle.sample import generate_batch
from mlops_bundle.storage import LocalStorage
from tests.conftest import REPO
from tests.models import fit_logreg

DAY = "2026-10-01"


class PicklePayload:
    """What an attacker registers: unpickling it touches MARKER (stands for arbitrary code)."""

    marker: pathlib.Path

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))

    def predict(self, x):  # looks like a model to MLflow (it gets the python_function flavor)
        return x


@pytest.fixture
def world(tmp_path, mlflow_server, monkeypatch):
    name = f"integrity-{uuid.uuid4().hex[:8]}"
    env = {
        "MLOPS_MLFLOW__TRACKING_URI": mlflow_server,
        "MLOPS_MLFLOW__REGISTERED_MODEL": name,
        "MLOPS_MLFLOW__EXPERIMENT": f"{name}-training",
        "MLOPS_PROMOTION__LOCK_URI": (tmp_path / "locks").as_uri(),
        "MLOPS_AUDIT__STORE_URI": f"sqlite:///{tmp_path / 'audit.db'}",
        "MLOPS_STORAGE__ROOT_URI": (tmp_path / "lake").as_uri(),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = load_config()
    df, problems = ingest.coerce(generate_batch(DAY, rows=600), cfg)
    assert not problems
    store = LocalStorage(tmp_path / "lake")
    ingest.write_staging(store, cfg, DAY, df, {"rows": len(df), "fingerprint": ingest.fingerprint(df)})
    return cfg, tracking.client(cfg), store, df, tmp_path


def log_skops(cfg, model, trusted: list[str]) -> str:
    """A run with the model logged in skops format (what training.log_candidate writes); its run id."""
    import mlflow
    import mlflow.sklearn

    tracking.use(cfg)
    mlflow.set_experiment(cfg.experiment_name)
    with warnings.catch_warnings(), mlflow.start_run() as run:
        warnings.simplefilter("ignore")
        mlflow.sklearn.log_model(
            model, name="model", serialization_format="skops", skops_trusted_types=trusted,
            pip_requirements=["scikit-learn", "skops"],
        )  # fmt: skip
    return run.info.run_id


def bundle_version(cfg, df, key: str) -> str:
    """A version registered the bundle's way (training.register_best signs it)."""
    run_id = log_skops(cfg, fit_logreg(df), training.skops_trusted_types(fit_logreg(df)))
    best = training.register_best(
        cfg, [{"candidate": "logreg", "run_id": run_id, "metrics": {"roc_auc": 0.8}}], key
    )
    return best["version"]


def planted_pickle(cfg, marker: pathlib.Path) -> str:
    """An insider's version: registered straight into MLflow, cloudpickle, no gate, no signature."""
    import mlflow
    import mlflow.sklearn

    tracking.use(cfg)
    with warnings.catch_warnings(), mlflow.start_run():
        warnings.simplefilter("ignore")
        info = mlflow.sklearn.log_model(
            PicklePayload(marker), name="model", serialization_format="cloudpickle",
            registered_model_name=cfg.model_name, pip_requirements=["scikit-learn"],
        )  # fmt: skip
    return str(info.registered_model_version)


def scorer(cfg, df):
    return lambda uri: training.evaluate(training.load_model(cfg, uri), df, cfg)


def test_planted_versions_are_refused_and_the_watch_restores_the_champion(world):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    cfg, client, store, df, tmp = world
    name, marker = cfg.model_name, tmp / "payload-ran"
    v1 = bundle_version(cfg, df, "key-1")
    assert client.get_model_version(name, v1).tags[provenance.SIGNATURE_TAG]
    first = promotion.gate(
        cfg, client, challenger_version=v1, score=scorer(cfg, df), actor="t", decision_key="t/1/promote"
    )
    assert first.applied and training.load_model(cfg, f"models:/{name}@champion") is not None

    planted = planted_pickle(cfg, marker)
    client.set_registered_model_alias(name, "champion", planted)  # the insider bypasses gate, lock, audit
    from mlops_bundle.monitoring.runs import score_day

    with pytest.raises(
        provenance.ProvenanceError, match=f"version {planted} carries no provenance signature"
    ):
        score_day(cfg, store, client, DAY)  # monitor
    v3 = bundle_version(cfg, df, "key-3")
    with pytest.raises(promotion.GateError, match="scoring the champion .* no provenance signature"):
        promotion.gate(
            cfg, client, challenger_version=v3, score=scorer(cfg, df), actor="t", decision_key="t/3/promote"
        )
    with pytest.raises(promotion.GateError, match="scoring the challenger .* no provenance signature"):
        promotion.gate(cfg, client, challenger_version=planted, score=scorer(cfg, df), actor="t")
    # an insider who also holds the provenance key: a pickle is still never loaded (skops only)...
    mv = client.get_model_version(name, planted)
    for key, value in provenance.signed_tags(mv.run_id, "", "0" * 64).items():
        client.set_model_version_tag(name, planted, key, value)
    with pytest.raises(provenance.ProvenanceError, match="not a skops model"):
        training.load_model(cfg, f"models:/{name}/{planted}")
    # ...and a signed skops file naming a callable outside the trust list is refused by skops
    evil = make_pipeline(FunctionTransformer(func=os.getcwd))
    run_id = log_skops(cfg, evil, ["posix.getcwd", "os.getcwd"])
    sneaky = bundle_version_from_run(cfg, run_id, "key-sneaky")
    with pytest.raises(provenance.ProvenanceError, match="holds types the bundle does not trust"):
        training.load_model(cfg, f"models:/{name}/{sneaky}")
    assert not marker.exists(), "a refused version was deserialized"

    # the alias watch: no decision set champion -> restored to the decided one, audited
    result = promotion.watch(cfg, client)
    assert result.status == "restored" and result.found["champion"] == planted, result
    assert tracking.alias_version(client, name, "champion") == v1
    records = [r for r in audit.iter_records(cfg.audit_uri) if r["event"] == "registry.alias_restored"]
    assert [r["payload"]["expected"]["champion"] for r in records] == [v1]
    assert promotion.watch(cfg, client).status == "ok"
    with pytest.raises(
        promotion.GateError, match=f"cannot make version {planted} the champion: .* not a skops"
    ):
        promotion.rollback(cfg, client, reason="insider test rollback", actor="t", to_version=planted)
    assert tracking.alias_version(client, name, "champion") == v1 and not marker.exists()

    # control: MLflow's own loader runs the same payload
    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.load_model(f"models:/{name}/{planted}")
    assert marker.exists(), "control: the payload should run under mlflow.pyfunc.load_model"


def bundle_version_from_run(cfg, run_id: str, key: str) -> str:
    best = training.register_best(
        cfg, [{"candidate": "x", "run_id": run_id, "metrics": {"roc_auc": 0.9}}], key
    )
    return best["version"]


def test_adopt_signs_an_older_version_only_after_confirmation(world):
    cfg, client, _, df, _ = world
    name = cfg.model_name
    model = fit_logreg(df)
    run_id = log_skops(cfg, model, training.skops_trusted_types(model))
    client.create_registered_model(name)  # registered before provenance checks existed: no signature
    old = str(client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id).version)
    with pytest.raises(provenance.ProvenanceError, match="no provenance signature"):
        training.load_model(cfg, f"models:/{name}/{old}")
    seen = []
    with pytest.raises(provenance.ProvenanceError, match="not confirmed"):
        provenance.adopt(cfg, name, old, actor="alice", confirm=lambda s: seen.append(s) or False)
    assert f"{name} version {old}: run {run_id}" in seen[0] and "sha256" in seen[0]
    assert provenance.SIGNATURE_TAG not in client.get_model_version(name, old).tags
    # the command line: a wrong confirmation aborts, the right one signs and audits who did it
    argv = [sys.executable, "-m", "mlops_bundle.provenance", "adopt", "--version", old, "--actor", "alice"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    wrong = subprocess.run(argv, input="nope\n", capture_output=True, text=True, env=env, timeout=120)
    assert wrong.returncode == 1 and "not confirmed" in wrong.stderr, wrong.stderr
    done = subprocess.run(argv, input=f"{old}\n", capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert training.load_model(cfg, f"models:/{name}/{old}") is not None
    records = [r for r in audit.iter_records(cfg.audit_uri) if r["event"] == "provenance.adopt"]
    assert [(r["actor"], r["subject"]) for r in records] == [("alice", f"{name}/{old}")]

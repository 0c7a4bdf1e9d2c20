"""The whole chain on the production-like stack: a batch lands in S3, ingest -> train -> promote and then
monitor run on the Celery workers (driven through the REST API with a JWT by the `chain` fixture), the
champion is served by the MLflow server, and the staged data and reports are encrypted with KMS."""

from __future__ import annotations

import pytest

from tests.audit_trail import assert_dag_runs_audited
from tests.envelope import kms_key_that_wrapped
from tests.services import aws_client
from tests.stack.api import bundle_config, task_instances

pytestmark = pytest.mark.stack


def test_every_task_ran_on_a_celery_worker(stack, chain):
    tis = {
        kind: task_instances(stack, chain.token, chain.dag_id(kind), run["dag_run_id"])
        for kind, run in chain.runs.items()
    }
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tis["train"]}
    assert states[("approve", -1)] == "success"  # approved through the API by the chain fixture
    assert states[("promote", -1)] == "success"
    assert states[("publish_champion", -1)] == "success"  # the champion changed
    assert {t["queue"] for t in tis["train"] if t["task_id"] == "train_candidate"} == {"training"}
    monitor = {t["task_id"]: t["state"] for t in tis["monitor"]}
    # same distribution as the training day: no drift, so decide_retrain skips (no retrain triggered)
    assert monitor == {"score_batch": "success", "drift_report": "success", "decide_retrain": "skipped"}

    # the TI hostname is the worker's node name; the scheduler completes EmptyOperator tasks itself
    workers = set(stack.worker_hostnames.values())
    hosts = {
        (kind, t["task_id"], t["map_index"]): t["hostname"]
        for kind, rows in tis.items()
        for t in rows
        if t["state"] == "success" and t["operator"] != "EmptyOperator"
    }
    assert hosts and set(hosts.values()) <= workers, hosts
    print(f"\nchain {chain.seconds}; stack start {stack.timings}; hosts {sorted(set(hosts.values()))}")


def test_champion_is_served_by_the_mlflow_server(stack, chain, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from mlops_bundle.sample import generate_batch

    cfg = bundle_config(stack, chain.dataset)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_url)
    mlflow.set_tracking_uri(stack.mlflow_url)
    mlflow.set_registry_uri(stack.mlflow_url)  # the autouse fixture of tests/conftest.py resets both
    version = MlflowClient(stack.mlflow_url).get_model_version_by_alias(cfg.model_name, "champion")
    model = mlflow.sklearn.load_model(f"models:/{cfg.model_name}@champion")
    assert version.version  # other stack tests may promote or roll back later; the alias must resolve
    fresh = generate_batch("2026-01-06", rows=50, seed=11)
    proba = model.predict_proba(fresh[cfg.dataset.feature_columns])
    assert proba.shape == (50, 2)
    assert ((proba >= 0) & (proba <= 1)).all()


def test_lake_objects_are_encrypted_with_kms_and_the_landing_batch_stays_raw(stack, chain):
    from mlops_bundle.crypto import DecryptionError, KmsKeyring, decrypt_bytes, object_context, read_key_id
    from mlops_bundle.monitoring import predictions_key, reports_prefix

    cfg = bundle_config(stack, chain.dataset)
    s3 = stack.s3()
    kms = aws_client("kms", stack.moto_url)
    checked, encrypted = {}, []
    for prefix in (
        f"lake/{cfg.storage.staging_prefix}/{cfg.dataset.name}/ds={chain.batch_date}/",
        "lake/" + predictions_key(cfg, chain.batch_date),
        f"lake/{reports_prefix(cfg, chain.batch_date)}/",
    ):
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", [])]
        assert keys, f"nothing under s3://{stack.bucket}/{prefix}"
        for key in keys:
            head = s3.get_object(Bucket=stack.bucket, Key=key, Range="bytes=0-8191")["Body"].read()
            assert head.startswith(b"MLOPSENC"), f"{key} is not encrypted: {head!r}"
            # the header names the stack's KMS key, and KMS itself says that key wrapped the data key
            # (the associated data is the object's key under the lake root)
            assert read_key_id(head) == f"kms:{stack.kms_key_id}", key
            assert kms_key_that_wrapped(head, kms, key.removeprefix("lake/").encode()) == stack.kms_key_id
        checked[prefix] = len(keys)
        encrypted += keys
    # so a staged partition opens with the stack's KMS key and with no other
    key = next(k for k in encrypted if k.endswith(".parquet"))
    blob = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    # the associated data binds the object to its lake (by default the storage root) and its key
    aad = object_context(cfg.encryption.lake_id or cfg.root_uri, key.removeprefix("lake/"))
    assert decrypt_bytes(blob, KmsKeyring(kms, stack.kms_key_id), aad=aad).startswith(b"PAR1")
    other = kms.create_key(Description="not the stack's key")["KeyMetadata"]["Arn"]
    with pytest.raises(DecryptionError, match="unknown key id 'kms:"):
        decrypt_bytes(blob, KmsKeyring(kms, other, allowed_key_ids=[other]), aad=aad)
    with pytest.raises(DecryptionError, match="does not unwrap"):  # the header relabelled to the other key
        relabelled = blob.replace(stack.kms_key_id.encode(), other.encode(), 1)
        decrypt_bytes(relabelled, KmsKeyring(kms, other), aad=aad)
    landing = s3.get_object(Bucket=stack.bucket, Key=chain.landing_key)["Body"].read()
    assert landing == chain.landing_bytes
    print(f"\nencrypted objects per prefix: {checked}")


def test_audit_chain_in_postgres_records_the_chain_and_verifies(stack, chain):
    from mlops_bundle import audit

    uri = stack.env["MLOPS_AUDIT__STORE_URI"]
    runs = {run["dag_run_id"] for run in chain.runs.values()}
    seen = {r["payload"].get("run_id") for r in audit.iter_records(uri) if isinstance(r["payload"], dict)}
    assert runs <= seen, f"runs without audit records: {runs - seen}"
    # every run's state changes, written by the scheduler: dag_run.running, then dag_run.success
    assert_dag_runs_audited(
        uri, [(chain.dag_id(kind), run["dag_run_id"], "success") for kind, run in chain.runs.items()]
    )
    result = audit.verify(uri, stack.env["MLOPS_AUDIT_HMAC_KEY"])
    assert result.ok, result
    # the chain is keyed (as in docker-compose.yaml): without the key it does not verify
    assert not audit.verify(uri).ok


def test_every_worker_preloaded_the_bundle_before_forking_tasks(stack, chain):
    """Each Celery worker imported the bundle and its libraries once, all of them, at start-up
    (plugins/mlops_airflow/worker_preload.py), so the task processes it forked inherited them."""
    for name in stack.worker_hostnames:
        text = stack.airflow.log(f"worker-{name}").read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if "worker preload: imported" in ln), None)
        assert line is not None, f"worker {name} did not preload; see {stack.airflow.log(f'worker-{name}')}"
        assert ", 0 failed)" in line, line

"""The whole chain on the production-like stack: a batch lands in S3, ingest -> train -> promote run on the
Celery workers, the champion is served by the MLflow server and the staged data is encrypted with KMS."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
import urllib.request

import pytest

pytestmark = pytest.mark.stack

BATCH_DATE = "2026-01-05"
TERMINAL = {"success", "failed"}


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def rest(stack, token: str, method: str, path: str, body=None, **params):
    """One REST call with a bearer JWT (proxies bypassed: everything is on loopback)."""
    url = stack.api_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def wait_run(stack, token: str, dag_id: str, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stack.check_alive()
        run = rest(stack, token, "GET", f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}")
        if run["state"] in TERMINAL:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{dag_id} {run_id} still {run['state']} after {timeout}s; logs {stack.log_dir}"
            )
        time.sleep(2)


def task_instances(stack, token: str, dag_id: str, run_id: str) -> list[dict]:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances"
    return rest(stack, token, "GET", path, limit=100)["task_instances"]


def test_batch_in_s3_trains_and_promotes_a_champion_on_celery_workers(stack, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from mlops_bundle.config import load_config
    from mlops_bundle.sample import generate_batch

    cfg = load_config(environ=stack.env)
    token = rest(stack, "", "POST", "/auth/token", {"username": "admin", "password": "admin"})["access_token"]
    assert token.count(".") == 2  # a JWT

    # a day's batch arrives in the S3 landing prefix (raw CSV, as a producer would upload it)
    s3 = stack.s3()
    landing_key = f"lake/{cfg.storage.landing_prefix}/{cfg.dataset.name}/{BATCH_DATE}/batch.csv"
    csv = generate_batch(BATCH_DATE, rows=2000).to_csv(index=False).encode()
    s3.put_object(Bucket=stack.bucket, Key=landing_key, Body=csv)

    for dag_id in ("ingest", "train", "monitor"):
        rest(stack, token, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    t0 = time.monotonic()
    run_id = f"stack__{BATCH_DATE}__{int(time.time())}"
    body = {"dag_run_id": run_id, "logical_date": None, "conf": {"date": BATCH_DATE}}
    rest(stack, token, "POST", "/api/v2/dags/ingest/dagRuns", body)

    ingest = wait_run(stack, token, "ingest", run_id, timeout=300)
    assert ingest["state"] == "success", f"ingest failed; task logs under {stack.log_dir}"

    # the validated-data asset event triggers train
    deadline = time.monotonic() + 120
    train_runs: list[dict] = []
    while not train_runs:
        runs = rest(stack, token, "GET", "/api/v2/dags/train/dagRuns", limit=50)["dag_runs"]
        train_runs = [
            r
            for r in runs
            if r["run_type"] == "asset_triggered"
            and dt.datetime.fromisoformat(r["queued_at"].replace("Z", "+00:00")) >= since
        ]
        assert time.monotonic() < deadline, "no asset-triggered train run after ingest succeeded"
        time.sleep(2)
    train = wait_run(stack, token, "train", train_runs[0]["dag_run_id"], timeout=480)
    chain_s = time.monotonic() - t0
    train_tis = task_instances(stack, token, "train", train["dag_run_id"])
    states = {(t["task_id"], t["map_index"]): t["state"] for t in train_tis}
    assert train["state"] == "success", f"train ended {train['state']}: {states}"
    assert states[("promote", -1)] == "success"
    assert states[("publish_champion", -1)] == "success"  # the champion changed

    # every task ran on one of the Celery workers (the TI hostname is the worker's node name); the
    # scheduler completes EmptyOperator tasks itself, without sending them to a worker
    workers = set(stack.worker_hostnames.values())
    ran = task_instances(stack, token, "ingest", run_id) + train_tis
    hosts = {
        (t["task_id"], t["map_index"]): t["hostname"]
        for t in ran
        if t["state"] == "success" and t["operator"] != "EmptyOperator"
    }
    assert hosts and set(hosts.values()) <= workers, hosts
    print(f"\nchain ingest -> train -> promote took {chain_s:.0f}s; start {stack.timings}; hosts {hosts}")
    print(
        f"train_candidate queue(s): {sorted({t['queue'] for t in train_tis if t['task_id'] == 'train_candidate'})}"
    )

    # the champion is served by the MLflow server, loads and predicts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_url)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(stack.mlflow_url)
    mlflow.set_registry_uri(stack.mlflow_url)  # a registry URI left by another test must not win
    try:
        version = MlflowClient(stack.mlflow_url).get_model_version_by_alias(cfg.model_name, "champion")
        model = mlflow.sklearn.load_model(f"models:/{cfg.model_name}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    assert str(version.version) == "1"
    fresh = generate_batch("2026-01-06", rows=50, seed=11)
    proba = model.predict_proba(fresh[cfg.dataset.feature_columns])
    assert proba.shape == (50, 2)
    assert ((proba >= 0) & (proba <= 1)).all()

    # staged data is encrypted at rest with the KMS key; the landing batch stays raw
    prefix = f"lake/{cfg.storage.staging_prefix}/{cfg.dataset.name}/ds={BATCH_DATE}/"
    staged = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", [])]
    assert staged, f"nothing staged under s3://{stack.bucket}/{prefix}"
    for key in staged:
        head = s3.get_object(Bucket=stack.bucket, Key=key, Range="bytes=0-15")["Body"].read()
        assert head.startswith(b"MLOPSENC"), f"{key} is not encrypted: {head!r}"
    assert s3.get_object(Bucket=stack.bucket, Key=landing_key)["Body"].read() == csv

    # the audit chain lives in PostgreSQL and saw the workers' task events
    import psycopg2

    conn = psycopg2.connect(stack.env["MLOPS_AUDIT__STORE_URI"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM audit_log")
            assert cur.fetchone()[0] > 0
    finally:
        conn.close()

"""Session-wide hermetic environment: a private AIRFLOW_HOME with its own SQLite DB, the repo's dags/ and
plugins/, a private storage root and a private copy of the GX project, no default connections.

Environment variables must be set before Airflow is first imported, hence module level.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mlops-tests-"))
AIRFLOW_HOME = _SESSION_DIR / "airflow"
LAKE = _SESSION_DIR / "lake"
GX_ROOT = _SESSION_DIR / "great_expectations"

AIRFLOW_HOME.mkdir()
LAKE.mkdir()
shutil.copytree(REPO / "great_expectations", GX_ROOT, ignore=shutil.ignore_patterns("uncommitted"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLOPS_CONFIG": str(REPO / "config" / "churn.yaml"),
        "MLOPS_STORAGE__ROOT_URI": LAKE.as_uri(),
        "MLOPS_VALIDATION__GX_ROOT": str(GX_ROOT),
        "MLOPS_AUDIT__STORE_URI": f"sqlite:///{_SESSION_DIR / 'audit.db'}",
        "MLOPS_MLFLOW__TRACKING_URI": str(_SESSION_DIR / "mlflow-local"),
    }
)
for key in list(os.environ):
    if key.startswith(("AIRFLOW_CONN_", "AWS_")) or key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        del os.environ[key]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def gx_root() -> Path:
    return GX_ROOT


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(session_dir):
    """A real moto server subprocess on 127.0.0.1: the S3/KMS HTTP APIs (AWS itself cannot exist here)."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    log = open(session_dir / "moto.log", "wb")
    moto_bin = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start; see {session_dir / 'moto.log'}") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    """A fresh bucket plus an Airflow AWS connection (`mlops_s3`, endpoint_url in its extra) pointing at it.

    Returns (boto3 client, bucket name). The bundle's storage root is switched to s3://<bucket>/lake.
    """
    import json
    import uuid

    import boto3

    bucket = f"mlops-test-{uuid.uuid4().hex[:10]}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    client = boto3.client("s3", endpoint_url=moto_endpoint, **creds)
    client.create_bucket(Bucket=bucket)
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_S3", json.dumps(conn))
    monkeypatch.setenv("MLOPS_STORAGE__AWS_CONN_ID", "mlops_s3")
    monkeypatch.setenv("MLOPS_STORAGE__ROOT_URI", f"s3://{bucket}/lake")
    return client, bucket


@pytest.fixture(scope="session")
def mlflow_server(session_dir):
    """A real `mlflow server` subprocess (SQLite backend, proxied artifacts) on 127.0.0.1.

    Yields its http:// tracking URI. Job execution is disabled (it would fork ~2 GB of workers).
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    root = session_dir / "mlflow-server"
    root.mkdir(exist_ok=True)
    log = open(root / "server.log", "wb")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill_group(proc.pid)  # the server's uvicorn child too, not only `mlflow server`
                raise RuntimeError(f"mlflow server did not start; see {root / 'server.log'}") from None
            time.sleep(0.5)
    yield url
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid)  # uvicorn may outlive `mlflow server` (graceful shutdown): no orphans
    log.close()


def _kill_group(pgid: int) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _clear_mlflow_uris() -> None:
    import sys

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(key, None)
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None


@pytest.fixture(autouse=True)
def _reset_mlflow_globals():
    """MLflow keeps the tracking and registry URIs in module globals and mirrors them into environment
    variables (inherited by subprocesses). Module- and session-scoped fixtures set them too, so every test
    starts and ends without any: one test's store or server never leaks into the next (a dead server
    there means minutes of HTTP retries, a stale one reads the wrong store). Tests set what they use."""
    _clear_mlflow_uris()
    yield
    _clear_mlflow_uris()

"""Session-wide hermetic environment: a private AIRFLOW_HOME with its own SQLite DB, the repo's dags/ and
plugins/, a private storage root and a private copy of the GX project, no default connections.

Environment variables must be set before Airflow is first imported, hence module level.

Tiers: a test that needs more than Python carries a marker (registered in pyproject.toml) for each
service it needs. The fixtures that start or reach a service add their marker themselves
(``SERVICE_FIXTURES``, applied at collection), and after every test it is checked that each service
fixture the test used (also through ``request.getfixturevalue``) is declared by a marker. With
``MLOPS_TEST_NO_SERVICES=1`` (``make test-quick``) a service fixture fails at once and any connection to
PostgreSQL/Redis fails the test (tests/no_services/sitecustomize.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests import services
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[1]
# worker processes of the tests (multiprocessing spawn/forkserver import this module again) use the
# session's folder instead of making (and leaking) one each
_SESSION_ENV = "MLOPS_TEST_SESSION_DIR"
_WORKER = bool(os.environ.get(_SESSION_ENV)) and Path(os.environ[_SESSION_ENV]).is_dir()
_SESSION_DIR = Path(os.environ[_SESSION_ENV]) if _WORKER else Path(tempfile.mkdtemp(prefix="mlops-tests-"))
os.environ[_SESSION_ENV] = str(_SESSION_DIR)
AIRFLOW_HOME = _SESSION_DIR / "airflow"
LAKE = _SESSION_DIR / "lake"
GX_ROOT = _SESSION_DIR / "great_expectations"

if not _WORKER:
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
        "MLOPS_CONFIG": str(REPO / "config" / "datasets" / "churn.yaml"),
        "MLOPS_STORAGE__ROOT_URI": LAKE.as_uri(),
        "MLOPS_VALIDATION__GX_ROOT": str(GX_ROOT),
        "MLOPS_AUDIT__STORE_URI": f"sqlite:///{_SESSION_DIR / 'audit.db'}",
        # where listeners count events they could not write (never the checkout's var/)
        "MLOPS_AUDIT__GAP_DIR": str(_SESSION_DIR / "audit-gaps"),
        "MLOPS_MLFLOW__TRACKING_URI": str(_SESSION_DIR / "mlflow-local"),
        # the model provenance key of this test session (every registration signs, every load checks)
        "MLOPS_PROVENANCE_KEY": os.environ.get("MLOPS_PROVENANCE_KEY") or secrets.token_urlsafe(32),
    }
)
for key in list(os.environ):
    if key.startswith(("AIRFLOW_CONN_", "AWS_")) or key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        del os.environ[key]
# the stack tier (scripts/stack.py reads STACK_*) uses the same PostgreSQL and Redis as the other tiers
for key, value in services.stack_defaults().items():
    os.environ.setdefault(key, value)

# the quick tier's guard, in this process and (as their sitecustomize) in Python subprocesses
_GUARD_DIR = Path(__file__).resolve().parent / "no_services"
if os.environ.get(services.NO_SERVICES_ENV):
    from tests.no_services import sitecustomize as no_services_guard

    no_services_guard.install()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_GUARD_DIR), os.environ.get("PYTHONPATH")]))
else:
    no_services_guard = None

# fixture -> the markers of what it needs; a test using the fixture (directly or through other fixtures)
# gets them at collection. Tests that reach a service without these fixtures carry the marker explicitly.
SERVICE_FIXTURES = {
    "pg_server": ("postgres",),
    "pg_database": ("postgres",),
    "moto_endpoint": ("moto",),
    "mlflow_server": ("mlflow_server",),
    "local_airflow": ("airflow_procs",),
    "stack": ("stack",),
}
# a marker that implies others: the process stack needs the loopback PostgreSQL and Redis
IMPLIED_MARKERS = {"stack": ("postgres", "redis")}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture in item.fixturenames:
            for name in SERVICE_FIXTURES.get(fixture, ()):
                item.add_marker(name)
        for marker, implied in IMPLIED_MARKERS.items():
            if item.get_closest_marker(marker):
                for name in implied:
                    item.add_marker(name)


def pytest_sessionfinish(session, exitstatus):
    if not _WORKER:  # the folder belongs to the pytest process that made it
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _services_are_declared(request):
    """After each test: every service fixture it used is declared by a marker (else the quick tier would
    run it), and under the guard it reached no service (even if it swallowed the refusal)."""
    seen = len(no_services_guard.violations) if no_services_guard else 0
    yield
    undeclared = [
        f"{fixture} (marker {name!r})"
        for fixture in request.fixturenames
        for name in SERVICE_FIXTURES.get(fixture, ())
        if not request.node.get_closest_marker(name)
    ]
    if undeclared:
        pytest.fail(
            f"{request.node.nodeid} uses {', '.join(undeclared)} without the marker: mark it (e.g. "
            f"pytest.param(..., marks=pytest.mark.<name>) for a parametrized fixture)",
            pytrace=False,
        )
    if no_services_guard and len(no_services_guard.violations) > seen:
        pytest.fail("\n".join(no_services_guard.violations[seen:]), pytrace=False)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def gx_root() -> Path:
    return GX_ROOT


@pytest.fixture(scope="session")
def airflow_db():
    """The session's SQLite metadata DB, migrated from scratch (what `dag.test()` needs)."""
    from airflow.utils import db

    db.resetdb()
    return True


# ------------------------------------------------------------------------------------------ services


@pytest.fixture(scope="session")
def pg_server() -> str:
    """services.PG_URL once it answers (missing: skip, or fail under CI)."""
    services.assert_services_allowed("PostgreSQL (pg_server)")
    problem = services.pg_reachable()
    if problem:
        services.unavailable(problem)
    return services.PG_URL


@pytest.fixture
def pg_database(pg_server) -> str:
    """The URL of a throwaway PostgreSQL database, dropped (WITH FORCE) after the test."""
    with services.pg_database(url=pg_server) as url:
        yield url


def _responds(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except Exception:
        return False


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def _server(name: str, cmd: list[str], probe_url: str, log_path: Path, timeout: float, env=None):
    """Run `cmd` in its own process group until `probe_url` answers; stop the whole group afterwards."""
    services.assert_services_allowed(name)
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)

    def running() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")

    try:
        wait_for(
            lambda: _responds(probe_url),
            bool,
            timeout=timeout,
            describe=lambda _: f"{name} did not answer {probe_url} (see {log_path})",
            interval=0.3,
            alive=running,
        )
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc.pid)  # e.g. mlflow's uvicorn child may outlive `mlflow server`: no orphans
        log.close()


@pytest.fixture(scope="session")
def moto_endpoint(session_dir):
    """A real moto server subprocess on 127.0.0.1: the S3/KMS HTTP APIs (AWS itself cannot exist here)."""
    port = services.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    with _server("moto server", cmd, url + "/moto-api/", session_dir / "moto.log", timeout=30):
        yield url


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    """A fresh bucket plus an Airflow AWS connection (`mlops_s3`, endpoint_url in its extra) pointing at it.

    Returns (boto3 client, bucket name). The bundle's storage root is switched to s3://<bucket>/lake.
    """
    import json
    import uuid

    bucket = f"mlops-test-{uuid.uuid4().hex[:10]}"
    client = services.aws_client("s3", moto_endpoint)
    client.create_bucket(Bucket=bucket)
    creds = services.AWS_TEST_CREDENTIALS
    conn = {
        "conn_type": "aws",
        "login": creds["aws_access_key_id"],
        "password": creds["aws_secret_access_key"],
        "extra": {"endpoint_url": moto_endpoint, "region_name": creds["region_name"]},
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
    port = services.free_port()
    root = session_dir / "mlflow-server"
    root.mkdir(exist_ok=True)
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
    url = f"http://127.0.0.1:{port}"
    with _server("mlflow server", cmd, url + "/health", root / "server.log", timeout=120, env=env):
        yield url


# ------------------------------------------------------------------------------------- MLflow globals


def _clear_mlflow_uris() -> None:
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


@pytest.fixture
def race_run() -> int:
    """Which repetition of a race test this is (MLOPS_TEST_RACE_RUNS parametrizes it; see tests/racing.py)."""
    return 0


def pytest_generate_tests(metafunc):
    from tests.racing import RACE_RUNS

    if RACE_RUNS > 1 and "race_run" in metafunc.fixturenames:
        metafunc.parametrize("race_run", range(RACE_RUNS))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.moto)])
def lake_storage(request, tmp_path):
    """The lake as a local folder, and (moto) as a prefix of an S3 bucket: storage tests run on both."""
    from mlops_bundle.storage import LocalStorage, S3Storage

    if request.param == "local":
        return LocalStorage(tmp_path / "lake")
    client, bucket = request.getfixturevalue("s3_bucket")
    return S3Storage(client, bucket, "lake")

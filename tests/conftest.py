"""Session-wide hermetic environment: a private AIRFLOW_HOME with its own SQLite DB, the repo's dags/ and
plugins/, a private storage root and a private copy of the GX project, no default connections.

Environment variables must be set before Airflow is first imported, hence module level.
"""

from __future__ import annotations

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
    }
)
for key in list(os.environ):
    if key.startswith("AIRFLOW_CONN_") or key.startswith("AWS_"):
        del os.environ[key]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def gx_root() -> Path:
    return GX_ROOT

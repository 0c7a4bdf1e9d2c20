"""Stack tier: the docker-compose topology as real processes (PostgreSQL, Redis, CeleryExecutor with two
workers, api-server, scheduler, dag-processor, triggerer, MLflow on Postgres, moto S3 + KMS), started by
scripts/stack.py.

Skipped when PostgreSQL or Redis is not reachable on 127.0.0.1, except in CI (env CI set), where that is
a failure: the CI machine has both.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import stack as stack_runner  # noqa: E402 (scripts/stack.py)

# Small and fast: one logistic-regression candidate instead of the config's four.
STACK_ENV = {
    "MLOPS_TRAINING__CANDIDATES": json.dumps(
        [{"name": "logreg", "family": "logistic_regression", "params": {"C": 1.0}}]
    ),
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "stack: needs PostgreSQL + Redis on 127.0.0.1; starts real Airflow/Celery/MLflow processes"
    )


def _require_services() -> None:
    missing = [
        what
        for what, ok in (
            (f"PostgreSQL on {stack_runner.PG_HOST}:{stack_runner.PG_PORT}", stack_runner.pg_reachable()),
            (f"Redis on {stack_runner.REDIS_HOST}:{stack_runner.REDIS_PORT}", stack_runner.redis_reachable()),
        )
        if not ok
    ]
    if not missing:
        return
    reason = f"stack tests need {' and '.join(missing)} (not reachable)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; in CI they must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A running stack for the test module; stopped and its databases dropped afterwards."""
    _require_services()
    with stack_runner.start_stack(tmp_path_factory.mktemp("stack"), extra_env=STACK_ENV) as running:
        yield running

"""Fixtures for DAG tests: the parsed DagBag and the errors of dag.test()'s tasks (the migrated SQLite
metadata DB, `airflow_db`, is tests/conftest.py's)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture
def task_errors(monkeypatch):
    """The exception each task raised in dag.test(), by task id (Airflow's own TaskRunResult.error).

    dag.test() prints task logs to stdout, but its capture is not reliable across tests, so the tests read
    the errors from the in-process supervisor's results instead (a wrapper: the task still runs for real).
    """
    from airflow.sdk.execution_time import supervisor

    errors: dict[str, str] = {}
    real = supervisor.run_task_in_process

    def recording(ti, task):
        result = real(ti=ti, task=task)
        if result.error is not None:
            errors[ti.task_id] = f"{type(result.error).__name__}: {result.error}"
        return result

    monkeypatch.setattr(supervisor, "run_task_in_process", recording)
    return errors

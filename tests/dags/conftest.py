"""Fixtures for DAG tests: a migrated SQLite metadata DB and the parsed DagBag."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.resetdb()
    return True


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    return DagBag(dag_folder=str(REPO / "dags"))

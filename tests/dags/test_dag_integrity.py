"""Every DAG file parses, follows the bundle's conventions, and keeps parsing cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import airflow  # noqa: F401  (importing Airflow puts plugins/ on sys.path, as in a worker)
import pytest

from mlops_airflow import names
from tests.conftest import REPO

DAG_FILES = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))
HEAVY = ["pandas", "sklearn", "mlflow", "great_expectations", "evidently", "boto3", "botocore", "tink"]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors


def test_dag_ids_are_the_deployment_dag_or_a_data_set_dag(dagbag):
    """Every DAG id is `audit_verify` (one per deployment) or `<dataset>__<kind>` of the configured data
    set, and every kind exists (tests/dags/test_factory.py: a catalog of two data sets)."""
    kinds = set()
    for dag_id, dag in dagbag.dags.items():
        if dag_id == names.AUDIT_VERIFY_DAG:
            continue
        dataset, _, kind = dag_id.rpartition(names.SEP)
        assert names.dataset_of(dag_id) == dataset == "churn" and kind in names.DAG_KINDS, dag_id
        assert "dataset:churn" in dag.tags, f"{dag_id}: tags must include its data set"
        kinds.add(kind)
    assert kinds == set(names.DAG_KINDS)
    assert len(dagbag.dags) == len(names.DAG_KINDS) + 1


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_each_dag_file_defines_its_dags(dagbag, path):
    """Each DAG file defines the DAG of its kind for the configured data set (the session's catalog is
    churn's one file); config_errors.py defines none while every config file is valid."""
    ids = sorted(d.dag_id for d in dagbag.dags.values() if d.fileloc == str(path))
    if path.stem == "config_errors":
        expected = []
    elif path.stem == names.AUDIT_VERIFY_DAG:
        expected = [names.AUDIT_VERIFY_DAG]
    else:
        expected = [names.dag_id("churn", path.stem)]
    assert ids == expected, f"{path.name} must define exactly {expected}, found {ids}"


def test_every_dag_kind_has_its_file():
    assert {p.stem for p in DAG_FILES} == {*names.DAG_KINDS, names.AUDIT_VERIFY_DAG, "config_errors"}


def test_conventions(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id}: module docstring -> doc_md missing"
        assert dag.tags and "mlops" in dag.tags, f"{dag_id}: tags must include 'mlops'"
        assert dag.catchup is False, f"{dag_id}: catchup must be False"
        assert dag.start_date is not None and dag.start_date.year >= 2024, f"{dag_id}: static start_date"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id}: set an owner"
            assert task.retries >= 2, f"{dag_id}.{task.task_id}: retries must be >= 2"


def test_dag_files_do_not_import_heavy_libraries():
    code = f"""
import importlib.util, json, sys
import airflow.sdk
before = set(sys.modules)
for i, path in enumerate({[str(p) for p in DAG_FILES]!r}):
    spec = importlib.util.spec_from_file_location(f"dagfile_{{i}}", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
loaded = sorted({{m.split('.')[0] for m in set(sys.modules) - before}})
print(json.dumps(loaded))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = sorted(set(loaded) & set(HEAVY))
    assert heavy == [], f"importing dags/ loaded heavy libraries {heavy}; import them inside tasks"

"""Every DAG file parses, follows the bundle's conventions, and keeps parsing cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

DAG_FILES = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))
HEAVY = ["pandas", "sklearn", "mlflow", "great_expectations", "evidently", "boto3", "botocore", "tink"]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors
    assert len(dagbag.dags) >= len(DAG_FILES) >= 1


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_one_dag_per_file_named_after_it(dagbag, path):
    ids = [d.dag_id for d in dagbag.dags.values() if d.fileloc == str(path)]
    assert ids == [path.stem], f"{path.name} must define exactly the DAG {path.stem!r}, found {ids}"


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

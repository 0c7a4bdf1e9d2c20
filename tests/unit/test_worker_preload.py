"""The workers' preload: for Celery wired through config/stack.env, for the LocalExecutor through the
executor scripts/airflow_local.py names; one module list (what the task bodies import); a module it cannot
import is reported, never raised. That a real Celery worker preloads all of it is checked on the process
stack (tests/stack/test_stack_chain.py); the LocalExecutor's workers here, as real forked processes."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys

import airflow  # noqa: F401 - puts plugins/ on sys.path (the bundle's Airflow glue, mlops_airflow)
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import airflow_local  # noqa: E402 (scripts/airflow_local.py)
import stack as stack_runner  # noqa: E402 (scripts/stack.py)


@pytest.fixture
def preload_module(monkeypatch):
    """mlops_airflow.worker_preload imported with the preload switched off (importing it would preload)."""
    monkeypatch.setenv("MLOPS_WORKER_PRELOAD", "false")
    sys.modules.pop("mlops_airflow.worker_preload", None)
    yield importlib.import_module("mlops_airflow.worker_preload")
    sys.modules.pop("mlops_airflow.worker_preload", None)


def test_stack_env_points_celery_at_the_bundle_config_which_imports_the_preload():
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    path = stack_runner.read_env_file(stack_runner.STACK_ENV_FILE)["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"]
    module, _, attr = path.rpartition(".")
    config = getattr(importlib.import_module(module), attr)
    assert "mlops_airflow.worker_preload" in config["imports"]
    # Airflow's own settings (broker, result backend, acks_late, prefetch ...) are kept unchanged
    assert {k: v for k, v in config.items() if k != "imports"} == {
        k: v for k, v in DEFAULT_CELERY_CONFIG.items() if k != "imports"
    }


def test_modules_cover_the_task_bodies_and_every_model_family(preload_module):
    from mlops_bundle.training import FAMILIES

    names = preload_module.modules()
    for family in FAMILIES.values():
        assert family.estimator.rpartition(".")[0] in names
    for name in ("mlops_airflow.train_tasks", "mlops_airflow.ingest_tasks", "mlops_airflow.monitor_tasks"):
        assert name in names
    assert {"mlflow.sklearn", "evidently", "great_expectations", "pandas"} <= set(names)
    # the bundle first: mlops_bundle.training installs its warning filters before skops is imported
    assert names.index("mlops_bundle.training") < names.index("skops.io")


def test_a_module_that_cannot_be_imported_is_reported_not_raised(
    preload_module, caplog, tmp_path, monkeypatch
):
    # a module whose import takes 0.3 s: the seconds reported are the time the imports took
    (tmp_path / "slow_module_for_the_preload_test.py").write_text("import time\ntime.sleep(0.3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ["json", "slow_module_for_the_preload_test", "no_such_module_for_the_preload_test"]
    with caplog.at_level(logging.WARNING, logger="mlops_airflow.worker_preload"):
        seconds, failed = preload_module.preload(names)
    sys.modules.pop("slow_module_for_the_preload_test", None)
    assert failed == ["no_such_module_for_the_preload_test"]
    assert 0.3 <= seconds < 5, seconds
    assert "could not import no_such_module_for_the_preload_test" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"), [(None, True), ("true", True), ("1", True), ("false", False), ("OFF", False)]
)
def test_the_switch(preload_module, value, expected):
    environ = {} if value is None else {"MLOPS_WORKER_PRELOAD": value}
    assert preload_module.enabled(environ) is expected


def test_the_switch_off_means_preload_once_imports_nothing(preload_module, monkeypatch):
    monkeypatch.setattr(preload_module, "modules", lambda: pytest.fail("modules() read with the switch off"))
    assert preload_module.preload_once({"MLOPS_WORKER_PRELOAD": "false"}) is None


def test_preload_once_imports_once_per_process(preload_module, monkeypatch):
    calls = []
    monkeypatch.setattr(preload_module, "modules", lambda: ["json"])
    monkeypatch.setattr(preload_module, "preload", lambda names: calls.append(names) or (0.1, []))
    assert preload_module.preload_once({}) == (0.1, 1, [])
    assert preload_module.preload_once({}) == (0.1, 1, [])
    assert calls == [["json"]]


# A scheduler's view of the executor, in a fresh interpreter (what `airflow scheduler` does): load the
# executor class from the path string the local deployment configures, start it (forking `parallelism`
# workers), and report what the scheduler and a worker process have loaded. The worker's memory maps show
# whether scikit-learn's extension modules are mapped in it: a task process is forked from a worker
# (Task SDK supervisor), so it starts with what the worker has.
SCHEDULER_SIDE = """
import json, sys, time
from airflow.executors.executor_loader import ExecutorLoader
from mlops_airflow import worker_preload

executor = ExecutorLoader.load_executor(sys.argv[1])
executor.start()
try:
    time.sleep(0.5)
    maps = {pid: open(f"/proc/{pid}/maps").read() for pid in executor.workers}
    print("REPORT", json.dumps({
        "class": f"{type(executor).__module__}.{type(executor).__name__}",
        "workers": len(executor.workers),
        "alive": all(p.is_alive() for p in executor.workers.values()),
        "scheduler_has_sklearn_pipeline": "sklearn.pipeline" in sys.modules,
        "scheduler_has_train_tasks": "mlops_airflow.train_tasks" in sys.modules,
        "workers_map_sklearn": [("/sklearn/" in m) for m in maps.values()],
        "preloaded": worker_preload._done and worker_preload._done[1],
        "modules": len(worker_preload.modules()),
    }))
finally:
    executor.end()
"""


def _start_executor(switch: str) -> dict:
    env = {
        **os.environ,
        "AIRFLOW__CORE__EXECUTOR": airflow_local.EXECUTOR,
        "AIRFLOW__CORE__PARALLELISM": "2",
        "MLOPS_WORKER_PRELOAD": switch,
    }
    env.pop("DEMO_EXECUTOR", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCHEDULER_SIDE, airflow_local.EXECUTOR],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line.removeprefix("REPORT "))


def test_the_local_deployment_names_the_preloading_executor(tmp_path):
    if os.environ.get("DEMO_EXECUTOR"):
        pytest.skip("DEMO_EXECUTOR overrides the default executor")
    assert airflow_local.EXECUTOR == "mlops_airflow.local_executor.PreloadingLocalExecutor"
    env = airflow_local.airflow_env({}, home=tmp_path)
    assert env["AIRFLOW__CORE__EXECUTOR"] == airflow_local.EXECUTOR
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO / "plugins")  # where mlops_airflow lives


@pytest.mark.slow
def test_local_executor_workers_are_forked_with_the_libraries_loaded():
    report = _start_executor("true")
    assert report["class"] == airflow_local.EXECUTOR
    assert report["workers"] == 2 and report["alive"]
    # once, in the scheduler, before the fork: every module of the shared list
    assert report["preloaded"] == report["modules"]
    assert report["scheduler_has_sklearn_pipeline"] and report["scheduler_has_train_tasks"]
    assert report["workers_map_sklearn"] == [True, True]


@pytest.mark.slow
def test_local_executor_with_the_switch_off_preloads_nothing():
    report = _start_executor("false")
    assert report["class"] == airflow_local.EXECUTOR
    assert report["workers"] == 2 and report["alive"]
    assert report["preloaded"] is None
    assert not report["scheduler_has_sklearn_pipeline"] and not report["scheduler_has_train_tasks"]
    assert report["workers_map_sklearn"] == [False, False]

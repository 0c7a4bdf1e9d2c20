"""The Celery workers' preload: wired through config/stack.env, lists what the task bodies import, and
reports (never raises) a module it cannot import. That a real worker preloads all of it is checked on the
process stack (tests/stack/test_stack_chain.py)."""

from __future__ import annotations

import importlib
import logging
import sys

import airflow  # noqa: F401 - puts plugins/ on sys.path (the bundle's Airflow glue, mlops_airflow)
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
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

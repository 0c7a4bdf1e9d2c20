"""A real, private Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor on SQLite) plus
an MLflow server, started through the same runner as `make up`, for tests that need real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import services
from tests.conftest import REPO
from tests.polling import wait_for

# the data set the local Airflow runs (MLOPS_CONFIG is its one config file, so only its DAGs exist)
DATASET = "churn"


def dag(kind: str, dataset: str = DATASET) -> str:
    """The DAG id of a data set's DAG of ``kind`` (``churn__train``): the names REST clients use."""
    return f"{dataset}__{kind}"


@dataclass
class LocalAirflow:
    url: str
    mlflow_url: str
    lake: Path
    home: Path
    env: dict
    token: str = ""

    def call(self, method: str, path: str, body=None, token: str | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        tok = self.token if token is None else token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return json.loads(text) if text else None

    def login(self, user: str = "admin", password: str = "admin") -> str:
        return self.call("POST", "/auth/token", {"username": user, "password": password}, token="")[
            "access_token"
        ]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600, until=("success", "failed")) -> dict:
        return wait_for(
            lambda: self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"),
            lambda run: run["state"] in until,
            timeout=timeout,
            describe=lambda run: f"{dag_id}/{run_id} still {run['state']} (logs in {self.home})",
        )

    def task_states(self, dag_id: str, run_id: str) -> dict:
        tis = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {(t["task_id"], t["map_index"]): t["state"] for t in tis["task_instances"]}

    def bundle_config(self, dataset: str = DATASET):
        """A data set's bundle config as the Airflow processes run with it (the test module's
        LOCAL_AIRFLOW_ENV)."""
        from mlops_bundle.catalog import dataset_config

        env = {k: v for k, v in self.env.items() if k.startswith("MLOPS_")}
        return dataset_config(dataset, environ={**env, "MLOPS_MLFLOW__TRACKING_URI": self.mlflow_url})

    def stage(self, days, rows: int = 1500) -> None:
        """Validated staging partitions of generated churn batches for `days` (what ingest would write)."""
        from mlops_bundle import ingest
        from mlops_bundle.sample import generate_batch
        from mlops_bundle.storage import LocalStorage

        cfg, store = self.bundle_config(), LocalStorage(self.lake)
        for day in days:
            df, problems = ingest.coerce(generate_batch(day, rows=rows), cfg)
            assert not problems
            ingest.write_staging(
                store, cfg, day, df, {"rows": len(df), "fingerprint": ingest.fingerprint(df)}
            )

    def await_approval(self, run_id: str, alive=None) -> dict:
        """Wait until train run `run_id`'s `approve` task awaits input; its task-instance states."""
        return wait_for(
            lambda: self.task_states(dag("train"), run_id),
            lambda states: states.get(("approve", -1)) == "awaiting_input",
            timeout=400,
            describe=lambda states: f"approve not awaiting input: {states}",
            interval=3,
            alive=alive,
        )


@pytest.fixture(scope="module")
def local_airflow(request, tmp_path_factory, gx_root, mlflow_server):
    """Per test module; a module may set LOCAL_AIRFLOW_ENV = {...} to configure the bundle for it."""
    services.assert_services_allowed("a local Airflow (real processes)")
    tmp = tmp_path_factory.mktemp("local-airflow")
    lake = tmp / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_"))} | {
        "DEMO_AIRFLOW_HOME": str(tmp / "airflow"),
        "DEMO_PORT": str(services.free_port()),
        "DEMO_WORKER_LOG_PORT": str(services.free_port()),
        "DEMO_TRIGGER_LOG_PORT": str(services.free_port()),
        "MLOPS_CONFIG": str(REPO / "config" / "datasets" / "churn.yaml"),
        "MLOPS_STORAGE__ROOT_URI": f"file://{lake}",
        "MLOPS_VALIDATION__GX_ROOT": str(gx_root),
        "MLOPS_MLFLOW__TRACKING_URI": mlflow_server,
        "MLOPS_PROMOTION__LOCK_URI": "",
        **getattr(request.module, "LOCAL_AIRFLOW_ENV", {}),
    }
    log = open(tmp / "runner.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "up", "--no-seed", "--paused"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def running() -> None:
        if proc.poll() is not None:
            tail = (tmp / "runner.log").read_text()[-4000:]
            raise RuntimeError(f"local Airflow exited ({proc.returncode}):\n{tail}")

    try:
        wait_for(
            lambda: (tmp / "runner.log").read_text(),
            lambda text: "press Ctrl-C to stop" in text,
            timeout=300,
            describe=lambda text: "local Airflow did not start:\n" + text[-4000:],
            interval=1,
            alive=running,
        )
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    af = LocalAirflow(f"http://127.0.0.1:{env['DEMO_PORT']}", mlflow_server, lake, tmp / "airflow", env)
    af.token = af.login()
    yield af
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()

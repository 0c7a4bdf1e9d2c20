"""`make up` is rerunnable and two checkouts run side by side (scripts/demo.py up, real Airflow processes).

One module, three starts in about 3-4 minutes of CI:

1. a start on a task-log port something else holds is refused at once, naming DEMO_WORKER_LOG_PORT;
2. checkout A (this one, with its own Airflow home; churn's config file only) and checkout B (a copy of
   the files `make up` reads, so its config, lake and MLflow store are its own; its whole catalog
   config/datasets/, as `make up` runs it: churn and diabetes, a pool each) start at the same time on
   different ports;
3. A is stopped and started again on the same home: the second `up` reuses what the first set up (DB,
   pool, secrets) and comes up (it used to fail: `HTTP 422 ... include_deferred ... Field required`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import services
from tests.conftest import REPO

pytestmark = [pytest.mark.airflow_procs, pytest.mark.slow]

READY = "press Ctrl-C to stop"
COPIED = ("config", "dags", "plugins", "scripts", "great_expectations")


def _env(home: Path, config: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_", "DEMO_"))}
    return env | {
        "DEMO_AIRFLOW_HOME": str(home),
        "MLOPS_CONFIG": str(config),
        **{k: str(v) for k, v in ports.items()},
    }


def _ports() -> dict[str, int]:
    names = ("DEMO_PORT", "DEMO_MLFLOW_PORT", "DEMO_WORKER_LOG_PORT", "DEMO_TRIGGER_LOG_PORT")
    return {name: services.free_port() for name in names}


class Up:
    """One `scripts/demo.py up --paused --no-seed` of `checkout`, its output in `log`."""

    def __init__(self, checkout: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.out = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, str(checkout / "scripts" / "demo.py"), "up", "--paused", "--no-seed"],
            env=env,
            cwd=checkout,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"`up` exited {self.proc.returncode}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"`up` not ready after {timeout:.0f}s:\n{self.text()[-3000:]}")
            time.sleep(1)

    def wait_exit(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.out.close()


def _answers(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=10) as resp:
        return resp.status == 200


def test_up_twice_and_two_checkouts_side_by_side(tmp_path):
    services.assert_services_allowed("two local Airflows (real processes)")
    copy = tmp_path / "checkout-b"
    for name in COPIED:
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("uncommitted", "__pycache__"))
    ports_a, ports_b = _ports(), _ports()
    env_a = _env(tmp_path / "home-a", REPO / "config" / "datasets" / "churn.yaml", ports_a)
    # A's lake and MLflow store would be the checkout's var/: keep this test's own out of it
    env_a |= {
        "MLOPS_STORAGE__ROOT_URI": (tmp_path / "lake-a").as_uri(),
        "MLOPS_MLFLOW__TRACKING_URI": str(tmp_path / "mlflow-a"),
    }
    env_b = _env(tmp_path / "home-b", copy / "config" / "datasets", ports_b)

    ups: list[Up] = []
    try:
        # a port in use fails the start at once, naming the setting to change
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            taken = held.getsockname()[1]
            clash = Up(copy, env_b | {"DEMO_WORKER_LOG_PORT": str(taken)}, tmp_path / "clash.log")
            ups.append(clash)
            assert clash.wait_exit(60) != 0
        assert f"port {taken} (DEMO_WORKER_LOG_PORT) is already in use" in clash.text()
        # two checkouts start side by side, each on its own ports
        a = Up(REPO, env_a, tmp_path / "a1.log")
        b = Up(copy, env_b, tmp_path / "b1.log")
        ups += [a, b]
        a.wait_ready()
        b.wait_ready()
        assert _answers(ports_a["DEMO_PORT"]) and _answers(ports_b["DEMO_PORT"])
        assert str(copy / "dags") in b.text() and str(REPO / "dags") in a.text()
        # each data set of a checkout's catalog gets its own training pool
        assert "pool            churn__training" in a.text() and "diabetes__training" not in a.text()
        assert (
            "pool            churn__training" in b.text() and "pool            diabetes__training" in b.text()
        )
        # A again on the same home: the second `up` works
        a.stop()
        again = Up(REPO, env_a, tmp_path / "a2.log")
        ups.append(again)
        again.wait_ready()
        assert "pool            churn__training" in again.text() and _answers(ports_a["DEMO_PORT"])
    finally:
        for up in reversed(ups):
            up.stop()

"""`make demo`'s runner end to end with real Airflow processes (api-server, scheduler, dag-processor,
triggerer; LocalExecutor on SQLite): runs are triggered through the REST API with a JWT, followed to the
end, summarised, and every process is stopped. Uses a private AIRFLOW_HOME, port, lake and GX copy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, _free_port

pytestmark = pytest.mark.slow


def test_demo_runs_through_real_airflow_and_stops(tmp_path, gx_root):
    lake = tmp_path / "lake"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and not k.startswith("MLOPS_")
    } | {
        "DEMO_AIRFLOW_HOME": str(tmp_path / "airflow"),
        "DEMO_PORT": str(_free_port()),
        "DEMO_MLFLOW_PORT": str(_free_port()),
        "MLOPS_MLFLOW__TRACKING_URI": str(tmp_path / "mlflow"),
        "MLOPS_CONFIG": str(REPO / "config" / "churn.yaml"),
        "MLOPS_STORAGE__ROOT_URI": f"file://{lake}",
        "MLOPS_VALIDATION__GX_ROOT": str(gx_root),
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "demo", "--timeout", "600", "--settle", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "RESULT: OK" in out
    assert "rows ingested : 5000" in out
    assert "expect_column_values_to_be_in_set" in out  # the corrupt batch's failure is explained
    manifest = json.loads((lake / "staging/churn/ds=2026-01-05/_manifest.json").read_text())
    assert manifest["rows"] == 5000
    assert list((lake / "quarantine/churn/ds=2026-01-06").iterdir())
    assert not (lake / "staging/churn/ds=2026-01-06").exists()
    # the lifecycle reached a champion, a drift report and a drift-triggered retrain judged by the gate
    assert "gate decision : promote - no champion yet: first model promoted" in out
    assert "drift verdict : DRIFT" in out
    assert "retrain       : triggered" in out
    assert (lake / "reports/churn/2026-01-07/report.html").exists()
    assert re.search(r"champion: churn-classifier version \d+", out)
    # every Airflow process it started is gone
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 5, out[:2000]  # mlflow server + 4 Airflow components
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

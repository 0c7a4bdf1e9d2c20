"""`make demo`'s runner end to end with real Airflow processes (api-server, scheduler, dag-processor,
triggerer; LocalExecutor on SQLite): the two sample data sets of config/datasets/ (churn: classification;
diabetes: regression, onboarded by a backfill) run side by side through their own DAGs, triggered through
the REST API with a JWT, followed to the end, summarised, and every process is stopped. Uses a private
AIRFLOW_HOME, port, lake and GX copy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.airflow_procs]


def test_demo_runs_through_real_airflow_and_stops(tmp_path, gx_root):
    """Also with encryption at rest on and a private audit store: afterwards no task log holds key
    material, and the audit chain verifies and covers every task state change and every gate decision."""
    from mlops_bundle.crypto import generate_local_keyset

    keyset = generate_local_keyset()
    lake = tmp_path / "lake"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and not k.startswith("MLOPS_")
    } | {
        "DEMO_AIRFLOW_HOME": str(tmp_path / "airflow"),
        "DEMO_PORT": str(free_port()),
        "DEMO_MLFLOW_PORT": str(free_port()),
        "MLOPS_MLFLOW__TRACKING_URI": str(tmp_path / "mlflow"),
        # the catalog folder: the demo runs both of its data sets (the overrides below apply to each)
        "MLOPS_CONFIG": str(REPO / "config" / "datasets"),
        "MLOPS_STORAGE__ROOT_URI": f"file://{lake}",
        "MLOPS_VALIDATION__GX_ROOT": str(gx_root),
        "MLOPS_ENCRYPTION__ENABLED": "true",
        "AIRFLOW_CONN_MLOPS_KEYSET": json.dumps({"conn_type": "generic", "password": keyset}),
        "MLOPS_AUDIT__STORE_URI": f"sqlite:///{tmp_path / 'audit.db'}",
    }
    out = _demo(env)
    assert "RESULT: OK" in out
    print(out[out.find("\nSUMMARY\n") :])  # shown when an assertion below fails
    runs = _summary(out)
    # every run of the summary belongs to one of the two data sets' DAGs, and each judged run ended as
    # the demo expected
    assert {dag_id.partition("__")[0] for dag_id, _ in runs} == {"churn", "diabetes"}, list(runs)
    for (dag_id, run_id), text in runs.items():
        assert "UNEXPECTED" not in text, (dag_id, run_id, text)

    # churn: a good batch (5000 rows), a corrupt one stopped at the gate, a drifted day
    [good] = _of(runs, "churn__ingest", "date 2026-01-05")
    assert "rows ingested : 5000" in good and "GX verdict    : passed" in good, good
    [corrupt] = _of(runs, "churn__ingest", "date 2026-01-06")
    assert "as expected: the quality gate stopped a corrupt batch" in corrupt, corrupt
    assert "expect_column_values_to_be_in_set" in corrupt  # the corrupt batch's failure is explained
    from mlops_bundle.crypto import is_encrypted

    assert is_encrypted((lake / "staging/churn/ds=2026-01-05/part-0.parquet").read_bytes()[:16])
    assert is_encrypted((lake / "reports/churn/2026-01-07/report.html").read_bytes()[:16])
    assert list((lake / "quarantine/churn/ds=2026-01-06").iterdir())
    assert not (lake / "staging/churn/ds=2026-01-06").exists()
    # the lifecycle reached a champion, a drift report and a drift-triggered retrain judged by the gate
    first = "gate decision : promote - no champion yet: first model promoted"
    churn_train = _of(runs, "churn__train")
    assert [t for t in churn_train if first in t], churn_train
    assert all("roc_auc=" in t for t in churn_train), churn_train
    # every run is the demo's or one its runs triggered: the cron schedules are off in the demo, so
    # unpausing creates no catch-up run, and no train window ends on a day the demo never landed
    assert not [k for k, t in runs.items() if "[scheduled]" in t.partition("\n")[0]], list(runs)
    # day 3 (the drifted batch) really retrains: a new version, judged against the first champion
    assert [t for t in churn_train if "registered    : churn-classifier version 2\n" in t], churn_train
    [churn_monitor] = _of(runs, "churn__monitor", "date 2026-01-07")
    assert "drift verdict : DRIFT" in churn_monitor, churn_monitor
    assert "retrain       : triggered (asset mlops.churn.drift_detected -> churn__train)" in churn_monitor
    assert re.search(r"champion: churn-classifier version \d+", out)

    # diabetes (regression): three days backfilled with one train run on them (the first champion), a
    # fourth day ingested, monitored against that champion; its files are its own, encrypted too
    [backfill] = _of(runs, "diabetes__backfill", "[manual]")
    assert "-> as expected" in backfill, backfill
    diabetes_train = _of(runs, "diabetes__train")
    assert [t for t in diabetes_train if t.startswith("diabetes__train  backfill__")], diabetes_train
    assert [t for t in diabetes_train if first in t], diabetes_train
    assert all("rmse=" in t for t in diabetes_train), diabetes_train
    [day4] = _of(runs, "diabetes__ingest", "date 2026-01-07")
    assert "GX verdict    : passed" in day4, day4
    [diabetes_monitor] = _of(runs, "diabetes__monitor", "date 2026-01-07")
    assert "drift verdict :" in diabetes_monitor and "rmse" in diabetes_monitor, diabetes_monitor
    for day in ("2026-01-04", "2026-01-05", "2026-01-06", "2026-01-07"):
        assert is_encrypted((lake / f"staging/diabetes/ds={day}/part-0.parquet").read_bytes()[:16])
    assert is_encrypted((lake / "reports/diabetes/2026-01-07/report.html").read_bytes()[:16])
    assert re.search(r"champion: diabetes-regressor version \d+", out)
    # every Airflow process it started is gone
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 5, out[:2000]  # mlflow server + 4 Airflow components
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    _no_key_material_in_logs(tmp_path / "airflow" / "logs", keyset)
    _audit_covers_the_run(tmp_path)

    # a second `make demo` on the same checkout works: the same batches are unchanged, so their ingest
    # runs end with the gate task skipped, publish no event and start no train run
    out2 = _demo(env)
    assert "RESULT: OK" in out2
    assert out2.count("unchanged     : batch churn/") == 2, out2[-6000:]
    assert out2.count("unchanged     : batch diabetes/2026-01-07") == 1, out2[-6000:]
    runs2 = _summary(out2)
    assert not _of(runs2, "churn__train"), "an unchanged re-ingest must not start a train run"
    assert "expect_column_values_to_be_in_set" in out2  # the corrupt batch is still stopped at the gate


def _demo(env: dict) -> str:
    """`make demo`'s runner in a subprocess; its output (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "demo", "--timeout", "600", "--settle", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def _summary(out: str) -> dict[tuple[str, str], str]:
    """The demo's SUMMARY: (dag_id, run_id) -> that run's block of lines (header line first)."""
    assert "\nSUMMARY\n" in out, out[-6000:]
    text = out.split("\nSUMMARY\n", 1)[1]
    runs: dict[tuple[str, str], str] = {}
    key = None
    for line in text.splitlines():
        m = re.match(r"^(\w+__\w+)  (\S+)  \[", line)
        if m:
            key = (m.group(1), m.group(2))
            runs[key] = ""
        elif line.startswith("RESULT:"):
            key = None
        if key is not None:
            runs[key] += line + "\n"
    return runs


def _of(runs: dict[tuple[str, str], str], dag_id: str, header: str = "") -> list[str]:
    """The blocks of ``dag_id``'s runs (whose header line contains ``header``), in the summary's order."""
    return [text for (d, _), text in runs.items() if d == dag_id and header in text.partition("\n")[0]]


def _no_key_material_in_logs(logs, keyset):
    secrets = {keyset, json.dumps(json.loads(keyset))}
    secrets |= {k["keyData"]["value"] for k in json.loads(keyset)["key"]}
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files, "the run wrote task logs"
    for path in files:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"key material found in {path}"


def _audit_covers_the_run(tmp_path):
    import sqlite3

    from mlops_bundle import audit

    uri = f"sqlite:///{tmp_path / 'audit.db'}"
    result = audit.verify(uri)
    assert result.ok, result.reason
    records = list(audit.iter_records(uri))

    def key(r):
        p = r["payload"] if isinstance(r["payload"], dict) else json.loads(r["payload"])
        return (r["event"], p.get("dag_id"), p.get("run_id"), p.get("task_id"), p.get("map_index", -1))

    seen = {key(r) for r in records if r["event"].startswith("task_instance.")}
    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        tis = db.execute(
            "select dag_id, run_id, task_id, map_index, state from task_instance "
            "where state in ('success', 'failed')"
        ).fetchall()
        promotes = db.execute(
            "select count(*) from task_instance where task_id in ('promote', 'roll_back') and state = 'success'"
        ).fetchone()[0]
    assert tis
    missing = [t for t in tis if (f"task_instance.{t[4]}", t[0], t[1], t[2], t[3]) not in seen]
    # EmptyOperator tasks are marked success by the scheduler without running: no task process, no hook
    missing = [t for t in missing if t[2] != "no_approval_needed"]
    assert missing == [], f"task state changes without an audit record: {missing[:5]}"
    decisions = [r for r in records if r["event"].startswith("decision.")]
    # one audit record per decision (promote or roll_back task), whatever retries happened
    assert len(decisions) == len({r["payload"]["decision_id"] for r in decisions}) == promotes > 0

"""The ingest `source` allowlist against a real Airflow, as someone allowed to trigger the DAG would try it.

Runs triggered through the REST API point ingest at /etc, at the Airflow home (config, secrets), at
another bucket, through `..` traversals and through a symlink out of the allowed folder; valid batches
are planted in the Airflow home and beside the allowed folder, so an unchecked source would be ingested.
Each fails at discover_files with the allowlist error before anything is listed: no foreign file name in
the task log, nothing copied to quarantine or written to staging. A batch under the allowed folder is
ingested (control). All runs are triggered together, then awaited: one Airflow for the module.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from mlops_bundle.sample import generate_batch, write_landing
from tests.conftest import _SESSION_DIR
from tests.integration.conftest import dag

pytestmark = [pytest.mark.slow, pytest.mark.airflow_procs]

_TAG = uuid.uuid4().hex[:8]
ALLOWED = (_SESSION_DIR / f"partner-drops-{_TAG}").resolve()
OUTSIDE = (_SESSION_DIR / f"elsewhere-{_TAG}").resolve()  # a sibling of the allowed folder
LOCAL_AIRFLOW_ENV = {"MLOPS_INGEST__ALLOWED_SOURCES": json.dumps([f"file://{ALLOWED}/"])}
CONTROL_DATE, ATTACK_DATE = "2026-11-11", "2026-11-12"
# valid batches planted where an attacker points ingest: unchecked, they would be listed, read, named in
# the log and staged (or quarantined)
CANARIES = [f"canary-home-{_TAG}", f"canary-outside-{_TAG}"]
INGEST = dag("ingest")


def _foreign_names(*folders: Path) -> list[str]:
    """Distinctive names of the files directly in ``folders`` (what a listing of them would show)."""
    return sorted(
        p.name
        for folder in folders
        for p in folder.iterdir()
        if p.is_file() and len(p.name) >= 8 and ("." in p.name or "-" in p.name)
    )


def _files(folder: Path) -> set[str]:
    return (
        {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()
    )


def _task_log(af, run_id: str) -> str:
    """Every log file of the run's tasks, as written by the task processes (what the UI shows)."""
    folder = af.home / "logs" / f"dag_id={INGEST}" / f"run_id={run_id}"
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.rglob("*.log")))


def test_sources_outside_the_allowlist_fail_before_anything_is_listed(local_airflow):
    af = local_airflow
    started = time.monotonic()
    write_landing(generate_batch(CONTROL_DATE, rows=600), ALLOWED / "partner-a" / CONTROL_DATE)
    write_landing(generate_batch(ATTACK_DATE, rows=300), af.home, name=CANARIES[0])
    write_landing(generate_batch(ATTACK_DATE, rows=300), OUTSIDE, name=CANARIES[1])
    (ALLOWED / "to-home").symlink_to(af.home)
    foreign = _foreign_names(Path("/etc"), af.home, OUTSIDE)
    assert {"airflow.cfg", "secrets.json", f"{CANARIES[0]}.csv"} <= set(foreign), foreign
    attacks = {
        "etc": "file:///etc",
        "airflow home": f"file://{af.home}",
        "other bucket": "s3://another-bucket/",
        "traversal to a sibling": f"file://{ALLOWED}/../{OUTSIDE.name}",
        "traversal to /etc": f"file://{ALLOWED}" + "/.." * len(ALLOWED.parts) + "/etc",
        "symlink out": f"file://{ALLOWED}/to-home",
    }
    written_before = {p: _files(af.lake / p) for p in ("staging", "quarantine")}

    af.call("PATCH", f"/api/v2/dags/{INGEST}", {"is_paused": False})

    def trigger(date: str, source: str) -> str:
        body = {"logical_date": None, "conf": {"date": date, "source": source}}
        return af.call("POST", f"/api/v2/dags/{INGEST}/dagRuns", body)["dag_run_id"]

    control = trigger(CONTROL_DATE, f"file://{ALLOWED}/partner-a/{CONTROL_DATE}")
    runs = {name: trigger(ATTACK_DATE, source) for name, source in attacks.items()}

    for name, run_id in runs.items():
        assert af.wait_run(INGEST, run_id, timeout=300)["state"] == "failed", name
        states = af.task_states(INGEST, run_id)
        assert states[("discover_files", -1)] == "failed", (name, states)
        assert states[("validate_and_stage", -1)] == "upstream_failed", (name, states)
        ti = af.call("GET", f"/api/v2/dags/{INGEST}/dagRuns/{run_id}/taskInstances/discover_files")
        assert ti["try_number"] == 1, f"{name}: a refused source must not be retried ({ti})"
        log = _task_log(af, run_id)
        assert "is refused" in log and f"['file://{ALLOWED}/']" in log, f"{name}:\n{log[-3000:]}"
        assert "ingest.allowed_sources" in log and "MLOPS_INGEST__ALLOWED_SOURCES" in log
        # nor is the requested path repeated (its distinctive part, where it has one)
        echoed = {
            "other bucket": "another-bucket",
            "traversal to a sibling": OUTSIDE.name,
            "symlink out": "to-home",
        }
        leaked = [n for n in [*foreign, echoed.get(name, "")] if n and n in log]
        assert not leaked, f"{name}: foreign names {leaked} in the task log:\n{log[-3000:]}"

    assert af.wait_run(INGEST, control, timeout=400)["state"] == "success", _task_log(af, control)[-3000:]
    staged = _files(af.lake / "staging") - written_before["staging"]
    assert staged == {
        f"churn/ds={CONTROL_DATE}/_manifest.json",
        f"churn/ds={CONTROL_DATE}/part-0.parquet",
    }, staged
    assert _files(af.lake / "quarantine") == written_before["quarantine"], "nothing may be quarantined"
    assert not [f for f in _files(af.lake) if any(n in f for n in foreign)]
    print(f"\n{len(runs) + 1} ingest runs triggered and awaited in {time.monotonic() - started:.0f} s")

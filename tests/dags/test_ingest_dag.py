"""The ingest DAG run in-process with dag.test() on SQLite: good batch, bad batch, rerun."""

from __future__ import annotations

import json

import pytest

from mlops_bundle import audit
from mlops_bundle.config import load_config
from mlops_bundle.sample import generate_batch, write_landing
from tests.asset_events import asset_event_extras
from tests.conftest import LAKE

pytestmark = pytest.mark.usefixtures("airflow_db")


def _land(date: str, **kw) -> None:
    write_landing(generate_batch(date, rows=kw.pop("rows", 800), **kw), LAKE / "landing" / "churn" / date)


def _run(dagbag, date: str):
    from airflow.utils.state import DagRunState  # noqa: F401  (imported for readability of asserts)

    dag = dagbag.get_dag("churn__ingest")
    dr = dag.test(run_conf={"date": date, "source": None})  # every param: dag.test() keeps them
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    return dr, states


def _asset_events(date: str) -> list[dict]:
    return [e for e in asset_event_extras("mlops.churn.validated_data") if e.get("date") == date]


def _landing_snapshot(date: str) -> dict[str, bytes]:
    folder = LAKE / "landing" / "churn" / date
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_good_batch_is_staged_and_emits_asset_event(dagbag):
    date = "2026-03-02"
    _land(date)
    before = _landing_snapshot(date)
    dr, states = _run(dagbag, date)
    assert dr.state == "success", states
    manifest = json.loads((LAKE / "staging" / "churn" / f"ds={date}" / "_manifest.json").read_text())
    assert manifest["rows"] == 800 and manifest["gx_success"] is True
    assert manifest["fingerprint"].startswith("sha256:")
    events = _asset_events(date)
    assert len(events) == 1
    extra = events[0]
    assert extra["rows"] == 800 and extra["gx_success"] is True
    assert extra["fingerprint"] == manifest["fingerprint"]
    assert extra["staging_uri"] == f"file://{LAKE}/staging/churn/ds={date}"
    assert _landing_snapshot(date) == before, "landing files must never change"


def test_bad_batch_is_quarantined_and_fails_naming_the_rule(dagbag, task_errors):
    date = "2026-03-03"
    _land(date, corrupt="unknown_category")
    before = _landing_snapshot(date)
    dr, states = _run(dagbag, date)
    assert dr.state == "failed"
    assert states == {"discover_files": "success", "validate_and_stage": "failed"}
    text = task_errors["validate_and_stage"]
    assert text.startswith("AirflowFailException")
    assert "expect_column_values_to_be_in_set" in text and "region" in text and "atlantis" in text
    assert not (LAKE / "staging" / "churn" / f"ds={date}").exists(), "no staging write for a bad batch"
    [attempt] = list((LAKE / "quarantine" / "churn" / f"ds={date}").iterdir())
    assert (attempt / "raw" / "batch.csv").read_bytes() == before["batch.csv"]
    gx_result = json.loads((attempt / "gx_result.json").read_text())
    assert gx_result["success"] is False
    reason = json.loads((attempt / "reason.json").read_text())
    assert reason["kind"] == "quality" and any("region" in p for p in reason["problems"])
    assert _landing_snapshot(date) == before
    assert _asset_events(date) == []


def test_rerun_of_same_date_is_idempotent(dagbag):
    date = "2026-03-04"
    _land(date)
    part = LAKE / "staging" / "churn" / f"ds={date}"
    dr1, _ = _run(dagbag, date)
    first = (part / "_manifest.json").read_text()
    manifest = json.loads(first)
    assert manifest["staged_by"] == manifest["published_by"] == f"churn__ingest/{dr1.run_id}"
    assert len(_asset_events(date)) == 1
    dr2, states2 = _run(dagbag, date)
    assert dr1.state == dr2.state == "success"
    assert sorted(p.name for p in part.iterdir()) == ["_manifest.json", "part-0.parquet"]
    assert (part / "_manifest.json").read_text() == first, "identical batch: partition left as it was"
    # nothing new: the task ends skipped, no validated_data event (so no train run), the reason recorded
    assert states2["validate_and_stage"] == "skipped"
    assert len(_asset_events(date)) == 1, "an unchanged re-ingest emits no event"
    reason = dr2.get_task_instance("validate_and_stage").xcom_pull(
        task_ids="validate_and_stage", key="skip_reason"
    )
    assert "identical to the staged partition" in reason and dr1.run_id in reason
    [record] = [
        r
        for r in audit.iter_records(load_config().audit_uri)
        if r["event"] == "ingest.unchanged" and r["payload"]["run"] == f"churn__ingest/{dr2.run_id}"
    ]
    assert (
        record["subject"] == f"churn/{date}"
        and record["payload"]["published_by"] == f"churn__ingest/{dr1.run_id}"
    )

    # a corrected re-delivery replaces the partition, it never adds a second copy, and is published
    _land(date, rows=900)
    dr3, states3 = _run(dagbag, date)
    assert dr3.state == "success" and states3["validate_and_stage"] == "success"
    assert len(_asset_events(date)) == 2
    assert sorted(p.name for p in part.iterdir()) == ["_manifest.json", "part-0.parquet"]
    import pandas as pd

    assert len(pd.read_parquet(part / "part-0.parquet")) == 900


def test_missing_date_fails_with_clear_message(dagbag, task_errors):
    dr, states = _run(dagbag, "2026-03-09")
    assert dr.state == "failed" and states["discover_files"] == "failed"
    assert "no landing files under" in task_errors["discover_files"]


def test_config_is_the_one_source(dagbag):
    cfg = load_config()
    assert cfg.root_uri == LAKE.as_uri()


def test_encrypted_staging_is_read_transparently(dagbag, monkeypatch):
    """With encryption on, the staged partition is ciphertext at rest and the library still reads it."""
    from mlops_airflow import runtime
    from mlops_bundle import ingest as lib
    from mlops_bundle.crypto import generate_local_keyset, is_encrypted

    keyset = generate_local_keyset()
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_KEYSET", json.dumps({"conn_type": "generic", "password": keyset}))
    monkeypatch.setenv("MLOPS_ENCRYPTION__ENABLED", "true")
    date = "2026-03-05"
    _land(date)
    dr, states = _run(dagbag, date)
    assert dr.state == "success", states
    part = LAKE / "staging" / "churn" / f"ds={date}"
    assert is_encrypted((part / "part-0.parquet").read_bytes()[:16])
    assert is_encrypted((part / "_manifest.json").read_bytes()[:16])
    cfg = load_config()
    df = lib.read_staging(runtime.storage(cfg), cfg, date)
    assert len(df) == 800
    landing = LAKE / "landing" / "churn" / date / "batch.csv"
    assert not is_encrypted(landing.read_bytes()[:16]), "raw landing files are never modified"
    # every use of the key-encryption key is in the audit trail (ids and object names, never keys)
    from mlops_bundle import audit

    uses = [r for r in audit.iter_records(cfg.audit_uri) if r["event"] == "key.encrypt"]
    objects = {r["subject"] for r in uses}
    assert any(o.endswith(f"staging/churn/ds={date}/part-0.parquet") for o in objects), objects
    assert all(r["payload"]["key_id"].startswith("local:") for r in uses)
    assert keyset not in json.dumps([r["payload"] for r in uses])


class _TaskInstance:
    """What validate_and_stage reads of Airflow's task instance: its DAG id and the XCom it pushes."""

    dag_id = "churn__ingest"

    def __init__(self):
        self.xcom = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


def test_content_staged_but_never_published_is_published_by_the_next_ingest_and_a_retry_publishes_again():
    """A backfill that held training (publish=False) stages without publishing: the next ingest of the
    same content publishes it (no skip); the publishing run's retry publishes again (its first attempt may
    have died before the event); only another run is then told "unchanged"."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mlops_airflow import ingest_tasks

    date = "2026-03-06"
    _land(date)
    batch = ingest_tasks.discover({"date": date}, None, None)
    held = ingest_tasks.validate_and_stage(batch, "backfill-run", 1, _TaskInstance(), publish=False)
    manifest = LAKE / "staging" / "churn" / f"ds={date}" / "_manifest.json"
    assert not held["unchanged"] and "published_by" not in json.loads(manifest.read_text())

    first = ingest_tasks.validate_and_stage(batch, "run-a", 1, _TaskInstance())
    assert first["unchanged"] and json.loads(manifest.read_text())["published_by"] == "churn__ingest/run-a"
    retry = ingest_tasks.validate_and_stage(batch, "run-a", 2, _TaskInstance())
    assert retry["unchanged"] and retry["published_by"] == "churn__ingest/run-a"
    other = _TaskInstance()
    with pytest.raises(AirflowSkipException, match="churn__ingest/run-a already handed to training"):
        ingest_tasks.validate_and_stage(batch, "run-b", 1, other)
    assert "identical to the staged partition" in other.xcom["skip_reason"]

"""The audit listener under dag.test(): every task-instance and DAG-run state change and the asset event of an
ingest run land in one verifiable chain; AuditLogOperator and the audit_verify DAG work end to end.

What fires under ``dag.test()`` (Airflow 3.3.2, all in this one process): the task-instance hooks (the
in-process task runner), ``on_dag_run_success``/``on_dag_run_failed`` (dag.test drives
``DagRun.update_state`` like the scheduler) and ``on_asset_event_emitted`` (the in-process execution API
registers the asset change). ``on_dag_run_running`` does NOT fire: only the scheduler's
``_start_queued_dagruns`` announces a run as started, and dag.test creates its run already running.
"""

from __future__ import annotations

import pytest

from mlops_bundle import audit
from mlops_bundle.sample import generate_batch, write_landing
from tests.conftest import LAKE

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def audit_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("MLOPS_AUDIT__STORE_URI", uri)
    monkeypatch.delenv(audit.HMAC_ENV, raising=False)
    return uri


def _records(uri: str) -> list[dict]:
    return list(audit.iter_records(uri))


def _land(date: str, **kw) -> None:
    write_landing(generate_batch(date, rows=400, **kw), LAKE / "landing" / "churn" / date)


def test_plugin_registers_the_listener():
    from airflow.sdk.listener import get_listener_manager

    from mlops_airflow import audit_listener

    assert get_listener_manager().pm.is_registered(audit_listener)


def test_ingest_run_is_fully_audited(dagbag, audit_store):
    date = "2026-04-02"
    _land(date)
    dr = dagbag.get_dag("churn__ingest").test(run_conf={"date": date, "source": None})
    assert dr.state == "success"
    recs = _records(audit_store)
    mine = [r for r in recs if r["payload"].get("run_id") == dr.run_id or r["event"] == "asset.event"]
    events = [(r["event"], r["payload"].get("task_id")) for r in mine]

    for task_id in ("discover_files", "validate_and_stage"):
        assert ("task_instance.running", task_id) in events
        assert ("task_instance.success", task_id) in events
        assert events.index(("task_instance.running", task_id)) < events.index(
            ("task_instance.success", task_id)
        )
    assert ("dag_run.success", None) in events
    assert ("dag_run.running", None) not in events, "not under dag.test(): only the scheduler announces it"
    assert all(r["source"] == "listener" for r in mine)

    ti_rec = next(r for r in mine if r["event"] == "task_instance.success")
    p = ti_rec["payload"]
    assert p["dag_id"] == "churn__ingest" and p["map_index"] == -1 and p["try_number"] == 1
    assert p["run_type"] == "manual" and p["state"] == "success" and p["hostname"]
    assert ti_rec["subject"] == f"churn__ingest/{dr.run_id}/discover_files" and ti_rec["actor"]

    [asset_rec] = [r for r in mine if r["event"] == "asset.event"]
    assert asset_rec["payload"]["asset_name"] == "mlops.churn.validated_data"
    assert asset_rec["payload"]["extra"]["date"] == date
    assert asset_rec["payload"]["source_run_id"] == dr.run_id

    res = audit.verify(audit_store)
    assert res.ok and res.records == len(recs)


def test_quarantine_and_failures_are_audited(dagbag, audit_store):
    date = "2026-04-03"
    _land(date, corrupt="unknown_category")
    dr = dagbag.get_dag("churn__ingest").test(run_conf={"date": date, "source": None})
    assert dr.state == "failed"
    recs = _records(audit_store)
    events = [r["event"] for r in recs]
    assert "ingest.quarantine" in events and "task_instance.failed" in events and "dag_run.failed" in events
    q = next(r for r in recs if r["event"] == "ingest.quarantine")
    assert q["source"] == "library" and q["subject"] == f"churn/{date}"
    assert q["payload"]["kind"] == "quality" and q["payload"]["quarantine_uri"].startswith("file://")
    assert q["payload"]["files"][0].endswith("batch.csv")
    failed = next(r for r in recs if r["event"] == "task_instance.failed")
    assert (
        failed["payload"]["task_id"] == "validate_and_stage"
        and "AirflowFailException" in failed["payload"]["error"]
    )
    # the quarantine record is written inside the task, between its running and failed records
    assert (
        events.index("task_instance.running")
        < events.index("ingest.quarantine")
        < events.index("task_instance.failed")
    )
    assert audit.verify(audit_store).ok


def test_audit_log_operator_renders_and_appends(audit_store):
    from types import SimpleNamespace

    from mlops_airflow.audit_operator import AuditLogOperator

    op = AuditLogOperator(
        task_id="record",
        event="approval.{{ params.what }}",
        subject="churn-classifier/{{ params.version }}",
        payload={"ticket": "CHG-{{ params.version }}"},
    )
    ti = SimpleNamespace(dag_id="probe", run_id="manual__1", task_id="record", try_number=1)
    dag_run = SimpleNamespace(run_type="manual", triggering_user_name="alice")
    context = {"params": {"what": "granted", "version": "7"}, "ti": ti, "dag_run": dag_run}
    op.render_template_fields(context)
    out = op.execute(context)
    [rec] = [r for r in _records(audit_store) if r["event"] == "approval.granted"]
    assert out == {"seq": rec["seq"], "hash": rec["hash"]}
    assert (rec["source"], rec["actor"], rec["subject"]) == ("operator", "alice", "churn-classifier/7")
    assert rec["payload"] == {"ticket": "CHG-7", "airflow": {**vars(ti)}}


def test_verify_dag_remembers_the_head_and_fails_naming_the_broken_link(dagbag, audit_store, task_errors):
    import sqlite3

    # the test process is not a task: read the Variable from the metadata DB (the task uses airflow.sdk)
    from airflow.models import Variable  # noqa: AIR311

    from mlops_airflow.audit_operator import HEAD_VARIABLE

    log = audit.AuditLog(audit_store)
    recs = [
        log.append("test.event", source="cli", actor="a", subject=f"s{i}", payload={"i": i}) for i in range(5)
    ]
    log.close()
    assert Variable.get(HEAD_VARIABLE, default_var=None) is None  # noqa: AIR311
    verify_dag = dagbag.get_dag("audit_verify")
    dr = verify_dag.test()
    assert dr.state == "success", task_errors
    head = audit.head(audit_store)
    # the verify run itself was audited after it verified, so the remembered head is an earlier record
    remembered = Variable.get(HEAD_VARIABLE)  # noqa: AIR311
    seq, digest = audit.parse_head(remembered)
    assert seq < head[0] and seq >= 1

    # tamper with one record: the next verify run fails naming it
    path = audit_store.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = ?", (recs[2]["seq"],))
    dr = verify_dag.test()
    assert dr.state == "failed"
    err = task_errors["verify_chain"]
    assert f"first broken link at seq {recs[2]['seq']}" in err and "hash mismatch" in err

    # truncating the tail below the remembered head is caught too (restore the edit first); the next run's
    # own records refill those seqs before it verifies, so it shows up as a rewrite of the remembered head
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_log SET actor = 'a' WHERE seq = ?", (recs[2]["seq"],))
        conn.execute("DELETE FROM audit_log WHERE seq >= ?", (seq,))
        conn.execute("DELETE FROM audit_anchor")
    task_errors.clear()
    dr = verify_dag.test()
    assert dr.state == "failed"
    err = task_errors["verify_chain"]
    assert f"first broken link at seq {seq}: head mismatch" in err and "the remembered head" in err
    Variable.delete(HEAD_VARIABLE)  # noqa: AIR311

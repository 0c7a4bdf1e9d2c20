"""The audit_verify DAG with an Object Lock anchor bucket (moto server, through the Airflow AWS connection
and the amazon provider's S3Hook): it anchors the head it verified as a locked object, and a later run
fails naming the bucket's anchor after a task-level attacker cut the log, its anchor rows and the Variable.
"""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from mlops_bundle import audit

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def anchored(s3_bucket, tmp_path, monkeypatch):
    """(audit store URI, anchors) with audit.anchor_uri on a fresh Object Lock bucket of the moto server."""
    client, _ = s3_bucket  # also the Airflow connection mlops_s3 = storage.aws_conn_id
    name = f"audit-anchors-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    uri = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("MLOPS_AUDIT__STORE_URI", uri)
    monkeypatch.setenv("MLOPS_AUDIT__ANCHOR_URI", f"s3://{name}/churn/")
    monkeypatch.setenv("MLOPS_AUDIT__ANCHOR_RETENTION_DAYS", "1")
    monkeypatch.delenv(audit.HMAC_ENV, raising=False)
    return uri, audit.S3Anchors(client, f"s3://{name}/churn/")


def test_verify_dag_anchors_in_the_bucket_and_catches_a_cut_log(dagbag, anchored, task_errors):
    from airflow.models import Variable  # noqa: AIR311

    from mlops_airflow.audit_operator import HEAD_VARIABLE

    uri, bucket = anchored
    log = audit.AuditLog(uri)
    for i in range(5):
        log.append("test.event", source="cli", actor="a", subject=f"s{i}", payload={"i": i})
    log.close()
    verify_dag = dagbag.get_dag("audit_verify")
    try:
        dr = verify_dag.test()
        assert dr.state == "success", task_errors
        state = bucket.read()
        assert len(state.seqs) == 1 and state.problems == ()
        anchored_seq = state.latest.seq
        assert anchored_seq >= 5 and state.latest.lock_mode == "COMPLIANCE"
        assert Variable.get(HEAD_VARIABLE) == f"{anchored_seq}:{state.latest.hash}"  # noqa: AIR311

        # a task with the DB superuser: cut the tail (from seq 3), every anchor row and the Variable
        with sqlite3.connect(uri.removeprefix("sqlite:///")) as conn:
            conn.execute("DELETE FROM audit_log WHERE seq >= 3")
            conn.execute("DELETE FROM audit_anchor")
        Variable.delete(HEAD_VARIABLE)  # noqa: AIR311
        task_errors.clear()
        dr = verify_dag.test()
        assert dr.state == "failed"
        err = task_errors["verify_chain"]
        # the run's own listener records refill seqs 3.. before it verifies: a rewrite at the anchored seq
        # (or, if fewer records came, a cut tail), named against the bucket's anchor either way
        assert f"the anchor s3://{bucket.bucket}/churn/{anchored_seq:012d}.json" in err, err
        assert "anchor table empty but bucket holds 1 anchor(s)" in err, err
        assert bucket.read().seqs == (anchored_seq,), "a failed verification anchors nothing"
    finally:
        Variable.delete(HEAD_VARIABLE)  # noqa: AIR311

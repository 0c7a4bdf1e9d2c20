"""A listener whose audit store is down: the events it could not write are counted, and a gap record says
so once the store is back.

The store is really unavailable, not patched: a SQLite store whose folder is a regular file (every open
fails), and a PostgreSQL store reached through tests/faultproxy.py, which resets the connection on every
``INSERT INTO audit_log`` until the fault is cleared (``AuditLog.append`` reconnects once by itself, so
each event costs two drops). The listener hooks are called directly with a task instance's attributes,
as Airflow's listener manager calls them in a task process.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from urllib.parse import urlsplit

import airflow  # noqa: F401  (importing Airflow puts plugins/ on sys.path, as in a worker)
import pytest

from mlops_bundle import audit
from mlops_bundle.audit import recorder


@pytest.fixture
def gap_dir(tmp_path, monkeypatch):
    path = tmp_path / "gaps"
    monkeypatch.setenv("MLOPS_AUDIT__GAP_DIR", str(path))
    monkeypatch.delenv(audit.HMAC_ENV, raising=False)
    yield path
    recorder._logs.clear()


def _ti(task_id: str, state: str = "success") -> SimpleNamespace:
    return SimpleNamespace(
        dag_id="churn__ingest",
        run_id="manual__gap",
        task_id=task_id,
        map_index=-1,
        try_number=1,
        state=state,
        hostname="worker-1",
    )


def _pending(gap_dir) -> int:
    return sum(len(p.read_text().splitlines()) for p in gap_dir.glob("*.jsonl"))


def _check_gap_then_event(uri: str, lost: int, events: dict[str, int]) -> None:
    recs = list(audit.iter_records(uri))
    gap, after = recs[-2], recs[-1]
    assert gap["event"] == audit.GAP_EVENT and gap["source"] == "listener"
    p = gap["payload"]
    assert p["kind"] == "gap" and p["lost"] == lost and p["events"] == events
    assert p["first_at"] <= p["last_at"] and p["hostname"] and p["last_error"]
    assert after["event"] == "task_instance.success" and after["payload"]["task_id"] == "after_outage"
    res = audit.verify(uri)
    assert res.ok and res.gaps == 1 and res.lost_events == lost, res
    assert any(f"could not write {lost} event(s)" in w for w in res.warnings), res.warnings


def test_unwritable_sqlite_store_leaves_a_gap_record_when_it_is_back(tmp_path, gap_dir, monkeypatch, caplog):
    from mlops_airflow import audit_listener

    blocker = tmp_path / "audit"
    blocker.write_text("a file where the store's folder should be")
    uri = f"sqlite:///{blocker / 'audit.db'}"
    monkeypatch.setenv("MLOPS_AUDIT__STORE_URI", uri)

    with caplog.at_level(logging.ERROR, logger=audit_listener.__name__):
        audit_listener.on_task_instance_running(previous_state="queued", task_instance=_ti("a", "running"))
        audit_listener.on_task_instance_success(previous_state="running", task_instance=_ti("a"))
        audit_listener.on_task_instance_failed(
            previous_state="running", task_instance=_ti("b", "failed"), error=RuntimeError("boom")
        )
    assert _pending(gap_dir) == 3, "every lost event is counted on this host"
    assert "3 event(s) from this host wait for the store" in caplog.text

    blocker.unlink()  # the store is back
    audit_listener.on_task_instance_success(previous_state="running", task_instance=_ti("after_outage"))
    assert _pending(gap_dir) == 0
    _check_gap_then_event(
        uri, 3, {"task_instance.running": 1, "task_instance.success": 1, "task_instance.failed": 1}
    )
    audit_listener.on_task_instance_success(previous_state="running", task_instance=_ti("x"))
    assert audit.verify(uri).gaps == 1, "a flushed spool is not counted twice"


@pytest.mark.postgres
def test_unreachable_postgres_store_leaves_a_gap_record_when_it_is_back(pg_database, gap_dir, monkeypatch):
    from mlops_airflow import audit_listener
    from tests.faultproxy import FaultProxy

    pg = urlsplit(pg_database)
    with FaultProxy(pg.hostname, pg.port or 5432) as proxy:
        uri = f"postgresql://{pg.username}@127.0.0.1:{proxy.port}{pg.path}"
        monkeypatch.setenv("MLOPS_AUDIT__STORE_URI", uri)
        audit_listener.on_task_instance_success(previous_state="running", task_instance=_ti("before"))
        outage = proxy.add_fault(b"INSERT INTO audit_log", "drop_request", times=4)
        audit_listener.on_task_instance_success(previous_state="running", task_instance=_ti("lost1"))
        audit_listener.on_task_instance_skipped(
            previous_state="running", task_instance=_ti("lost2", "skipped")
        )
        assert outage.fired == 4 and _pending(gap_dir) == 2
        assert [r["payload"]["task_id"] for r in audit.iter_records(pg_database)] == ["before"]

        proxy.clear_faults()  # the database is reachable again
        audit_listener.on_task_instance_success(previous_state="running", task_instance=_ti("after_outage"))
        _check_gap_then_event(pg_database, 2, {"task_instance.success": 1, "task_instance.skipped": 1})
        gap = [r for r in audit.iter_records(pg_database) if r["event"] == audit.GAP_EVENT][0]
        assert "OperationalError" in json.dumps(gap["payload"]["last_error"])

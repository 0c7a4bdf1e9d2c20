"""The gap spool (mlops_bundle.audit.gaps) under concurrent processes: lost events noted by many task
processes at once are all counted, and processes flushing at the same time write ONE gap record for them.

Real processes (forkserver) and a real SQLite store; the spool's ``flock`` is what serializes them. Without
it two flushers both read the same lines and append two gap records (double counting), or a note lands
between a flusher's read and its truncate and is lost.
"""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from mlops_bundle import audit

WRITERS, EVENTS = 4, 25


def _note(directory: str, uri: str, wid: int) -> None:
    spool = audit.GapSpool(directory, uri)
    for i in range(EVENTS):
        spool.note(f"task_instance.w{wid}", f"dag/run/t{i}", "OperationalError: store down")


def _flush(directory: str, uri: str, start, out) -> None:
    spool = audit.GapSpool(directory, uri)
    log = audit.AuditLog(uri)
    start.wait(timeout=60)
    record = spool.flush(log, "host-1")
    log.close()
    out.put(None if record is None else record["seq"])


def test_concurrent_notes_are_all_counted_and_flushed_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'audit.db'}"
    directory = str(tmp_path / "gaps")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mlops_bundle.audit"])
    writers = [ctx.Process(target=_note, args=(directory, uri, w)) for w in range(WRITERS)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
    assert [p.exitcode for p in writers] == [0] * WRITERS
    spool = audit.GapSpool(directory, uri)
    assert spool.pending() == WRITERS * EVENTS

    start, out = ctx.Barrier(3), ctx.Queue()
    flushers = [ctx.Process(target=_flush, args=(directory, uri, start, out)) for _ in range(3)]
    for p in flushers:
        p.start()
    seqs = [out.get(timeout=120) for _ in flushers]
    for p in flushers:
        p.join(30)
    assert sorted(seqs, key=lambda s: s is not None) == [None, None, 1], "one gap record, not three"
    [gap] = list(audit.iter_records(uri))
    assert gap["event"] == audit.GAP_EVENT and gap["payload"]["lost"] == WRITERS * EVENTS
    assert gap["payload"]["events"] == {f"task_instance.w{w}": EVENTS for w in range(WRITERS)}
    assert spool.pending() == 0
    res = audit.verify(uri)
    assert res.ok and (res.gaps, res.lost_events) == (1, WRITERS * EVENTS)


def test_a_flush_that_fails_keeps_the_spool(tmp_path):
    blocker = tmp_path / "down"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker / 'audit.db'}"
    spool = audit.GapSpool(tmp_path / "gaps", uri)
    spool.note("dag_run.success", "ingest/r1", "OperationalError: down")
    with pytest.raises(Exception, match="audit.db|directory|exists"):  # the store is still down
        spool.flush(audit.AuditLog(uri), "host-1")
    assert spool.pending() == 1
    lines = [json.loads(x) for x in spool.path.read_text().splitlines()]
    assert lines[0]["event"] == "dag_run.success" and lines[0]["error"].startswith("OperationalError")

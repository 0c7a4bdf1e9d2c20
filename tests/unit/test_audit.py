"""The hash-chained audit log on SQLite and PostgreSQL: concurrency, tamper detection, CLI, export, library hook.

PostgreSQL tests (marker ``postgres``) run in a throwaway database on tests.services.PG_URL (dropped
afterwards); they are skipped when the server is unreachable, unless ``CI`` is set (then it is a failure).

The append race test (``test_race_*``, see "race" below) forces the losing interleaving, so it is
deterministic: without the write lock it fails every run, with it it passes every run. Test-only
switches, off by default and not part of the normal run (the same names as tests/unit/test_promotion.py):

* ``MLOPS_TEST_RACE_NO_LOCK=1``: the racer processes append with the store's write lock replaced by a
  no-op (SQLite ``BEGIN IMMEDIATE`` -> ``BEGIN DEFERRED``, PostgreSQL without ``pg_advisory_xact_lock``)
  and the race test must then FAIL (proof that it catches a missing or broken lock);
* ``MLOPS_TEST_RACE_RUNS=N``: the race test runs N times per backend (``[0-sqlite]`` ... ``[N-1-postgresql]``).

    MLOPS_TEST_RACE_RUNS=10 MLOPS_TEST_RACE_NO_LOCK=1 .venv/bin/python -m pytest -q -k race \\
        tests/unit/test_audit.py   # must fail 10/10 per backend (and pass 10/10 without NO_LOCK)
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import threading

import pytest

from mlops_bundle import audit
from mlops_bundle.audit import recorder
from mlops_bundle.config import load_config
from tests.conftest import REPO
from tests.racing import RACE_NO_LOCK

# ---------------------------------------------------------------------------------------- fixtures


class Store:
    """An audit store URI plus raw SQL access to it (the 'attacker' with database access)."""

    def __init__(self, uri: str, connect):
        self.uri = uri
        self._connect = connect

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        conn = self._connect()
        try:
            cur = conn.cursor()
            if "psycopg2" in type(conn).__module__:
                statement = statement.replace("?", "%s")
            cur.execute(statement, params)
            rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows
        finally:
            conn.close()

    def rows(self) -> list[dict]:
        return [
            dict(zip(audit.FIELDS, r, strict=True))
            for r in self.sql(f"SELECT {', '.join(audit.FIELDS)} FROM audit_log ORDER BY seq")
        ]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "audit.db"
        yield Store(f"sqlite:///{path}", lambda: sqlite3.connect(path))
        return
    import psycopg2

    uri = request.getfixturevalue("pg_database")
    try:
        yield Store(uri, lambda: psycopg2.connect(uri))
    finally:
        recorder._logs.clear()


@pytest.fixture(autouse=True)
def _no_library_key(monkeypatch):
    monkeypatch.delenv(audit.HMAC_ENV, raising=False)
    monkeypatch.setattr(recorder, "_hmac_key", None)
    monkeypatch.setattr(recorder, "_hmac_key_set", False)


def _fill(store: Store, n: int = 20, key: bytes | None = None) -> list[dict]:
    log = audit.AuditLog(store.uri, key)
    out = [
        log.append(
            "test.event",
            source="library",
            actor=f"user{i % 3}",
            subject=f"model/{i}",
            payload={"i": i, "note": "ünïcode", "nested": {"b": 1, "a": [1, 2]}},
        )
        for i in range(n)
    ]
    log.close()
    return out


def _rechain(store: Store, start: int, key: bytes | None) -> None:
    """What an attacker with DB access does after editing record `start`: recompute every later link."""
    rows = store.rows()
    prev = rows[start - 2]["hash"] if start > 1 else audit.GENESIS_HASH
    for rec in rows[start - 1 :]:
        rec["prev_hash"] = prev
        rec["hash"] = audit.record_hash(rec, key)
        store.sql(
            "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, rec["hash"], rec["seq"])
        )
        prev = rec["hash"]


# -------------------------------------------------------------------------------------- concurrency


def _writer(uri: str, key: bytes | None, wid: int, events: int) -> None:
    log = audit.AuditLog(uri, key)
    for i in range(events):
        log.append(
            "test.concurrent", source="cli", actor=f"writer{wid}", subject=f"{wid}/{i}", payload={"i": i}
        )
    log.close()


@pytest.mark.slow  # 8 processes x 1000 appends contend for the store's lock: about a minute on 2 cores
@pytest.mark.parametrize("key", [None, b"k3y"], ids=["sha256", "hmac"])
def test_eight_processes_thousand_events_each_keep_one_valid_chain(store, key):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(store.uri, key, w, 1000)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert [p.exitcode for p in procs] == [0] * 8

    seqs = [r[0] for r in store.sql("SELECT seq FROM audit_log ORDER BY seq")]
    assert seqs == list(range(1, 8001)), "seqs must be gapless 1..8000"
    per_writer = store.sql("SELECT actor, COUNT(*) FROM audit_log GROUP BY actor")
    assert sorted(per_writer) == [(f"writer{w}", 1000) for w in range(8)]
    res = audit.verify(store.uri, key)
    assert res.ok and res.records == 8000 and res.first_bad_seq is None, res
    assert (res.head_seq, res.head_hash) == audit.head(store.uri)


# ----------------------------------------------------------------------------------------------- race
#
# RACERS processes append RACE_EVENTS records each to a store the test has already initialized (one
# genesis record, so no racer creates tables). The losing interleaving is forced, not left to volume or
# timing, by a wrapper the racer process puts around the appender's "read the head" step
# (``chain.last_record``; the library has no test hooks):
#
# * ``start``: each racer waits until all are up, so they reach their first append together;
# * ``read``: right after reading the head each racer waits until every racer has read it, for
#   READ_WAIT_S at most. Without the lock all of them read the same head and then all insert the same next
#   seq: ``seq`` is the primary key, so one insert wins and the others raise (PostgreSQL: unique
#   violation; SQLite: the stale snapshot cannot be upgraded to a write, "database is locked"), i.e.
#   appends fail and records are lost (the chain cannot fork, the key is the backstop). This repeats every
#   round. With the lock only the holder gets past the read: its wait times out and breaks the barrier,
#   and every later wait passes straight through (READ_WAIT_S once per run).
#
# So without the lock every run has failed appends and missing records; with it every run ends with one
# gapless, valid chain holding every racer's records in its own order.

READ_WAIT_S = 3.0
RACERS = 4
RACE_EVENTS = 3


def _race_writer(uri: str, wid: int, no_lock: bool, start, read, results) -> None:
    """One racer process: RACE_EVENTS appends, each waiting at ``read`` right after reading the head."""
    from mlops_bundle.audit import chain
    from mlops_bundle.audit import store as audit_store

    try:
        if no_lock:  # the control only (MLOPS_TEST_RACE_NO_LOCK): this process appends without the lock
            audit_store._SQLite.begin_write = lambda self, cur: cur.execute("BEGIN DEFERRED")
            audit_store._Postgres.begin_write = lambda self, cur: None
        read_head = chain.last_record  # AuditLog._append_once looks it up in chain's namespace

        def read_then_wait(cur):
            try:
                return read_head(cur)
            finally:
                with contextlib.suppress(threading.BrokenBarrierError):
                    read.wait(timeout=READ_WAIT_S)

        chain.last_record = read_then_wait
        log = audit.AuditLog(uri)
        start.wait(timeout=120)
        errors = []
        for i in range(RACE_EVENTS):
            try:
                log.append(
                    "test.race", source="cli", actor=f"writer{wid}", subject=f"{wid}/{i}", payload={"i": i}
                )
            except Exception as exc:
                errors.append(f"writer{wid} append {i}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        log.close()
        results.put((wid, errors))
    except Exception as exc:  # report, never hang the parent
        results.put((wid, [f"writer{wid}: {type(exc).__name__}: {exc}"]))


def test_race_concurrent_appenders_keep_one_chain(store, race_run):
    """Racers that all read the head before anyone inserts: with the lock every append lands in one
    gapless chain (see "race" above; MLOPS_TEST_RACE_NO_LOCK=1 makes this fail)."""
    genesis = audit.AuditLog(store.uri)
    genesis.append("test.genesis", source="cli", actor="test", subject="race")
    genesis.close()

    # forkserver + preload: the imports are paid once, not per racer
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["psycopg2", "mlops_bundle.audit", __name__])
    start, read, results = ctx.Barrier(RACERS), ctx.Barrier(RACERS), ctx.Queue()
    procs = [
        ctx.Process(target=_race_writer, args=(store.uri, w, RACE_NO_LOCK, start, read, results))
        for w in range(RACERS)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)

    errors = [e for _, errs in sorted(outcomes) for e in errs]
    # without the lock: every round one insert wins, the others hit the taken seq (lost appends)
    assert not errors, (f"{len(errors)} of {RACERS * RACE_EVENTS} appends failed", errors)
    total = 1 + RACERS * RACE_EVENTS
    rows = store.rows()
    assert [r["seq"] for r in rows] == list(range(1, total + 1)), "seqs must be gapless"
    for w in range(RACERS):  # every racer's records, each in the order it appended them
        subjects = [r["subject"] for r in rows if r["actor"] == f"writer{w}"]
        assert subjects == [f"{w}/{i}" for i in range(RACE_EVENTS)], (w, subjects)
    res = audit.verify(store.uri)
    assert res.ok and res.records == total and res.first_bad_seq is None, res
    assert (res.head_seq, res.head_hash) == audit.head(store.uri)


# ----------------------------------------------------------------------------------------- tampering


def test_intact_chain_verifies_and_genesis_is_zeros(store):
    recs = _fill(store)
    assert recs[0]["prev_hash"] == "0" * 64
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(recs, recs[1:], strict=False))
    res = audit.verify(store.uri)
    assert res.ok and res.records == 20 and (res.head_seq, res.head_hash) == (20, recs[-1]["hash"])


@pytest.mark.parametrize(
    ("column", "value"),
    [("payload", '{"i":999}'), ("actor", "mallory"), ("event", "test.other"), ("at", "2020-01-01T00:00:00")],
)
def test_edited_field_is_detected_at_its_seq(store, column, value):
    _fill(store)
    store.sql(f"UPDATE audit_log SET {column} = ? WHERE seq = 7", (value,))
    res = audit.verify(store.uri)
    assert not res.ok and res.first_bad_seq == 7 and res.records == 6
    assert "hash mismatch at seq 7" in res.reason


def test_edited_hash_column_is_detected_and_named(store):
    _fill(store)
    store.sql("UPDATE audit_log SET hash = ? WHERE seq = 7", ("f" * 64,))
    res = audit.verify(store.uri)
    assert res.first_bad_seq == 7 and "stored hash column was edited" in res.reason


@pytest.mark.parametrize("seq", [1, 7, 19])
def test_deleted_record_is_detected_as_a_gap(store, seq):
    _fill(store)
    store.sql("DELETE FROM audit_log WHERE seq = ?", (seq,))
    res = audit.verify(store.uri)
    assert not res.ok and res.first_bad_seq == seq
    assert f"gap: expected seq {seq}, found seq {seq + 1}" in res.reason


def test_deleted_and_renumbered_record_is_detected(store):
    _fill(store)
    store.sql("DELETE FROM audit_log WHERE seq = 7")
    for s in range(8, 21):
        store.sql("UPDATE audit_log SET seq = ? WHERE seq = ?", (s - 1, s))
    res = audit.verify(store.uri)
    assert res.first_bad_seq == 7 and "prev_hash mismatch at seq 7" in res.reason


def test_reordered_records_are_detected(store):
    _fill(store)
    a, b = (r for r in store.rows() if r["seq"] in (7, 8))
    cols = [f for f in audit.FIELDS if f != "seq"]
    for src, dst in ((b, 7), (a, 8)):
        store.sql(
            f"UPDATE audit_log SET {', '.join(f'{c} = ?' for c in cols)} WHERE seq = ?",
            (*(src[c] for c in cols), dst),
        )
    res = audit.verify(store.uri)
    assert not res.ok and res.first_bad_seq == 7 and "prev_hash mismatch" in res.reason


def test_truncation_needs_a_remembered_head(store):
    recs = _fill(store)
    remembered = audit.head(store.uri)
    assert remembered == (20, recs[-1]["hash"])
    store.sql("DELETE FROM audit_log WHERE seq > 15")
    # a shorter chain is still a valid chain: only the remembered head proves records are missing
    assert audit.verify(store.uri).ok
    res = audit.verify(store.uri, expect_head=remembered)
    assert not res.ok and res.first_bad_seq == 16 and res.records == 15
    assert "truncated" in res.reason and "16..20" in res.reason


def test_truncation_below_a_stored_anchor_is_detected(store):
    _fill(store, 10)
    assert audit.anchor(store.uri, audit.head(store.uri))[0] == 10
    _fill(store, 5)  # the log grows past the anchor
    store.sql("DELETE FROM audit_log WHERE seq > 8")
    res = audit.verify(store.uri)
    assert res.first_bad_seq == 9 and "anchor" in res.reason
    assert audit.verify(store.uri, check_anchors=False).ok


def test_rechained_forgery_without_key_only_fails_against_a_remembered_head(store):
    _fill(store)
    remembered = audit.head(store.uri)
    store.sql("UPDATE audit_log SET payload = ? WHERE seq = 7", ('{"i":999}',))
    _rechain(store, 7, None)
    assert audit.verify(store.uri).ok, "an unkeyed chain can be fully recomputed: the documented limit"
    res = audit.verify(store.uri, expect_head=remembered)
    assert not res.ok and res.first_bad_seq == 20 and "rewritten at or before seq 20" in res.reason


def test_rechained_forgery_is_detected_at_its_seq_with_hmac(store):
    key = b"secret-key"
    _fill(store, key=key)
    assert audit.verify(store.uri, key).ok
    store.sql("UPDATE audit_log SET actor = ? WHERE seq = 7", ("mallory",))
    _rechain(store, 7, None)  # the attacker does not have the key
    res = audit.verify(store.uri, key)
    assert not res.ok and res.first_bad_seq == 7 and "forged without the HMAC key" in res.reason
    _rechain(store, 7, b"guessed-key")
    assert audit.verify(store.uri, key).first_bad_seq == 7


def test_keyed_chain_refuses_wrong_writers_and_verifiers(store):
    _fill(store, 3, key=b"k1")
    with pytest.raises(audit.AuditKeyMismatch, match="same key"):
        audit.AuditLog(store.uri).append("test.event", source="cli", actor="a", subject="s")
    with pytest.raises(audit.AuditKeyMismatch):
        audit.AuditLog(store.uri, b"k2").append("test.event", source="cli", actor="a", subject="s")
    res = audit.verify(store.uri)
    assert not res.ok and res.first_bad_seq is None and "no key was given" in res.reason
    assert "key id" in audit.verify(store.uri, b"k2").reason
    assert [r["seq"] for r in store.rows()] == [1, 2, 3], "refused writes left no trace"


def test_empty_and_missing_logs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    assert audit.verify(uri).ok and audit.head(uri) is None
    assert not (tmp_path / "none.db").exists(), "reading never creates the store"
    res = audit.verify(uri, expect_head=(3, "a" * 64))
    assert not res.ok and res.first_bad_seq == 1


def test_bad_arguments_are_refused_clearly(tmp_path):
    log = audit.AuditLog(f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(ValueError, match="source must be one of"):
        log.append("test.event", source="nobody", actor="a", subject="s")
    with pytest.raises(ValueError, match="area.action"):
        log.append("promote", source="cli", actor="a", subject="s")
    with pytest.raises(audit.AuditError, match="not supported"):
        audit.AuditLog("mysql://x/y")
    with pytest.raises(ValueError, match="SEQ:HASH"):
        audit.parse_head("12")


def test_payload_is_canonical_json(tmp_path):
    log = audit.AuditLog(f"sqlite:///{tmp_path / 'a.db'}")
    rec = log.append("test.event", source="cli", actor="a", subject="s", payload={"b": float("nan"), "a": 1})
    assert rec["payload"] == '{"a":1,"b":null}'


# ------------------------------------------------------------------------------------- CLI and export


def test_cli_verify_exit_codes_and_first_broken_link(store, capsys):
    recs = _fill(store)
    assert audit.main(["verify", "--uri", store.uri]) == 0
    assert "OK: 20 record(s)" in capsys.readouterr().out
    assert audit.main(["head", "--uri", store.uri]) == 0
    assert capsys.readouterr().out.strip() == f"20:{recs[-1]['hash']}"

    store.sql("DELETE FROM audit_log WHERE seq > 18")
    assert audit.main(["verify", "--uri", store.uri]) == 0
    assert audit.main(["verify", "--uri", store.uri, "--expect-head", f"20:{recs[-1]['hash']}"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN: first broken link at seq 19: truncated" in out

    store.sql("UPDATE audit_log SET subject = ? WHERE seq = 4", ("model/evil",))
    assert audit.main(["verify", "--uri", store.uri]) == 1
    assert "first broken link at seq 4: hash mismatch at seq 4" in capsys.readouterr().out
    assert audit.main(["verify", "--uri", store.uri, "--expect-head", "nonsense"]) == 2


def test_cli_in_a_real_process_reads_key_from_env(tmp_path):
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    _fill(Store(uri, None), 5, key=b"envkey")
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    env.pop(audit.HMAC_ENV, None)

    def run(*args, key=None):
        e = dict(env, **({audit.HMAC_ENV: key} if key else {}))
        cmd = [sys.executable, "-m", "mlops_bundle.audit", *args, "--uri", uri]
        return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=60)

    ok = run("verify", key="envkey")
    assert ok.returncode == 0 and "OK: 5 record(s), chain intact (HMAC)" in ok.stdout
    nokey = run("verify")
    assert nokey.returncode == 1 and "no key was given" in nokey.stdout
    sqlite3.connect(tmp_path / "a.db").execute("DELETE FROM audit_log WHERE seq = 3").connection.commit()
    broken = run("verify", key="envkey")
    assert broken.returncode == 1 and "first broken link at seq 3: gap" in broken.stdout


def test_export_writes_json_lines_an_auditor_can_recheck(store, tmp_path):
    _fill(store, 12)
    out = tmp_path / "export" / "audit.jsonl"
    assert audit.main(["export", "--uri", store.uri, "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == list(range(1, 13))
    assert set(records[0]) == set(audit.FIELDS)
    assert records[0]["payload"]["note"] == "ünïcode"
    prev = audit.GENESIS_HASH
    for rec in records:  # the export alone is enough to re-check every hash and link
        assert rec["prev_hash"] == prev
        assert audit.record_hash({**rec, "payload": audit.canonical_json(rec["payload"])}) == rec["hash"]
        prev = rec["hash"]
    partial = tmp_path / "since.jsonl"
    assert audit.export_jsonl(store.uri, partial, since_seq=10) == 2
    assert [json.loads(x)["seq"] for x in partial.read_text().splitlines()] == [11, 12]


# ------------------------------------------------------------------------------------- library hook


def _cfg(**env):
    return load_config(environ={**os.environ, **env})


def test_record_event_appends_with_the_library_key(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'lib.db'}"
    cfg = _cfg(MLOPS_AUDIT__STORE_URI=uri)
    monkeypatch.setenv(audit.HMAC_ENV, "from-env")
    rec = audit.record_event(cfg, "ingest.quarantine", actor="ingest", subject="churn/2026-01-01", payload={})
    assert rec["source"] == "library" and rec["seq"] == 1
    audit.set_hmac_key(b"from-airflow")  # what the Airflow side does; it wins over the env
    with pytest.raises(audit.AuditWriteError, match="HMAC key id"):
        audit.record_event(cfg, "key.encrypt", actor="a", subject="s", payload={})
    assert audit.record_event(cfg, "key.encrypt", actor="a", subject="s", required=False) is None
    assert audit.verify(uri, b"from-env").ok


def test_record_event_is_a_noop_when_disabled(tmp_path):
    cfg = _cfg(MLOPS_AUDIT__STORE_URI=f"sqlite:///{tmp_path / 'x.db'}", MLOPS_AUDIT__ENABLED="false")
    assert audit.record_event(cfg, "decision.promote", actor="a", subject="m/1", payload={}) is None
    assert not (tmp_path / "x.db").exists()


def test_unwritable_store_raises_for_decisions(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = _cfg(MLOPS_AUDIT__STORE_URI=f"sqlite:///{blocker / 'audit.db'}")
    with pytest.raises(audit.AuditWriteError, match="could not write audit record decision.promote"):
        audit.record_event(cfg, "decision.promote", actor="a", subject="m/1", payload={})


def test_record_decision_describes_a_promotion(tmp_path):
    from mlops_bundle.promotion import Decision

    uri = f"sqlite:///{tmp_path / 'd.db'}"
    decision = Decision(
        model_name="churn-classifier",
        verdict="promote",
        reason="roc_auc 0.81 beats champion 0.79",
        challenger={"version": "3", "run_id": "r3", "metrics": {"roc_auc": 0.81}},
        champion={"version": "2", "metrics": {"roc_auc": 0.79}},
        policy={},
        actor="alice",
        applied=True,
        previous_champion="2",
    )
    rec = audit.record_decision(_cfg(MLOPS_AUDIT__STORE_URI=uri), decision)
    assert (rec["event"], rec["actor"], rec["subject"]) == ("decision.promote", "alice", "churn-classifier/3")
    payload = json.loads(rec["payload"])
    assert payload["decision_id"] == decision.decision_id and payload["champion_version"] == "2"
    assert payload["applied"] is True and payload["metrics"] == {"roc_auc": 0.81}


def test_an_idempotency_key_planted_ahead_of_a_decision_does_not_swallow_it(tmp_path):
    """Review finding: decision ids are predictable and the audit role may INSERT into audit_once; a key
    planted for a future decision used to make its record vanish silently. Now the append refuses."""
    path = tmp_path / "audit.db"
    log = audit.AuditLog(f"sqlite:///{path}")
    first = log.append("test.event", source="library", actor="a", subject="s", payload={}, once="k-1")
    # the same event retried: one record, returned again
    again = log.append("test.event", source="library", actor="a", subject="s", payload={}, once="k-1")
    assert again["seq"] == first["seq"] and again.get("repeated")
    # planted: a future decision's key pointing at an unrelated record
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO audit_once (once_key, seq) VALUES ('decision-42', ?)", (first["seq"],))
    with pytest.raises(audit.AuditError, match="audit_once table was tampered with"):
        log.append(
            "decision.promote", source="library", actor="gate", subject="m/3", payload={}, once="decision-42"
        )
    log.close()

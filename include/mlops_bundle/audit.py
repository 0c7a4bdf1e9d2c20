"""Tamper-evident audit trail: one append-only, hash-chained log in a shared SQL store.

Why it is built this way:

* **One chain, many writers.** Task processes on every worker, the scheduler (DAG-run listener hooks), the
  api-server (asset hooks) and library calls all append to the same table. Each record carries the hash of
  the previous one, so appends are serialized: on SQLite by ``BEGIN IMMEDIATE`` (one writer at a time,
  others wait up to ``timeout_s`` through ``busy_timeout``; WAL so readers never block), on PostgreSQL by
  ``pg_advisory_xact_lock(LOCK_KEY)`` taken inside the transaction that reads the last record and inserts
  the next one. ``seq`` is assigned by the appender (last + 1, gapless) and is the primary key, so even a
  writer that bypassed the lock could not fork the chain: its insert would fail.
* **What the hash covers.** ``hash = sha256(canonical)`` or, with a key, ``HMAC-SHA256(key, canonical)``
  where ``canonical`` is the compact JSON array ``[seq, at, source, event, actor, subject, payload,
  prev_hash]`` (``payload`` is itself canonical JSON: sorted keys, no whitespace, NaN/inf -> null). The
  first record's ``prev_hash`` is 64 zeros.
* **What verification detects** (``verify``, streaming in ``seq`` order, reporting the *first* broken
  link): an edited field (hash mismatch at that seq), a deleted record (gap: expected seq N, found N+1),
  reordered or moved records (``prev_hash`` no longer links), an edited ``hash`` column, and, with an HMAC
  key, a *re-chained forgery* (an attacker who edits record N and recomputes every later hash cannot do so
  without the key). Without a key a full re-chain is only detectable against a remembered head.
* **Truncation needs a remembered head.** Deleting the newest records leaves a valid, shorter chain; only
  a previously observed head ``(seq, hash)`` proves records are missing. Two mechanisms:
  ``verify(expect_head=(seq, hash))`` with a head kept *outside* this database (the ``audit_verify`` DAG
  keeps the last verified head in an Airflow Variable, i.e. in Airflow's metadata DB; auditors keep the
  ``head`` printed by the CLI or the last line of an export), and *anchors*: ``anchor()`` stores the
  current head in the ``audit_anchor`` table and ``verify`` checks every stored anchor. Anchors live in
  the same database, so they catch accidental or naive truncation but not an attacker who also deletes
  the anchor rows; for that, the external head is what counts.
* **Keys.** A keyed chain records a key id (``HMAC(key, "mlops-audit key id")``, 16 hex chars, which
  does not reveal the key) in ``audit_meta`` at its first append; a writer with no key or another key is
  refused (``AuditKeyMismatch``) instead of silently breaking the chain for everyone. Rotating the key
  therefore means starting a new log (new ``store_uri``). Key text is used as its UTF-8 bytes.

The library side (``record_event``) takes the HMAC key from ``set_hmac_key`` (called by the Airflow side,
which reads it from the ``audit.hmac_conn_id`` connection) or else from ``$MLOPS_AUDIT_HMAC_KEY``.
Business decisions (promotion verdicts, rollbacks, quarantines) must not happen unaudited: ``record_event``
raises ``AuditWriteError`` when the write fails (``required=False`` downgrades that to a logged error for
events that are merely informative).

CLI (defaults from ``load_config().audit_uri``; key from ``$MLOPS_AUDIT_HMAC_KEY``)::

    python -m mlops_bundle.audit verify [--uri URI] [--expect-head SEQ:HASH]   # exit 1 + first broken link
    python -m mlops_bundle.audit export --out audit.jsonl [--since-seq N]
    python -m mlops_bundle.audit head
    python -m mlops_bundle.audit anchor
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlops_bundle.jsonsafe import json_safe
from mlops_bundle.uris import is_postgres, is_sqlite, pg_dsn, redact, sqlite_path

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
HMAC_ENV = "MLOPS_AUDIT_HMAC_KEY"
SOURCES = ("listener", "operator", "library", "cli")
FIELDS = ("seq", "at", "source", "event", "actor", "subject", "payload", "prev_hash", "hash")
# the advisory-lock key every PostgreSQL appender takes (stable across hosts and Python versions)
LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlops-audit-log").digest()[:8], "big", signed=True)
DEFAULT_TIMEOUT_S = 60.0
_KEY_ID_LABEL = b"mlops-audit key id"
_UNKEYED = "none"
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


class AuditError(RuntimeError):
    """The audit store cannot be used; the message names the store and what to do."""


class AuditKeyMismatch(AuditError):
    """This writer's HMAC key (or lack of one) is not the key the chain was started with."""


class AuditWriteError(AuditError):
    """A required audit record (a business decision) could not be written: the action is not audited."""


# ------------------------------------------------------------------------------------ canonical form


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the same value always gives the same text."""
    return json.dumps(
        json_safe(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _as_key(key: bytes | str | None) -> bytes | None:
    if key is None or key == b"" or key == "":
        return None
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def key_id(key: bytes | str | None) -> str:
    """A short, non-secret identifier of an HMAC key (``"none"`` for an unkeyed chain)."""
    key = _as_key(key)
    if key is None:
        return _UNKEYED
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def record_hash(record: Mapping[str, Any], key: bytes | None = None) -> str:
    """The hash of one record over its canonical serialization (HMAC-SHA256 when a key is given)."""
    body = json.dumps(
        [
            int(record["seq"]),
            record["at"],
            record["source"],
            record["event"],
            record["actor"],
            record["subject"],
            record["payload"],
            record["prev_hash"],
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    if key:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


# ------------------------------------------------------------------------------------------ backends


class _Backend:
    """The few SQL differences between SQLite and PostgreSQL; everything else is shared code."""

    name = ""
    ddl_seq = "INTEGER"

    def __init__(self, uri: str, timeout_s: float):
        self.uri = uri
        self.timeout_s = timeout_s

    def connect(self) -> Any:
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return text

    def begin_write(self, cur: Any) -> None:
        raise NotImplementedError

    def begin_read(self, cur: Any) -> None:
        return None

    def table_exists(self, cur: Any, table: str) -> bool:
        raise NotImplementedError

    def stream(self, conn: Any, query: str, params: tuple = ()) -> Iterator[tuple]:
        cur = conn.cursor()
        try:
            cur.execute(self.sql(query), params)
            while rows := cur.fetchmany(5000):
                yield from rows
        finally:
            cur.close()

    def ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS audit_log (seq {self.ddl_seq} PRIMARY KEY, at TEXT NOT NULL, "
            "source TEXT NOT NULL, event TEXT NOT NULL, actor TEXT NOT NULL, subject TEXT NOT NULL, "
            "payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS audit_anchor (seq {self.ddl_seq} PRIMARY KEY, "
            "hash TEXT NOT NULL, at TEXT NOT NULL)",
        ]


class _SQLite(_Backend):
    name = "sqlite"

    def __init__(self, uri: str, timeout_s: float, durable: bool = True):
        super().__init__(uri, timeout_s)
        self.durable = durable
        path = sqlite_path(uri)
        if not path or path == ":memory:":
            raise AuditError(f"audit store {uri!r}: an in-memory SQLite DB cannot be shared; use a file")
        self.path = Path(path)

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions, so BEGIN IMMEDIATE is ours to issue
        conn = sqlite3.connect(
            str(self.path), timeout=self.timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        deadline = time.monotonic() + self.timeout_s
        while True:  # switching to WAL needs a moment of exclusive access when the file is new
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # FULL: a committed audit record survives a power loss, not only a process crash (an fsync per
        # append: ~3 ms on a slow disk). NORMAL (durable=False) survives process crashes only; a power
        # loss may then drop the newest records (the chain stays valid: it looks like a truncation).
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        return conn

    def begin_write(self, cur: Any) -> None:
        # takes the database's single write lock now (before reading the head), so appenders queue here
        cur.execute("BEGIN IMMEDIATE")

    def begin_read(self, cur: Any) -> None:
        cur.execute("BEGIN")  # one consistent snapshot for the whole verification

    def table_exists(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,))
        return cur.fetchone() is not None


class _Postgres(_Backend):
    name = "postgresql"
    ddl_seq = "BIGINT"

    def __init__(self, uri: str, timeout_s: float):
        super().__init__(uri, timeout_s)
        self.dsn = pg_dsn(uri)

    def connect(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(self.dsn, connect_timeout=max(1, int(min(self.timeout_s, 30))))
        with conn.cursor() as cur:
            # bounded wait for the advisory lock and row locks, never forever
            cur.execute("SET lock_timeout = %s", (f"{int(self.timeout_s * 1000)}ms",))
        conn.commit()
        return conn

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def begin_write(self, cur: Any) -> None:
        # psycopg2 opens the transaction implicitly; the lock is released at COMMIT/ROLLBACK
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))

    def begin_read(self, cur: Any) -> None:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def table_exists(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT to_regclass(%s)", (table,))
        return cur.fetchone()[0] is not None

    def stream(self, conn: Any, query: str, params: tuple = ()) -> Iterator[tuple]:
        # a server-side (named) cursor: the log is streamed, never loaded into memory at once
        cur = conn.cursor(name=f"audit_stream_{os.getpid()}_{threading.get_ident()}")
        cur.itersize = 5000
        try:
            cur.execute(self.sql(query), params)
            yield from cur
        finally:
            cur.close()


def _backend(uri: str, timeout_s: float = DEFAULT_TIMEOUT_S, durable: bool = True) -> _Backend:
    if is_postgres(uri):
        return _Postgres(uri, timeout_s)
    if is_sqlite(uri):
        return _SQLite(uri, timeout_s, durable)
    raise AuditError(
        f"audit store {redact(uri)!r} is not supported: use sqlite:////absolute/path.db (embedded) or "
        f"postgresql://user@host:port/db (shared stack); see audit.store_uri in the config"
    )


# -------------------------------------------------------------------------------------------- writer


class AuditLog:
    """An appender to one audit store; keeps one connection per process (safe across fork and threads).

    ``timeout_s``: how long an append waits for the write lock (and a connection) before raising.
    ``durable=False`` (SQLite only) trades power-loss durability of the newest records for ~50x the
    append rate (``synchronous=NORMAL`` instead of ``FULL``); PostgreSQL always commits durably.
    """

    def __init__(
        self,
        uri: str,
        hmac_key: bytes | str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        durable: bool = True,
    ):
        self.uri = uri
        self._key = _as_key(hmac_key)
        self._key_id = key_id(self._key)
        self._backend = _backend(uri, timeout_s, durable)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid: int | None = None
        self._ready = False

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def _connection(self) -> Any:
        if self._conn is None or self._pid != os.getpid():
            # a connection inherited through fork() belongs to the parent: never reuse it
            self._conn = self._backend.connect()
            self._pid = os.getpid()
            self._ready = False
        return self._conn

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._reset()

    def _prepare(self, cur: Any) -> None:
        """Create the tables and check the key id; runs under the write lock, so it is race-safe."""
        for stmt in self._backend.ddl():
            cur.execute(stmt)
        cur.execute(self._backend.sql("SELECT value FROM audit_meta WHERE name = ?"), ("key_id",))
        row = cur.fetchone()
        if row is None:
            cur.execute(
                self._backend.sql("INSERT INTO audit_meta (name, value) VALUES (?, ?)"),
                ("key_id", self._key_id),
            )
        elif row[0] != self._key_id:
            have = "no HMAC key" if self._key is None else f"HMAC key id {self._key_id}"
            raise AuditKeyMismatch(
                f"audit store {redact(self.uri)} was started with "
                f"{'no HMAC key' if row[0] == _UNKEYED else 'HMAC key id ' + row[0]} but this writer has "
                f"{have}: give every writer the same key (the audit.hmac_conn_id connection or "
                f"${HMAC_ENV}); a different key means a new audit store"
            )

    def append(
        self,
        event: str,
        *,
        source: str,
        actor: str | None,
        subject: str | None,
        payload: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one record and return it (with its seq and hash); raises on any failure."""
        if source not in SOURCES:
            raise ValueError(f"audit source must be one of {SOURCES}, got {source!r}")
        if not _EVENT_RE.match(event or ""):
            raise ValueError(
                f"audit event must look like 'area.action' (e.g. decision.promote), got {event!r}"
            )
        payload_text = canonical_json(dict(payload or {}))
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._append_once(
                        event, source, str(actor or ""), str(subject or ""), payload_text
                    )
                except AuditKeyMismatch:
                    self._reset()
                    raise
                except Exception as exc:
                    self._reset()
                    # one retry on a fresh connection: a stale pooled connection (server restart) is not
                    # a reason to lose the record
                    if attempt == 2 or not _is_connection_error(exc):
                        raise
        raise AssertionError("unreachable")

    def _append_once(self, event: str, source: str, actor: str, subject: str, payload: str) -> dict[str, Any]:
        conn = self._connection()
        be = self._backend
        cur = conn.cursor()
        try:
            be.begin_write(cur)
            if not self._ready:
                self._prepare(cur)
            cur.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            last = cur.fetchone()
            record = {
                "seq": 1 if last is None else int(last[0]) + 1,
                "at": _utc_now(),
                "source": source,
                "event": event,
                "actor": actor,
                "subject": subject,
                "payload": payload,
                "prev_hash": GENESIS_HASH if last is None else last[1],
            }
            record["hash"] = record_hash(record, self._key)
            cur.execute(
                be.sql(
                    f"INSERT INTO audit_log ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})"
                ),
                tuple(record[f] for f in FIELDS),
            )
            conn.commit() if be.name == "postgresql" else cur.execute("COMMIT")
            self._ready = True
            return record
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback() if be.name == "postgresql" else cur.execute("ROLLBACK")
            raise
        finally:
            with contextlib.suppress(Exception):
                cur.close()

    def head(self) -> tuple[int, str] | None:
        """The newest record's (seq, hash), or None for an empty log. Remember it to detect truncation."""
        return head(self.uri)

    def anchor(self) -> tuple[int, str] | None:
        """Store the current head in ``audit_anchor`` (see the module docstring for what that protects)."""
        return anchor(self.uri)


def _is_connection_error(exc: Exception) -> bool:
    name = type(exc).__name__
    return name in {"OperationalError", "InterfaceError"} and not isinstance(exc, sqlite3.OperationalError)


# ------------------------------------------------------------------------------------------- readers


@contextlib.contextmanager
def _reader(uri: str) -> Iterator[tuple[_Backend, Any]]:
    be = _backend(uri)
    if isinstance(be, _SQLite) and not be.path.exists():
        yield be, None
        return
    conn = be.connect()
    try:
        yield be, conn
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()


def head(uri: str) -> tuple[int, str] | None:
    """The newest record's (seq, hash) of the store at ``uri``; None when the log is empty or missing."""
    with _reader(uri) as (be, conn):
        if conn is None:
            return None
        cur = conn.cursor()
        if not be.table_exists(cur, "audit_log"):
            return None
        cur.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        row = cur.fetchone()
        return None if row is None else (int(row[0]), row[1])


def anchor(uri: str) -> tuple[int, str] | None:
    """Record the current head in ``audit_anchor`` (idempotent); returns it (None for an empty log)."""
    with _reader(uri) as (be, conn):
        if conn is None:
            return None
        cur = conn.cursor()
        be.begin_write(cur)
        if not be.table_exists(cur, "audit_log"):
            conn.rollback() if be.name == "postgresql" else cur.execute("ROLLBACK")
            return None
        for stmt in be.ddl():
            cur.execute(stmt)
        cur.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        row = cur.fetchone()
        if row is not None:
            cur.execute(be.sql("SELECT 1 FROM audit_anchor WHERE seq = ?"), (row[0],))
            if cur.fetchone() is None:
                cur.execute(
                    be.sql("INSERT INTO audit_anchor (seq, hash, at) VALUES (?, ?, ?)"),
                    (row[0], row[1], _utc_now()),
                )
        conn.commit() if be.name == "postgresql" else cur.execute("COMMIT")
        return None if row is None else (int(row[0]), row[1])


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify``.

    ``records``: how many records form the intact prefix of the chain (all of them when ``ok``).
    ``first_bad_seq``: the seq of the first broken link (None when ok, or when the problem is not at a
    record, e.g. a key mismatch). ``head_seq``/``head_hash``: the last intact record.
    """

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str
    head_seq: int | None = None
    head_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_head(text: str) -> tuple[int, str]:
    """``"SEQ:HASH"`` -> (seq, hash); raises ValueError with the expected form."""
    seq, sep, digest = (text or "").strip().partition(":")
    if not sep or not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"expected head as SEQ:HASH (e.g. 42:<64 hex chars>), got {text!r}")
    return int(seq), digest


def verify(
    uri: str,
    hmac_key: bytes | str | None = None,
    *,
    expect_head: tuple[int, str] | None = None,
    check_anchors: bool = True,
) -> VerifyResult:
    """Walk the log in seq order and report the first broken link (see the module docstring)."""
    key = _as_key(hmac_key)
    with _reader(uri) as (be, conn):
        cur = None if conn is None else conn.cursor()
        if cur is not None:
            be.begin_read(cur)  # one snapshot for the whole walk (must come first on PostgreSQL)
        if cur is None or not be.table_exists(cur, "audit_log"):
            if expect_head is not None and expect_head[0] > 0:
                return VerifyResult(
                    False,
                    0,
                    1,
                    f"truncated: the log is empty but the remembered head is seq {expect_head[0]}",
                )
            return VerifyResult(True, 0, None, "empty log")
        cur.execute(be.sql("SELECT value FROM audit_meta WHERE name = ?"), ("key_id",))
        row = cur.fetchone()
        stored_key_id = row[0] if row else None
        if stored_key_id is not None and stored_key_id != key_id(key):
            if stored_key_id == _UNKEYED:
                why = "the log is unkeyed (plain sha256) but an HMAC key was given"
            elif key is None:
                why = f"the log is HMAC-keyed (key id {stored_key_id}) but no key was given (set ${HMAC_ENV})"
            else:
                why = f"the log is HMAC-keyed with key id {stored_key_id}, the given key has id {key_id(key)}"
            return VerifyResult(False, 0, None, f"key mismatch: {why}")
        anchors: dict[int, str] = {}
        if check_anchors and be.table_exists(cur, "audit_anchor"):
            cur.execute("SELECT seq, hash FROM audit_anchor")
            anchors = {int(s): h for s, h in cur.fetchall()}
        if expect_head is not None:
            anchors[int(expect_head[0])] = expect_head[1]
        external = expect_head[0] if expect_head is not None else None

        rows = be.stream(conn, f"SELECT {', '.join(FIELDS)} FROM audit_log ORDER BY seq")
        result = _walk(rows, key, anchors, external)
        with contextlib.suppress(Exception):
            rows.close()
        return result


def _walk(
    rows: Iterator[tuple], key: bytes | None, anchors: dict[int, str], external: int | None
) -> VerifyResult:
    expected, prev_hash, count = 1, GENESIS_HASH, 0
    last_seq: int | None = None

    def bad(seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(False, count, seq, reason, last_seq, prev_hash if last_seq else None)

    for raw in rows:
        rec = dict(zip(FIELDS, raw, strict=True))
        seq = int(rec["seq"])
        if seq != expected:
            return bad(
                expected,
                f"gap: expected seq {expected}, found seq {seq} (record(s) {expected}..{seq - 1} deleted)",
            )
        if rec["prev_hash"] != prev_hash:
            return bad(
                seq,
                f"prev_hash mismatch at seq {seq}: it does not link to record {seq - 1} (a record was "
                f"removed, inserted, reordered or moved here)",
            )
        computed = record_hash(rec, key)
        if not hmac.compare_digest(computed, str(rec["hash"])):
            nxt = next(rows, None)
            nxt_prev = None if nxt is None else dict(zip(FIELDS, nxt, strict=True))["prev_hash"]
            if nxt_prev is not None and nxt_prev == computed:
                what = "the stored hash column was edited"
            else:
                what = "a field (at, source, event, actor, subject or payload) was edited"
                try:
                    if canonical_json(json.loads(rec["payload"])) != rec["payload"]:
                        what = "the payload was edited (it is no longer canonical JSON)"
                except ValueError:
                    what = "the payload was edited (it is not valid JSON)"
                if key is not None:
                    what += ", or the record was forged without the HMAC key"
            return bad(seq, f"hash mismatch at seq {seq}: {what}")
        if seq in anchors and anchors[seq] != rec["hash"]:
            origin = "the remembered head" if seq == external else "anchor"
            return bad(
                seq,
                f"head mismatch at seq {seq}: {origin} says hash {anchors[seq][:16]}..., the log has "
                f"{rec['hash'][:16]}...: the log was rewritten at or before seq {seq}",
            )
        prev_hash, last_seq, count, expected = rec["hash"], seq, count + 1, seq + 1

    missing = [s for s in anchors if s > (last_seq or 0)]
    if missing:
        top = max(missing)
        origin = "the remembered head" if top == external else "an anchor"
        return bad(
            (last_seq or 0) + 1,
            f"truncated: the log ends at seq {last_seq or 0} but {origin} is seq {top} "
            f"(records {(last_seq or 0) + 1}..{top} are missing)",
        )
    return VerifyResult(True, count, None, "ok", last_seq, prev_hash if last_seq else None)


def iter_records(uri: str, since_seq: int = 0) -> Iterator[dict[str, Any]]:
    """Records with seq > since_seq in seq order, streamed (payload parsed back to an object)."""
    with _reader(uri) as (be, conn):
        if conn is None:
            return
        cur = conn.cursor()
        be.begin_read(cur)
        if not be.table_exists(cur, "audit_log"):
            return
        for raw in be.stream(
            conn, f"SELECT {', '.join(FIELDS)} FROM audit_log WHERE seq > ? ORDER BY seq", (int(since_seq),)
        ):
            rec = dict(zip(FIELDS, raw, strict=True))
            rec["seq"] = int(rec["seq"])
            try:
                rec["payload"] = json.loads(rec["payload"])
            except ValueError:
                pass  # keep the raw text: export must not hide a damaged record
            yield rec


def export_jsonl(uri: str, out: str | os.PathLike[str] | IO[str], since_seq: int = 0) -> int:
    """Write records with seq > since_seq as JSON lines (one record per line, keys sorted); return the count.

    ``payload`` is exported as an object; ``canonical_json(payload)`` gives back the exact hashed text, so
    an auditor can re-check every hash (and the chain) from the export alone.
    """
    if isinstance(out, str | os.PathLike):
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        with tmp.open("w", encoding="utf-8") as fh:
            n = export_jsonl(uri, fh, since_seq)
        tmp.replace(path)
        return n
    n = 0
    for rec in iter_records(uri, since_seq):
        out.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")
        n += 1
    return n


# ------------------------------------------------------------------------------------- library hook

_hmac_key: bytes | None = None
_hmac_key_set = False
_logs: dict[tuple[int, str, str], AuditLog] = {}
_logs_lock = threading.Lock()


def set_hmac_key(key: bytes | str | None) -> None:
    """Set the HMAC key this process's library records use (the Airflow side calls this; else the env)."""
    global _hmac_key, _hmac_key_set
    _hmac_key, _hmac_key_set = _as_key(key), True


def current_hmac_key() -> bytes | None:
    """The key set by ``set_hmac_key``, else ``$MLOPS_AUDIT_HMAC_KEY``, else None."""
    return _hmac_key if _hmac_key_set else _as_key(os.environ.get(HMAC_ENV))


def get_log(uri: str, hmac_key: bytes | str | None = None) -> AuditLog:
    """A per-process cached ``AuditLog`` for (uri, key): appends reuse one connection."""
    key = _as_key(hmac_key)
    cache_key = (os.getpid(), uri, key_id(key))
    with _logs_lock:
        log_ = _logs.get(cache_key)
        if log_ is None:
            log_ = _logs[cache_key] = AuditLog(uri, key)
        return log_


def record_event(
    cfg: BundleConfig,
    event: str,
    *,
    actor: str | None,
    subject: str | None,
    payload: Mapping[str, Any] | None = None,
    source: str = "library",
    required: bool = True,
) -> dict[str, Any] | None:
    """Append one record to the configured audit store; a no-op (None) when ``audit.enabled`` is false.

    ``required=True`` (business decisions): a failed write raises ``AuditWriteError``, because an
    unaudited promotion/rollback/quarantine is a compliance failure that must be seen. ``required=False``:
    the failure is logged at ERROR level and None is returned.
    """
    if not cfg.audit.enabled:
        return None
    try:
        return get_log(cfg.audit_uri, current_hmac_key()).append(
            event, source=source, actor=actor, subject=subject, payload=payload
        )
    except Exception as exc:
        message = (
            f"could not write audit record {event} for {subject!r} to {redact(cfg.audit_uri)}: "
            f"{type(exc).__name__}: {exc}"
        )
        if required:
            raise AuditWriteError(message) from exc
        log.error("%s", message)
        return None


def decision_event(decision: Any) -> tuple[str, str, str, dict[str, Any]]:
    """(event, actor, subject, payload) for a ``promotion.Decision``."""
    d = decision.to_dict()
    challenger = d.get("challenger") or {}
    champion = d.get("champion") or {}
    payload = {
        "decision_id": d["decision_id"],
        "decided_at": d["decided_at"],
        "verdict": d["verdict"],
        "applied": d["applied"],
        "forced": d["forced"],
        "justification": d.get("justification"),
        "reason": d["reason"],
        "model": d["model_name"],
        "version": challenger.get("version"),
        "run_id": challenger.get("run_id"),
        "metrics": challenger.get("metrics"),
        "champion_version": champion.get("version"),
        "champion_metrics": champion.get("metrics"),
        "previous_champion": d.get("previous_champion"),
        "artifact_path": d.get("artifact_path"),
        "context": d.get("context"),
    }
    return f"decision.{d['verdict']}", d["actor"], f"{d['model_name']}/{challenger.get('version')}", payload


def record_decision(cfg: BundleConfig, decision: Any) -> dict[str, Any] | None:
    """Audit one promotion decision (promote/reject/noop/rollback); raises ``AuditWriteError`` on failure."""
    event, actor, subject, payload = decision_event(decision)
    return record_event(cfg, event, actor=actor, subject=subject, payload=payload)


# ----------------------------------------------------------------------------------------------- CLI


def _default_uri() -> str:
    from mlops_bundle.config import load_config

    return load_config().audit_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_bundle.audit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_verify = sub.add_parser("verify", help="verify the chain; exit 1 naming the first broken link")
    p_verify.add_argument("--expect-head", help="a previously seen head SEQ:HASH (detects truncation)")
    p_verify.add_argument("--no-anchors", action="store_true", help="ignore anchors stored in the log's DB")
    p_export = sub.add_parser("export", help="write the log as JSON lines")
    p_export.add_argument("--out", required=True, help="output file, or - for stdout")
    p_export.add_argument("--since-seq", type=int, default=0)
    sub.add_parser("head", help="print the newest record as SEQ:HASH (remember it outside the store)")
    sub.add_parser("anchor", help="store the current head as an anchor inside the store")
    for p in (p_verify, p_export, *sub.choices.values()):
        if not any(a.dest == "uri" for a in p._actions):
            p.add_argument("--uri", help="audit store URI (default: audit.store_uri of the config)")
    args = parser.parse_args(argv)

    try:
        uri = args.uri or _default_uri()
        key = _as_key(os.environ.get(HMAC_ENV))
        if args.command == "verify":
            expect = parse_head(args.expect_head) if args.expect_head else None
            res = verify(uri, key, expect_head=expect, check_anchors=not args.no_anchors)
            if res.ok:
                tail = f"head {res.head_seq}:{res.head_hash}" if res.head_seq else "empty"
                print(f"OK: {res.records} record(s), chain intact ({'HMAC' if key else 'sha256'}); {tail}")
                return 0
            where = f"first broken link at seq {res.first_bad_seq}" if res.first_bad_seq else "not verifiable"
            print(f"BROKEN: {where}: {res.reason} ({res.records} intact record(s) before it)")
            return 1
        if args.command == "export":
            if args.out == "-":
                n = export_jsonl(uri, sys.stdout, args.since_seq)
            else:
                n = export_jsonl(uri, args.out, args.since_seq)
                print(f"exported {n} record(s) to {args.out}", file=sys.stderr)
            return 0
        h = head(uri) if args.command == "head" else anchor(uri)
        print("empty" if h is None else f"{h[0]}:{h[1]}")
        return 0
    except (AuditError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

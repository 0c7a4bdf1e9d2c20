"""Where the audit chain is stored: the SQLite and PostgreSQL backends and the writer's serialization.

**One chain, many writers.** Task processes on every worker, the scheduler (DAG-run listener hooks), the
api-server (asset hooks) and library calls all append to the same table. Each record carries the hash of
the previous one, so appends are serialized: on SQLite by ``BEGIN IMMEDIATE`` (one writer at a time,
others wait up to ``timeout_s`` through ``busy_timeout``; WAL so readers never block), on PostgreSQL by
``pg_advisory_xact_lock(LOCK_KEY)`` taken inside the transaction that reads the last record and inserts
the next one. ``seq`` is assigned by the appender (last + 1, gapless) and is the primary key, so even a
writer that bypassed the lock could not fork the chain: its insert would fail.

Only the few SQL differences between the two databases live here (``_Backend``); the chain logic
(``chain``, ``verify``) is shared code over a DB-API connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlops_bundle.uris import is_postgres, is_sqlite, pg_dsn, redact, sqlite_path

FIELDS = ("seq", "at", "source", "event", "actor", "subject", "payload", "prev_hash", "hash")
# the advisory-lock key every PostgreSQL appender takes (stable across hosts and Python versions)
LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlops-audit-log").digest()[:8], "big", signed=True)
DEFAULT_TIMEOUT_S = 60.0


class AuditError(RuntimeError):
    """The audit store cannot be used; the message names the store and what to do."""


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

    def commit(self, conn: Any, cur: Any) -> None:
        conn.commit() if self.name == "postgresql" else cur.execute("COMMIT")

    def rollback(self, conn: Any, cur: Any) -> None:
        conn.rollback() if self.name == "postgresql" else cur.execute("ROLLBACK")

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
            # appends that must happen once (a decision's record): key -> the record's seq, written in the
            # same transaction as the record, so a retried append finds it instead of appending twice
            f"CREATE TABLE IF NOT EXISTS audit_once (once_key TEXT PRIMARY KEY, seq {self.ddl_seq} NOT NULL)",
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
        # FULL: a committed audit record survives a power loss, not only a process crash, at the price of
        # an fsync per append, which bounds the append rate (benchmarks/README.md, "Audit"). NORMAL
        # (durable=False) survives process crashes only; a power loss may then drop the newest records
        # (the chain stays valid: it looks like a truncation).
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


def backend(uri: str, timeout_s: float = DEFAULT_TIMEOUT_S, durable: bool = True) -> _Backend:
    """The backend for a store URI; AuditError naming the supported forms for anything else."""
    if is_postgres(uri):
        return _Postgres(uri, timeout_s)
    if is_sqlite(uri):
        return _SQLite(uri, timeout_s, durable)
    raise AuditError(
        f"audit store {redact(uri)!r} is not supported: use sqlite:////absolute/path.db (embedded) or "
        f"postgresql://user@host:port/db (shared stack); see audit.store_uri in the config"
    )


def is_connection_error(exc: Exception) -> bool:
    """A dropped server connection (worth one retry on a fresh one), not a SQLite lock or SQL error."""
    name = type(exc).__name__
    return name in {"OperationalError", "InterfaceError"} and not isinstance(exc, sqlite3.OperationalError)


@contextlib.contextmanager
def reader(uri: str) -> Iterator[tuple[_Backend, Any]]:
    """(backend, connection) for reading; the connection is None when a SQLite store does not exist yet."""
    be = backend(uri)
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


def last_record(cur: Any) -> tuple[int, str] | None:
    """The newest record's (seq, hash) through an open cursor, or None for an empty log."""
    cur.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    row = cur.fetchone()
    return None if row is None else (int(row[0]), row[1])

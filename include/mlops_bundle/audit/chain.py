"""The hash chain: the canonical form of a record, its hash or HMAC, and the appender that links records.

**What the hash covers.** ``hash = sha256(canonical)`` or, with a key, ``HMAC-SHA256(key, canonical)``
where ``canonical`` is the compact JSON array ``[seq, at, source, event, actor, subject, payload,
prev_hash]`` (``payload`` is itself canonical JSON: sorted keys, no whitespace, NaN/inf -> null). The
first record's ``prev_hash`` is 64 zeros.

**Keys.** A keyed chain records a key id (``HMAC(key, "mlops-audit key id")``, 16 hex chars, which does
not reveal the key) in ``audit_meta`` at its first append; a writer with no key or another key is refused
(``AuditKeyMismatch``) instead of silently breaking the chain for everyone. Rotating the key therefore
means starting a new log (new ``store_uri``). Key text is used as its UTF-8 bytes.

**Anchors.** ``anchor(uri, verified_head)`` stores a head that ``verify`` checked in the ``audit_anchor``
table and, with an anchor bucket, as a locked object (``mlops_bundle.audit.anchors``); ``verify`` checks
every stored anchor and the bucket's newest one (``mlops_bundle.audit.verification``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlops_bundle.audit.store import (
    DEFAULT_TIMEOUT_S,
    FIELDS,
    AuditError,
    backend,
    is_connection_error,
    last_record,
    reader,
)
from mlops_bundle.jsonsafe import json_safe
from mlops_bundle.uris import redact

if TYPE_CHECKING:
    from mlops_bundle.audit.anchors import S3Anchors

GENESIS_HASH = "0" * 64
HMAC_ENV = "MLOPS_AUDIT_HMAC_KEY"
SOURCES = ("listener", "operator", "library", "cli")
UNKEYED = "none"
_KEY_ID_LABEL = b"mlops-audit key id"
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


class AuditKeyMismatch(AuditError):
    """This writer's HMAC key (or lack of one) is not the key the chain was started with."""


# ------------------------------------------------------------------------------------ canonical form


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the same value always gives the same text."""
    return json.dumps(
        json_safe(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def as_key(key: bytes | str | None) -> bytes | None:
    """An HMAC key as bytes (text as UTF-8); None for no key or an empty one."""
    if key is None or key == b"" or key == "":
        return None
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def key_id(key: bytes | str | None) -> str:
    """A short, non-secret identifier of an HMAC key (``"none"`` for an unkeyed chain)."""
    key = as_key(key)
    if key is None:
        return UNKEYED
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


# -------------------------------------------------------------------------------------------- writer


class AuditLog:
    """An appender to one audit store; keeps one connection per process (safe across fork and threads).

    ``timeout_s``: how long an append waits for the write lock (and a connection) before raising.
    ``durable=False`` (SQLite only) trades power-loss durability of the newest records for a much higher
    append rate (``synchronous=NORMAL`` instead of ``FULL``: no fsync per append; benchmarks/README.md);
    PostgreSQL always commits durably.
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
        self._key = as_key(hmac_key)
        self._key_id = key_id(self._key)
        self._backend = backend(uri, timeout_s, durable)
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
                f"{'no HMAC key' if row[0] == UNKEYED else 'HMAC key id ' + row[0]} but this writer has "
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
        once: str | None = None,
    ) -> dict[str, Any]:
        """Append one record and return it (with its seq and hash); raises on any failure.

        ``once``: an idempotency key (e.g. a decision id). When a record was already appended with it, that
        record is returned and nothing is appended: a retry whose first append committed but lost its reply
        (or whose process died after it) leaves one record, not two.
        """
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
                        event, source, str(actor or ""), str(subject or ""), payload_text, once
                    )
                except AuditKeyMismatch:
                    self._reset()
                    raise
                except Exception as exc:
                    self._reset()
                    # one retry on a fresh connection: a stale pooled connection (server restart) is not
                    # a reason to lose the record
                    if attempt == 2 or not is_connection_error(exc):
                        raise
        raise AssertionError("unreachable")

    def _append_once(
        self, event: str, source: str, actor: str, subject: str, payload: str, once: str | None = None
    ) -> dict[str, Any]:
        conn = self._connection()
        be = self._backend
        cur = conn.cursor()
        try:
            be.begin_write(cur)
            if not self._ready:
                self._prepare(cur)
            if once is not None:
                cur.execute(
                    be.sql(
                        f"SELECT {', '.join('l.' + f for f in FIELDS)} FROM audit_once o "
                        "JOIN audit_log l ON l.seq = o.seq WHERE o.once_key = ?"
                    ),
                    (once,),
                )
                row = cur.fetchone()
                if row is not None:
                    be.rollback(conn, cur)
                    self._ready = True
                    found = dict(zip(FIELDS, row, strict=True))
                    if (found["event"], found["subject"]) != (event, subject):
                        # a key planted ahead of a decision (its ids are predictable) would otherwise
                        # swallow that decision's record: refuse loudly instead
                        raise AuditError(
                            f"the idempotency key {once!r} already points to audit record seq {found['seq']} "
                            f"({found['event']} of {found['subject']!r}), not to a {event} of {subject!r}: "
                            "the audit_once table was tampered with; this record was not written, investigate"
                        )
                    return {**found, "repeated": True}
            last = last_record(cur)
            record = {
                "seq": 1 if last is None else last[0] + 1,
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
            if once is not None:
                cur.execute(
                    be.sql("INSERT INTO audit_once (once_key, seq) VALUES (?, ?)"), (once, record["seq"])
                )
            be.commit(conn, cur)
            self._ready = True
            return record
        except BaseException:
            with contextlib.suppress(Exception):
                be.rollback(conn, cur)
            raise
        finally:
            with contextlib.suppress(Exception):
                cur.close()

    def head(self) -> tuple[int, str] | None:
        """The newest record's (seq, hash), or None for an empty log. Remember it to detect truncation."""
        return head(self.uri)

    def anchor(self, verified: tuple[int, str], bucket: S3Anchors | None = None) -> tuple[int, str]:
        """Anchor a verified head (see :func:`anchor`)."""
        return anchor(self.uri, verified, bucket=bucket)


# ------------------------------------------------------------------------------------- head, anchors


def head(uri: str) -> tuple[int, str] | None:
    """The newest record's (seq, hash) of the store at ``uri``; None when the log is empty or missing."""
    with reader(uri) as (be, conn):
        if conn is None:
            return None
        cur = conn.cursor()
        if not be.table_exists(cur, "audit_log"):
            return None
        return last_record(cur)


def anchor(
    uri: str,
    verified: tuple[int, str],
    *,
    records: int | None = None,
    bucket: S3Anchors | None = None,
) -> tuple[int, str]:
    """Anchor a head that was *verified*: the ``audit_anchor`` row, then (with ``bucket``) the locked object.

    ``verified`` is the (seq, hash) the caller's ``verify`` ended at; it is passed through, never re-read,
    so records appended (or slipped in) between the check and this call are not anchored unverified. The
    log must still hold that record with that hash (else ``AuditError``: it changed since the check). The
    row comes first: a bucket anchor without its row would look like deleted anchor rows.
    """
    seq, digest = int(verified[0]), str(verified[1])
    with reader(uri) as (be, conn):
        if conn is None:
            raise AuditError(f"audit store {redact(uri)} does not exist: nothing to anchor")
        cur = conn.cursor()
        be.begin_write(cur)
        try:
            for stmt in be.ddl():
                cur.execute(stmt)
            cur.execute(be.sql("SELECT hash FROM audit_log WHERE seq = ?"), (seq,))
            row = cur.fetchone()
            if row is None or row[0] != digest:
                found = "no record" if row is None else f"hash {row[0][:16]}..."
                raise AuditError(
                    f"audit store {redact(uri)}: the verified head seq {seq} ({digest[:16]}...) is not in the "
                    f"log any more ({found} at seq {seq}): it changed after verification; not anchoring"
                )
            cur.execute(be.sql("SELECT value FROM audit_meta WHERE name = ?"), ("key_id",))
            meta = cur.fetchone()
            chain_key_id = meta[0] if meta else UNKEYED
            cur.execute(be.sql("SELECT 1 FROM audit_anchor WHERE seq = ?"), (seq,))
            if cur.fetchone() is None:
                cur.execute(
                    be.sql("INSERT INTO audit_anchor (seq, hash, at) VALUES (?, ?, ?)"),
                    (seq, digest, _utc_now()),
                )
            be.commit(conn, cur)
        except BaseException:
            with contextlib.suppress(Exception):
                be.rollback(conn, cur)
            raise
    if bucket is not None:
        bucket.write(
            seq,
            digest,
            records=seq if records is None else int(records),
            key_id=chain_key_id,
            store=redact(uri),
        )
    return seq, digest

"""Tamper-evident audit trail: one append-only, hash-chained log in a shared SQL store.

Every task-instance and DAG-run state change, asset event and business decision is appended to one table
that many processes write (workers, scheduler, api-server, library code); each record carries the hash of
the previous one, so an edit, deletion, reordering or (with an HMAC key) a re-chained forgery is found by
walking the chain. One module per concern:

* :mod:`~mlops_bundle.audit.store` -- the SQLite and PostgreSQL backends and how appends are serialized;
* :mod:`~mlops_bundle.audit.chain` -- the canonical record, its hash/HMAC, key ids, the appender
  (``AuditLog``), the head and anchors;
* :mod:`~mlops_bundle.audit.verification` -- ``verify`` (what it detects, why truncation needs a remembered
  head or an anchor out of the tasks' reach), streaming records and the JSON-lines export;
* :mod:`~mlops_bundle.audit.anchors` -- verified heads as locked objects in an S3 Object Lock bucket;
* :mod:`~mlops_bundle.audit.gaps` -- events a listener could not write, counted by an ``audit.gap`` record;
* :mod:`~mlops_bundle.audit.recorder` -- ``record_event``/``record_decision`` for library code, with the
  HMAC key the Airflow side hands over;
* :mod:`~mlops_bundle.audit.cli` -- ``python -m mlops_bundle.audit verify|export|head|anchor``.

Everything importable from here before the split still is.
"""

from mlops_bundle.audit.anchors import Anchor, AnchorError, S3Anchors
from mlops_bundle.audit.chain import (
    GENESIS_HASH,
    HMAC_ENV,
    SOURCES,
    AuditKeyMismatch,
    AuditLog,
    anchor,
    canonical_json,
    head,
    key_id,
    record_hash,
)
from mlops_bundle.audit.cli import main
from mlops_bundle.audit.gaps import GapSpool
from mlops_bundle.audit.recorder import (
    AuditWriteError,
    current_hmac_key,
    decision_event,
    get_log,
    record_decision,
    record_event,
    set_hmac_key,
)
from mlops_bundle.audit.store import DEFAULT_TIMEOUT_S, FIELDS, LOCK_KEY, AuditError
from mlops_bundle.audit.verification import (
    GAP_EVENT,
    VerifyResult,
    export_jsonl,
    iter_records,
    parse_head,
    verify,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FIELDS",
    "GAP_EVENT",
    "GENESIS_HASH",
    "HMAC_ENV",
    "LOCK_KEY",
    "S3Anchors",
    "SOURCES",
    "Anchor",
    "AnchorError",
    "AuditError",
    "AuditKeyMismatch",
    "AuditLog",
    "AuditWriteError",
    "GapSpool",
    "VerifyResult",
    "anchor",
    "canonical_json",
    "current_hmac_key",
    "decision_event",
    "export_jsonl",
    "get_log",
    "head",
    "iter_records",
    "key_id",
    "main",
    "parse_head",
    "record_decision",
    "record_event",
    "record_hash",
    "set_hmac_key",
    "verify",
]

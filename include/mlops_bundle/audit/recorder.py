"""The library's side of the audit trail: business events and promotion decisions from library code.

``record_event`` takes the HMAC key from ``set_hmac_key`` (called by the Airflow side, which reads it from
the ``audit.hmac_conn_id`` connection) or else from ``$MLOPS_AUDIT_HMAC_KEY``. Business decisions
(promotion verdicts, rollbacks, quarantines) must not happen unaudited: ``record_event`` raises
``AuditWriteError`` when the write fails (``required=False`` downgrades that to a logged error for events
that are merely informative).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlops_bundle.audit.chain import HMAC_ENV, AuditLog, as_key, key_id
from mlops_bundle.audit.store import AuditError
from mlops_bundle.uris import redact

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig

log = logging.getLogger(__name__)

_hmac_key: bytes | None = None
_hmac_key_set = False
_logs: dict[tuple[int, str, str], AuditLog] = {}
_logs_lock = threading.Lock()


class AuditWriteError(AuditError):
    """A required audit record (a business decision) could not be written: the action is not audited."""


def set_hmac_key(key: bytes | str | None) -> None:
    """Set the HMAC key this process's library records use (the Airflow side calls this; else the env)."""
    global _hmac_key, _hmac_key_set
    _hmac_key, _hmac_key_set = as_key(key), True


def current_hmac_key() -> bytes | None:
    """The key set by ``set_hmac_key``, else ``$MLOPS_AUDIT_HMAC_KEY``, else None."""
    return _hmac_key if _hmac_key_set else as_key(os.environ.get(HMAC_ENV))


def get_log(uri: str, hmac_key: bytes | str | None = None) -> AuditLog:
    """A per-process cached ``AuditLog`` for (uri, key): appends reuse one connection."""
    key = as_key(hmac_key)
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
    once: str | None = None,
) -> dict[str, Any] | None:
    """Append one record to the configured audit store; a no-op (None) when ``audit.enabled`` is false.

    ``required=True`` (business decisions): a failed write raises ``AuditWriteError``, because an
    unaudited promotion/rollback/quarantine is a compliance failure that must be seen. ``required=False``:
    the failure is logged at ERROR level and None is returned. ``once``: an idempotency key
    (``AuditLog.append``): the record is appended at most once per key, whatever retries do.
    """
    if not cfg.audit.enabled:
        return None
    try:
        return get_log(cfg.audit_uri, current_hmac_key()).append(
            event, source=source, actor=actor, subject=subject, payload=payload, once=once
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
    kind = d.get("kind") or "decision"
    payload = {
        "kind": kind,
        "triggered_by": d.get("triggered_by"),
        "approved_by": d.get("approved_by"),
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
    return f"{kind}.{d['verdict']}", d["actor"], f"{d['model_name']}/{challenger.get('version')}", payload


def record_decision(cfg: BundleConfig, decision: Any) -> dict[str, Any] | None:
    """Audit one promotion decision (promote/reject/noop/rollback) or evaluation, once per decision id;
    raises ``AuditWriteError`` on failure."""
    event, actor, subject, payload = decision_event(decision)
    return record_event(cfg, event, actor=actor, subject=subject, payload=payload, once=decision.decision_id)

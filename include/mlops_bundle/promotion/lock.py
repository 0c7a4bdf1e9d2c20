"""The promotion lock: one model's promotions and rollbacks never interleave, on any host.

Why: MLflow alias updates are last-writer-wins, so two training runs finishing together could both read
"no champion" (or an old champion) and both promote; the worse one could win. ``gate`` and ``rollback``
therefore run inside ``promotion_lock`` and re-read the champion alias inside it before deciding. The
lock itself is :mod:`mlops_bundle.locks` (a PostgreSQL advisory lock or an ``fcntl.flock`` file lock);
this module only chooses which one and where, and words its errors for promotions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from mlops_bundle.config import PROJECT_ROOT, BundleConfig
from mlops_bundle.locks import LockTimeout, LockUnavailable, advisory_key, file_lock, pg_advisory_lock
from mlops_bundle.promotion.policy import GateError
from mlops_bundle.uris import is_sqlite, local_path, pg_dsn, redact, sqlite_path

DEFAULT_LOCK_TIMEOUT_S = 120.0


class PromotionLockTimeout(TimeoutError):
    """Another promotion of the same model held the promotion lock for longer than the timeout."""


def lock_key(model_name: str) -> int:
    """The advisory-lock key of one model's promotions (stable on every host and Python version)."""
    return advisory_key(f"mlops-promotion:{model_name}")


def state_dsn(cfg: BundleConfig) -> str | None:
    """The PostgreSQL DSN that holds promotion state (the lock, and the decision ledger beside it), if any:
    a ``postgresql://`` ``promotion.lock_uri``, else a ``postgresql://`` tracking URI, else None."""
    return pg_dsn(cfg.promotion.lock_uri) or pg_dsn(cfg.tracking_uri)


def state_dir(cfg: BundleConfig) -> Path:
    """Where promotion state lives without PostgreSQL: ``file://`` lock_uri, else the SQLite tracking DB's
    folder, else var/locks (file locks and the decision ledger's files)."""
    lock_uri = cfg.promotion.lock_uri
    if lock_uri.startswith("file:"):
        return local_path(lock_uri)
    if is_sqlite(cfg.tracking_uri):
        return Path(sqlite_path(cfg.tracking_uri)).resolve().parent
    return PROJECT_ROOT / "var" / "locks"


def safe_name(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_name)


def lock_description(cfg: BundleConfig, model_name: str) -> str:
    """Which lock ``promotion_lock`` would take (for logs and docs)."""
    dsn = state_dsn(cfg)
    if dsn:
        return f"postgres advisory lock {lock_key(model_name)} on {redact(dsn)}"
    return f"file lock {state_dir(cfg) / f'promotion-{safe_name(model_name)}.lock'}"


@contextlib.contextmanager
def promotion_lock(
    cfg: BundleConfig, model_name: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> Iterator[None]:
    """Serialize promotions of one model across processes and hosts.

    Why: MLflow alias writes are last-writer-wins, so "read champion, compare, set alias" must not
    interleave. Order of choice: ``promotion.lock_uri`` if it is ``postgresql://`` (advisory lock on a
    dedicated connection), else a ``postgresql://`` tracking URI (same, on the tracking DB), else an
    ``fcntl.flock`` file ``promotion-<model>.lock`` in the ``file://`` lock_uri folder, the SQLite tracking
    DB's folder or ``var/locks`` (only safe when every worker shares that disk). Raises
    ``PromotionLockTimeout`` after ``timeout_s``.
    """
    lock_uri = cfg.promotion.lock_uri
    if lock_uri and not (pg_dsn(lock_uri) or lock_uri.startswith("file://")):
        raise GateError(
            f"promotion.lock_uri {redact(lock_uri)!r} is not supported: use a postgresql:// URI (advisory "
            f"lock), a file:// folder on a disk all workers share, or leave it empty"
        )
    dsn = state_dsn(cfg)
    busy = f"another promotion of {model_name!r} has held the lock for {timeout_s:g} s"
    try:
        if dsn:
            lock = pg_advisory_lock(
                dsn, lock_key(model_name), timeout_s=timeout_s, application_name="mlops-promotion-lock"
            )
        else:
            path = state_dir(cfg) / f"promotion-{safe_name(model_name)}.lock"
            hint = (
                "A file lock is released when its process exits; if that process hangs, stop it "
                "(see `fuser` on the lock file)."
            )
            lock = file_lock(path, timeout_s=timeout_s, hint=hint)
        with lock:
            yield
    except LockTimeout as exc:
        raise PromotionLockTimeout(
            f"{busy} ({exc}); wait for it to finish and retry, or pass a longer timeout"
        ) from None
    except LockUnavailable as exc:
        raise GateError(
            f"{exc}; check promotion.lock_uri (or the postgresql:// tracking URI) and that PostgreSQL is reachable"
        ) from exc

"""The bundle's locks, one module for every lock user.

- :func:`file_lock`: an exclusive ``fcntl.flock`` on a file (local disk only: every process that must be
  excluded has to see the same file). Used by promotions next to a local tracking store, by the GX
  context (runs and pruning of one GX folder) and by the retrain history of a local store.
- :func:`pg_advisory_lock`: a PostgreSQL session advisory lock on a dedicated connection (works across
  hosts). Used by promotions when the lock URI or the tracking store is PostgreSQL.

Both blocking forms wait forever by default; with ``timeout_s`` they raise :class:`LockTimeout` naming
where the lock is and who holds it (file locks record ``pid ... on host since ...`` in the file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mlops_bundle.uris import redact

POLL_S = 0.1


class LockTimeout(TimeoutError):
    """The lock was not free within the timeout; the message names the lock and its holder."""


class LockUnavailable(RuntimeError):
    """The lock's backend could not be reached (e.g. the PostgreSQL server); the message names it."""


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (same on every host and Python version)."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike[str], *, timeout_s: float | None = None, hint: str = ""
) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created with its folder if missing) for the ``with`` body.

    The holder writes ``pid <n> on <host> since <time>`` into the file so a timeout can name it.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = path.read_text(encoding="utf-8", errors="replace").strip() or "unknown"
                        raise LockTimeout(
                            f"file lock {path} is held by {holder} (waited {timeout_s:g} s). {hint}".strip()
                        ) from None
                    time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def pg_advisory_lock(
    dsn: str, key: int, *, timeout_s: float, application_name: str = "mlops-lock", hint: str = ""
) -> Iterator[None]:
    """Hold PostgreSQL advisory lock ``key`` on a dedicated autocommit connection to ``dsn``.

    Closing the session releases the lock even if the explicit unlock fails, so a crashed holder never
    leaves it taken. LockUnavailable when the server cannot be reached, LockTimeout after ``timeout_s``.
    """
    import psycopg2

    try:
        conn = psycopg2.connect(dsn, connect_timeout=10, application_name=application_name)
    except psycopg2.Error as exc:
        raise LockUnavailable(
            f"cannot connect to the lock database {redact(dsn)}: {str(exc).strip()}"
        ) from exc
    try:
        conn.autocommit = True
        deadline = time.monotonic() + timeout_s
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cur.fetchone()[0]:
                    break
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"PostgreSQL advisory lock {key} on {redact(dsn)} is held by another session "
                        f"(waited {timeout_s:g} s). The holder shows up in: SELECT pid, application_name "
                        f"FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE locktype = 'advisory'; "
                        f"{hint}".strip()
                    )
                time.sleep(POLL_S)
        try:
            yield
        finally:
            with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()

"""Events a writer could not append while the store was down, and the ``audit.gap`` record that counts them.

**Why.** A listener must never break a task or the scheduler, so when the audit store is unreachable it
cannot fail; before this module it only logged a warning and the chain silently missed those state
changes. Now each lost event is noted in a per-host spool file (one JSON line: event, subject, time, the
error), and the next write that succeeds first appends one ``audit.gap`` record (``source="listener"``,
payload ``{kind: "gap", lost, first_at, last_at, events: {event: count}, hostname}``) and empties the
spool. The chain therefore says *that* and *how many* events are missing and when, and ``verify`` sums
the gap records (``lost_events``) and warns.

The spool is a local file, not the store (that is what is down): ``<gap_dir>/<sha256(store uri)[:16]>.jsonl``,
appended with ``O_APPEND`` and flushed under an exclusive ``flock`` so concurrent task processes on one
host neither lose nor double-count lines. Limits: events lost on a host whose spool cannot be written
either (disk full) are only logged; a host that never writes again keeps its spool until it does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_bundle.audit.verification import GAP_EVENT

if TYPE_CHECKING:
    from mlops_bundle.audit.chain import AuditLog
    from mlops_bundle.config import BundleConfig

_ERROR_MAX = 300


def gap_dir(cfg: BundleConfig) -> Path:
    """``audit.gap_dir`` as an absolute path (a relative one is relative to the config file's folder)."""
    path = Path(cfg.audit.gap_dir)
    return path if path.is_absolute() else (cfg.base_dir / path).resolve()


class GapSpool:
    """The lost-event spool of one audit store on this host (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], store_uri: str):
        name = hashlib.sha256(store_uri.encode("utf-8")).hexdigest()[:16]
        self.path = Path(directory) / f"{name}.jsonl"
        self._lock_path = self.path.with_suffix(".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def note(self, event: str, subject: str | None, error: BaseException | str) -> int:
        """Record one event that could not be written; return how many are now pending on this host.

        Raises ``OSError`` when the spool cannot be written either (the caller logs it).
        """
        line = json.dumps(
            {
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                "event": event,
                "subject": subject,
                "error": (error if isinstance(error, str) else f"{type(error).__name__}: {error}")[
                    :_ERROR_MAX
                ],
            },
            sort_keys=True,
        )
        with self._locked():
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
            return len(self._entries())

    def _entries(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def pending(self) -> int:
        """How many lost events wait for a gap record (cheap: a stat when there are none)."""
        try:
            if self.path.stat().st_size == 0:
                return 0
        except FileNotFoundError:
            return 0
        return len(self._entries())

    def flush(self, log: AuditLog, hostname: str) -> dict[str, Any] | None:
        """Append one ``audit.gap`` record for every pending lost event, then empty the spool.

        Returns the gap record (None when nothing was pending). Raises whatever the append raises (the
        store is still down): the spool is then kept for the next attempt.
        """
        if not self.pending():
            return None
        with self._locked():
            entries = self._entries()
            if not entries:  # another process flushed them while we waited for the lock
                return None
            times = sorted(str(e.get("at", "")) for e in entries)
            payload = {
                "kind": "gap",
                "lost": len(entries),
                "first_at": times[0],
                "last_at": times[-1],
                "events": dict(Counter(str(e.get("event")) for e in entries)),
                "last_error": entries[-1].get("error"),
                "hostname": hostname,
            }
            record = log.append(
                GAP_EVENT,
                source="listener",
                actor="audit",
                subject=f"gap/{hostname}",
                payload=payload,
                # a crash between this append and emptying the spool must not count the events twice
                once=f"gap:{hostname}:{self.path.name}:{times[0]}:{len(entries)}",
            )
            self.path.write_text("", encoding="utf-8")
            return record

"""The decision ledger: a decision is written here as an intent before any alias moves.

Why: a task that moved the ``champion`` alias and then failed (the audit write, a registry tag, a killed
worker) is retried, and a retry that decides again sees a different world (the champion it would compare
with is itself). So ``gate`` and ``rollback`` take a decision key (``dag_id/run_id/task_id`` from the
Airflow side), derive a stable decision id from it, and write the whole decision (verdict, target, the
aliases it will set, the champion it expects to replace) to the ledger first. Every later attempt with
the same key finds the intent and completes that decision; it never computes a new one.

The ledger lives where the promotion lock lives (:func:`mlops_bundle.promotion.lock.state_dsn` /
``state_dir``): a ``mlops_decision_intent`` table on that PostgreSQL database, or one JSON file per
decision under ``<state dir>/decisions/<model>/``. Writers hold the promotion lock, so the file backend
needs no further locking; the table's primary key refuses a second intent for one id anyway.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops_bundle.config import BundleConfig
from mlops_bundle.promotion.lock import safe_name, state_dir, state_dsn
from mlops_bundle.promotion.policy import GateError
from mlops_bundle.storage import atomic_file
from mlops_bundle.uris import redact

TABLE = "mlops_decision_intent"
MARKS = ("applied_at", "completed_at")


def decision_id(model_name: str, key: str) -> str:
    """The stable id of the decision about ``model_name`` made under ``key`` (``train/<run_id>/promote``)."""
    text = (key or "").strip()
    if not text:
        raise GateError("a decision key must not be empty (use '<dag_id>/<run_id>/<task_id>')")
    return hashlib.sha256(f"mlops-decision\0{model_name}\0{text}".encode()).hexdigest()[:32]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class _FileLedger:
    def __init__(self, folder: Path):
        self.folder = folder

    def where(self) -> str:
        return str(self.folder)

    def _path(self, decision_id: str) -> Path:
        return self.folder / f"{decision_id}.json"

    def get(self, decision_id: str) -> dict[str, Any] | None:
        path = self._path(decision_id)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def _write(self, decision_id: str, entry: Mapping[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(self._path(decision_id)) as fh:
            fh.write(json.dumps(entry, indent=2, sort_keys=True).encode())

    def create(self, decision_id: str, entry: Mapping[str, Any]) -> None:
        if self._path(decision_id).exists():
            raise GateError(f"decision {decision_id} already has an intent in {self.folder}")
        self._write(decision_id, entry)

    def mark(self, decision_id: str, mark: str) -> None:
        entry = self.get(decision_id) or {}
        if not entry.get(mark):
            self._write(decision_id, {**entry, mark: _now()})

    def entries(self) -> list[dict[str, Any]]:
        if not self.folder.is_dir():
            return []
        out = []
        for path in self.folder.glob("*.json"):
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue  # a half-written temp file is never *.json; anything else is not ours
        return out


class _PgLedger:
    def __init__(self, dsn: str, model: str):
        self.dsn, self.model = dsn, model
        self._ready = False

    def where(self) -> str:
        return f"table {TABLE} on {redact(self.dsn)}"

    def _run(self, sql: str, params: tuple = (), fetch: str = "") -> Any:
        """One statement in its own transaction; ``fetch``: "one", "all" or "" (nothing)."""
        import psycopg2

        try:
            conn = psycopg2.connect(self.dsn, connect_timeout=10, application_name="mlops-decision-ledger")
        except psycopg2.Error as exc:
            raise GateError(
                f"cannot reach the decision ledger ({self.where()}): {str(exc).strip()}; nothing was "
                "decided or changed, retry when PostgreSQL is back"
            ) from exc
        try:
            with conn, conn.cursor() as cur:
                if not self._ready:
                    cur.execute(
                        f"CREATE TABLE IF NOT EXISTS {TABLE} (decision_id TEXT PRIMARY KEY, model TEXT NOT NULL, "
                        "entry TEXT NOT NULL, created_at TEXT NOT NULL, applied_at TEXT, completed_at TEXT)"
                    )
                cur.execute(sql, params)
                rows = cur.fetchone() if fetch == "one" else cur.fetchall() if fetch == "all" else None
            self._ready = True
            return rows
        finally:
            conn.close()

    @staticmethod
    def _entry(row: tuple) -> dict[str, Any]:
        return {**json.loads(row[0]), "applied_at": row[1], "completed_at": row[2]}

    def get(self, decision_id: str) -> dict[str, Any] | None:
        row = self._run(
            f"SELECT entry, applied_at, completed_at FROM {TABLE} WHERE decision_id = %s",
            (decision_id,),
            "one",
        )
        return None if row is None else self._entry(row)

    def entries(self) -> list[dict[str, Any]]:
        rows = self._run(
            f"SELECT entry, applied_at, completed_at FROM {TABLE} WHERE model = %s", (self.model,), "all"
        )
        return [self._entry(r) for r in rows]

    def create(self, decision_id: str, entry: Mapping[str, Any]) -> None:
        body = {k: v for k, v in entry.items() if k not in MARKS}
        self._run(
            f"INSERT INTO {TABLE} (decision_id, model, entry, created_at) VALUES (%s, %s, %s, %s)",
            (decision_id, self.model, json.dumps(body, sort_keys=True), _now()),
        )

    def mark(self, decision_id: str, mark: str) -> None:
        if mark not in MARKS:
            raise ValueError(f"unknown ledger mark {mark!r}")
        self._run(
            f"UPDATE {TABLE} SET {mark} = COALESCE({mark}, %s) WHERE decision_id = %s", (_now(), decision_id)
        )


Ledger = _FileLedger | _PgLedger


def latest_applied(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The decision that set the aliases last (the newest ``applied_at``), or None."""
    applied = [e for e in entries if e.get("applied_at") and e.get("move")]
    return max(applied, key=lambda e: e["applied_at"]) if applied else None


def pending(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decisions written as intents whose alias move is not confirmed yet (an attempt died mid-way)."""
    return [e for e in entries if e.get("move") and not e.get("applied_at") and not e.get("completed_at")]


def ledger(cfg: BundleConfig, model_name: str) -> Ledger:
    """The decision ledger of one model, beside its promotion lock."""
    dsn = state_dsn(cfg)
    if dsn:
        return _PgLedger(dsn, model_name)
    return _FileLedger(state_dir(cfg) / "decisions" / safe_name(model_name))

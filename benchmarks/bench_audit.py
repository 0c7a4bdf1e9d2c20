"""Audit append rate: one writer vs 8 concurrent writer processes, on SQLite and (if reachable) PostgreSQL.

Each writer is its own process that opens one ``mlops_bundle.audit.AuditLog`` (one connection, reused) and
appends ``--events`` records of a realistic size (a task-instance record: ~300 bytes of payload); the
processes are started first and released together. Every run ends with a full ``verify`` of the chain
(the timing excludes it; its own rate is printed too), so a fast but broken chain would fail the run.

SQLite is the embedded mode (a WAL file in a temporary folder; ``sqlite``: ``synchronous=FULL``, the
default, every record is fsynced; ``sqlite-normal``: ``AuditLog(durable=False)``, no fsync per commit);
PostgreSQL is the stack mode (a throwaway database on 127.0.0.1:5432, dropped afterwards; set
``AUDIT_BENCH_PG`` to another server URI, e.g. ``postgresql://root@127.0.0.1:5432/postgres``).

    .venv/bin/python benchmarks/bench_audit.py [--events 1000] [--writers 8] [--hmac] [--no-pg]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

from mlops_bundle import audit  # noqa: E402

PAYLOAD = {
    "dag_id": "churn__train",
    "run_id": "scheduled__2026-03-02T00:30:00+00:00",
    "task_id": "train_candidate",
    "map_index": 3,
    "try_number": 1,
    "state": "success",
    "previous_state": "running",
    "run_type": "scheduled",
    "triggered_by": "timetable",
    "triggering_user_name": None,
    "hostname": "worker-1.example.internal",
}


def _writer(
    uri: str, key: bytes | None, durable: bool, events: int, wid: int, start_at: float, out: mp.Queue
) -> None:
    log = audit.AuditLog(uri, key, durable=durable)
    log.append("bench.warmup", source="cli", actor=f"w{wid}", subject="warmup", payload={})  # connect + DDL
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    for i in range(events):
        log.append("bench.append", source="cli", actor=f"w{wid}", subject=f"w{wid}/{i}", payload=PAYLOAD)
    out.put((wid, time.perf_counter() - t0))
    log.close()


def run(uri: str, key: bytes | None, writers: int, events: int, durable: bool = True) -> tuple[float, float]:
    """(append events/s over all writers, verify records/s)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 2.0 + 0.3 * writers  # after every process has imported and connected
    procs = [
        ctx.Process(target=_writer, args=(uri, key, durable, events, w, start_at, out))
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    times = [out.get(timeout=600)[1] for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"writer failed with exit code {p.exitcode}")
    wall = max(times)
    t0 = time.perf_counter()
    res = audit.verify(uri, key)
    verify_s = time.perf_counter() - t0
    expected = writers * (events + 1)
    if not res.ok or res.records < expected:
        raise SystemExit(f"chain check failed after the run: {res}")
    return writers * events / wall, res.records / verify_s


def _pg_server() -> str | None:
    base = os.environ.get("AUDIT_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres")
    try:
        import psycopg2

        psycopg2.connect(base, connect_timeout=3).close()
        return base
    except Exception as exc:
        print(f"PostgreSQL not reachable at {base} ({type(exc).__name__}); skipping it")
        return None


def _with_pg_db(base: str):
    import psycopg2

    name = f"bench_audit_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(base)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    return admin, name, base.rsplit("/", 1)[0] + "/" + name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1000, help="appends per writer")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--hmac", action="store_true", help="HMAC-keyed chain (else plain sha256)")
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    key = b"bench-key" if args.hmac else None
    print(
        f"audit append rate: {args.events} events per writer, 1 vs {args.writers} writer processes, "
        f"{'HMAC-SHA256' if key else 'sha256'} chain, cpu count {os.cpu_count()}"
    )
    backends: list[tuple[str, str | None]] = [("sqlite", None), ("sqlite-normal", None)]
    if not args.no_pg and (base := _pg_server()):
        backends.append(("postgresql", base))
    for name, base in backends:
        for writers in (1, args.writers):
            if name.startswith("sqlite"):
                with tempfile.TemporaryDirectory() as tmp:
                    durable = name == "sqlite"
                    rate, vrate = run(f"sqlite:///{tmp}/audit.db", key, writers, args.events, durable)
            else:
                admin, db, uri = _with_pg_db(base)
                try:
                    rate, vrate = run(uri, key, writers, args.events)
                finally:
                    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                    admin.close()
            print(
                f"{name:<13} {writers} writer(s): {rate:8.0f} appends/s "
                f"({writers * args.events} records; verify {vrate:,.0f} records/s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

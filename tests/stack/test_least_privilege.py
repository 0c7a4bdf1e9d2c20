"""Least privilege in the process stack (issue 14, threat 4b), tried as an attacker would.

* The Celery workers, which run every task's code, hold neither the JWT secret (with it any task could mint
  an admin's token) nor the SimpleAuthManager password file or its path: checked in the real worker
  processes' /proc/<pid>/environ, in their effective Airflow config (``airflow config get-value`` in the
  worker's environment), and by minting an admin token with whatever key a worker has (refused). Tasks still
  run (the chain) and their logs still come from the worker's log server, which checks ``[api] secret_key``.
* Each store is used as its own PostgreSQL role, none a superuser: checked in the catalog (grants, role
  attributes) and by trying, as the audit and lock roles, what a compromised task would try.

CI's PostgreSQL trusts loopback logins, so a login proves nothing here: the grants are what is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import jwt
import pytest

from tests.stack.api import q, rest, task_instances, token_for

pytestmark = pytest.mark.stack

AUDIT_SAFE = {"SELECT", "INSERT"}
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _worker_pids(stack) -> dict[str, int]:
    return {w: stack.airflow.procs[f"worker-{w}"].pid for w in stack.worker_hostnames}


def _admin(dbname: str):
    import psycopg2
    from stack import pg_admin  # scripts/ is on sys.path (tests/stack/conftest.py)

    conn = psycopg2.connect(**pg_admin(), dbname=dbname)
    conn.autocommit = True
    # closing(), not the connection itself: psycopg2's `with conn` opens a transaction even in autocommit
    return contextlib.closing(conn)


def _as_role(stack, role_key: str, db_key: str):
    """A connection as one of the stack's roles (trust auth: the role's grants decide what it may do)."""
    import psycopg2
    from stack import PG_HOST, PG_PORT

    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=stack.roles[role_key], dbname=stack.databases[db_key]
    )
    conn.autocommit = True
    return contextlib.closing(conn)


# ------------------------------------------------------------------------------------------ workers


def test_worker_processes_hold_no_token_key_and_no_login_file(stack):
    secret = stack.env["AIRFLOW__API_AUTH__JWT_SECRET"]
    passwords = stack.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    checked = 0
    for w, pid in _worker_pids(stack).items():
        for p in [pid, *_children(pid)]:  # the worker and the pool processes that run its tasks
            env = _environ(p)
            if not env and p != pid:  # a child that exited meanwhile (a zombie shows no environment)
                continue
            assert env, f"worker {w} (pid {p}): empty /proc environ (setproctitle without SPT_NOENV?)"
            assert "AIRFLOW__API_AUTH__JWT_SECRET" not in env, f"worker {w} (pid {p}) has the JWT secret"
            assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" not in env, (w, p)
            leaked = sorted(k for k, v in env.items() if secret in v or passwords in v)
            assert not leaked, f"worker {w} (pid {p}) holds the JWT secret or password file path in {leaked}"
            assert not Path(env["AIRFLOW_HOME"], Path(passwords).name).exists(), (w, env["AIRFLOW_HOME"])
            # what a worker does need: its log server's key, the Fernet key, the execution API
            for key in ("AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):  # fmt: skip
                assert env.get(key) == stack.env[key], f"worker {w} (pid {p}) lacks {key}"
            checked += 1
    # the components that sign or check tokens do have it (the check above looks at the right thing)
    for name in ("api-server", "scheduler"):
        assert _environ(stack.airflow.procs[name].pid).get("AIRFLOW__API_AUTH__JWT_SECRET") == secret, name
    assert checked > len(stack.worker_hostnames), "no worker pool process was checked"


def _worker_config(stack, w: str, section: str, key: str) -> str:
    """`airflow config get-value` as the worker sees it (its real environment, from /proc)."""
    env = _environ(_worker_pids(stack)[w])
    proc = subprocess.run(
        [str(Path(env["PATH"].split(os.pathsep)[0]) / "airflow"), "config", "get-value", section, key],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=stack.tmp_dir,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def test_a_worker_cannot_mint_an_admin_token(stack):
    """Whatever jwt_secret a worker's config resolves to (Airflow makes up a random one when none is set)
    is not the api-server's: a token minted with it for the admin is refused; the same token signed with
    the real secret is accepted (so the minting is right and only the key is missing)."""
    real = token_for(stack.api_url, "admin", "admin")
    claims, header = jwt.decode(real, options={"verify_signature": False}), jwt.get_unverified_header(real)
    now = int(time.time())
    claims |= {"iat": now, "nbf": now, "exp": now + 600, "jti": f"h5-{now}"}
    passwords = stack.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    w = next(iter(stack.worker_hostnames))
    worker_secret = _worker_config(stack, w, "api_auth", "jwt_secret")
    assert worker_secret != stack.env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert _worker_config(stack, w, "core", "simple_auth_manager_passwords_file") != passwords
    assert _worker_config(stack, w, "api", "secret_key") == stack.env["AIRFLOW__API__SECRET_KEY"]

    def status(key: str) -> int:
        token = jwt.encode(claims, key, algorithm=header["alg"], headers=header)
        try:
            rest(stack.api_url, token, "GET", "/api/v2/connections")
            return 200
        except Exception as exc:  # urllib.error.HTTPError
            return getattr(exc, "code", 0)

    assert status(stack.env["AIRFLOW__API_AUTH__JWT_SECRET"]) == 200, "control: the real key's token works"
    for key in {worker_secret or "", stack.env["AIRFLOW__API__SECRET_KEY"]} - {""}:
        assert status(key) in (401, 403), "a token minted with a worker's key was accepted"


def _log_server_get(base: str, rel: str, key: str | None) -> tuple[int, str]:
    import requests
    from airflow.api_fastapi.auth.tokens import JWTGenerator

    headers = {}
    if key is not None:
        gen = JWTGenerator(
            secret_key=key, algorithm="HS512", private_key=None, issuer=None, valid_for=30,
            audience="task-instance-logs",
        )  # fmt: skip
        headers["Authorization"] = gen.generate({"filename": rel})
    resp = requests.get(f"{base}/log/{rel}", headers=headers, timeout=30)
    return resp.status_code, resp.text


def _worker_log_port(stack, w: str) -> int:
    argv = stack.airflow.commands[f"worker-{w}"]
    return int(
        next(a for a in argv if a.startswith("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=")).split("=")[1]
    )


def test_tasks_run_on_workers_and_their_logs_are_served(stack, chain):
    """The chain's tasks ran on the workers (which hold no JWT secret). A task's log comes through the
    api-server's REST logs endpoint, and the worker's log server serves it to a request signed with
    ``[api] secret_key`` only (signed as ``file_task_handler._fetch_logs_from_service`` signs: how the
    api-server reads the log of a running task, or of any task without a shared log folder); the first
    worker serves on the port the api-server is configured with. Requests signed with the JWT secret,
    another key or none are refused."""
    token = chain.token
    run_id = chain.runs["ingest"]["dag_run_id"]
    tis = [
        ti for ti in task_instances(stack, token, chain.dag_id("ingest"), run_id) if ti["state"] == "success"
    ]
    by_host = {ti["hostname"]: ti for ti in tis}
    assert by_host and set(by_host) <= set(stack.worker_hostnames.values()), by_host.keys()
    api_port = int(stack.env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"])
    first = next(iter(stack.worker_hostnames))
    assert _worker_log_port(stack, first) == api_port, "the api-server would ask the wrong port"
    served = 0
    t0 = time.monotonic()
    for w, node in stack.worker_hostnames.items():
        ti = by_host.get(node)
        if ti is None:
            continue
        rel = f"dag_id={chain.dag_id('ingest')}/run_id={run_id}/task_id={ti['task_id']}/attempt={ti['try_number']}.log"
        assert (stack.log_dir / rel).is_file(), f"no log at {stack.log_dir / rel}"
        url = (
            f"/api/v2/dags/{chain.dag_id('ingest')}/dagRuns/{q(run_id)}/taskInstances/{q(ti['task_id'])}/logs/"
            f"{ti['try_number']}"
        )
        body = rest(stack.api_url, token, "GET", url, full_content="true")
        assert len(body["content"]) > 3, json.dumps(body)[:800]
        # the stack's task-instance hostnames are Celery node names (w1@host), which an HTTP client reads
        # as user info: ask the worker's log server on loopback (the first one on the api-server's port)
        base = f"http://127.0.0.1:{_worker_log_port(stack, w)}"
        status, text = _log_server_get(base, rel, stack.env["AIRFLOW__API__SECRET_KEY"])
        assert status == 200 and text.strip(), (w, status, text[:300])
        for key in (None, stack.env["AIRFLOW__API_AUTH__JWT_SECRET"], "an attacker's key " + "x" * 40):
            bad, _ = _log_server_get(base, rel, key)
            assert bad == 403, (
                f"worker {w}'s log server answered {bad} to a request not signed with secret_key"
            )
        served += 1
    assert served, f"no ingest task ran on a stack worker ({by_host})"
    print(f"\nlog server checks: {served} worker(s), {time.monotonic() - t0:.1f}s")


# ------------------------------------------------------------------------------------------ PostgreSQL


def test_every_store_is_used_as_its_own_role(stack):
    """Each URI names its role; the roles are plain logins (no superuser, createrole, createdb)."""
    from urllib.parse import urlsplit

    env = stack.env
    expect = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ("airflow", "airflow"),
        "AIRFLOW__CELERY__RESULT_BACKEND": ("celery", "celery"),
        "MLOPS_AUDIT__STORE_URI": ("audit", "audit"),
        "MLOPS_PROMOTION__LOCK_URI": ("lock", "state"),
    }
    for key, (role, db) in expect.items():
        parts = urlsplit(env[key])
        assert (parts.username, parts.path.lstrip("/")) == (stack.roles[role], stack.databases[db]), key
    mlflow_argv = " ".join(stack.infra.commands["mlflow"])
    assert f"://{stack.roles['mlflow']}@" in mlflow_argv
    assert stack.infra.env_of["mlflow"]["PGUSER"] == stack.roles["mlflow"]
    with _admin("postgres") as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin "
            "FROM pg_roles WHERE rolname = ANY(%s)",
            (list(stack.roles.values()),),
        )
        rows = {r[0]: r[1:] for r in cur.fetchall()}
        assert set(rows) == set(stack.roles.values()), rows
        for name, attrs in rows.items():
            assert attrs == (False, False, False, False, False, True), f"{name}: {attrs}"
        # every live connection to the stack's databases is made by the role meant for it
        cur.execute(
            "SELECT datname, usename FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            (list(stack.databases.values()),),
        )
        seen = {(db, user) for db, user in cur.fetchall()}
    owners = {
        "airflow": {"airflow"}, "celery": {"celery"}, "mlflow": {"mlflow"}, "mlflow_auth": {"mlflow"},
        "audit": {"audit"}, "state": {"lock"},
    }  # fmt: skip
    allowed = {(stack.databases[db], stack.roles[r]) for db, roles in owners.items() for r in roles}
    assert seen, "no connection to the stack's databases"
    assert seen <= allowed, f"unexpected (database, user) connections: {sorted(seen - allowed)}"


def test_database_access_follows_the_roles(stack):
    owners = {
        "airflow": "airflow", "celery": "celery", "mlflow": "mlflow", "mlflow_auth": "mlflow",
        "audit": "audit", "state": "lock",
    }  # fmt: skip
    with _admin("postgres") as conn, conn.cursor() as cur:
        for db_key, db in stack.databases.items():
            for role_key, role in stack.roles.items():
                cur.execute("SELECT has_database_privilege(%s, %s, 'CONNECT')", (role, db))
                may = cur.fetchone()[0]
                assert may == (owners[db_key] == role_key), f"{role} CONNECT on {db}: {may}"
            cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (db,))
            owner = cur.fetchone()[0]
            if db_key in ("audit", "state"):
                assert owner not in stack.roles.values(), f"{db} belongs to {owner}, a runtime role"
            else:
                assert owner == stack.roles[owners[db_key]], (db, owner)


def test_audit_role_may_only_read_and_append(stack, chain):
    from db_roles import audit_tables

    role = stack.roles["audit"]
    tables = audit_tables()
    assert "audit_log" in tables
    with _admin(stack.databases["audit"]) as conn, conn.cursor() as cur:
        for table in tables:
            for priv in TABLE_PRIVILEGES:
                cur.execute("SELECT has_table_privilege(%s, %s, %s)", (role, table, priv))
                assert cur.fetchone()[0] == (priv in AUDIT_SAFE), f"{role} {priv} on {table}"
            cur.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = %s", (table,))
            assert cur.fetchone()[0] not in stack.roles.values(), f"{table} belongs to a runtime role"
        cur.execute("SELECT count(*), max(seq) FROM audit_log")
        before = cur.fetchone()
    assert before[0] > 0, "the chain wrote no audit record as the audit role"

    import psycopg2

    attacks = [
        "DELETE FROM audit_log",
        "UPDATE audit_log SET actor = 'someone else'",
        "TRUNCATE audit_log",
        "DROP TABLE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "DELETE FROM audit_anchor",
        "UPDATE audit_meta SET value = 'none'",
    ]
    with _as_role(stack, "audit", "audit") as conn, conn.cursor() as cur:
        for sql in attacks:
            with pytest.raises(psycopg2.Error, match="permission denied|must be owner"):
                cur.execute(sql)
    with _admin(stack.databases["audit"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), max(seq) FROM audit_log")
        after = cur.fetchone()
    assert after[0] >= before[0] and after[1] >= before[1]
    # and it reaches no other database (Airflow's metadata, MLflow's accounts)
    for other in ("airflow", "mlflow_auth"):
        with pytest.raises(psycopg2.OperationalError, match="permission denied"):
            _as_role(stack, "audit", other)


def test_lock_role_may_only_write_the_ledger_marks(stack, chain):
    import psycopg2

    from mlops_bundle.promotion.ledger import MARKS, TABLE

    role = stack.roles["lock"]
    with _admin(stack.databases["state"]) as conn, conn.cursor() as cur:
        for priv in TABLE_PRIVILEGES:
            cur.execute("SELECT has_table_privilege(%s, %s, %s)", (role, TABLE, priv))
            assert cur.fetchone()[0] == (priv in AUDIT_SAFE), f"{role} {priv} on {TABLE}"
        for column in ("decision_id", "model", "entry", "created_at", *MARKS):
            cur.execute("SELECT has_column_privilege(%s, %s, %s, 'UPDATE')", (role, TABLE, column))
            assert cur.fetchone()[0] == (column in MARKS), f"{role} UPDATE of {TABLE}.{column}"
        cur.execute(f"SELECT count(*) FROM {TABLE}")
        assert cur.fetchone()[0] > 0, "the chain's promotion wrote no ledger entry as the lock role"
    with _as_role(stack, "lock", "state") as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(42)")  # what the promotion lock needs
        assert cur.fetchone() == (True,)
        cur.execute("SELECT pg_advisory_unlock(42)")
        assert cur.fetchone() == (True,)
        for sql in (
            f"UPDATE {TABLE} SET entry = '{{}}'",
            f"DELETE FROM {TABLE}",
            f"TRUNCATE {TABLE}",
            f"DROP TABLE {TABLE}",
        ):
            with pytest.raises(psycopg2.Error, match="permission denied|must be owner"):
                cur.execute(sql)
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        _as_role(stack, "lock", "airflow")

"""PostgreSQL databases and login roles of the production topology: one role per concern, least privilege.

Used by scripts/stack.py (per stack: unique role and database names, dropped at teardown) and by
docker-compose.yaml's ``postgres-roles`` one-shot service (``python db_roles.py``; idempotent, runs at
every ``up``). What each role may do, and who holds it:

=========  =====================================================================  ==========================
role       privileges                                                             held by
=========  =====================================================================  ==========================
airflow    owns the Airflow metadata database                                     every Airflow component
celery     owns the Celery result-backend database                                scheduler, Celery workers
mlflow     owns MLflow's tracking and auth databases                              the MLflow server
audit      CONNECT to the audit database; SELECT and INSERT on the audit tables   every Airflow process
lock       CONNECT to the state database (advisory locks); SELECT, INSERT and     every Airflow process
           UPDATE (applied_at, completed_at only) on the decision ledger
=========  =====================================================================  ==========================

None is a superuser or may create roles or databases. The audit and state databases belong to the admin
(the superuser that only this script uses): their tables are created here, as that owner, from the
library's own DDL (``mlops_bundle.audit.store``, ``mlops_bundle.promotion.ledger``), so the roles that
write to them can neither drop, alter, update, delete nor truncate them. PUBLIC loses CONNECT on every
one of these databases, so a role reaches only the databases named for it.

One concession: the audit store and the ledger run ``CREATE TABLE IF NOT EXISTS`` before their first
write, and PostgreSQL checks CREATE on the schema before it looks whether the table exists; so the audit
and lock roles keep CREATE on their database's ``public`` schema (they may add tables of their own there,
never change the ones they write to). Drop ``SCHEMA_CREATE`` once those stores skip DDL for an existing
table.

Needs psycopg2 and, for the table definitions, the mlops_bundle library (both in the Airflow image).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROLES = ("airflow", "celery", "mlflow", "audit", "lock")
# database -> owning role (None: the admin owns it, the role named in DATABASE_USERS only writes to it)
DATABASES = {
    "airflow": "airflow",
    "celery": "celery",
    "mlflow": "mlflow",
    "mlflow_auth": "mlflow",
    "audit": None,
    "state": None,
}
DATABASE_USERS = {"audit": "audit", "state": "lock"}
# see the module docstring: CREATE TABLE IF NOT EXISTS needs CREATE on the schema even for an existing table
SCHEMA_CREATE = ("audit", "lock")
LEDGER_MARKS = ("applied_at", "completed_at")
_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)", re.I)


@dataclass(frozen=True)
class Plan:
    """Names of one deployment's roles and databases (logical name -> PostgreSQL name) and role passwords
    (None: no password, e.g. the stack's trust-auth loopback server)."""

    roles: dict[str, str]
    databases: dict[str, str]
    passwords: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = (set(ROLES) - set(self.roles)) | (set(DATABASES) - set(self.databases))
        if missing:
            raise ValueError(
                f"role plan lacks {sorted(missing)} (needs roles {ROLES}, databases {DATABASES})"
            )


def audit_tables() -> list[str]:
    """The audit store's table names, from its own DDL (one home for the schema)."""
    return [_CREATE_TABLE.search(stmt).group(1) for stmt in _audit_ddl()]


def _audit_ddl() -> list[str]:
    from mlops_bundle.audit.store import backend

    return backend("postgresql://placeholder/placeholder").ddl()


def _connect(admin: Mapping[str, Any], dbname: str):
    import psycopg2

    conn = psycopg2.connect(**{**admin, "dbname": dbname})
    conn.autocommit = True
    return conn


def _exists(cur, query: str, name: str) -> bool:
    cur.execute(query, (name,))
    return cur.fetchone() is not None


def apply(admin: Mapping[str, Any], plan: Plan) -> None:
    """Create (or bring back to this plan) the roles, databases, tables and grants. Idempotent.

    `admin`: psycopg2.connect keyword arguments of a superuser (host, port, user, password), without dbname.
    """
    from psycopg2 import sql

    ident = sql.Identifier
    conn = _connect(admin, "postgres")
    try:
        with conn.cursor() as cur:
            for key in ROLES:
                role, password = plan.roles[key], plan.passwords.get(key)
                verb = (
                    "ALTER" if _exists(cur, "SELECT 1 FROM pg_roles WHERE rolname = %s", role) else "CREATE"
                )
                stmt = sql.SQL(
                    "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
                ).format(sql.SQL(verb), ident(role))
                if password:
                    stmt += sql.SQL(" PASSWORD {}").format(sql.Literal(password))
                cur.execute(stmt)
            for key, owner_key in DATABASES.items():
                db = plan.databases[key]
                owner = ident(plan.roles[owner_key]) if owner_key else sql.SQL("CURRENT_USER")
                if not _exists(cur, "SELECT 1 FROM pg_database WHERE datname = %s", db):
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(ident(db)))
                cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident(db), owner))
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident(db)))
            for key, role_key in DATABASE_USERS.items():
                cur.execute(
                    sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                        ident(plan.databases[key]), ident(plan.roles[role_key])
                    )
                )
    finally:
        conn.close()
    _tables(admin, plan)


def _tables(admin: Mapping[str, Any], plan: Plan) -> None:
    """The audit tables and the decision ledger, created by the admin, then granted to their writers."""
    from psycopg2 import sql

    from mlops_bundle.promotion.ledger import TABLE, _PgLedger

    ident = sql.Identifier
    for db_key, role_key in DATABASE_USERS.items():
        role = plan.roles[role_key]
        conn = _connect(admin, plan.databases[db_key])
        try:
            with conn.cursor() as cur:
                cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident(role)))
                schema_create = sql.SQL("{} CREATE ON SCHEMA public {} {}").format(
                    *(
                        (sql.SQL("GRANT"), sql.SQL("TO"), ident(role))
                        if role_key in SCHEMA_CREATE
                        else (sql.SQL("REVOKE"), sql.SQL("FROM"), ident(role))
                    )
                )
                cur.execute(schema_create)
                if db_key == "audit":
                    for stmt in _audit_ddl():
                        cur.execute(stmt)
                    for table in audit_tables():
                        cur.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(ident(table), ident(role)))
                        cur.execute(
                            sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(ident(table), ident(role))
                        )
        finally:
            conn.close()
        if db_key == "state":
            # the ledger's own CREATE TABLE (one home for its schema), run as the admin
            dsn = " ".join(f"{k}={v}" for k, v in {**admin, "dbname": plan.databases[db_key]}.items() if v)
            _PgLedger(dsn, "-").entries()
            conn = _connect(admin, plan.databases[db_key])
            try:
                with conn.cursor() as cur:
                    cur.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(ident(TABLE), ident(role)))
                    cur.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(ident(TABLE), ident(role)))
                    cur.execute(
                        sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(
                            sql.SQL(", ").join(ident(c) for c in LEDGER_MARKS), ident(TABLE), ident(role)
                        )
                    )
            finally:
                conn.close()


def drop(admin: Mapping[str, Any], plan: Plan) -> list[str]:
    """Drop the plan's databases, then its roles (the stack's teardown); returns what could not be dropped."""
    from psycopg2 import sql

    problems = []
    conn = _connect(admin, "postgres")
    try:
        with conn.cursor() as cur:
            for db in plan.databases.values():
                try:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
                except Exception as exc:  # noqa: BLE001 - report and go on with the others
                    problems.append(f"database {db}: {exc}".strip())
            for role in plan.roles.values():
                try:
                    cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                except Exception as exc:  # noqa: BLE001 - e.g. a grant left in a database we do not own
                    problems.append(f"role {role}: {exc}".strip())
    finally:
        conn.close()
    return problems


# --------------------------------------------------------------------------------- compose (one-shot)

COMPOSE_ROLES = {key: f"mlops_{key}" for key in ROLES}
# the password of each role, from .env through the postgres-roles service's environment
PASSWORD_ENV = {key: f"{key.upper()}_DB_PASSWORD" for key in ROLES}


def compose_plan(environ: Mapping[str, str]) -> Plan:
    """docker-compose.yaml's plan: fixed role names, the metadata DB named by POSTGRES_DB."""
    missing = [v for v in PASSWORD_ENV.values() if not environ.get(v)]
    if missing or not environ.get("POSTGRES_DB"):
        raise SystemExit(f"postgres-roles: set {missing or ['POSTGRES_DB']} in .env (see .env.example)")
    databases = {key: key for key in DATABASES} | {"airflow": environ["POSTGRES_DB"]}
    return Plan(
        roles=dict(COMPOSE_ROLES),
        databases=databases,
        passwords={key: environ[var] for key, var in PASSWORD_ENV.items()},
    )


def main() -> int:
    """Compose's postgres-roles service: the admin from libpq's PG* variables, passwords from .env."""
    plan = compose_plan(os.environ)
    apply({}, plan)  # host, port, user, password: PGHOST, PGPORT, PGUSER, PGPASSWORD
    print(
        f"postgres-roles: roles {', '.join(plan.roles.values())}; databases {', '.join(plan.databases.values())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

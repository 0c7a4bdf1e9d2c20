"""The docker-compose topology as real processes on this machine (stack mode; tests/stack and CI).

  python scripts/stack.py up [--keep]   start everything, print URLs and log folders, run until Ctrl-C /
                                        SIGTERM, then stop it all and drop the databases (unless --keep)

What runs (each a subprocess in its own process group, logging to <tmp>/airflow/logs/<name>.log):

* a moto server (S3 + KMS on 127.0.0.1): bucket ``mlops-stack-<id>`` holds the lake under
  ``s3://<bucket>/lake`` (Airflow AWS connection ``mlops_s3`` with ``endpoint_url`` in its extra), and a
  KMS key encrypts staging/quarantine/reports/predictions at rest (``encryption.key_source: kms``);
* ``mlflow server`` behind its basic-auth app (``--app-name basic-auth``, settings from config/mlflow.env
  and config/mlflow-auth.ini) on its own fresh PostgreSQL databases (tracking store and auth store), proxied
  artifacts in a temp folder; once it is healthy, scripts/mlflow_accounts.py creates its accounts (as
  compose's ``mlflow-init`` does): the bundle's service account, which Airflow's connection
  ``mlops_mlflow`` holds (the only writer), and a read-only account for people, with passwords generated
  into ``<tmp>/airflow/mlflow-secrets.json`` (mode 0600);
* Airflow 3.3: ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and two
  ``airflow celery worker`` processes (``--celery-hostname w1@%h`` / ``w2@%h``, queues from
  ``MLOPS_WORKER_QUEUES`` in config/stack.env: ``default,training``);
  CeleryExecutor with the broker on a free Redis database (``redis://127.0.0.1:6379/<n>``, flushed at
  teardown) and the result backend on its own database;
* the bundle's audit chain and its promotion lock (advisory lock) + decision ledger on PostgreSQL, each on
  its own database, as in docker-compose.yaml.

PostgreSQL least privilege (scripts/db_roles.py, as compose's ``postgres-roles`` service): one login role
per concern, none a superuser, each reaching only its databases: Airflow's metadata (owner), Celery's
results (owner), MLflow's tracking and auth stores (owner), the audit tables (SELECT and INSERT only) and
the decision ledger (SELECT, INSERT, UPDATE of its two marks; advisory locks). Role and database names
carry the stack's id (roles are cluster-wide: parallel stacks never share one); every process connects as
its role, and teardown drops the databases, then the roles.

The Celery workers get no ``[api_auth] jwt_secret`` (only the api-server and the scheduler sign tokens)
and no SimpleAuthManager password file or path to it: their argv unsets both (``env -u``) and points
AIRFLOW_HOME at a home of their own; they keep ``[api] secret_key`` (their log server), the Fernet key and
the execution API URL.

The Airflow environment comes from scripts/airflow_local.py (shared secrets, SimpleAuthManager logins,
execution API URL), then config/stack.env (the settings docker-compose.yaml reads as its ``env_file``:
executor, queues, encryption, audit ...), then this machine's databases, ports and URLs (``stack_env``);
the MLflow server gets config/mlflow.env. Commands and environment are built by plain functions
(``stack_env``, ``airflow_commands``, ``infra_commands``) that tests/stack/test_topology_agreement.py
compares with docker-compose.yaml. The processes are scripts/airflow_procs.py's ``Processes``, the REST
calls (login, DAGs parsed, pool, unpause) scripts/airflow_rest.py's, as for scripts/demo.py.

Each worker's task processes report ``w<n>@<host>`` as their hostname (``[core] hostname_callable`` =
``stack.worker_hostname``), so the task-instance ``hostname`` field shows which Celery worker ran a task,
as it would with one container per worker.

Needs PostgreSQL (trust auth) and Redis on 127.0.0.1; override with STACK_PG_HOST/STACK_PG_PORT/
STACK_PG_USER and STACK_REDIS_HOST/STACK_REDIS_PORT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airflow_local as al  # noqa: E402
import db_roles  # noqa: E402
import mlflow_accounts  # noqa: E402
from airflow_procs import (  # noqa: E402
    COMPONENTS,
    Processes,
    airflow_db_migrate,
    exit_on_signal,
    free_port,
    mlflow_server_cmd,
    say,
    wait_for,
    wait_http,
    wait_log,
)
from airflow_rest import Api, ensure_pools, unpause_all, wait_for_dags  # noqa: E402

PG_HOST = os.environ.get("STACK_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("STACK_PG_PORT") or 5432)
PG_USER = os.environ.get("STACK_PG_USER", "postgres")
REDIS_HOST = os.environ.get("STACK_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("STACK_REDIS_PORT") or 6379)
HOSTNAME_ENV = "MLOPS_STACK_WORKER_HOSTNAME"
REDIS_CLAIM_KEY = "mlops-stack:claimed-by"

# --- settings shared with docker-compose.yaml (its `env_file`s): one source of truth for both topologies
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
STACK_ENV_FILE = CONFIG_DIR / "stack.env"  # every Airflow process / service
MLFLOW_ENV_FILE = CONFIG_DIR / "mlflow.env"  # the MLflow tracking server
QUEUES_KEY = "MLOPS_WORKER_QUEUES"  # in stack.env: the queues every Celery worker serves
# the subset of the env-file format that Compose and this reader parse identically
_ENV_LINE = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>[A-Za-z0-9_.,:/@+=-]*)")


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """KEY=VALUE lines of a settings file shared with docker-compose.yaml (blank lines, # comments).

    Stricter than Compose on purpose: no quotes, spaces, inline comments or ``$`` interpolation, so a line
    either means the same to Compose and to this reader or is refused here, naming file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RuntimeError(f"cannot read the shared stack settings {path}: {exc}") from None
    out: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        m = _ENV_LINE.fullmatch(text)
        if not m:
            raise RuntimeError(
                f"{path}:{number}: {text!r} is not KEY=VALUE with a plain value (letters, digits and "
                f"_ . , : / @ + = - only; no quotes, spaces, inline comments or $): docker-compose.yaml "
                f"reads this file too, so both must read every line the same way"
            )
        if m["key"] in out:
            raise RuntimeError(f"{path}:{number}: {m['key']} is set twice")
        out[m["key"]] = m["value"]
    return out


def shared_settings() -> dict[str, str]:
    """config/stack.env: the topology-independent settings of every Airflow process (see that file)."""
    settings = read_env_file(STACK_ENV_FILE)
    needed = (
        QUEUES_KEY,
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE",
        "MLOPS_STORAGE__AWS_CONN_ID",
        "MLOPS_MLFLOW__CONN_ID",
    )
    missing = [k for k in needed if not settings.get(k)]
    if missing:
        raise RuntimeError(f"{STACK_ENV_FILE} lacks {missing}: every Airflow process of the stack needs them")
    return settings


_SHARED = shared_settings()
WORKER_QUEUES = _SHARED[QUEUES_KEY]
AWS_CONN_ID = _SHARED["MLOPS_STORAGE__AWS_CONN_ID"]
MLFLOW_CONN_ID = _SHARED["MLOPS_MLFLOW__CONN_ID"]  # the bundle's MLflow service account
# the MLflow server's accounts (scripts/mlflow_accounts.py; compose: MLFLOW_*_USERNAME in .env)
MLFLOW_USERS = {"admin": "admin", "service": "mlops-service", "reader": "reader"}
# what no Celery worker may hold: the key that signs every API token (any holder can mint an admin's
# token) and the SimpleAuthManager password file; a worker's argv unsets them (`env -u`)
WORKER_UNSET_ENV = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")


def worker_hostname() -> str:
    """[core] hostname_callable of the stack's Celery workers: the worker's Celery node name.

    Both workers share this machine's hostname; the per-worker name stands in for the container hostname
    each worker has in docker-compose, so the task-instance ``hostname`` field tells them apart.
    """
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


# ------------------------------------------------------------------------------------ infrastructure


def pg_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=timeout):
            return True
    except OSError:
        return False


def redis_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def missing_services() -> list[str]:
    """The services the stack needs that are not reachable, named with their address (empty: all there)."""
    return [
        what
        for what, ok in (
            (f"PostgreSQL on {PG_HOST}:{PG_PORT}", pg_reachable()),
            (f"Redis on {REDIS_HOST}:{REDIS_PORT}", redis_reachable()),
        )
        if not ok
    ]


def pg_uri(db: str, scheme: str = "postgresql", user: str = PG_USER) -> str:
    """A database URI as `user`; SQLAlchemy users get an explicit driver (its default for postgresql:// is
    psycopg 3, which is not installed: the venv has psycopg2, and asyncpg for Airflow's async engine)."""
    return f"{scheme}://{user}@{PG_HOST}:{PG_PORT}/{db}"


def pg_admin() -> dict[str, object]:
    """psycopg2.connect arguments of the server's admin (creates and drops the stack's roles and DBs)."""
    return {"host": PG_HOST, "port": PG_PORT, "user": PG_USER}


def anchor_bucket(stack_id: str) -> str:
    """The stack's Object-Lock bucket of audit anchors (moto)."""
    return f"mlops-anchors-{stack_id}"


def role_plan(stack_id: str) -> db_roles.Plan:
    """The stack's PostgreSQL roles and databases: names unique per stack (roles are cluster-wide)."""
    return db_roles.Plan(
        roles={key: f"mlops_{stack_id}_{key}" for key in db_roles.ROLES},
        databases={key: f"mlops_stack_{stack_id}_{key}" for key in db_roles.DATABASES},
    )


def claim_redis_db(owner: str) -> int:
    """An empty Redis database (1..15), claimed with a marker key so a parallel stack skips it."""
    import redis

    for n in range(1, 16):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=n)
        try:
            if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, owner, nx=True):
                return n
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis database among 1..15 on {REDIS_HOST}:{REDIS_PORT} for the broker")


def release_redis_db(n: int) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=n)
    try:
        client.flushdb()
    finally:
        client.close()


def aws_client(service: str, endpoint: str):
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


# ---------------------------------------------------------------------------------------------- stack


@dataclass
class Stack:
    """A running stack: base URLs, the environment of every Airflow process, and the process handles."""

    tmp_dir: Path
    api_url: str
    mlflow_url: str
    moto_url: str
    bucket: str
    kms_key_id: str
    env: dict[str, str]
    databases: dict[str, str]
    redis_db: int
    worker_hostnames: dict[str, str]
    # db_roles.ROLES key -> this stack's PostgreSQL login role
    roles: dict[str, str] = field(default_factory=dict)
    # "admin", "service" (the bundle's, in Airflow's connection), "reader" (people)
    mlflow_accounts: dict[str, mlflow_accounts.Account] = field(default_factory=dict)
    infra: Processes | None = None  # moto, mlflow
    airflow: Processes | None = None  # Airflow components and Celery workers
    api: Api | None = None  # logged in as admin
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def lake_uri(self) -> str:
        return f"s3://{self.bucket}/lake"

    @property
    def log_dir(self) -> Path:
        return self.tmp_dir / "airflow" / "logs"

    def s3(self):
        return aws_client("s3", self.moto_url)

    def check_alive(self) -> None:
        self.infra.check_alive()
        self.airflow.check_alive()


# ------------------------------------------------------------------ commands and environment (pure)
# Plain functions, so tests/stack/test_topology_agreement.py can compare them with docker-compose.yaml
# without starting anything.


def infra_env(base: dict[str, str]) -> dict[str, str]:
    """Environment of the moto and MLflow server processes: `base` plus config/mlflow.env."""
    return dict(base) | read_env_file(MLFLOW_ENV_FILE)


def infra_commands(
    *, moto_port: int, mlflow_port: int, mlflow_db: str, artifacts_dir: Path, mlflow_role: str = PG_USER
) -> dict[str, list[str]]:
    """argv of the moto server (S3 + KMS; MinIO's role in compose) and the MLflow server (compose: mlflow)."""
    return {
        "moto": [str(Path(sys.executable).parent / "moto_server"), "-H", al.HOST, "-p", str(moto_port)],
        "mlflow": mlflow_server_cmd(
            mlflow_port,
            pg_uri(mlflow_db, "postgresql+psycopg2", mlflow_role),
            artifacts_dir,
            serve_artifacts=True,
            auth=True,
        ),
    }


def mlflow_secrets(home: Path) -> dict[str, str]:
    """Read (creating once, mode 0600) this stack's MLflow secrets: the basic-auth app's Flask secret key and
    the passwords of its accounts (compose: .env). Generated, never fixed: the stack is a real deployment."""
    path = home / "mlflow-secrets.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"flask_secret_key": secrets.token_urlsafe(48)}
    data |= {f"{role}_password": secrets.token_urlsafe(24) for role in MLFLOW_USERS}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    return data


def mlflow_account_set(mlflow_secret: dict[str, str]) -> dict[str, mlflow_accounts.Account]:
    return {
        role: mlflow_accounts.Account(
            user, mlflow_secret[f"{role}_password"], f"{role}_password of the stack's mlflow-secrets.json"
        )
        for role, user in MLFLOW_USERS.items()
    }


def mlflow_server_env(
    *, auth_db: str, mlflow_secret: dict[str, str], mlflow_role: str = PG_USER
) -> dict[str, str]:
    """What only the MLflow server process gets on top of infra_env (compose: the mlflow service's
    `environment:`): its secrets, its admin, and its auth database through libpq's PG* variables
    (config/mlflow-auth.ini's ``database_uri`` names no host, user or database)."""
    return {
        "MLFLOW_FLASK_SERVER_SECRET_KEY": mlflow_secret["flask_secret_key"],
        "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_USERS["admin"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_secret["admin_password"],
        "PGHOST": PG_HOST,
        "PGPORT": str(PG_PORT),
        "PGUSER": mlflow_role,
        "PGDATABASE": auth_db,
    }


def stack_env(
    base: dict[str, str],
    *,
    home: Path,
    api_port: int,
    databases: dict[str, str],
    roles: dict[str, str] | None = None,
    redis_db: int,
    moto_url: str,
    mlflow_url: str,
    bucket: str,
    kms_key_id: str,
    gx_root: Path,
    mlflow_service: mlflow_accounts.Account,
    anchors: str,
    worker_concurrency: int = 2,
    dags_folder: str | os.PathLike[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment of every Airflow process of the stack, in three layers:

    1. scripts/airflow_local.py: home, folders, SimpleAuthManager logins, the shared secrets, api-server;
    2. config/stack.env: the settings shared with docker-compose.yaml (executor, queues, encryption ...);
    3. this machine: PostgreSQL databases and the role each is used as (`roles`, db_roles.ROLES keys;
       default: the admin), the Redis broker db, free ports, moto S3 + KMS, MLflow URL and the MLflow
       service account (the connection named by config/stack.env's MLOPS_MLFLOW__CONN_ID), the Object-Lock
       bucket of audit anchors (`anchors`).
    Then `extra_env`. Layer 3 never overrides a key of layer 2 (the agreement test checks it).
    """
    roles = roles or {}

    def uri(db_key: str, role_key: str, scheme: str = "postgresql") -> str:
        return pg_uri(databases[db_key], scheme, roles.get(role_key, PG_USER))

    env = al.airflow_env(
        base, home=home, port=api_port, dags_folder=Path(dags_folder) if dags_folder else None
    )
    env.update(shared_settings())
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_url, "region_name": "us-east-1"},
    }
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": uri("airflow", "airflow", "postgresql+psycopg2"),
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": uri("celery", "celery", "db+postgresql+psycopg2"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
            # the triggerer serves its logs on a port, the scheduler its /health: a second stack on this
            # machine must not collide with them
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # where the api-server asks a worker for the log of a running (or locally missing) task: the
            # first worker's log server (see airflow_commands)
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": al.HOST,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            # the bundle: lake on moto S3, KMS encryption, audit + promotion lock on Postgres
            f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}": json.dumps(conn),
            # the only MLflow account that writes; set for MLflow's client in each task process
            # (plugins/mlops_airflow/mlflow_auth.py), never in the processes' environment itself
            f"AIRFLOW_CONN_{MLFLOW_CONN_ID.upper()}": json.dumps(
                {
                    "conn_type": "generic",
                    "login": mlflow_service.username,
                    "password": mlflow_service.password,
                }
            ),
            "MLOPS_CONFIG": str(al.PROJECT_ROOT / "config" / "datasets"),
            "MLOPS_STORAGE__ROOT_URI": f"s3://{bucket}/lake",
            "MLOPS_VALIDATION__GX_ROOT": str(gx_root),
            "MLOPS_MLFLOW__TRACKING_URI": mlflow_url,
            "MLFLOW_TRACKING_URI": mlflow_url,
            "MLOPS_ENCRYPTION__KEY_SOURCE": "kms",
            "MLOPS_ENCRYPTION__KMS_KEY_ID": kms_key_id,
            "MLOPS_AUDIT__STORE_URI": uri("audit", "audit"),
            "MLOPS_AUDIT_HMAC_KEY": secrets.token_urlsafe(32),  # a new chain per stack, keyed
            # the verified head anchored under Object Lock (a day's retention: moto keeps it in memory)
            "MLOPS_AUDIT__ANCHOR_URI": f"s3://{anchors}/deployment/",
            "MLOPS_AUDIT__ANCHOR_RETENTION_DAYS": "1",
            "MLOPS_AUDIT__GAP_DIR": str(home / "audit-gaps"),
            "MLOPS_PROMOTION__LOCK_URI": uri("state", "lock"),
            # setproctitle (Airflow, Celery) must not overwrite /proc/<pid>/environ: what each process
            # holds stays inspectable (tests/stack/test_least_privilege.py reads it)
            "SPT_NOENV": "1",
            **(extra_env or {}),
        }
    )
    return env


def load_bundle_configs(env: dict[str, str]) -> list:
    """The data sets' configs as the stack's Airflow processes see them (MLOPS_* of `env`)."""
    from mlops_bundle.catalog import configs

    return configs(environ=env)


def worker_node_names(workers: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Celery node name per stack worker (``w1@<host>``): stands in for the container hostname."""
    hostname = socket.gethostname()
    return {w: f"{w}@{hostname}" for w in workers}


def airflow_commands(env: dict[str, str], worker_names: dict[str, str]) -> dict[str, list[str]]:
    """argv of the Airflow processes: the four components and one Celery worker per `worker_names` entry.

    A worker's argv starts with env(1) (which execs, so the pid stays the worker's) for the per-worker
    settings that containers get for free: its node name, its own task-log server port and its own
    AIRFLOW_HOME (beside the stack's home: not the folder that holds the password file and secrets.json),
    and to unset WORKER_UNSET_ENV (compose: the airflow-worker service never gets them).
    """
    commands = {name: al.airflow_cmd(name) for name in COMPONENTS}
    scripts_dir = str(Path(__file__).resolve().parent)
    pythonpath = os.pathsep.join(x for x in (scripts_dir, env.get("PYTHONPATH")) if x)
    queues = env.get(QUEUES_KEY) or WORKER_QUEUES
    for i, (w, node) in enumerate(worker_names.items()):
        # the api-server knows one worker log port (containers: 8793 on every worker's own address): the
        # first worker serves there, the others on ports of their own, their logs read from the shared folder
        port = env.get("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT") if i == 0 else None
        commands[f"worker-{w}"] = [
            "env",
            *(arg for key in WORKER_UNSET_ENV for arg in ("-u", key)),
            f"AIRFLOW_HOME={worker_home(env, w)}",
            f"{HOSTNAME_ENV}={node}",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE=stack.worker_hostname",
            f"PYTHONPATH={pythonpath}",
            # each worker serves its task logs on its own port (default 8793 would collide)
            f"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT={port or free_port()}",
            *al.airflow_cmd("celery", "worker", "--queues", queues, "--celery-hostname", f"{w}@%h"),
        ]
    return commands


def worker_home(env: dict[str, str], worker: str) -> Path:
    """A worker's own AIRFLOW_HOME, beside the stack's (where the password file and secrets.json live)."""
    return Path(env["AIRFLOW_HOME"]).parent / f"worker-{worker}-home"


@contextlib.contextmanager
def start_stack(
    tmp_dir: str | os.PathLike[str] | None = None,
    *,
    extra_env: dict[str, str] | None = None,
    workers: tuple[str, ...] = ("w1", "w2"),
    worker_concurrency: int = 2,
    keep: bool = False,
    timeout: float = 300,
    need_dags: tuple[str, ...] = ("churn__ingest", "churn__train", "churn__monitor"),
    dags_folder: str | os.PathLike[str] | None = None,
) -> Iterator[Stack]:
    """Start the stack under `tmp_dir` (a fresh temp folder if None); stop it and drop its databases on exit.

    Yields once the api-server answers, the MLflow server is healthy, the Celery workers are ready, the
    DAGs in `need_dags` are parsed and the training pool exists. `extra_env` is added to every Airflow
    process's environment (e.g. ``MLOPS_TRAINING__CANDIDATES``); `dags_folder` replaces the bundle's dags/.
    """
    tmp = Path(tmp_dir or tempfile.mkdtemp(prefix="mlops-stack-")).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    home = tmp / "airflow"
    stack_id = uuid.uuid4().hex[:10]
    # a role per concern, a database per store (MLflow's accounts and grants: mlflow_auth)
    plan = role_plan(stack_id)
    dbs = plan.databases
    bucket = f"mlops-stack-{stack_id}"
    t0 = time.monotonic()
    old_home = al.AIRFLOW_HOME
    # Processes keeps its pid file and logs under al.AIRFLOW_HOME: point it at this stack's home
    al.AIRFLOW_HOME = home
    created = False
    redis_db: int | None = None
    infra = airflow = None
    try:
        if not pg_reachable():
            raise RuntimeError(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")
        if not redis_reachable():
            raise RuntimeError(f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT}")
        created = True  # from here on teardown drops whatever part of the plan exists
        db_roles.apply(pg_admin(), plan)
        redis_db = claim_redis_db(stack_id)
        gx_root = tmp / "great_expectations"
        if not gx_root.exists():
            shutil.copytree(
                al.PROJECT_ROOT / "great_expectations", gx_root, ignore=shutil.ignore_patterns("uncommitted")
            )
        (tmp / "mlflow-artifacts").mkdir(exist_ok=True)

        # --- infrastructure: moto (S3 + KMS), MLflow on Postgres -----------------------------------
        moto_port, mlflow_port, api_port = free_port(), free_port(), free_port()
        moto_url = f"http://{al.HOST}:{moto_port}"
        mlflow_url = f"http://{al.HOST}:{mlflow_port}"
        # nothing of the caller's Airflow, bundle, AWS or MLflow client settings (credentials!) leaks in
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "MLOPS_", "AWS_", "MLFLOW_TRACKING_"))
        }
        mlflow_secret = mlflow_secrets(home)
        accounts = mlflow_account_set(mlflow_secret)
        infra = Processes(infra_env(base))
        infra.commands = infra_commands(
            moto_port=moto_port,
            mlflow_port=mlflow_port,
            mlflow_db=dbs["mlflow"],
            artifacts_dir=tmp / "mlflow-artifacts",
            mlflow_role=plan.roles["mlflow"],
        )
        infra.env_of["mlflow"] = mlflow_server_env(
            auth_db=dbs["mlflow_auth"], mlflow_secret=mlflow_secret, mlflow_role=plan.roles["mlflow"]
        )
        infra.start()
        wait_http(moto_url + "/moto-api/", "moto server", 60, infra)
        aws_client("s3", moto_url).create_bucket(Bucket=bucket)
        # the audit anchors: a bucket with Object Lock (on only at creation), out of the tasks' reach
        aws_client("s3", moto_url).create_bucket(
            Bucket=anchor_bucket(stack_id), ObjectLockEnabledForBucket=True
        )
        kms_key_id = aws_client("kms", moto_url).create_key(Description=f"mlops stack {stack_id}")[
            "KeyMetadata"
        ]["Arn"]

        # --- Airflow: the local env builder, config/stack.env, then this machine's settings ----------
        al.write_auth_files(home)
        env = stack_env(
            base,
            home=home,
            api_port=api_port,
            databases=dbs,
            roles=plan.roles,
            redis_db=redis_db,
            moto_url=moto_url,
            mlflow_url=mlflow_url,
            bucket=bucket,
            anchors=anchor_bucket(stack_id),
            kms_key_id=kms_key_id,
            gx_root=gx_root,
            mlflow_service=accounts["service"],
            worker_concurrency=worker_concurrency,
            dags_folder=dags_folder,
            extra_env=extra_env,
        )
        worker_names = worker_node_names(workers)
        t_migrate = time.monotonic()
        airflow_db_migrate(env)
        migrate_s = time.monotonic() - t_migrate

        airflow = Processes(env)
        commands = airflow_commands(env, worker_names)
        airflow.commands = commands
        airflow.start()
        stack = Stack(
            tmp_dir=tmp,
            api_url=al.api_url(api_port),
            mlflow_url=mlflow_url,
            moto_url=moto_url,
            bucket=bucket,
            kms_key_id=kms_key_id,
            env=env,
            databases=dict(dbs),
            redis_db=redis_db,
            worker_hostnames=worker_names,
            roles=dict(plan.roles),
            mlflow_accounts=accounts,
            infra=infra,
            airflow=airflow,
        )
        api = Api(stack.api_url, "admin", al.USERS["admin"])
        wait_for("api-server", api.ready, timeout, airflow)
        wait_http(mlflow_url + "/health", "mlflow server", timeout, infra)
        # compose's mlflow-init: the accounts, the reader's grants, every data set's experiments and model
        cfgs = load_bundle_configs(env)
        mlflow_accounts.provision(
            mlflow_url,
            **accounts,
            experiments=[n for c in cfgs for n in (c.experiment_name, c.monitoring_experiment_name)],
            models=[c.model_name for c in cfgs],
        )
        for w in workers:
            wait_log(airflow.log(f"worker-{w}"), " ready.", f"celery worker {w}", timeout, airflow)
        api.login()
        stack.api = api
        if need_dags:
            wait_for_dags(api, airflow, set(need_dags), timeout)
        old_env = dict(os.environ)
        try:  # ensure_pools reads pool_slots from the data sets' configs in this process
            os.environ.update({k: v for k, v in env.items() if k.startswith("MLOPS_")})
            ensure_pools(api)
        finally:
            os.environ.clear()
            os.environ.update(old_env)
        stack.timings = {"migrate_s": round(migrate_s, 1), "start_s": round(time.monotonic() - t0, 1)}
        yield stack
    finally:
        for procs in (airflow, infra):
            if procs is not None:
                procs.stop()
        al.AIRFLOW_HOME = old_home
        if redis_db is not None:
            with contextlib.suppress(Exception):
                release_redis_db(redis_db)
        if keep:
            if created:
                say(f"kept databases  {', '.join(dbs.values())} and roles {', '.join(plan.roles.values())}")
        elif created:
            for problem in db_roles.drop(pg_admin(), plan):
                say(f"could not drop {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("up",))
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL databases at exit")
    parser.add_argument("--dir", help="working folder (default: a fresh temp folder)")
    parser.add_argument("--paused", action="store_true", help="leave the DAGs paused")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, exit_on_signal)
    try:
        with start_stack(args.dir, keep=args.keep) as stack:
            if not args.paused:
                unpause_all(stack.api, stack.api.get("/api/v2/dags", limit=100)["dags"])
            say("")
            say(f"Airflow UI/API  {stack.api_url}  (admin / {al.USERS['admin']}; token: POST /auth/token)")
            reader = stack.mlflow_accounts["reader"]
            say(f"MLflow          {stack.mlflow_url}  (read-only {reader.username} / {reader.password}; the "
                f"bundle's and the admin's passwords: {stack.tmp_dir / 'airflow' / 'mlflow-secrets.json'})")  # fmt: skip
            say(f"moto (S3, KMS)  {stack.moto_url}  lake {stack.lake_uri}  KMS key {stack.kms_key_id}")
            say(f"databases       {', '.join(stack.databases.values())} on {PG_HOST}:{PG_PORT}")
            say(f"Celery          broker redis://{REDIS_HOST}:{REDIS_PORT}/{stack.redis_db}, workers "
                f"{', '.join(stack.worker_hostnames.values())} (queues {WORKER_QUEUES})")  # fmt: skip
            say(f"logs            {stack.log_dir}/<component>.log (task logs under dag_id=*/)")
            say(f"ready after {stack.timings['start_s']:.0f}s; press Ctrl-C to stop")
            while True:
                stack.check_alive()
                time.sleep(2)
    except KeyboardInterrupt:
        say("\nCtrl-C")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main())

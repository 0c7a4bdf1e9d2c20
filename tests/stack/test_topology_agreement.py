"""docker-compose.yaml and the process stack (scripts/stack.py) describe one topology: they agree on
services, commands, environment keys and queues.

Static and fast: it parses docker-compose.yaml with yaml and calls scripts/stack.py's plain builders
(`stack_env`, `airflow_commands`, `infra_commands`, `infra_env`) with placeholder databases and ports;
no service is needed and nothing is started. Shared settings have one source, config/stack.env (the
`env_file` of every Airflow service in compose, applied by `stack_env`) and config/mlflow.env (the MLflow
server, with config/mlflow-auth.ini for its basic-auth app); everything else that differs between the two
is listed below with its reason, so a new key, service or flag on one side only fails here until it is
added to the other side or explained.
"""

from __future__ import annotations

import ast
import configparser
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import REPO
from tests.services import unavailable

sys.path.insert(0, str(REPO / "scripts"))
import stack as stack_runner  # noqa: E402 (scripts/stack.py)

COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"

# compose service -> the stack process(es) playing its part ("worker-*": one per stack worker; compose
# runs one airflow-worker service scaled to N replicas, the stack N worker processes w1, w2, ...)
SERVICE_PROCESSES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "worker-*",
    "mlflow": "mlflow",
    "minio": "moto",  # S3 (and KMS, which MinIO lacks) on loopback
}
# compose services without a process of their own in the stack, and what stands in for them
NOT_A_PROCESS = {
    "postgres": "the loopback PostgreSQL (STACK_PG_HOST:STACK_PG_PORT); start_stack creates fresh databases",
    "redis": "the loopback Redis; start_stack claims an empty database number for the broker",
    "postgres-roles": "start_stack runs the same scripts/db_roles.py (apply) with role and database names "
    "unique to the stack, and drops them at teardown",
    "minio-init": "start_stack creates the lake bucket on moto (moto accepts any access key: no user)",
    "airflow-init": "start_stack runs `airflow db migrate`, seeds the SimpleAuthManager password file and "
    "creates each data set's training pool (REST)",
    "env-check": "the stack has no .env: scripts/airflow_local.py generates its secrets, none is a placeholder",
    "mlflow-init": "start_stack runs scripts/mlflow_accounts.py's provision() once MLflow is healthy (the "
    "passwords generated into the stack's mlflow-secrets.json)",
}

# env keys of every Airflow service (compose: x-airflow-common environment + config/stack.env) that the
# stack does not set, and why
COMPOSE_ONLY_ENV = {
    "AIRFLOW_CONN_MLOPS_KEYSET": "compose wraps data keys with a Tink keyset (MinIO has no KMS API); the "
    "stack uses KMS on moto (MLOPS_ENCRYPTION__KMS_KEY_ID)",
}
# env keys the stack sets for every Airflow process that compose does not, and why
STACK_ONLY_ENV = {
    "MLOPS_AUDIT__ANCHOR_RETENTION_DAYS": "moto keeps a throwaway stack's anchors in memory: one day; compose "
    "keeps the 400-day default",
    "MLOPS_AUDIT__GAP_DIR": "the stack's processes share one machine: each stack spools lost audit events "
    "in its own home; compose containers use the default under their /opt/airflow/var",
    "AIRFLOW_HOME": "the image sets AIRFLOW_HOME=/opt/airflow; the stack has one home per stack",
    "AIRFLOW__CORE__DAGS_FOLDER": "image default /opt/airflow/dags (mounted); the stack uses the checkout",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "image default /opt/airflow/plugins (mounted)",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "image default /opt/airflow/logs (a volume); the stack's home",
    "AIRFLOW__API__HOST": "compose: 0.0.0.0 in the container, published on 127.0.0.1; stack: loopback",
    "AIRFLOW__API__PORT": "compose: 8080 in its own container; stack: a free port per stack",
    "AIRFLOW__API__BASE_URL": "compose: the default (http://localhost:8080); stack: its free port",
    "AIRFLOW__API__WORKERS": "one api-server worker on the 2-core test machines (compose: the default)",
    "AIRFLOW__CORE__PARALLELISM": "sized for the 2-core test machines (compose: the default, 32)",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "sized for the 2-core test machines (compose: the default, 16)",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "tests want DAG files picked up in seconds",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "tests want DAG files picked up in seconds",
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "sized for the 2-core test machines",
    "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "tests want DAG edits visible in seconds",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "several stacks share this machine: a free port each "
    "(each compose triggerer container has its own 8794)",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "several stacks share this machine: a free port each, served "
    "by the first worker (each compose worker container serves 8793)",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "loopback only (compose: the container's "
    "0.0.0.0, not published)",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "several stacks share this machine: a free "
    "port each (compose: 8974 in the scheduler container, its healthcheck)",
    "MLOPS_VALIDATION__GX_ROOT": "a private copy of great_expectations/ per stack (compose mounts the "
    "checkout's at the default place)",
    "MLOPS_ENCRYPTION__KMS_KEY_ID": "the stack's KMS key on moto (compose: a keyset, see above)",
    "PATH": "the venv's bin/ first, so Airflow's subprocesses find this venv's `airflow` (the image has "
    "its own PATH)",
    "SPT_NOENV": "keeps /proc/<pid>/environ readable after setproctitle, so tests can check what each "
    "process holds (containers: `docker inspect` shows it)",
    "NO_PROXY": "loopback traffic must bypass any proxy of the host (containers talk on their network)",
    "no_proxy": "same as NO_PROXY, for the libraries that read the lower-case name",
}
# per-worker settings: compose sets them on the airflow-worker service, the stack per worker process
COMPOSE_ONLY_WORKER_ENV = {
    "DUMB_INIT_SETSID": "the image's dumb-init must pass SIGTERM to the worker only (warm shutdown); the "
    "stack starts workers without dumb-init",
}
STACK_ONLY_WORKER_ENV = {
    "AIRFLOW_HOME": "a home of the worker's own, not the folder holding the password file and secrets.json "
    "(containers: the image's /opt/airflow without the airflow-auth volume)",
    stack_runner.HOSTNAME_ENV: "two workers share one host: a node name each (containers: own hostname)",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "task instances report that node name (containers: the hostname)",
    "PYTHONPATH": "makes scripts/stack.py's hostname callable importable",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "two workers on one host need two task-log ports "
    "(containers: 8793 each)",
}
STACK_ONLY_WORKER_ARGS = {
    "--celery-hostname": "two workers on one host need two Celery node names (containers: own hostname)",
}
# MLflow server flags
STACK_ONLY_MLFLOW_FLAGS = {"--workers": "one server worker on the 2-core test machines"}
COMPOSE_ONLY_MLFLOW_FLAGS: dict[str, str] = {}
# the MLflow server's own environment beyond config/mlflow.env (compose: the mlflow service's
# `environment:`; stack: mlflow_server_env), keys on one side only and why
COMPOSE_ONLY_MLFLOW_ENV = {
    "MLFLOW_S3_ENDPOINT_URL": "artifacts on MinIO; the stack proxies them to a local folder",
    "AWS_ACCESS_KEY_ID": "MinIO's key for the artifacts (stack: local folder)",
    "AWS_SECRET_ACCESS_KEY": "MinIO's key for the artifacts (stack: local folder)",
    "AWS_DEFAULT_REGION": "MinIO's region for the artifacts (stack: local folder)",
    "PGPASSWORD": "the stack's loopback PostgreSQL trusts local connections",
}
STACK_ONLY_MLFLOW_ENV: dict[str, str] = {}
AUTH_INI = REPO / "config" / "mlflow-auth.ini"
# these URIs differ in host, port, names and secrets but must use the same scheme (driver)
SAME_SCHEME = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "MLOPS_STORAGE__ROOT_URI",
    "MLOPS_AUDIT__STORE_URI",
    "MLOPS_PROMOTION__LOCK_URI",
    "MLOPS_MLFLOW__TRACKING_URI",
    "MLFLOW_TRACKING_URI",
)
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
WORKERS = ("w1", "w2")
PLAN = stack_runner.role_plan("x")
SERVICE = stack_runner.mlflow_accounts.Account("mlops-service", "service-password-x")


def _explain(keys, side: str, other: str, table: str) -> str:
    return "\n".join(
        f"  {k}: set by {side} but not by {other}: set it there too, move it to config/stack.env if it is "
        f"the same in both, or add it to {table} with the reason"
        for k in sorted(keys)
    )


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="module")
def shared() -> dict[str, str]:
    return stack_runner.shared_settings()


@pytest.fixture(scope="module")
def compose_env(compose, shared) -> dict[str, str]:
    """What compose's api-server gets (the widest environment: x-airflow-common's plus the JWT secret and
    the password file, which only some services get: see test_token_key_and_login_file_placement_agrees):
    config/stack.env, then its `environment:`."""
    files = [e["path"] for e in compose["x-airflow-common"]["env_file"]]
    assert files == ["config/stack.env"], f"x-airflow-common env_file is {files}, not config/stack.env"
    assert (REPO / files[0]).resolve() == stack_runner.STACK_ENV_FILE.resolve()
    api = compose["services"]["airflow-apiserver"]["environment"]
    return shared | {k: str(v) for k, v in api.items()}


@pytest.fixture(scope="module")
def stack_side(tmp_path_factory) -> dict:
    """The stack's env and argv as start_stack builds them (placeholder databases, ports and URLs)."""
    tmp = tmp_path_factory.mktemp("topology")
    ports = {"api": 18080, "moto": 18081, "mlflow": 18082}
    env = stack_runner.stack_env(
        {},
        home=tmp / "airflow",
        api_port=ports["api"],
        databases=PLAN.databases,
        roles=PLAN.roles,
        redis_db=7,
        moto_url=f"http://127.0.0.1:{ports['moto']}",
        mlflow_url=f"http://127.0.0.1:{ports['mlflow']}",
        bucket="mlops-stack-x",
        anchors="mlops-anchors-x",
        kms_key_id="arn:aws:kms:us-east-1:123456789012:key/x",
        gx_root=tmp / "great_expectations",
        mlflow_service=SERVICE,
    )
    secret = {"flask_secret_key": "k" * 40} | {f"{r}_password": "p" * 24 for r in stack_runner.MLFLOW_USERS}
    return {
        "env": env,
        "mlflow_env": stack_runner.mlflow_server_env(
            auth_db=PLAN.databases["mlflow_auth"], mlflow_secret=secret, mlflow_role=PLAN.roles["mlflow"]
        ),
        "commands": stack_runner.airflow_commands(env, stack_runner.worker_node_names(WORKERS)),
        "infra": stack_runner.infra_commands(
            moto_port=ports["moto"],
            mlflow_port=ports["mlflow"],
            mlflow_db=PLAN.databases["mlflow"],
            artifacts_dir=tmp / "a",
            mlflow_role=PLAN.roles["mlflow"],
        ),
        "infra_env": stack_runner.infra_env({}),
        "ports": ports,
    }


def _airflow_args(argv: list[str]) -> list[str]:
    """argv after the `airflow` executable (stack: <venv>/bin/airflow or python -m airflow)."""
    if Path(argv[0]).name == "airflow":
        return argv[1:]
    assert argv[1:3] == ["-m", "airflow"], f"not an airflow command: {argv}"
    return argv[3:]


def _unset_by_worker(argv: list[str]) -> set[str]:
    """The keys a stack worker's env(1) prefix removes (``-u KEY``)."""
    assert argv[0] == "env", argv
    return {argv[i + 1] for i in range(1, len(argv) - 1) if argv[i] == "-u"}


def _split_worker(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """A stack worker's argv: env(1) unsets and assignments, then the airflow command."""
    assert argv[0] == "env", argv
    assigns, i = {}, 1
    while argv[i] == "-u":
        i += 2
    while "=" in argv[i] and not argv[i].startswith("/"):
        key, _, value = argv[i].partition("=")
        assigns[key] = value
        i += 1
    return assigns, _airflow_args(argv[i:])


def _drop_args(args: list[str], flags) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


def _flags(args: list[str]) -> dict[str, str | bool]:
    """--flag=value, --flag value and bare --flag, as a dict."""
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                k, _, v = a.partition("=")
                out[k] = v
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[a] = args[i + 1]
                i += 1
            else:
                out[a] = True
        i += 1
    return out


def _resolve(value: str, env_example: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env_example.get(m.group(1), ""), value).replace("$$", "$")


def _compose_worker_argv(compose, compose_env, tmp_path) -> list[str]:
    """Run the airflow-worker service's command with bash, with a stub `airflow` that prints its argv."""
    bash = shutil.which("bash")
    if not bash:
        unavailable("bash is not installed")
    cmd = compose["services"]["airflow-worker"]["command"]
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    argv = [a.replace("$$", "$") for a in argv]  # Compose's escape: the container sees one $
    stub = tmp_path / "bin" / "airflow"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nprintf '%s\\0' \"$@\"\n", encoding="utf-8")
    stub.chmod(0o755)
    assert argv[0] == "bash", f"airflow-worker runs {argv[0]!r}; update this test's resolution"
    container_env = {k: v for k, v in compose_env.items() if "${" not in v}
    proc = subprocess.run(
        [bash, *argv[1:]],
        env=container_env | {"PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"the airflow-worker command failed under bash: {proc.stderr}"
    return [a for a in proc.stdout.split("\0") if a]


# ------------------------------------------------------------------------------------------ services


def test_every_service_has_its_counterpart(compose, stack_side):
    services = set(compose["services"])
    unmapped = services - set(SERVICE_PROCESSES) - set(NOT_A_PROCESS)
    assert not unmapped, (
        f"compose services {sorted(unmapped)} have no counterpart in scripts/stack.py: add one, or explain "
        f"them in NOT_A_PROCESS of this test"
    )
    stale = (set(SERVICE_PROCESSES) | set(NOT_A_PROCESS)) - services
    assert not stale, f"this test maps compose services that no longer exist: {sorted(stale)}"

    processes = set(stack_side["commands"]) | set(stack_side["infra"])
    expected = {p for p in SERVICE_PROCESSES.values() if p != "worker-*"} | {f"worker-{w}" for w in WORKERS}
    assert processes == expected, (
        f"stack processes {sorted(processes)} vs the compose services' counterparts {sorted(expected)}: "
        f"only in the stack {sorted(processes - expected)}, missing {sorted(expected - processes)}"
    )


def test_init_steps_have_their_stack_counterparts(compose):
    """What airflow-init, minio-init and mlflow-init do in compose, start_stack does at every start."""
    source = inspect.getsource(stack_runner.start_stack)
    for call, what in (
        ("airflow_db_migrate(", "airflow db migrate"),
        ("write_auth_files(", "the SimpleAuthManager password file"),
        ("ensure_pools(", "each data set's training pool"),
        ("create_bucket(", "the lake bucket"),
        ("mlflow_accounts.provision(", "MLflow's accounts (mlflow-init)"),
        ("db_roles.apply(", "the PostgreSQL roles and databases (compose: postgres-roles)"),
    ):
        assert call in source, f"start_stack no longer does {what} ({call}), which compose's init services do"
    init = "\n".join(compose["services"]["airflow-init"]["command"])
    for step in ("airflow db migrate", "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "airflow pools set"):
        assert step in init, f"airflow-init no longer runs {step!r}, which start_stack does"
    # mlflow-init runs the same module as start_stack, with the bundle's experiments and model
    svc = compose["services"]["mlflow-init"]
    argv = [*svc["entrypoint"], *svc["command"]]
    assert argv == ["python", "/opt/mlops/mlflow_accounts.py", "--bundle-config"], argv
    assert "./scripts/mlflow_accounts.py:/opt/mlops/mlflow_accounts.py:ro" in svc["volumes"], svc["volumes"]
    # ... for every data set of the catalog, as mlflow_accounts.py --bundle-config does
    assert "cfgs = load_bundle_configs(env)" in source
    assert "for c in cfgs for n in (c.experiment_name, c.monitoring_experiment_name)" in source
    assert "models=[c.model_name for c in cfgs]" in source
    assert "from mlops_bundle.catalog import configs" in inspect.getsource(stack_runner.mlflow_accounts.main)
    assert svc["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert compose["services"]["airflow-worker"]["depends_on"]["mlflow-init"] == {
        "condition": "service_completed_successfully"
    }, "the workers' tasks need the service account mlflow-init creates"
    roles = compose["services"]["postgres-roles"]
    assert roles["entrypoint"] == ["python", "/opt/mlops/db_roles.py"], roles["entrypoint"]
    assert "./scripts/db_roles.py:/opt/mlops/db_roles.py:ro" in roles["volumes"], roles["volumes"]
    assert set(stack_runner.db_roles.DATABASES) >= {"mlflow", "mlflow_auth", "audit", "state", "celery"}


def _compose_catalog(compose, service: str) -> Path:
    """The checkout folder behind `service`'s MLOPS_CONFIG (through its ./config mount)."""
    env = compose["services"][service].get("environment") or {}
    value = env.get("MLOPS_CONFIG") or compose["x-airflow-common"]["environment"]["MLOPS_CONFIG"]
    mounts = compose["services"][service].get("volumes") or compose["x-airflow-common"]["volumes"]
    for mount in mounts:
        host, _, rest = str(mount).partition(":")
        target = rest.split(":")[0]
        if host.startswith("./") and (value == target or value.startswith(target + "/")):
            return (REPO / host / value[len(target) :].lstrip("/")).resolve()
    raise AssertionError(f"compose's {service}: MLOPS_CONFIG={value} is not under a mounted checkout folder")


def test_both_topologies_load_the_whole_catalog(compose, stack_side):
    """Compose's Airflow services, compose's mlflow-init and the stack name the same catalog folder
    (config/datasets/, every data set: churn and diabetes), not one data set's file."""
    folder = (REPO / "config" / "datasets").resolve()
    assert Path(stack_side["env"]["MLOPS_CONFIG"]).resolve() == folder, stack_side["env"]["MLOPS_CONFIG"]
    for service in ("airflow-scheduler", "airflow-worker", "airflow-dag-processor", "mlflow-init"):
        assert _compose_catalog(compose, service) == folder, service
    names = [c.dataset.name for c in stack_runner.load_bundle_configs(stack_side["env"])]
    assert names == ["churn", "diabetes"], names


def test_audit_anchors_are_the_deployments_in_both(compose_env, stack_side, env_example):
    """One audit chain per deployment (every data set's DAGs write it): both anchor its head under the same
    deployment-wide prefix of an S3 bucket, not under one data set's name."""
    ours = urlsplit(_resolve(compose_env["MLOPS_AUDIT__ANCHOR_URI"], env_example))
    theirs = urlsplit(stack_side["env"]["MLOPS_AUDIT__ANCHOR_URI"])
    assert ours.scheme == theirs.scheme == "s3", (ours, theirs)
    assert ours.path == theirs.path == "/deployment/", (ours.path, theirs.path)
    # a bucket of its own (Object Lock), not the lake's
    assert theirs.netloc and theirs.netloc != urlsplit(stack_side["env"]["MLOPS_STORAGE__ROOT_URI"]).netloc
    assert (
        ours.netloc
        and ours.netloc != urlsplit(_resolve(compose_env["MLOPS_STORAGE__ROOT_URI"], env_example)).netloc
    )


def test_compose_creates_the_pools_the_stack_creates(compose, stack_side, tmp_path):
    """airflow-init's pool step (run here under bash with compose's entrypoint flags and stubs: `python` is
    this venv's, `airflow` prints its argv) sets one pool per data set, named and sized as ensure_pools (the stack) names and sizes them:
    names.training_pool(<data set>) with training.pool_slots."""
    bash = shutil.which("bash")
    if not bash:
        unavailable("bash is not installed")
    import airflow_rest  # scripts/ (on sys.path above): puts plugins/ on sys.path, as ensure_pools does

    airflow_rest.import_bundle()
    from mlops_airflow.names import training_pool

    script = "\n".join(compose["services"]["airflow-init"]["command"])
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if "training_pool(" in line)
    end = next(i for i in range(start, len(lines)) if "airflow pools set" in lines[i])
    snippet = "\n".join(lines[start : end + 1]).replace("$$", "$")
    snippet = snippet.replace("/opt/airflow/plugins", str(REPO / "plugins"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    (bin_dir / "airflow").write_text("#!/bin/sh\nprintf '%s\\t' \"$@\"; echo\n", encoding="utf-8")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {k: v for k, v in stack_side["env"].items() if k.startswith("MLOPS_")}
    entrypoint = list(compose["services"]["airflow-init"]["entrypoint"])  # its shell flags (pipefail) too
    assert Path(entrypoint[0]).name == "bash" and entrypoint[-1] == "-c", entrypoint
    proc = subprocess.run(
        [bash, *entrypoint[1:], snippet],
        env=env | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"airflow-init's pool step failed: {proc.stderr[-2000:]}"
    calls = [line.rstrip("\t").split("\t") for line in proc.stdout.splitlines() if line.strip()]
    created = {c[2]: int(c[3]) for c in calls if c[:2] == ["pools", "set"]}
    assert len(created) == len(calls), calls
    expected = {
        training_pool(c.dataset.name): c.training.pool_slots
        for c in stack_runner.load_bundle_configs(stack_side["env"])
    }
    assert set(expected) == {"churn__training", "diabetes__training"}, expected
    assert created == expected, f"compose's airflow-init sets pools {created}, the stack {expected}"


def test_backends_use_the_same_drivers(compose_env, stack_side, env_example):
    """Postgres, Redis, S3, MLflow and the execution API: other hosts, same schemes (drivers)."""
    env = stack_side["env"]
    for key in SAME_SCHEME:
        ours, theirs = urlsplit(_resolve(compose_env[key], env_example)), urlsplit(env[key])
        assert ours.scheme == theirs.scheme, (
            f"{key}: compose uses {ours.scheme}:// but the stack {theirs.scheme}://"
        )
        if key == "AIRFLOW__CORE__EXECUTION_API_SERVER_URL":
            assert ours.path == theirs.path == "/execution/", (ours.path, theirs.path)
    assert urlsplit(_resolve(compose_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], env_example)).hostname == (
        "postgres"
    )
    assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == stack_runner.PG_HOST
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == stack_runner.REDIS_HOST


def test_the_lake_connection_points_at_the_object_store(
    compose, compose_env, stack_side, env_example, shared
):
    """Both name the lake's connection from config/stack.env; it reaches MinIO resp. the moto process."""
    key = f"AIRFLOW_CONN_{shared['MLOPS_STORAGE__AWS_CONN_ID'].upper()}"
    assert key in compose_env, f"compose lacks {key} for MLOPS_STORAGE__AWS_CONN_ID of config/stack.env"
    assert key in stack_side["env"], f"the stack lacks {key}"
    ours = json.loads(_resolve(compose_env[key], env_example))
    theirs = json.loads(stack_side["env"][key])
    assert ours["conn_type"] == theirs["conn_type"] == "aws"
    assert urlsplit(ours["extra"]["endpoint_url"]).hostname == "minio"
    moto_argv = stack_side["infra"]["moto"]
    moto_port = int(moto_argv[moto_argv.index("-p") + 1])
    assert urlsplit(theirs["extra"]["endpoint_url"]).port == moto_port, (
        f"the stack's {key} points at {theirs['extra']['endpoint_url']}, moto listens on port {moto_port}"
    )


# ------------------------------------------------------------------------------------------ commands


@pytest.mark.parametrize(
    "service", ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
)
def test_airflow_component_commands_agree(compose, stack_side, service):
    cmd = compose["services"][service]["command"]
    ours = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    theirs = _airflow_args(stack_side["commands"][SERVICE_PROCESSES[service]])
    assert ours == theirs, (
        f"{service} runs `airflow {' '.join(ours)}`, the stack `airflow {' '.join(theirs)}`"
    )


def test_worker_commands_and_queues_agree(compose, compose_env, stack_side, shared, tmp_path):
    ours = _compose_worker_argv(compose, compose_env, tmp_path)
    queues = shared[stack_runner.QUEUES_KEY]
    for w in WORKERS:
        _, args = _split_worker(stack_side["commands"][f"worker-{w}"])
        theirs = _drop_args(args, STACK_ONLY_WORKER_ARGS)
        assert ours == theirs, (
            f"compose's worker runs `airflow {' '.join(ours)}`, stack {w} `airflow {' '.join(theirs)}`"
        )
        served = _flags(theirs).get("--queues")
        assert served == queues, f"stack {w} serves {served!r}, config/stack.env says {queues!r}"
    assert _flags(ours).get("--queues") == queues, f"compose's workers serve {_flags(ours)}, not {queues!r}"


def test_worker_queues_cover_every_queue_the_dags_use(shared):
    """Every queue a task names (and the default queue) is served, or its tasks would wait forever."""
    served = set(shared[stack_runner.QUEUES_KEY].split(","))
    used = {shared["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]: "tasks without a queue"}
    for path in sorted((REPO / "dags").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for kw in getattr(node, "keywords", []) or []:
                if kw.arg == "queue":
                    assert isinstance(kw.value, ast.Constant), (
                        f"{path.name}:{kw.value.lineno}: write the queue as a string literal so this test "
                        f"can check that a worker serves it"
                    )
                    used.setdefault(kw.value.value, f"{path.name}:{kw.value.lineno}")
    missing = {q: where for q, where in used.items() if q not in served}
    assert not missing, f"no worker serves {missing}; add them to MLOPS_WORKER_QUEUES in config/stack.env"


def test_train_candidate_runs_on_the_training_queue(shared):
    tree = ast.parse((REPO / "dags" / "train.py").read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "train_candidate")
    queues = [
        kw.value.value
        for dec in fn.decorator_list
        if isinstance(dec, ast.Call)
        for kw in dec.keywords
        if kw.arg == "queue"
    ]
    assert queues == ["training"], f"train_candidate runs on {queues or 'the default queue'}"
    assert "training" in shared[stack_runner.QUEUES_KEY].split(",")


def test_mlflow_server_commands_agree(compose, stack_side):
    svc = compose["services"]["mlflow"]
    ours = [*svc["entrypoint"], *svc["command"]]
    theirs = stack_side["infra"]["mlflow"]
    assert Path(ours[0]).name == Path(theirs[0]).name == "mlflow" and ours[1] == theirs[1] == "server", (
        ours[:2],
        theirs[:2],
    )
    ours_f, theirs_f = _flags(ours[2:]), _flags(theirs[2:])
    only_stack = set(theirs_f) - set(ours_f) - set(STACK_ONLY_MLFLOW_FLAGS)
    only_compose = set(ours_f) - set(theirs_f) - set(COMPOSE_ONLY_MLFLOW_FLAGS)
    assert not only_stack and not only_compose, (
        f"mlflow server flags differ: only in the stack {sorted(only_stack)}, only in compose "
        f"{sorted(only_compose)} (or explain them in STACK_ONLY_/COMPOSE_ONLY_MLFLOW_FLAGS)"
    )
    assert not set(STACK_ONLY_MLFLOW_FLAGS) & set(ours_f), "a STACK_ONLY_MLFLOW_FLAGS entry is stale"
    assert ours_f.get("--serve-artifacts") is True and theirs_f.get("--serve-artifacts") is True
    assert ours_f["--backend-store-uri"].split("://")[0] == theirs_f["--backend-store-uri"].split("://")[0]
    # --allowed-hosts must admit the host:port the clients use (MLFLOW_TRACKING_URI)
    compose_client = urlsplit(compose["x-airflow-common"]["environment"]["MLFLOW_TRACKING_URI"]).netloc
    stack_client = urlsplit(stack_side["env"]["MLFLOW_TRACKING_URI"]).netloc
    assert compose_client in ours_f["--allowed-hosts"].split(","), (compose_client, ours_f["--allowed-hosts"])
    assert stack_client in theirs_f["--allowed-hosts"].split(","), (stack_client, theirs_f["--allowed-hosts"])


def test_the_mlflow_connection_holds_the_service_account(compose_env, stack_side, env_example, shared):
    """Both name MLflow's connection from config/stack.env; it holds the service account (login and
    password), and no Airflow process gets MLflow client credentials in its environment: only the task
    process sets them, from the connection (plugins/mlops_airflow/mlflow_auth.py)."""
    key = f"AIRFLOW_CONN_{shared['MLOPS_MLFLOW__CONN_ID'].upper()}"
    assert key in compose_env, f"compose lacks {key} for MLOPS_MLFLOW__CONN_ID of config/stack.env"
    assert key in stack_side["env"], f"the stack lacks {key}"
    ours = json.loads(_resolve(compose_env[key], env_example))
    theirs = json.loads(stack_side["env"][key])
    assert ours == {
        "conn_type": "generic",
        "login": env_example["MLFLOW_SERVICE_USERNAME"],
        "password": env_example["MLFLOW_SERVICE_PASSWORD"],
    }, ours
    assert theirs == {"conn_type": "generic", "login": SERVICE.username, "password": SERVICE.password}
    for side, env in (("compose", compose_env), ("the stack", stack_side["env"])):
        leaked = sorted(k for k in env if k.startswith("MLFLOW_TRACKING_") and k != "MLFLOW_TRACKING_URI")
        assert not leaked, f"{side} gives every Airflow process MLflow credentials {leaked}"


def test_mlflow_server_auth_agrees(compose, stack_side):
    """Both servers run the basic-auth app with config/mlflow-auth.ini (least privilege), each on its own
    auth database, and set the same server-only keys (or explain them)."""
    svc = compose["services"]["mlflow"]
    assert _flags(svc["command"]).get("--app-name") == "basic-auth", svc["command"]
    stack_argv = stack_side["infra"]["mlflow"]
    assert _flags(stack_argv[2:]).get("--app-name") == "basic-auth", stack_argv

    # MLFLOW_AUTH_CONFIG_PATH (config/mlflow.env) is relative: compose's working folder with ./config mounted
    # there, the stack's processes run in the checkout (scripts/airflow_procs.py: cwd=PROJECT_ROOT)
    relative = stack_runner.read_env_file(stack_runner.MLFLOW_ENV_FILE)["MLFLOW_AUTH_CONFIG_PATH"]
    assert not Path(relative).is_absolute() and (REPO / relative).resolve() == AUTH_INI.resolve(), relative
    assert stack_runner.al.PROJECT_ROOT.resolve() == REPO.resolve()
    assert "./config:/opt/airflow/config:ro" in svc["volumes"] and svc["working_dir"] == "/opt/airflow"
    ini = configparser.ConfigParser()
    assert ini.read(AUTH_INI) == [str(AUTH_INI)]
    auth = ini["mlflow"]
    assert auth["default_permission"] == "NO_PERMISSIONS", "people get READ by grant, not by default"
    assert auth["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert auth["database_uri"] == "postgresql+psycopg2://", "host, user, password and database: PG*"
    assert not {"admin_username", "admin_password"} & set(auth), "the admin comes from the environment"

    compose_env = {k: str(v) for k, v in svc["environment"].items()}
    stack_env = stack_side["mlflow_env"]
    assert compose_env["PGDATABASE"] == "mlflow_auth" and stack_env["PGDATABASE"].endswith("_mlflow_auth")
    assert compose_env["PGHOST"] == "postgres" and stack_env["PGHOST"] == stack_runner.PG_HOST
    problems = []
    unexplained = set(compose_env) - set(stack_env) - set(COMPOSE_ONLY_MLFLOW_ENV)
    if unexplained:
        problems.append(f"only compose's mlflow sets {sorted(unexplained)}: add to COMPOSE_ONLY_MLFLOW_ENV")
    unexplained = set(stack_env) - set(compose_env) - set(STACK_ONLY_MLFLOW_ENV)
    if unexplained:
        problems.append(f"only the stack's mlflow sets {sorted(unexplained)}: add to STACK_ONLY_MLFLOW_ENV")
    stale = (set(COMPOSE_ONLY_MLFLOW_ENV) - set(compose_env)) | (set(STACK_ONLY_MLFLOW_ENV) - set(stack_env))
    if stale:
        problems.append(f"stale entries in COMPOSE_ONLY_/STACK_ONLY_MLFLOW_ENV: {sorted(stale)}")
    assert not problems, "; ".join(problems)
    shared = stack_runner.read_env_file(stack_runner.MLFLOW_ENV_FILE)
    assert not set(stack_env) & set(shared), "mlflow_server_env hides config/mlflow.env keys"


def test_mlflow_server_settings_agree(compose, stack_side):
    """config/mlflow.env (job execution off, no telemetry) reaches both MLflow servers."""
    files = [e["path"] for e in compose["services"]["mlflow"]["env_file"]]
    assert [(REPO / f).resolve() for f in files] == [stack_runner.MLFLOW_ENV_FILE.resolve()], files
    settings = stack_runner.read_env_file(stack_runner.MLFLOW_ENV_FILE)
    assert settings.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") == "false"
    differing = {
        k: stack_side["infra_env"].get(k) for k, v in settings.items() if stack_side["infra_env"].get(k) != v
    }
    assert not differing, f"the stack's MLflow server does not get config/mlflow.env: {differing}"
    shadowed = set(compose["services"]["mlflow"].get("environment") or {}) & set(settings)
    assert not shadowed, f"compose's mlflow environment: hides config/mlflow.env keys {sorted(shadowed)}"


# ------------------------------------------------------------------------------------------ environment


def test_shared_settings_reach_every_stack_process_unchanged(stack_side, shared):
    env = stack_side["env"]
    differing = {k: (v, env.get(k)) for k, v in shared.items() if env.get(k) != v}
    assert not differing, (
        f"scripts/stack.py overrides config/stack.env (file value, stack value): {differing}; a setting "
        f"that differs per topology does not belong in config/stack.env"
    )


def test_compose_does_not_shadow_the_shared_settings(compose, shared):
    """In compose `environment:` wins over `env_file:`; a shared key there would split the topologies."""
    for name in [n for n, p in SERVICE_PROCESSES.items() if n.startswith("airflow-")] + ["airflow-init"]:
        svc_env = compose["services"][name].get("environment") or {}
        shadowed = sorted(set(svc_env) & set(shared))
        assert not shadowed, f"compose service {name} sets {shadowed} in environment:, over config/stack.env"


def test_env_keys_agree(compose_env, stack_side):
    compose_keys, stack_keys = set(compose_env), set(stack_side["env"])
    problems = []
    unexplained = compose_keys - stack_keys - set(COMPOSE_ONLY_ENV)
    if unexplained:
        problems.append(_explain(unexplained, "compose", "the stack", "COMPOSE_ONLY_ENV"))
    unexplained = stack_keys - compose_keys - set(STACK_ONLY_ENV)
    if unexplained:
        problems.append(_explain(unexplained, "the stack", "compose", "STACK_ONLY_ENV"))
    stale = (set(COMPOSE_ONLY_ENV) & stack_keys) | (set(STACK_ONLY_ENV) & compose_keys)
    stale |= set(COMPOSE_ONLY_ENV) - compose_keys
    stale |= set(STACK_ONLY_ENV) - stack_keys
    if stale:
        problems.append(f"  stale entries in COMPOSE_ONLY_ENV/STACK_ONLY_ENV: {sorted(stale)}")
    assert not problems, "Airflow environment of compose and the stack disagree:\n" + "\n".join(problems)


def test_worker_env_keys_agree(compose, stack_side):
    common = compose["x-airflow-common"]["environment"]
    worker = compose["services"]["airflow-worker"]["environment"]
    ours = set(worker) - set(common)
    for w in WORKERS:
        theirs = set(_split_worker(stack_side["commands"][f"worker-{w}"])[0])
        problems = []
        if ours ^ set(COMPOSE_ONLY_WORKER_ENV):
            problems.append(f"compose's worker-only keys {sorted(ours)} vs COMPOSE_ONLY_WORKER_ENV")
        if theirs ^ set(STACK_ONLY_WORKER_ENV):
            problems.append(f"stack {w}'s per-worker keys {sorted(theirs)} vs STACK_ONLY_WORKER_ENV")
        assert not problems, "; ".join(problems) + ": set them on both sides or explain them in this test"


# which process holds the key that signs API tokens and the SimpleAuthManager password file
TOKEN_KEY = "AIRFLOW__API_AUTH__JWT_SECRET"
LOGIN_FILE = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
# the stack's scheduler, dag-processor and triggerer get the password file's path (scripts/airflow_local.py
# sets it for every component; they share one UNIX user and home anyway); compose gives it to the api-server
# and airflow-init only
STACK_ONLY_LOGIN_FILE = {"scheduler", "dag-processor", "triggerer"}


def test_token_key_and_login_file_placement_agrees(compose, stack_side):
    """No worker holds the JWT secret or the password file, in either topology; the components that sign
    or check tokens hold the JWT secret in both."""
    services = compose["services"]
    for service, process in SERVICE_PROCESSES.items():
        if not service.startswith("airflow-"):
            continue
        env = services[service].get("environment") or {}
        mounts = " ".join(str(v) for v in services[service].get("volumes") or [])
        if process == "worker-*":
            assert TOKEN_KEY not in env and LOGIN_FILE not in env, f"compose's {service} gets {TOKEN_KEY}"
            assert "airflow-auth" not in mounts, f"compose's {service} mounts the password file's volume"
            for w in WORKERS:
                argv = stack_side["commands"][f"worker-{w}"]
                assert {TOKEN_KEY, LOGIN_FILE} <= _unset_by_worker(argv), f"stack worker {w} keeps them"
            continue
        assert TOKEN_KEY in env and TOKEN_KEY in stack_side["env"], f"{service} needs the JWT secret"
        assert (LOGIN_FILE in env) == (process == "api-server"), service
        assert ("airflow-auth" in mounts) == (process == "api-server"), service
        assert process == "api-server" or process in STACK_ONLY_LOGIN_FILE, process
    init = services["airflow-init"]
    assert LOGIN_FILE in init["environment"] and TOKEN_KEY not in init["environment"]

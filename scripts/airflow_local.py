"""The project-local Airflow environment: one source of truth for every Airflow process and command.

`make demo`, `make up` and any `airflow ...` command run for this checkout use `airflow_env()`, so the
api-server, scheduler, dag-processor, triggerer and the task processes they spawn all agree on the home
folder, the SQLite metadata DB, the DAG/plugin folders, the auth manager users and the shared secrets
(JWT secret, API secret key, Fernet key). Nothing here touches ~/airflow.

Stdlib only: this runs before anything else in the project is importable.

Overrides (for tests and for running a second copy beside the first; the README's table lists them all):
  DEMO_AIRFLOW_HOME      Airflow home (default: <project>/.airflow)
  DEMO_PORT              api-server port (default: 8080)
  DEMO_DAGS_FOLDER       DAG folder (default: <project>/dags)
  DEMO_WORKER_LOG_PORT   port of the task log server (default: 8793)
  DEMO_TRIGGER_LOG_PORT  port of the triggerer's log server (default: 8794)
  DEMO_EXECUTOR          executor class path (default: the bundle's preloading LocalExecutor, EXECUTOR)
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = Path(os.environ.get("DEMO_AIRFLOW_HOME") or PROJECT_ROOT / ".airflow").resolve()
HOST = "127.0.0.1"
PORT = int(os.environ.get("DEMO_PORT") or 8080)
# the ports the task and triggerer log servers listen on (Airflow's defaults 8793/8794; two checkouts or test
# runs side by side need their own)
WORKER_LOG_PORT = int(os.environ.get("DEMO_WORKER_LOG_PORT") or 8793)
TRIGGER_LOG_PORT = int(os.environ.get("DEMO_TRIGGER_LOG_PORT") or 8794)
DAGS_FOLDER = Path(os.environ.get("DEMO_DAGS_FOLDER") or PROJECT_ROOT / "dags").resolve()
PLUGINS_FOLDER = PROJECT_ROOT / "plugins"
# a LocalExecutor whose scheduler imports the task bodies' libraries once before forking its workers
# (plugins/mlops_airflow/local_executor.py; MLOPS_WORKER_PRELOAD=false turns the preload off; restart the
# scheduler to run edited library code). plugins/ is on the scheduler's sys.path (PLUGINS_FOLDER).
EXECUTOR = os.environ.get("DEMO_EXECUTOR") or "mlops_airflow.local_executor.PreloadingLocalExecutor"

# Known logins for the local UI/API (SimpleAuthManager: username -> role, username -> password).
# Local development only: the api-server binds to 127.0.0.1.
# "approver": a second admin, for promotions that need four eyes (forced ones: the user who triggered the
# run cannot approve it)
USERS = {"admin": "admin", "approver": "approver", "viewer": "viewer"}
ROLES = {"admin": "ADMIN", "approver": "ADMIN", "viewer": "VIEWER"}

PROVENANCE_CONN_ID = "mlops_provenance"
PROVENANCE_CONN_ENV = f"AIRFLOW_CONN_{PROVENANCE_CONN_ID.upper()}"

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def api_url(port: int | None = None) -> str:
    """Base URL of the local api-server (what the runner and the task processes talk to)."""
    return f"http://{HOST}:{port or PORT}"


def ui_url(port: int | None = None) -> str:
    """URL printed for people (the browser)."""
    return f"http://localhost:{port or PORT}"


def secrets_path(home: Path | None = None) -> Path:
    return (home or AIRFLOW_HOME) / "secrets.json"


def passwords_path(home: Path | None = None) -> Path:
    return (home or AIRFLOW_HOME) / "simple_auth_manager_passwords.json.generated"


def load_secrets(home: Path | None = None) -> dict[str, str]:
    """Read (creating once, mode 0600) the secrets every component must share.

    A fresh set is generated only if the file is missing; keeping them stable across restarts matters:
    the Fernet key encrypts connections/variables in the DB and the JWT secret signs issued tokens.
    """
    path = secrets_path(home)
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        missing = {"jwt_secret", "api_secret_key", "fernet_key"} - data.keys()
        if not missing and "provenance_key" not in data:  # a file from before provenance checks
            data["provenance_key"] = secrets.token_urlsafe(32)
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            os.chmod(path, 0o600)
        if not missing:
            return data
        raise SystemExit(
            f"{path} lacks {sorted(missing)}; delete it to regenerate (stored connections "
            f"encrypted with the old Fernet key then become unreadable)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "jwt_secret": secrets.token_urlsafe(48),
        "api_secret_key": secrets.token_urlsafe(32),
        # Fernet: url-safe base64 of 32 random bytes
        "fernet_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii"),
        # signs the model versions the bundle registers; checked before every load (mlops_bundle.provenance)
        "provenance_key": secrets.token_urlsafe(32),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    return data


def write_auth_files(home: Path | None = None) -> Path:
    """Pre-seed SimpleAuthManager's password file with the known local passwords.

    The auth manager reads ``{"user": "password", ...}`` (one JSON object) from this file and only
    generates (and prints) a random password for users that are missing, so seeding it gives stable,
    documented logins. The users/roles themselves come from [core] simple_auth_manager_users in
    airflow_env().
    """
    path = passwords_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, str] = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text(encoding="utf-8").strip() or "{}")
        except json.JSONDecodeError:
            current = {}
    wanted = {**current, **USERS}
    if wanted != current or not path.is_file():
        path.write_text(json.dumps(wanted) + "\n", encoding="utf-8")
        os.chmod(path, 0o600)
    return path


def airflow_env(
    base: Mapping[str, str] | None = None,
    *,
    home: Path | None = None,
    port: int | None = None,
    dags_folder: Path | None = None,
) -> dict[str, str]:
    """Environment for every Airflow process/command of the local install."""
    home = Path(home or AIRFLOW_HOME)
    port = port or PORT
    dags_folder = Path(dags_folder or DAGS_FOLDER)
    env = dict(os.environ if base is None else base)
    # a global airflow.cfg elsewhere must not leak in; Airflow writes its own one into AIRFLOW_HOME
    env.pop("AIRFLOW_CONFIG", None)
    sec = load_secrets(home)
    venv_bin = str(Path(sys.executable).parent)
    no_proxy = ",".join(
        x for x in (env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1", "localhost") if x
    )
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            # --- where things are -------------------------------------------------------------
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            # plain text in .airflow/logs/*.log (no ANSI colour codes)
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(WORKER_LOG_PORT),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(TRIGGER_LOG_PORT),
            # --- executor: real task processes, small footprint -------------------------------------
            "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
            "AIRFLOW__CORE__PARALLELISM": "4",
            # --- auth: SimpleAuthManager with known local logins --------------------------------
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{ROLES[u]}" for u in USERS),
            # off unless the environment turns it on (tests/integration/test_approval_refused.py does, to
            # show four eyes holding where the API lets everyone answer)
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": env.get(
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"
            )
            or "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_path(home)),
            # --- secrets every component must share (generated once into .airflow/secrets.json) --
            "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": sec["api_secret_key"],
            "AIRFLOW__CORE__FERNET_KEY": sec["fernet_key"],
            # the model provenance key (mlops_bundle.provenance) as the connection the config names
            PROVENANCE_CONN_ENV: json.dumps({"conn_type": "generic", "password": sec["provenance_key"]}),
            "MLOPS_MLFLOW__PROVENANCE_CONN_ID": env.get("MLOPS_MLFLOW__PROVENANCE_CONN_ID")
            or PROVENANCE_CONN_ID,
            # --- api-server: loopback only; task processes reach the execution API here -----------
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": ui_url(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url(port)}/execution/",
            # --- latency: new/edited DAG files show up in seconds, not minutes ----------------------
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "2",
            "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "10",
            # --- hygiene ----------------------------------------------------------------------------
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            # `airflow` must resolve to this venv's entry point for the processes Airflow spawns
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        }
    )
    return env


def airflow_cmd(*args: str) -> list[str]:
    """argv for an `airflow` CLI call with this venv's interpreter (no reliance on PATH)."""
    airflow_bin = Path(sys.executable).parent / "airflow"
    if airflow_bin.is_file():
        return [str(airflow_bin), *args]
    return [sys.executable, "-m", "airflow", *args]


if __name__ == "__main__":
    # `python scripts/airflow_local.py airflow dags list` runs any Airflow CLI against the local install;
    # with no arguments it prints the environment as shell exports (secrets masked).
    if len(sys.argv) > 1 and sys.argv[1] == "airflow":
        write_auth_files()
        os.execve(airflow_cmd()[0], airflow_cmd(*sys.argv[2:]), airflow_env())
    for key, value in sorted(airflow_env({}).items()):
        if key in (
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__API__SECRET_KEY",
            "AIRFLOW__CORE__FERNET_KEY",
            PROVENANCE_CONN_ENV,
        ):
            value = "***"
        if key.startswith("AIRFLOW") or key == "MLFLOW_DISABLE_TELEMETRY":
            print(f"export {key}={value!r}")

"""The MLflow account the bundle writes with, from an Airflow connection, for MLflow's client in a task.

A tracking server behind MLflow's basic-auth app (``mlflow server --app-name basic-auth``: the stack and
docker-compose.yaml) refuses every request without an account, and only the bundle's service account may
create experiments, register versions and move aliases. MLflow's client takes its credentials from
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` in the environment, read at every request, so
:func:`share_mlflow_credentials` puts the login and password of the connection named by
``mlflow.conn_id`` there, in the task process, before the task talks to MLflow (the audit listener calls
it from ``on_task_instance_running``). The credentials never enter the config, XCom or templates, and
the password is masked in task logs. An empty ``mlflow.conn_id`` (the local demo's server has no
authentication) leaves the environment as it is.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig

log = logging.getLogger(__name__)

USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"


def mlflow_credentials(conn_id: str) -> tuple[str, str]:
    """(login, password) of connection ``conn_id``; ``LookupError`` naming what is missing."""
    from mlops_airflow.connections import get_connection

    conn = get_connection(conn_id, "mlflow.conn_id: the MLflow account the bundle writes with")
    login, password = conn.login or "", conn.password or ""
    missing = [what for what, value in (("login", login), ("password", password)) if not value]
    if missing:
        raise LookupError(
            f"connection {conn_id!r} (mlflow.conn_id) has no {' and no '.join(missing)}: set the MLflow "
            f"service account's user name as its login and its password as its password"
        )
    return login, password


def share_mlflow_credentials(cfg: BundleConfig) -> bool:
    """Set MLflow's client credentials in this process from ``mlflow.conn_id``; True if it set them.

    Called at the start of every task; a connection that cannot be read raises ``LookupError`` (the
    caller logs it, and MLflow then answers the task's first call with 401 naming authentication).
    """
    conn_id = cfg.mlflow.conn_id
    if not conn_id:
        return False
    login, password = mlflow_credentials(conn_id)
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(password)
    except Exception as exc:  # pragma: no cover - masking is best effort outside a task
        log.debug("could not register the MLflow password with the secrets masker: %s", exc)
    os.environ[USERNAME_ENV] = login
    os.environ[PASSWORD_ENV] = password
    return True

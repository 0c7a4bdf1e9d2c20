"""Secrets the bundle keeps in Airflow connections, read once per process and handed to the library.

``connection_password`` is the one way the plugins read a secret from a connection: through the Task SDK
inside a task, else the ORM (scheduler, api-server, CLI). ``share_provenance_key`` runs at the start of
every task (the audit listener's ``on_task_instance_running``) so that library code signs and checks model
versions with the deployment's key (``mlflow.provenance_conn_id``; empty: ``$MLOPS_PROVENANCE_KEY``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig

log = logging.getLogger(__name__)


def get_connection(conn_id: str, what: str) -> Any:
    """Connection ``conn_id`` through the Task SDK inside a task, else the ORM (scheduler, api-server,
    CLI); ``LookupError`` naming ``what`` it holds when it cannot be read."""
    errors = []
    try:
        from airflow.sdk import Connection

        return Connection.get(conn_id)
    except Exception as exc:  # outside a task the SDK may not reach a secrets backend
        errors.append(f"{type(exc).__name__}: {exc}")
    try:
        from airflow.models.connection import Connection as ORMConnection

        return ORMConnection.get_connection_from_secrets(conn_id)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    raise LookupError(
        f"connection {conn_id!r} ({what}) could not be read ({'; '.join(errors)}); create it, or clear the "
        "setting that names it"
    )


def connection_password(conn_id: str, what: str) -> str:
    """The password of connection ``conn_id``; ``LookupError`` naming ``what`` it holds when unreadable."""
    password = get_connection(conn_id, what).password
    if not password:
        raise LookupError(f"connection {conn_id!r} ({what}) has an empty password; set it")
    return password


def share_provenance_key(cfg: BundleConfig) -> None:
    """Give the library the provenance key of ``mlflow.provenance_conn_id`` (if one is configured)."""
    from mlops_bundle import provenance

    conn_id = cfg.mlflow.provenance_conn_id
    if conn_id:
        provenance.set_key(connection_password(conn_id, "the model provenance key"))

"""Airflow listener that writes every task-instance and DAG-run state change and asset event to the audit log.

Registered by the bundle's AirflowPlugin (``listeners = [audit_listener]``). Airflow 3.3 calls these hooks
in different processes, which is why the audit store is a shared database, never a local file:

==============================  ==========================================================================
hook                            where it fires
==============================  ==========================================================================
on_task_instance_running        the task process on the worker (before ``execute``)
on_task_instance_success        the task process (after ``execute``); also the api-server when a user
                                marks a task success in the UI/REST API (``previous_state`` None)
on_task_instance_failed         the task process (state ``failed``, or ``up_for_retry`` -> recorded as
                                ``task_instance.up_for_retry``); also the api-server for manual changes
on_task_instance_skipped        the task process when the task skips itself (AirflowSkipException); not
                                for scheduler-decided skips (trigger rules, branching)
on_dag_run_running              the scheduler only, when it starts a queued run (not under ``dag.test()``)
on_dag_run_success/failed       the scheduler (``DagRun.update_state``); the api-server when a user sets
                                a run's state; ``dag.test()`` too (it runs the scheduler's state logic)
on_asset_event_emitted          where the asset change is registered: the api-server (execution API,
                                when a task with outlets succeeds, or ``POST /assets/events``)
==============================  ==========================================================================

Each record has ``source="listener"``, an event like ``task_instance.success`` / ``dag_run.failed`` /
``asset.event``, the triggering actor (the user who triggered the run, else the run type, e.g.
``scheduler``), a subject (``dag/run/task[map_index]``, ``dag/run`` or the asset URI) and a payload with
dag_id, run_id, task_id, map_index, try_number, state, previous_state, run_type, triggered_by,
triggering_user_name and hostname.

A listener must never break a task, a scheduler loop or an API call: every hook catches everything. An
event that cannot be written (store down) is logged at ERROR and counted in this host's gap spool
(``audit.gap_dir``, ``mlops_bundle.audit.gaps``); the next successful write first appends an
``audit.gap`` record with the count and time range, and ``verify`` reports the lost events. The HMAC key comes from the Airflow connection ``audit.hmac_conn_id`` (its password) or
``$MLOPS_AUDIT_HMAC_KEY``; when a connection is configured but cannot be read, nothing is written (an
unkeyed record would break a keyed chain) and a warning says why. In the task process the running hook also
hands the key to the library (``mlops_bundle.audit.set_hmac_key``), so decisions recorded by library code in
that task (promotion, quarantine) are keyed the same way.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

if TYPE_CHECKING:
    from mlops_bundle.audit import AuditLog
    from mlops_bundle.audit.gaps import GapSpool
    from mlops_bundle.config import BundleConfig

log = logging.getLogger(__name__)

_ERROR_MAX = 2000
_MISSING = object()
_keys: dict[str, Any] = {}
_unspooled = 0  # events this process could neither write nor count in the gap spool


# ----------------------------------------------------------------------------- shared with the DAG/operator


def hmac_key(cfg: BundleConfig) -> bytes | None:
    """The chain's HMAC key: password of the ``audit.hmac_conn_id`` connection, else the env, else None.

    Raises ``LookupError`` when a connection is configured but cannot be read (never fall back to an
    unkeyed write: it would break the chain). Cached per process (a new key means a new audit store).
    """
    from mlops_bundle import audit

    conn_id = cfg.audit.hmac_conn_id
    if not conn_id:
        return audit.current_hmac_key()
    cached = _keys.get(conn_id, _MISSING)
    if cached is not _MISSING:
        return cached
    from mlops_airflow.connections import connection_password

    password = connection_password(conn_id, "the audit HMAC key, audit.hmac_conn_id")
    _keys[conn_id] = key = password.encode("utf-8")
    return key


def audit_log(cfg: BundleConfig) -> AuditLog:
    """The per-process ``AuditLog`` of the configured store, keyed like every other writer."""
    from mlops_bundle import audit

    return audit.get_log(cfg.audit_uri, hmac_key(cfg))


def actor_of(run_type: Any, triggering_user_name: str | None, triggered_by: Any = None) -> str:
    """Who caused a run (the library's one spelling: :func:`mlops_bundle.names.actor`)."""
    from mlops_bundle.names import actor

    return actor(run_type, triggering_user_name, triggered_by)


# ------------------------------------------------------------------------------------------ internals


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


@functools.cache
def _hostname() -> str:
    return socket.gethostname()


def _append(event: str, actor: str, subject: str, payload: dict[str, Any]) -> None:
    """Write one listener record; never raises (a listener must not break Airflow).

    A record that cannot be written is counted in this host's gap spool; the next write that succeeds
    first appends an ``audit.gap`` record saying how many events were lost and when.
    """
    try:
        from mlops_airflow import runtime

        # the deployment's audit chain (every data set names the same one; mlops_bundle.catalog), never the
        # running task's data set: a DAG of another file whose id merely looks like ours is recorded too
        cfg = runtime.deployment_config()
        if not cfg.audit.enabled:
            return
    except Exception as exc:
        log.warning("audit listener could not load the bundle config to record %s: %s", event, exc)
        return
    try:
        writer = audit_log(cfg)
        gap = gap_spool(cfg).flush(writer, _hostname())
        if gap is not None:
            log.warning(
                "audit store is back: wrote audit.gap record seq %s for %s event(s) this host could not "
                "record", gap["seq"], json.loads(gap["payload"])["lost"],
            )  # fmt: skip
        writer.append(event, source="listener", actor=actor, subject=subject, payload=payload)
    except Exception as exc:
        _lost(cfg, event, subject, exc)


def gap_spool(cfg: BundleConfig) -> GapSpool:
    """This host's spool of events the listener could not write to the configured store."""
    from mlops_bundle.audit.gaps import GapSpool, gap_dir

    return GapSpool(gap_dir(cfg), cfg.audit_uri)


def _lost(cfg: BundleConfig, event: str, subject: str, exc: Exception) -> None:
    """Count an event that could not be written (spool, else this process's counter) and say so."""
    global _unspooled
    why = f"{type(exc).__name__}: {exc}"
    try:
        pending = gap_spool(cfg).note(event, subject, exc)
    except Exception as spool_exc:
        _unspooled += 1
        log.error(
            "audit listener could not record %s for %s (%s) nor count it in the gap spool (%s): %d event(s) "
            "lost by this process are in no record",
            event, subject, why, spool_exc, _unspooled,
        )  # fmt: skip
        return
    log.error(
        "audit listener could not record %s for %s: %s; %d event(s) from this host wait for the store (an "
        "audit.gap record will count them when it is back)",
        event, subject, why, pending,
    )  # fmt: skip


def _ti_run_info(ti: Any) -> dict[str, Any]:
    """run_type / triggering user / triggered_by of a RuntimeTaskInstance (worker) or ORM TaskInstance."""
    ctx = getattr(ti, "_ti_context_from_server", None)
    dr = getattr(ctx, "dag_run", None) if ctx is not None else None
    if dr is None:
        try:
            dr = getattr(ti, "dag_run", None)  # ORM TaskInstance in the api-server
        except Exception:
            dr = None
    return {
        "run_type": _value(getattr(dr, "run_type", None)),
        "triggered_by": _value(getattr(dr, "triggered_by", None)),
        "triggering_user_name": getattr(dr, "triggering_user_name", None),
    }


def _task_event(name: str, previous_state: Any, ti: Any, error: Any = None) -> None:
    try:
        info = _ti_run_info(ti)
        state = _value(getattr(ti, "state", None)) or name
        event = (
            "task_instance.up_for_retry"
            if name == "failed" and state == "up_for_retry"
            else f"task_instance.{name}"
        )
        map_index = getattr(ti, "map_index", -1)
        map_index = -1 if map_index is None else int(map_index)
        payload = {
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "map_index": map_index,
            "try_number": getattr(ti, "try_number", None),
            "state": state if name != "running" else "running",
            "previous_state": _value(previous_state),
            **info,
            "hostname": getattr(ti, "hostname", None) or _hostname(),
            # previous_state None + an ORM TaskInstance: a user changed the state through the UI/API
            "origin": "worker" if hasattr(ti, "_ti_context_from_server") else "api",
        }
        if error is not None:
            payload["error"] = (str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}")[
                :_ERROR_MAX
            ]
        subject = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}" + (f"[{map_index}]" if map_index >= 0 else "")
        actor = actor_of(info["run_type"], info["triggering_user_name"], info["triggered_by"])
    except Exception as exc:
        log.warning("audit listener could not describe task instance %r: %s", ti, exc)
        return
    _append(event, actor, subject, payload)


def _share_key_with_library(task_instance: Any = None) -> None:
    """In the task process: give the library the chain's key (so its decision records match the chain),
    the model provenance key (plugins/mlops_airflow/connections.py) and the MLflow account's credentials
    (plugins/mlops_airflow/mlflow_auth.py); each independently of the others."""
    from mlops_airflow import runtime
    from mlops_airflow.names import dataset_of

    try:
        deployment = runtime.deployment_config()
    except Exception as exc:
        log.warning("audit listener could not load the bundle config: %s", exc)
        return
    try:  # the task's data set names the provenance key and MLflow account; else the deployment's
        dataset = dataset_of(getattr(task_instance, "dag_id", None))
        cfg = runtime.bundle_config(dataset) if dataset else deployment
    except Exception as exc:
        log.warning("audit listener could not load the config of this task's data set: %s", exc)
        cfg = deployment
    try:
        from mlops_bundle import audit

        if deployment.audit.enabled and deployment.audit.hmac_conn_id:
            audit.set_hmac_key(hmac_key(deployment))
    except Exception as exc:
        log.warning("audit listener could not load the audit HMAC key for library records: %s", exc)
    try:
        from mlops_airflow.connections import share_provenance_key

        share_provenance_key(cfg)
    except Exception as exc:  # loads then fail closed with the library's "no provenance key" message
        log.warning("could not load the model provenance key: %s", exc)
    try:
        from mlops_airflow.mlflow_auth import share_mlflow_credentials

        share_mlflow_credentials(cfg)
    except Exception as exc:  # MLflow then answers the task's first call with 401
        log.warning("could not set the MLflow credentials of connection mlflow.conn_id: %s", exc)


# ---------------------------------------------------------------------------------------------- hooks


@hookimpl
def on_task_instance_running(previous_state, task_instance):
    _share_key_with_library(task_instance)
    _task_event("running", previous_state, task_instance)


@hookimpl
def on_task_instance_success(previous_state, task_instance):
    _task_event("success", previous_state, task_instance)


@hookimpl
def on_task_instance_failed(previous_state, task_instance, error):
    _task_event("failed", previous_state, task_instance, error)


@hookimpl
def on_task_instance_skipped(previous_state, task_instance):
    _task_event("skipped", previous_state, task_instance)


def _dag_run_event(name: str, dag_run: Any, msg: str) -> None:
    try:
        run_type = _value(dag_run.run_type)
        payload = {
            "dag_id": dag_run.dag_id,
            "run_id": dag_run.run_id,
            "state": _value(dag_run.state),
            "run_type": run_type,
            "triggered_by": _value(getattr(dag_run, "triggered_by", None)),
            "triggering_user_name": getattr(dag_run, "triggering_user_name", None),
            "logical_date": getattr(dag_run, "logical_date", None),
            "run_after": getattr(dag_run, "run_after", None),
            "start_date": getattr(dag_run, "start_date", None),
            "end_date": getattr(dag_run, "end_date", None),
            "msg": msg,
            "hostname": _hostname(),
        }
        actor = actor_of(run_type, payload["triggering_user_name"], payload["triggered_by"])
    except Exception as exc:
        log.warning("audit listener could not describe dag run %r: %s", dag_run, exc)
        return
    _append(f"dag_run.{name}", actor, f"{payload['dag_id']}/{payload['run_id']}", payload)


@hookimpl
def on_dag_run_running(dag_run, msg):
    _dag_run_event("running", dag_run, msg)


@hookimpl
def on_dag_run_success(dag_run, msg):
    _dag_run_event("success", dag_run, msg)


@hookimpl
def on_dag_run_failed(dag_run, msg):
    _dag_run_event("failed", dag_run, msg)


@hookimpl
def on_asset_event_emitted(asset_event):
    try:
        asset = asset_event.asset
        source = [asset_event.source_dag_id, asset_event.source_run_id, asset_event.source_task_id]
        payload = {
            "asset_name": getattr(asset, "name", None),
            "asset_uri": getattr(asset, "uri", None),
            "extra": asset_event.extra,
            "source_dag_id": asset_event.source_dag_id,
            "source_task_id": asset_event.source_task_id,
            "source_run_id": asset_event.source_run_id,
            "source_map_index": asset_event.source_map_index,
            "partition_key": asset_event.partition_key,
            "hostname": _hostname(),
        }
        actor = "/".join(s for s in source if s) if asset_event.source_dag_id else "external"
        subject = payload["asset_uri"] or payload["asset_name"] or "?"
    except Exception as exc:
        log.warning("audit listener could not describe asset event %r: %s", asset_event, exc)
        return
    _append("asset.event", actor, subject, payload)

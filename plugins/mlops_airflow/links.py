"""Operator extra links of the bundle and the URLs they point to.

A drift report lives in the bundle's storage (a local folder or S3), which a browser cannot open from an
http page (``file://`` links are refused by the Airflow UI, S3 needs credentials). So the bundle's plugin
serves reports through the Airflow api-server itself under ``/mlops/reports/...`` (see
``mlops_airflow.report_app``), behind Airflow's own authentication, and a task that wrote a report pushes
the URL of that page as XCom ``report_url``; a training task pushes the MLflow model version page as
XCom ``mlflow_url``.

The links are registered as *global* extra links: Airflow 3 evaluates a global link in the api-server for
every task (``get_link(operator, ti_key=...)`` with the serialized operator), and the UI only shows a
button when the URL is not empty. That is what makes them work for plain TaskFlow ``@task`` tasks, which
cannot carry per-operator links. The classes also work as ``operator_extra_links`` of a custom operator:
their ``xcom_key`` is the key the task pushes, which is the key the api-server reads for operator links.

No heavy import at module level: plugin files are imported by every task process.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

from mlops_bundle import names
from mlops_bundle.monitoring import REPORT_FILES

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig

# Where the plugin's FastAPI app is mounted in the api-server (must not clash with Airflow's
# reserved prefixes /api/v2, /ui, /execution, /auth, /pluginsv2).
URL_PREFIX = "/mlops"
# REPORT_FILES (imported above): the files of one report and their media types, the only names served.

REPORT_URL_KEY = "report_url"
MLFLOW_URL_KEY = "mlflow_url"

DATASET_RE = names.DATASET_NAME_RE
DATE_RE = names.DATE_RE
valid_date = names.parse_date


def report_path(cfg: BundleConfig, date: str, name: str = "report.html") -> str:
    """Path of a report file under the api-server, e.g. ``/mlops/reports/churn/2026-01-05/report.html``."""
    if name not in REPORT_FILES:
        raise ValueError(f"{name!r} is not a report file: one of {sorted(REPORT_FILES)}")
    return f"{URL_PREFIX}/reports/{cfg.dataset.name}/{valid_date(date)}/{name}"


def api_base_url() -> str:
    """Airflow's ``[api] base_url`` without the trailing slash ('' when not configured)."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "").rstrip("/")


def report_url(cfg: BundleConfig, date: str, name: str = "report.html") -> str:
    """The URL a user opens for a report: ``[api] base_url`` + :func:`report_path`.

    ``[api] base_url`` is the address Airflow itself builds its links and cookie path from, so it is
    right behind a proxy or a path prefix (``https://host/airflow``). When it is not set the result is
    the root-relative path: the Airflow UI resolves it against the page it is on (and opens it in the
    same tab, where the session cookie applies), which is correct for an api-server served at ``/``.
    """
    path = report_path(cfg, date, name)
    base = api_base_url()
    return f"{base}{path}" if base else path


def mlflow_model_url(tracking_uri: str, model_name: str, version: str | int) -> str:
    """The MLflow UI page of a registered model version, or '' when the tracking store has no UI.

    Only an ``http(s)://`` tracking server has a web UI; a local SQLite/file store has none, and a
    database URI (postgresql://) is not something a browser can open.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return ""
    return f"{tracking_uri.rstrip('/')}/#/models/{quote(model_name, safe='')}/versions/{version}"


def _in_task_process() -> bool:
    """True inside a task (worker) process, where XCom goes through the supervisor, not the DB."""
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return task_runner is not None and getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def _clean_url(value: Any) -> str:
    """The value if it is a string URL a browser may follow from the UI (http(s) or a root path), else ''."""
    if isinstance(value, str):
        try:  # stored XCom values are JSON documents; a plain string may come back still encoded
            decoded = json.loads(value)
            value = decoded if isinstance(decoded, str) else value
        except ValueError:
            pass
    if not isinstance(value, str):
        return ""
    value = value.strip()
    if value.startswith(("http://", "https://")) or (value.startswith("/") and not value.startswith("//")):
        return value
    return ""


def xcom_url(ti_key: Any, key: str) -> str:
    """The URL a task instance pushed as XCom ``key``, '' when it pushed none.

    In the api-server (where global links are evaluated) this reads the metadata DB the way Airflow's
    own ``XComOperatorLink`` does; inside a task process (operator links are evaluated at the end of a
    task) it goes through the Task SDK, because workers have no DB access in Airflow 3.
    """
    if _in_task_process():
        from airflow.sdk import XCom

        return _clean_url(XCom.get_value(ti_key=ti_key, key=key))

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key=key,
                run_id=ti_key.run_id,
                dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        ).first()
    return _clean_url(row.value) if row else ""


class DriftReportLink(BaseOperatorLink):
    """ "Drift report": the report page a monitoring task pushed as XCom ``report_url``."""

    name = "Drift report"
    xcom_key = REPORT_URL_KEY

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return xcom_url(ti_key, self.xcom_key)


class MlflowModelLink(BaseOperatorLink):
    """ "MLflow model": the MLflow model version page a training task pushed as XCom ``mlflow_url``."""

    name = "MLflow model"
    xcom_key = MLFLOW_URL_KEY

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return xcom_url(ti_key, self.xcom_key)

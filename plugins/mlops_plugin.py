"""The bundle's Airflow plugin: registration only; each piece lives in ``mlops_airflow``.

* ``fastapi_apps``: ``mlops_airflow.report_app``, mounted at ``/mlops`` in the api-server: drift reports
  of the bundle's storage, behind Airflow's authentication (read access to the ``monitor`` DAG).
* ``listeners``: ``mlops_airflow.audit_listener`` writes every task-instance and DAG-run state change and
  every asset event to the hash-chained audit log (``mlops_bundle.audit``).
* ``global_operator_extra_links``: "Drift report" and "MLflow model" (``mlops_airflow.links``): shown on
  any task that pushed XCom ``report_url`` / ``mlflow_url``, hidden elsewhere.
* ``fastapi_root_middlewares``: ``mlops_airflow.auth_errors.InvalidTokenIs401`` on ``/api/v2`` and
  ``/mlops``: a token Airflow rejects gets ``401`` with ``WWW-Authenticate: Bearer`` (Airflow 3.3 answers
  ``403``); an authenticated user without the permission still gets ``403``.

Plugin files are imported by every Airflow process, so nothing here builds an app or imports a heavy
library: the report app is built on its first request.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow import audit_listener, auth_errors, links
from mlops_airflow.report_app import report_app


class MlopsBundlePlugin(AirflowPlugin):
    name = "mlops_bundle"
    fastapi_apps = [{"app": report_app, "url_prefix": links.URL_PREFIX, "name": "MLOps bundle reports"}]
    global_operator_extra_links = [links.DriftReportLink(), links.MlflowModelLink()]
    # audit trail: task-instance/DAG-run state changes and asset events (see mlops_airflow.audit_listener)
    listeners = [audit_listener]
    # 401 (not 403) on /api/v2 and /mlops for a token Airflow rejects (see mlops_airflow.auth_errors)
    fastapi_root_middlewares = [
        {
            "middleware": auth_errors.InvalidTokenIs401,
            "args": [],
            "kwargs": {},
            "name": "invalid token is 401",
        }
    ]

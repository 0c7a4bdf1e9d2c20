"""The bundle's Airflow plugin: drift reports served by the api-server, and extra links to them and MLflow.

Registered pieces:

* ``fastapi_apps``: a small app mounted at ``/mlops`` in the Airflow api-server (Airflow 3 mounts plugin
  apps as-is, without any authentication of its own, so this app applies Airflow's):

  - ``GET /mlops/reports/{dataset}/{date}/{name}`` with name one of report.html, report.json,
    summary.json: the file ``<storage.reports_prefix>/<dataset>/<date>/<name>`` of the bundle's storage
    root (a local folder or S3 through the configured Airflow AWS connection). 400 for a malformed
    dataset/date/name, 404 (JSON ``detail``) when the report does not exist.
  - ``GET /mlops/reports/{dataset}``: the report dates of a data set, newest first (HTML with links;
    ``?format=json`` for scripts). ``GET /mlops/reports``: the data sets that have reports.

  Every route requires an Airflow user allowed to read task instances of the ``monitor`` DAG (the DAG
  that writes the reports), checked by Airflow's own ``requires_access_dag`` dependency. The identity
  comes from ``Authorization: Bearer <JWT from POST /auth/token>`` (REST clients) or from the UI's
  ``_token`` session cookie, which the browser sends when a user clicks the extra link in the UI.

* ``listeners``: ``mlops_airflow.audit_listener`` writes every task-instance and DAG-run state change and
  every asset event to the hash-chained audit log (``mlops_bundle.audit``).

* ``global_operator_extra_links``: "Drift report" and "MLflow model" (see ``mlops_airflow.links``): shown
  on any task that pushed XCom ``report_url`` / ``mlflow_url``, hidden elsewhere.

* ``fastapi_root_middlewares``: ``mlops_airflow.auth_errors.InvalidTokenIs401`` on ``/api/v2`` and
  ``/mlops``: a request whose token Airflow rejects (malformed, wrong signature, expired, revoked) gets
  ``401`` with ``WWW-Authenticate: Bearer`` and a JSON ``detail`` saying how to get a new token
  (``POST /auth/token``), where Airflow 3.3 answers ``403``; an authenticated user without the permission
  (a viewer triggering a run) still gets ``403``.

Plugin files are imported by every Airflow process, task processes included, so the FastAPI app (and
Airflow's API-server security module) is only built when the api-server first routes a request to it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow import audit_listener, auth_errors, links

if TYPE_CHECKING:
    from fastapi import FastAPI


class ReportRequestError(ValueError):
    """A path parameter of a report request is malformed (HTTP 400)."""


def _check_dataset(dataset: str) -> str:
    if not links.DATASET_RE.match(dataset):
        raise ReportRequestError(
            f"dataset {dataset!r} is not a data set name (lower-case letters, digits, '_', "
            "starting with a letter)"
        )
    return dataset


def _check_date(date: str) -> str:
    try:
        return links.valid_date(date)
    except ValueError as exc:
        raise ReportRequestError(f"date: {exc}") from None


def _check_name(name: str) -> str:
    if name not in links.REPORT_FILES:
        raise ReportRequestError(
            f"{name!r} is not a report file: ask for one of {sorted(links.REPORT_FILES)}"
        )
    return name


def _report_dates(store: Any, prefix: str) -> list[str]:
    """Dates under ``prefix`` (``reports/<dataset>``) that hold a report.html, newest first."""
    dates = set()
    for obj in store.list(prefix):
        parts = obj.key[len(prefix) :].strip("/").split("/")
        if len(parts) == 2 and parts[1] == "report.html" and links.DATE_RE.match(parts[0]):
            dates.add(parts[0])
    return sorted(dates, reverse=True)


def _page(title: str, items: list[tuple[str, str]], empty: str) -> str:
    rows = "\n".join(
        f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>' for href, text in items
    )
    body = f"<ul>\n{rows}\n</ul>" if items else f"<p>{html.escape(empty)}</p>"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"</head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


# Served documents may embed values from ingested data: their scripts may run (Evidently's report is a
# JavaScript app) but may not call the Airflow API with the user's session, post forms or be framed
# by other sites.
_REPORT_HEADERS = {
    "Content-Security-Policy": "connect-src 'none'; form-action 'none'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
}


def create_report_app() -> FastAPI:
    """The FastAPI app mounted at ``/mlops`` (built on first request in the api-server)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from mlops_airflow import runtime
    from mlops_bundle.storage import StorageError, join

    app = FastAPI(
        title="MLOps bundle",
        dependencies=[
            Depends(
                requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE, param_dag_id=links.MONITOR_DAG_ID)
            )
        ],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(ReportRequestError)
    async def _bad_request(request: Request, exc: ReportRequestError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(StorageError)
    async def _storage_down(request: Request, exc: StorageError) -> JSONResponse:
        return JSONResponse(status_code=502, content={"detail": f"the report storage failed: {exc}"})

    def _store() -> tuple[Any, Any]:
        cfg = runtime.bundle_config()
        return cfg, runtime.storage(cfg)

    @app.get("/reports")
    def list_datasets(format: str = "html") -> Response:
        cfg, store = _store()
        prefix = cfg.storage.reports_prefix
        names = sorted(
            {
                parts[0]
                for o in store.list(prefix)
                if len(parts := o.key[len(prefix) :].strip("/").split("/")) > 1
                and links.DATASET_RE.match(parts[0])
            }
        )
        if format == "json":
            return JSONResponse({"datasets": names})
        items = [(f"reports/{n}", n) for n in names]
        return HTMLResponse(_page("Drift reports", items, "No reports yet: run the monitor DAG."))

    @app.get("/reports/{dataset}")
    def list_reports(dataset: str, format: str = "html") -> Response:
        _check_dataset(dataset)
        cfg, store = _store()
        dates = _report_dates(store, join(cfg.storage.reports_prefix, dataset))
        if format == "json":
            return JSONResponse(
                {"dataset": dataset, "dates": dates, "reports": [f"{dataset}/{d}/report.html" for d in dates]}
            )
        # relative links: from .../reports/<dataset>, "<dataset>/<date>/report.html" is the report
        items = [(f"{dataset}/{d}/report.html", d) for d in dates]
        return HTMLResponse(
            _page(f"Drift reports: {dataset}", items, f"No reports for {dataset!r} yet: run the monitor DAG.")
        )

    @app.get("/reports/{dataset}/{date}/{name}")
    def get_report(dataset: str, date: str, name: str) -> Response:
        _check_dataset(dataset)
        _check_date(date)
        _check_name(name)
        cfg, store = _store()
        key = join(cfg.storage.reports_prefix, dataset, date, name)
        if not store.exists(key):
            return JSONResponse(
                status_code=404,
                content={
                    "detail": f"no {name} for data set {dataset!r} on {date} (looked for {store.uri(key)}): "
                    f"run the monitor DAG for that date, or see /mlops/reports/{dataset} for the dates "
                    "that have a report"
                },
            )
        return Response(store.read_bytes(key), media_type=links.REPORT_FILES[name], headers=_REPORT_HEADERS)

    return app


class LazyASGIApp:
    """An ASGI app that builds the real one on its first request (keeps plugin import cheap)."""

    def __init__(self, factory):
        self.factory = factory
        self._app = None

    @property
    def app(self):
        if self._app is None:
            self._app = self.factory()
        return self._app

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


report_app = LazyASGIApp(create_report_app)


class MlopsBundlePlugin(AirflowPlugin):
    name = "mlops_bundle"
    fastapi_apps = [{"app": report_app, "url_prefix": links.URL_PREFIX, "name": "MLOps bundle reports"}]
    global_operator_extra_links = [links.DriftReportLink(), links.MlflowModelLink()]
    # audit trail: task-instance/DAG-run state changes and asset events (see mlops_airflow.audit_listener)
    listeners = [audit_listener]
    # 401 (not 403) on /api/v2 for a token Airflow rejects (see mlops_airflow.auth_errors)
    fastapi_root_middlewares = [
        {
            "middleware": auth_errors.InvalidTokenIs401,
            "args": [],
            "kwargs": {},
            "name": "invalid token is 401",
        }
    ]

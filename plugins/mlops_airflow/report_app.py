"""The /mlops app of the api-server: drift reports of the bundle's storage, behind Airflow's own auth.

Airflow 3 mounts plugin apps as-is, without any authentication of its own, so this app applies Airflow's:

- ``GET /mlops/reports/{dataset}/{date}/{name}`` with name one of report.html, report.json,
  summary.json: the file ``<storage.reports_prefix>/<dataset>/<date>/<name>`` of the bundle's storage
  root (a local folder or S3 through the configured Airflow AWS connection). 400 for a malformed
  dataset/date/name, 404 (JSON ``detail``) when the report does not exist.
- ``GET /mlops/reports/{dataset}``: the report dates of a data set, newest first (HTML with links;
  ``?format=json`` for scripts). ``GET /mlops/reports``: the data sets that have reports.

Every route requires an Airflow user allowed to read task instances of the ``monitor`` DAG (the DAG
that writes the reports), checked by Airflow's own ``requires_access_dag`` dependency. The identity comes
from ``Authorization: Bearer <JWT from POST /auth/token>`` (REST clients) or from the UI's ``_token``
session cookie, which the browser sends when a user clicks the extra link in the UI. Path parameters are
validated (``mlops_bundle.names`` through ``links``) before anything is read; where reports live and which
dates exist is the library's (``mlops_bundle.monitoring``).

Plugin files are imported by every Airflow process, task processes included, so the FastAPI app (and
Airflow's API-server security module) is only built when the api-server first routes a request to it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from mlops_airflow import links

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
    from mlops_bundle import monitoring
    from mlops_bundle.storage import StorageError

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
        names = monitoring.report_datasets(store, cfg)
        if format == "json":
            return JSONResponse({"datasets": names})
        items = [(f"reports/{n}", n) for n in names]
        return HTMLResponse(_page("Drift reports", items, "No reports yet: run the monitor DAG."))

    @app.get("/reports/{dataset}")
    def list_reports(dataset: str, format: str = "html") -> Response:
        _check_dataset(dataset)
        cfg, store = _store()
        dates = monitoring.report_dates(store, cfg, dataset)
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
        key = monitoring.report_key(cfg, dataset, date, name)
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

"""The /mlops app of the api-server: drift reports of the bundle's storage, behind Airflow's own auth.

Airflow 3 mounts plugin apps as-is, without any authentication of its own, so this app applies Airflow's:

- ``GET /mlops/reports/{dataset}/{date}/{name}`` with name one of report.html, report.json,
  summary.json: the file ``<storage.reports_prefix>/<dataset>/<date>/<name>`` of the bundle's storage
  root (a local folder or S3 through the configured Airflow AWS connection). 400 for a malformed
  dataset/date/name, 404 (JSON ``detail``) when the report does not exist.
- ``GET /mlops/reports/{dataset}``: the report dates of a data set, newest first (HTML with links;
  ``?format=json`` for scripts). ``GET /mlops/reports``: the configured data sets the user may read.

Pages that show data run sandboxed. A report is built from ingested data, and a data value can end up
as markup or script in it (Evidently writes its data into an inline ``<script>`` without escaping
``</script>``). So the report files are served with :data:`DATA_PAGE_HEADERS`: ``Content-Security-Policy:
sandbox allow-scripts`` (the page gets an opaque origin: its scripts run, as Evidently's app needs, but not
as the api-server's origin, so they cannot send the viewer's session cookie to ``/api/v2``, read the Airflow
UI that frames them, or use the origin's storage) plus a policy that lets the page load nothing from
anywhere (inline script/style, ``data:``/``blob:`` images and fonts only). What it cannot stop: a script
in the report navigating its own tab or frame elsewhere (``location = ...``), taking what the report shows
with it (never the session). Every other response of this app
(the list pages, JSON listings and every error) gets :data:`APP_PAGE_HEADERS`: no script at all. Both sets
are added by :class:`SecurityHeaders`, around the whole app, so error answers carry them too.

Every route of a data set requires an Airflow user allowed to read task instances of that data set's
``<dataset>__monitor`` DAG (the DAG that writes its reports), checked by Airflow's own
``requires_access_dag``; the list of data sets shows only those the user may read. A data set with no
config is a 404 after that check (its name is validated first: it is never a path). The identity comes
from ``Authorization: Bearer <JWT from POST /auth/token>`` (REST clients) or from the UI's ``_token``
session cookie, which the browser sends when a user clicks the extra link in the UI. Path parameters are
validated (``mlops_bundle.names`` through ``links``) before anything is read; where reports live and which
dates exist is the library's (``mlops_bundle.monitoring``).

Plugin files are imported by every Airflow process, task processes included, so the FastAPI app (and
Airflow's API-server security module) is only built when the api-server first routes a request to it.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

from mlops_airflow import links

log = logging.getLogger(__name__)

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


def _relative_href(href: str) -> str:
    """``href`` escaped for a quoted attribute; ValueError unless it is a relative path (why: a list page
    links only to its own app's pages; a scheme (``javascript:``) or a host (``//evil``) is a bug)."""
    if not href or href.startswith(("/", "\\")) or ":" in href.split("/", 1)[0]:
        raise ValueError(f"list pages link only to relative paths, not {href!r}")
    return html.escape(href, quote=True)


def _page(title: str, items: list[tuple[str, str]], empty: str) -> str:
    rows = "\n".join(
        f'<li><a href="{_relative_href(href)}">{html.escape(text)}</a></li>' for href, text in items
    )
    body = f"<ul>\n{rows}\n</ul>" if items else f"<p>{html.escape(empty)}</p>"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"</head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


# The headers of the two kinds of page this app serves (the only home of these policies).
_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",  # a JSON file is never sniffed into HTML or script
    "Referrer-Policy": "no-referrer",  # report URLs name data sets and dates: not for other sites
    "Cache-Control": "private, no-store",  # behind auth: no shared or disk cache keeps a copy
    "Cross-Origin-Opener-Policy": "same-origin",  # a page opened from here gets no handle on its opener
    "Cross-Origin-Resource-Policy": "same-origin",  # other sites cannot embed it as an image/script
    "X-Frame-Options": "SAMEORIGIN",  # browsers without CSP frame-ancestors
}

# Report files: built from ingested data, so any value in them may be markup or script. Evidently's report
# is a JavaScript app with its data inline: scripts must run, but sandboxed (no allow-same-origin: an opaque
# origin, so no session cookie, no same-origin access to /api/v2 or a framing Airflow page, no storage),
# and the page may load nothing (Evidently's HTML is self-contained; no fetch, image or form to anywhere).
DATA_PAGE_HEADERS = {
    "Content-Security-Policy": "; ".join(
        (
            "sandbox allow-scripts",
            "default-src 'none'",
            "script-src 'unsafe-inline'",
            "style-src 'unsafe-inline'",
            "img-src data: blob:",
            "font-src data:",
            "connect-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'self'",
        )
    ),
    **_COMMON_HEADERS,
}

# Everything else (list pages, JSON listings, errors): plain HTML/JSON that needs no script, style or image.
APP_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    ),
    **_COMMON_HEADERS,
}


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def with_security_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """ASGI response headers plus the header set of their page kind.

    A response that already has a Content-Security-Policy chose :data:`DATA_PAGE_HEADERS` (the report
    route sets them); every other one (including errors raised anywhere in the app) gets
    :data:`APP_PAGE_HEADERS`, replacing same-named headers.
    """
    names = {k.lower() for k, _ in raw}
    if b"content-security-policy" in names:
        return raw
    added = _encoded(APP_PAGE_HEADERS)
    replaced = {k for k, _ in added}
    return [(k, v) for k, v in raw if k.lower() not in replaced] + added


class SecurityHeaders:
    """ASGI wrapper putting :func:`with_security_headers` on every HTTP response of the wrapped app.

    It wraps the whole FastAPI app (outside Starlette's own error middleware), so 400/401/403/404/500
    answers carry the headers as well.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_security_headers(list(message.get("headers", [])))
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _report_headers(dataset: str, date: str, name: str) -> dict[str, str]:
    """:data:`DATA_PAGE_HEADERS`, plus a download disposition for the JSON files (a browser saves them
    instead of showing them, so no JSON viewer or sniffing ever treats them as a page)."""
    if name.endswith(".json"):
        return {**DATA_PAGE_HEADERS, "Content-Disposition": f'attachment; filename="{dataset}-{date}-{name}"'}
    return DATA_PAGE_HEADERS


def create_report_app() -> FastAPI:
    """The FastAPI app mounted at ``/mlops`` (built on first request in the api-server)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from mlops_airflow import runtime
    from mlops_airflow.names import MONITOR, dag_id
    from mlops_bundle import monitoring
    from mlops_bundle.config import ConfigError
    from mlops_bundle.storage import StorageError

    def may_read(dataset: str, request: Request, user: Any) -> bool:
        check = requires_access_dag(
            "GET", DagAccessEntity.TASK_INSTANCE, param_dag_id=dag_id(dataset, MONITOR)
        )
        try:
            check(request, user)
        except HTTPException as exc:
            if exc.status_code == 403:
                return False
            raise
        return True

    def authorized(request: Request, user: GetUserDep) -> None:
        # a data set's routes: read access to its monitor DAG's task instances; the list filters instead
        dataset = request.path_params.get("dataset")
        if dataset is not None and not may_read(_check_dataset(dataset), request, user):
            raise HTTPException(403, "Forbidden")
        request.state.user = user

    # this module has `from __future__ import annotations`, and FastAPI resolves string annotations
    # against the module's globals, where these locally imported names are not: give it the objects
    # (else `request` and `user` become required query parameters and every route answers 422)
    authorized.__annotations__ = {"request": Request, "user": GetUserDep, "return": None}

    app = FastAPI(
        title="MLOps bundle",
        dependencies=[Depends(authorized)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(ReportRequestError)
    async def _bad_request(request: Request, exc: ReportRequestError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(StorageError)
    async def _storage_down(request: Request, exc: StorageError) -> JSONResponse:
        # the storage error (bucket, endpoint, credentials hints) goes to the api-server log, not to the page
        log.warning("report storage failed for %s: %s", request.url.path, exc)
        return JSONResponse(
            status_code=502,
            content={
                "detail": "the report storage failed; the api-server log names the error, try again later"
            },
        )

    @app.exception_handler(ConfigError)
    async def _no_dataset(request: Request, exc: ConfigError) -> JSONResponse:
        # the config error (file paths) goes to the api-server log, not to the page
        log.warning("report request %s: %s", request.url.path, exc)
        dataset = request.path_params.get("dataset")
        return JSONResponse(
            status_code=404, content={"detail": f"no data set {dataset!r} is configured: see /mlops/reports"}
        )

    def _store(dataset: str) -> tuple[Any, Any]:
        cfg = runtime.bundle_config(dataset)
        return cfg, runtime.storage(cfg)

    def list_datasets(request, format: str = "html") -> Response:  # request: annotated below
        from mlops_bundle.catalog import configs

        user = request.state.user
        names = [c.dataset.name for c in configs() if may_read(c.dataset.name, request, user)]
        if format == "json":
            return JSONResponse({"datasets": names})
        items = [(f"reports/{n}", n) for n in names]
        return HTMLResponse(_page("Drift reports", items, "No data set you may read is configured."))

    list_datasets.__annotations__["request"] = Request  # see authorized's annotations above
    app.get("/reports")(list_datasets)

    @app.get("/reports/{dataset}")
    def list_reports(dataset: str, format: str = "html") -> Response:
        cfg, store = _store(_check_dataset(dataset))
        dates = monitoring.report_dates(store, cfg, dataset)
        if format == "json":
            return JSONResponse(
                {"dataset": dataset, "dates": dates, "reports": [f"{dataset}/{d}/report.html" for d in dates]}
            )
        # relative links: from .../reports/<dataset>, "<dataset>/<date>/report.html" is the report
        items = [(f"{dataset}/{d}/report.html", d) for d in dates]
        return HTMLResponse(
            _page(
                f"Drift reports: {dataset}", items, f"No reports for {dataset!r} yet: run {dataset}__monitor."
            )
        )

    @app.get("/reports/{dataset}/{date}/{name}")
    def get_report(dataset: str, date: str, name: str) -> Response:
        _check_dataset(dataset)
        _check_date(date)
        _check_name(name)
        cfg, store = _store(dataset)
        key = monitoring.report_key(cfg, dataset, date, name)
        if not store.exists(key):
            return JSONResponse(
                status_code=404,
                content={
                    "detail": f"no {name} for data set {dataset!r} on {date}: "
                    f"run the data set's monitor DAG for that date, or see /mlops/reports/{dataset} for the dates "
                    "that have a report"
                },
            )
        return Response(
            store.read_bytes(key),
            media_type=links.REPORT_FILES[name],
            headers=_report_headers(dataset, date, name),
        )

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


def create_served_app() -> SecurityHeaders:
    """What the api-server mounts: the report app inside :class:`SecurityHeaders`."""
    return SecurityHeaders(create_report_app())


report_app = LazyASGIApp(create_served_app)

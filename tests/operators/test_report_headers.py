"""Every answer of the /mlops app carries the security headers of its page kind, errors included.

Served through ``airflow.api_fastapi.app.create_app()`` (the real api-server app: plugin mounting, auth
manager, JWT middleware, the bundle's root middleware) in a TestClient, with JWTs from Airflow's auth
manager. Report files (built from data) get the sandboxing set, everything else (list pages, JSON
listings, 400/401/403/404/405/500 answers) the no-script set. What the headers do in a browser is shown by
``tests/integration/test_report_sandbox.py``.
"""

from __future__ import annotations

import json

import pytest

from tests.api_app import api_server_client
from tests.conftest import LAKE

DATE = "2026-03-07"  # its own date in the session lake (other modules use churn/2026-01-0x)
HOSTILE = "</script><script>document.title='pwned'</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def api(airflow_db):
    folder = LAKE / "reports" / "churn" / DATE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text(f"<!doctype html><script>var data = [{json.dumps(HOSTILE)}]</script>")
    (folder / "report.json").write_text(json.dumps({"values": [HOSTILE]}))
    (folder / "summary.json").write_text(json.dumps({"note": HOSTILE}))

    with api_server_client("headers") as client:
        yield client


def _bearer(role: str | None = "viewer") -> dict[str, str]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=f"u-{role}", role=role))
    return {"Authorization": f"Bearer {token}"}


def _sets() -> tuple[dict[str, str], dict[str, str]]:
    """(DATA_PAGE_HEADERS, APP_PAGE_HEADERS); plugins/ is importable once Airflow is (its plugins folder)."""
    import airflow  # noqa: F401

    from mlops_airflow.report_app import APP_PAGE_HEADERS, DATA_PAGE_HEADERS

    return DATA_PAGE_HEADERS, APP_PAGE_HEADERS


def _assert_headers(r, kind: str) -> None:
    expected = dict(zip(("data", "app"), _sets(), strict=True))[kind]
    for name, value in expected.items():
        assert r.headers.get(name) == value, (r.request.url, r.status_code, name, r.headers.get(name))


def test_the_two_header_sets():
    DATA_PAGE_HEADERS, APP_PAGE_HEADERS = _sets()
    data_csp = DATA_PAGE_HEADERS["Content-Security-Policy"]
    directives = {d.split()[0]: d for d in data_csp.split("; ")}
    # scripts run, but in an opaque origin: never `allow-same-origin`, nothing else allowed either
    assert directives["sandbox"] == "sandbox allow-scripts"
    assert "allow-same-origin" not in data_csp and "'self'" not in data_csp.replace(
        "frame-ancestors 'self'", ""
    )
    assert (
        directives["default-src"] == "default-src 'none'"
        and directives["connect-src"] == "connect-src 'none'"
    )
    assert directives["form-action"] == "form-action 'none'" and directives["base-uri"] == "base-uri 'none'"
    app_csp = APP_PAGE_HEADERS["Content-Security-Policy"]
    assert app_csp.startswith("default-src 'none'") and "script-src" not in app_csp
    for headers in (DATA_PAGE_HEADERS, APP_PAGE_HEADERS):
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "private, no-store"
        assert headers["X-Frame-Options"] == "SAMEORIGIN"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Resource-Policy"] == "same-origin"


def test_report_files_are_served_sandboxed(api):
    r = api.get(f"/mlops/reports/churn/{DATE}/report.html", headers=_bearer())
    assert r.status_code == 200 and HOSTILE in r.text  # the bytes as stored: the sandbox contains them
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    _assert_headers(r, "data")
    assert "content-disposition" not in r.headers
    for name in ("report.json", "summary.json"):
        r = api.get(f"/mlops/reports/churn/{DATE}/{name}", headers=_bearer())
        assert r.status_code == 200 and HOSTILE in json.dumps(r.json())
        assert r.headers["content-type"] == "application/json"
        _assert_headers(r, "data")
        # a browser downloads it: never shown as a page, whatever a value in it looks like
        assert r.headers["content-disposition"] == f'attachment; filename="churn-{DATE}-{name}"'


@pytest.mark.parametrize(
    ("path", "auth", "status"),
    [
        ("/mlops/reports", "viewer", 200),
        ("/mlops/reports?format=json", "viewer", 200),
        ("/mlops/reports/churn", "viewer", 200),
        ("/mlops/reports/churn?format=json", "viewer", 200),
        ("/mlops/reports/churn/2026-02-30/report.html", "viewer", 400),
        ("/mlops/reports/churn/2026-03-08/report.html", "viewer", 404),  # no such report
        ("/mlops/reports/churn/2026-03-07/x/y", "viewer", 404),  # no such route
        (f"/mlops/reports/churn/{DATE}/report.html", None, 401),  # no credential
        (f"/mlops/reports/churn/{DATE}/report.html", "bad", 401),  # a token Airflow refuses
        (f"/mlops/reports/churn/{DATE}/report.html", "norole", 403),  # a user without permission
    ],
)
def test_every_other_answer_gets_the_no_script_headers(api, path, auth, status):
    headers = {
        None: {},
        "bad": {"Authorization": "Bearer not-a-jwt"},
        "norole": _bearer(role=None),
        "viewer": _bearer(),
    }[auth]
    r = api.get(path, headers=headers)
    assert r.status_code == status, (path, r.text)
    _assert_headers(r, "app")
    assert "content-disposition" not in r.headers


def test_a_method_the_app_does_not_serve_still_gets_the_headers(api):
    r = api.post(f"/mlops/reports/churn/{DATE}/report.html", headers=_bearer())
    assert r.status_code == 405
    _assert_headers(r, "app")


def test_an_unhandled_error_still_gets_the_headers():
    """A 500 is answered by Starlette's outermost error middleware: SecurityHeaders wraps even that."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mlops_airflow.report_app import SecurityHeaders

    app = FastAPI()

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    r = TestClient(SecurityHeaders(app), raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500
    _assert_headers(r, "app")


def test_list_pages_escape_values_and_link_only_relative_paths():
    from mlops_airflow import report_app

    page = report_app._page(HOSTILE, [(f"churn/{HOSTILE}", HOSTILE)], HOSTILE)
    assert "<script>" not in page and "<img" not in page and "onerror=alert(1)>" not in page
    assert "&lt;/script&gt;&lt;script&gt;" in page
    assert 'href="churn/&lt;/script&gt;&lt;script&gt;document.title=&#x27;pwned&#x27;' in page
    assert "<p>" not in report_app._page("t", [("churn/2026-01-05/report.html", "x")], HOSTILE)
    assert HOSTILE not in report_app._page("t", [], HOSTILE)
    for href in (
        "javascript:alert(1)",
        "//evil.example/x",
        "/mlops/../api/v2/dags",
        "https://evil.example",
        "\\\\evil",
    ):
        with pytest.raises(ValueError, match="relative paths"):
            report_app._page("t", [(href, "x")], "")

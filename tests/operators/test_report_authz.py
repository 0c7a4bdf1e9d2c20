"""The /mlops report pages authorize per data set: read access to ``<dataset>__monitor`` opens that data
set's reports and no other's, and the index lists only what the user may read.

SimpleAuthManager (the bundle's default) grants by role over every DAG, so it cannot express "churn but
not diabetes". This test runs the real api-server app with an auth manager that can: SimpleAuthManager
whose user ``churn-reader`` may read only DAGs whose id starts with ``churn__`` (what a FAB or Keycloak
deployment expresses with per-DAG permissions). Everything else is Airflow's and the bundle's own code.
"""

from __future__ import annotations

import shutil

import pytest
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

from tests.api_app import api_server_client
from tests.conftest import LAKE, REPO

DATE = "2026-01-05"


class ChurnOnlyAuthManager(SimpleAuthManager):
    """SimpleAuthManager, except that user ``churn-reader`` may only GET DAGs named ``churn__*``."""

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        if user.get_name() == "churn-reader":
            return method == "GET" and bool(details and details.id and details.id.startswith("churn__"))
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )


@pytest.fixture
def api(airflow_db, tmp_path, monkeypatch):
    catalog = tmp_path / "datasets"
    catalog.mkdir()
    for name in ("churn", "diabetes"):
        shutil.copy(REPO / "config" / "datasets" / f"{name}.yaml", catalog / f"{name}.yaml")
        folder = LAKE / "reports" / name / DATE
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.html").write_bytes(f"<html>{name} report</html>".encode())
    monkeypatch.setenv("MLOPS_CONFIG", str(catalog))
    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", f"{__name__}.ChurnOnlyAuthManager")
    with api_server_client("authz") as client:
        yield client


def _bearer(username: str, role: str = "viewer") -> dict[str, str]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))
    return {"Authorization": f"Bearer {token}"}


def test_a_reader_of_one_data_set_reads_its_reports_and_no_others(api):
    from airflow.api_fastapi.app import get_auth_manager

    assert isinstance(get_auth_manager(), ChurnOnlyAuthManager)
    churn_reader, viewer = _bearer("churn-reader"), _bearer("someone")
    r = api.get(f"/mlops/reports/churn/{DATE}/report.html", headers=churn_reader)
    assert r.status_code == 200 and b"churn report" in r.content
    assert DATE in api.get("/mlops/reports/churn?format=json", headers=churn_reader).json()["dates"]
    for path in (f"/mlops/reports/diabetes/{DATE}/report.html", "/mlops/reports/diabetes?format=json"):
        r = api.get(path, headers=churn_reader)
        assert r.status_code == 403 and b"diabetes" not in r.content, (path, r.text)
    # the index names only what the user may read; a viewer of every DAG sees both
    assert api.get("/mlops/reports?format=json", headers=churn_reader).json() == {"datasets": ["churn"]}
    page = api.get("/mlops/reports", headers=churn_reader).text
    assert 'href="reports/churn"' in page and "diabetes" not in page
    assert api.get("/mlops/reports?format=json", headers=viewer).json() == {"datasets": ["churn", "diabetes"]}
    r = api.get(f"/mlops/reports/diabetes/{DATE}/report.html", headers=viewer)
    assert r.status_code == 200 and b"diabetes report" in r.content


@pytest.mark.parametrize(
    "path",
    [
        # names that look like churn's but are not: each is refused before any authorization or read
        f"/mlops/reports/Churn/{DATE}/report.html",
        f"/mlops/reports/churn%0A/{DATE}/report.html",
        f"/mlops/reports/churn__x/{DATE}/report.html",  # a valid name, another data set: churn__x__monitor
        f"/mlops/reports/%2E%2E/{DATE}/report.html",
    ],
)
def test_names_that_resemble_a_readable_data_set_open_nothing(api, path):
    r = api.get(path, headers=_bearer("churn-reader"))
    assert r.status_code in (400, 403, 404) and b"report</html>" not in r.content, (path, r.status_code)

"""The bundle's Airflow plugin, loaded by Airflow's plugins manager and served by Airflow's own api-server.

The report endpoints are exercised through ``airflow.api_fastapi.app.create_app()`` (the real api-server
app: plugin mounting, auth manager, JWT middleware), with JWTs issued by Airflow's auth manager, against
reports in the session's lake (file://) and in a moto S3 bucket. The extra links are read back for a real
task instance of a real DAG run (``dag.test()`` of the ingest DAG), directly and through the REST
endpoint the UI calls.
"""

from __future__ import annotations

import json

import pytest

from tests.api_app import api_server_client
from tests.conftest import LAKE

DATE = "2026-01-05"
HTML = b"<!doctype html><html><body><h1>Dataset Drift</h1>drift report for churn 2026-01-05</body></html>"
SUMMARY = {"dataset": "churn", "date": DATE, "drift_share": 0.4, "drifted": True}


@pytest.fixture(scope="module")
def report_in_lake():
    folder = LAKE / "reports" / "churn" / DATE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_bytes(HTML)
    (folder / "report.json").write_text(json.dumps({"metrics": []}))
    (folder / "summary.json").write_text(json.dumps(SUMMARY))
    older = LAKE / "reports" / "churn" / "2026-01-04"
    older.mkdir(parents=True, exist_ok=True)
    (older / "report.html").write_bytes(b"<html>older</html>")
    (LAKE / "secret.txt").write_text("lake secret")
    (LAKE.parent / "outside.txt").write_text("outside secret")
    return folder


@pytest.fixture(scope="module")
def api(airflow_db, report_in_lake):
    """The real Airflow api-server app (the plugin mounted by Airflow) in a TestClient."""
    with api_server_client("plugin") as client:
        yield client


def _token(role: str | None = "viewer") -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=f"u-{role}", role=role))


def _bearer(role: str | None = "viewer") -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(role)}"}


# ------------------------------------------------------------------------------------- registration


def test_plugin_is_loaded_by_airflows_plugins_manager():
    from airflow import plugins_manager

    plugins, errors = plugins_manager._get_plugins()
    assert not errors, errors
    [plugin] = [p for p in plugins if p.name == "mlops_bundle"]
    assert [a["url_prefix"] for a in plugin.fastapi_apps] == ["/mlops"]
    apps, _ = plugins_manager.get_fastapi_plugins()
    assert "/mlops" in [a["url_prefix"] for a in apps]
    names = {link.name for link in plugins_manager.get_global_operator_extra_links()}
    assert {"Drift report", "MLflow model"} <= names


def test_report_url_follows_the_api_base_url(monkeypatch):
    from mlops_airflow import links
    from mlops_bundle.config import load_config

    cfg = load_config()
    assert links.report_path(cfg, DATE) == "/mlops/reports/churn/2026-01-05/report.html"
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    assert links.report_url(cfg, DATE) == "/mlops/reports/churn/2026-01-05/report.html"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/airflow/")
    assert links.report_url(cfg, DATE, "summary.json") == (
        "https://airflow.example.com/airflow/mlops/reports/churn/2026-01-05/summary.json"
    )
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        links.report_path(cfg, "2026-02-30")
    with pytest.raises(ValueError, match="not a report file"):
        links.report_path(cfg, DATE, "../x")
    assert links.mlflow_model_url("http://mlflow:5000/", "churn-classifier", 3) == (
        "http://mlflow:5000/#/models/churn-classifier/versions/3"
    )
    assert links.mlflow_model_url("sqlite:////tmp/mlflow.db", "churn-classifier", 3) == ""


# ------------------------------------------------------------------------------------------ serving


def test_report_html_is_served_to_a_rest_client_with_a_bearer_token(api):
    r = api.get(f"/mlops/reports/churn/{DATE}/report.html", headers=_bearer())
    assert r.status_code == 200, r.text
    assert r.content == HTML
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'none'" in r.headers["content-security-policy"]
    r = api.get(f"/mlops/reports/churn/{DATE}/summary.json", headers=_bearer())
    assert r.status_code == 200 and r.json() == SUMMARY
    assert r.headers["content-type"] == "application/json"
    assert api.get(f"/mlops/reports/churn/{DATE}/report.json", headers=_bearer()).json() == {"metrics": []}


def test_report_is_served_to_a_browser_with_the_ui_session_cookie(api):
    # what a click on the extra link sends: the UI's httponly `_token` cookie, no Authorization header
    api.cookies.set("_token", _token())
    try:
        r = api.get(f"/mlops/reports/churn/{DATE}/report.html")
    finally:
        api.cookies.clear()
    assert r.status_code == 200, r.text
    assert b"Dataset Drift" in r.content


def test_reports_need_an_authorized_airflow_user(api):
    url = f"/mlops/reports/churn/{DATE}/report.html"
    r = api.get(url)
    assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}
    # a token Airflow refuses: 401 (Airflow says 403; the plugin's auth_errors middleware covers /mlops)
    r = api.get(url, headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
    assert api.get(url, headers=_bearer(role=None)).status_code == 403  # a valid user without any role
    # without credentials nothing is looked at, not even the path parameters
    assert api.get("/mlops/reports/%2E%2E/2026-01-05/report.html").status_code == 401
    r = api.get("/mlops/reports/churn/..%2F..%2Fsecret.txt/report.html")  # matches no route at all
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


def test_missing_report_is_a_404_naming_what_to_do(api):
    r = api.get("/mlops/reports/churn/2026-01-06/report.html", headers=_bearer())
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert "report.html" in detail and "'churn'" in detail and "2026-01-06" in detail
    assert "monitor DAG" in detail
    # a data set that is not configured: 404 saying so (the config error with its paths stays in the log)
    r = api.get(f"/mlops/reports/other_set/{DATE}/report.html", headers=_bearer())
    assert r.status_code == 404 and r.json() == {
        "detail": "no data set 'other_set' is configured: see /mlops/reports"
    }
    assert "/" not in r.json()["detail"].replace("/mlops/reports", "")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/mlops/reports/churn/2026-01-05/..%2F..%2Fsecret.txt", 404),  # no route matches a '/' in name
        ("/mlops/reports/churn/2026-01-05/..%2F..%2F..%2Foutside.txt", 404),
        ("/mlops/reports/%2E%2E/2026-01-05/report.html", 400),
        ("/mlops/reports/churn/%2E%2E/report.html", 400),
        ("/mlops/reports/churn/2026-01-05/%2E%2E", 400),
        ("/mlops/reports/churn/2026-01-05/secret.txt", 400),
        ("/mlops/reports/churn/2026-01-05/report.html%00", 400),
        ("/mlops/reports/churn/2026-01-05/report.html.bak", 400),
        ("/mlops/reports/Churn/2026-01-05/report.html", 400),
        ("/mlops/reports/churn%2F..%2F../2026-01-05/report.html", 404),
        ("/mlops/reports/churn/2026-13-45/report.html", 400),
        ("/mlops/reports/churn/20260105/report.html", 400),
        ("/mlops/reports/churn/2026-02-30/report.html", 400),
        ("/mlops/reports/churn/%2Fetc%2Fpasswd/report.html", 404),
    ],
)
def test_malformed_paths_are_rejected_without_reading_anything(api, path, status):
    r = api.get(path, headers=_bearer())
    assert r.status_code == status, (path, r.text)
    assert (
        b"lake secret" not in r.content and b"outside secret" not in r.content and b"root:" not in r.content
    )
    if status == 400:
        assert r.json()["detail"]


def test_listing_shows_the_report_dates_newest_first(api):
    r = api.get("/mlops/reports/churn", headers=_bearer())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    body = r.text
    assert 'href="churn/2026-01-05/report.html"' in body and 'href="churn/2026-01-04/report.html"' in body
    assert body.index("2026-01-05") < body.index("2026-01-04")
    r = api.get("/mlops/reports/churn?format=json", headers=_bearer())
    dates = r.json()["dates"]  # the session lake may hold other tests' reports too
    assert dates == sorted(dates, reverse=True) and {"2026-01-05", "2026-01-04"} <= set(dates)
    assert api.get("/mlops/reports?format=json", headers=_bearer()).json()["datasets"] == ["churn"]
    r = api.get("/mlops/reports/nothing_here", headers=_bearer())
    assert r.status_code == 404 and "no data set 'nothing_here' is configured" in r.json()["detail"]
    assert api.get("/mlops/reports/churn", headers={}).status_code == 401


def test_listing_names_every_configured_data_set_reports_or_not(api, tmp_path, monkeypatch):
    """/mlops/reports lists the catalog's data sets (not the data sets that happen to have reports); a data
    set without reports has an empty listing that says which DAG writes them."""
    import shutil

    from mlops_bundle.config import DEFAULT_CONFIG_PATH
    from tests import sk_data

    folder = tmp_path / "datasets"
    folder.mkdir()
    shutil.copy(DEFAULT_CONFIG_PATH, folder / "churn.yaml")
    sk_data.write_config(folder, "diabetes", [{"name": "ridge", "family": "ridge"}], audit={})
    (folder / "broken.yaml").write_text("dataset: [", encoding="utf-8")  # no data set: not listed
    monkeypatch.setenv("MLOPS_CONFIG", str(folder))
    r = api.get("/mlops/reports?format=json", headers=_bearer())
    assert r.status_code == 200 and r.json() == {"datasets": ["churn", "diabetes"]}
    page = api.get("/mlops/reports", headers=_bearer()).text
    assert 'href="reports/churn"' in page and 'href="reports/diabetes"' in page
    r = api.get("/mlops/reports/diabetes?format=json", headers=_bearer())
    assert r.status_code == 200 and r.json()["dates"] == []
    assert "run diabetes__monitor" in api.get("/mlops/reports/diabetes", headers=_bearer()).text
    assert api.get("/mlops/reports/broken", headers=_bearer()).status_code == 404
    assert api.get("/mlops/reports?format=json").status_code == 401


def test_report_is_served_from_an_s3_root_through_the_airflow_connection(api, s3_bucket):
    client, bucket = s3_bucket
    client.put_object(
        Bucket=bucket, Key=f"lake/reports/churn/{DATE}/report.html", Body=b"<html>from s3</html>"
    )
    r = api.get(f"/mlops/reports/churn/{DATE}/report.html", headers=_bearer())
    assert r.status_code == 200, r.text
    assert r.content == b"<html>from s3</html>"
    r = api.get(f"/mlops/reports/churn/{DATE}/summary.json", headers=_bearer())
    # the answer says what is missing, not where the storage lives
    assert r.status_code == 404 and f"no summary.json for data set 'churn' on {DATE}" in r.json()["detail"]
    assert bucket not in r.text
    assert api.get("/mlops/reports/churn?format=json", headers=_bearer()).json()["dates"] == [DATE]


# --------------------------------------------------------------------------------------- extra links


@pytest.fixture(scope="module")
def finished_run(airflow_db):
    """A real DAG run in the metadata DB: the ingest DAG for a date without landing data (fails fast)."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    dag = DagBag(dag_folder=str(REPO / "dags" / "ingest.py")).get_dag("churn__ingest")
    dr = dag.test(run_conf={"date": "2025-12-31", "source": None})
    return {ti.task_id: ti for ti in dr.get_task_instances()}


def test_links_return_the_url_the_task_pushed(finished_run, api):
    from airflow.models.xcom import XComModel

    from mlops_airflow import links

    ti = finished_run["discover_files"]
    url = f"/mlops/reports/churn/{DATE}/report.html"
    XComModel.set(key="report_url", value=url, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id)

    assert links.DriftReportLink().get_link(None, ti_key=ti.key) == url
    assert links.MlflowModelLink().get_link(None, ti_key=ti.key) == ""  # nothing pushed: no button

    # what the UI asks the api-server for (global links are evaluated there, for every task)
    base = f"/api/v2/dags/{ti.dag_id}/dagRuns/{ti.run_id}/taskInstances"
    assert ti.dag_id == "churn__ingest"
    r = api.get(f"{base}/{ti.task_id}/links", headers=_bearer())
    assert r.status_code == 200, r.text
    assert r.json()["extra_links"] == {"Drift report": url, "MLflow model": None}
    other = finished_run["validate_and_stage"]
    r = api.get(f"{base}/{other.task_id}/links", headers=_bearer())
    assert r.json()["extra_links"] == {"Drift report": None, "MLflow model": None}


def test_links_ignore_values_a_browser_must_not_follow(finished_run):
    from airflow.models.xcom import XComModel

    from mlops_airflow import links

    ti = finished_run["discover_files"]
    for value in ("javascript:alert(1)", "file:///etc/passwd", "//evil.example.com/x", {"url": "/x"}):
        XComModel.set(key="mlflow_url", value=value, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id)
        assert links.MlflowModelLink().get_link(None, ti_key=ti.key) == "", value
    good = "http://127.0.0.1:5000/#/models/churn-classifier/versions/2"
    XComModel.set(key="mlflow_url", value=good, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id)
    assert links.MlflowModelLink().get_link(None, ti_key=ti.key) == good

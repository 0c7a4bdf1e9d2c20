"""The Airflow UI of the running stack in headless Chromium (Debian's ``chromium`` driven by Playwright).

What a person would do after the `chain` fixture's runs (ingest -> train with an approved promotion ->
monitor, batch date 2026-01-05): sign in through the login form, find the bundle's DAGs, read a DAG's
docs, open the finished train and monitor runs, and click the bundle's extra links on their task
instances: "MLflow model" must open the stack's MLflow UI on the model version that run registered
(signed in with the read-only MLflow account, and from there its source run), "Drift report" must show the Evidently report served by the plugin
under ``/mlops/reports/...``, rendered.

Every step saves a screenshot into ``test-artifacts/ui/`` (or ``$MLOPS_TEST_ARTIFACTS/ui``); a failing
step also saves the page HTML. The browser opens the UI at Airflow's ``[api] base_url`` (the address
Airflow builds its absolute links from, ``http://localhost:<port>`` here), so the report link, which is
absolute, reaches the same origin and carries the session cookie.

Needs Debian's ``chromium`` (``make browser``): skipped without it, failed in CI.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
from pathlib import Path

import pytest

from tests.browser import CHROMIUM_ARGS, artifacts_dir, chromium_path
from tests.stack.api import q, rest

pytestmark = [pytest.mark.stack, pytest.mark.browser]

# the deployment's audit DAG and every data set's DAGs (the stack's catalog: churn and diabetes)
KINDS = ("backfill", "ingest", "monitor", "registry_watch", "rollback", "train")
BUNDLE_DAGS = ("audit_verify", *(f"{ds}__{kind}" for ds in ("churn", "diabetes") for kind in KINDS))
# The machine running the tier is slow and busy (a whole Airflow + Celery stack on two cores): generous
# budgets for Playwright's auto-waiting; every wait still ends as soon as its condition holds.
ACTION_MS = 90_000
NAVIGATION_MS = 180_000


class Ui:
    """One signed-in browser page plus the screenshot bookkeeping of the steps."""

    def __init__(self, page, base_url: str, shots: Path):
        self.page = page
        self.base_url = base_url
        self.shots = shots
        self.n = 0
        self.saved: list[Path] = []

    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + path, wait_until="domcontentloaded")

    def shot(self, name: str, page=None) -> Path:
        self.n += 1
        path = self.shots / f"{self.n:02d}-{name}.png"
        (page or self.page).screenshot(path=str(path), full_page=True)
        self.saved.append(path)
        return path

    @contextlib.contextmanager
    def step(self, name: str, page=None):
        """Run a step; screenshot on success, screenshot + page HTML on failure (then re-raise)."""
        target = page or self.page
        try:
            yield target
        except BaseException:
            with contextlib.suppress(Exception):
                self.shot(f"{name}-FAILED", target)
                html = self.saved[-1].with_suffix(".html")
                html.write_text(target.content(), encoding="utf-8")
                print(
                    f"\nUI step {name!r} failed at {target.url}; screenshot + HTML: {html.with_suffix('')}.*"
                )
            raise
        self.shot(name, target)


def _dag_link(page, dag_id: str):
    """The DAG's own link in the DAG list (a tag of the same name is a link too, to a filtered list)."""
    return page.get_by_role("link", name=dag_id, exact=True).and_(page.locator(f'a[href$="/dags/{dag_id}"]'))


@pytest.fixture(scope="module")
def browser():
    binary = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def ui(browser, stack):
    """A page signed in as admin through the UI's login form (the first steps' screenshots)."""
    from playwright.sync_api import expect

    shots = artifacts_dir("ui")
    for old in [*shots.glob("*.png"), *shots.glob("*.html")]:
        old.unlink()
    print(f"\nUI screenshots go to {shots}")
    base_url = stack.env["AIRFLOW__API__BASE_URL"].rstrip("/")
    # the "MLflow model" link opens MLflow's UI, which asks for HTTP basic auth: the person signs in with the
    # stack's read-only MLflow account (the browser sends it to MLflow's origin only)
    reader = stack.mlflow_accounts["reader"]
    mlflow_login = {"username": reader.username, "password": reader.password, "origin": stack.mlflow_url}
    context = browser.new_context(
        viewport={"width": 1400, "height": 900}, locale="en-US", http_credentials=mlflow_login
    )
    context.set_default_timeout(ACTION_MS)
    context.set_default_navigation_timeout(NAVIGATION_MS)
    expect.set_options(timeout=ACTION_MS)
    page = context.new_page()
    session = Ui(page, base_url, shots)
    t0 = time.monotonic()
    with session.step("login-form"):
        session.goto("/dags")  # not signed in: the UI sends the browser to the auth manager's login page
        page.wait_for_url(re.compile(r"/auth/login"))
        expect(page.get_by_role("heading", name="Sign into Airflow")).to_be_visible()
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill("admin")
    with session.step("dag-list"):
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r"/dags/?$"))
        expect(_dag_link(page, "churn__train")).to_be_visible()
    session.login_seconds = round(time.monotonic() - t0, 1)
    try:
        yield session
    finally:
        context.close()
        print(f"\nUI screenshots ({len(session.saved)}) in {shots}")


def test_login_lands_on_the_dag_list_with_the_bundles_dags(ui):
    from playwright.sync_api import expect

    page = ui.page
    assert re.search(r"/dags/?$", page.url), page.url
    for dag_id in BUNDLE_DAGS:
        expect(_dag_link(page, dag_id)).to_be_visible()
    # signed in as admin: the UI keeps the JWT the login form obtained in its _token cookie
    tokens = [c["value"] for c in page.context.cookies() if c["name"] == "_token"]
    assert tokens, "no _token session cookie after signing in"
    payload = tokens[0].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert (claims["sub"], claims["role"]) == ("admin", "ADMIN"), claims
    print(f"\nlogin through the form and DAG list: {ui.login_seconds}s")


@pytest.mark.parametrize(
    ("dag_id", "title", "text"),
    [
        ("churn__train", "Train: validated data -> candidate models -> gate vs champion -> promotion", "register_best"),
        ("churn__monitor", "Monitor: score with the champion -> Evidently drift report -> guarded retrain trigger",
         "decide_retrain"),
    ],
)  # fmt: skip
def test_dag_page_shows_its_docs(ui, dag_id, title, text):
    from playwright.sync_api import expect

    page = ui.page
    with ui.step(f"{dag_id}-dag-page"):
        ui.goto(f"/dags/{dag_id}")
        expect(page.get_by_role("button", name="Dag Docs")).to_be_visible()
    with ui.step(f"{dag_id}-dag-docs"):
        page.get_by_role("button", name="Dag Docs").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("heading", name="Dag Documentation")).to_be_visible()
        expect(dialog.get_by_role("heading", name=title)).to_be_visible()
        expect(dialog.get_by_text(text, exact=True).first).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)


def _xcom(stack, chain, kind: str, task_id: str, key: str):
    """An XCom of the chain's run of its data set's DAG of `kind`."""
    run_id = chain.runs[kind]["dag_run_id"]
    path = (
        f"/api/v2/dags/{chain.dag_id(kind)}/dagRuns/{q(run_id)}/taskInstances/{task_id}/xcomEntries/{q(key)}"
    )
    return rest(stack.api_url, chain.token, "GET", path)["value"]  # JSON-native as the task returned it


def _open_task_details(ui, dag_id: str, run_id: str, task_id: str, log_line: re.Pattern) -> None:
    """Open the finished run, click its task instance (whose page opens on the task's log: wait for
    `log_line`, a line the task itself logged on its Celery worker), then click the
    Details tab, where the UI lists the extra links."""
    from playwright.sync_api import expect

    page = ui.page
    # the run's task-instance table links each task to its instance in this run (the grid's task names
    # link to the task across runs)
    ti_link = page.get_by_role("link", name=task_id, exact=True).and_(
        page.locator(f'a[href$="/runs/{run_id}/tasks/{task_id}"]')
    )
    with ui.step(f"{dag_id}-run"):
        ui.goto(f"/dags/{dag_id}/runs/{q(run_id)}")
        expect(page.get_by_role("heading", name=run_id)).to_be_visible()
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        expect(ti_link).to_be_visible()
    with ui.step(f"{dag_id}-{task_id}-task"):
        ti_link.click()
        page.wait_for_url(re.compile(rf"/runs/[^/]+/tasks/{task_id}$"))
        expect(page.get_by_role("heading", name=task_id)).to_be_visible()
        expect(page.get_by_text(log_line).first).to_be_visible()
    with ui.step(f"{dag_id}-{task_id}-details"):
        page.get_by_role("link", name="Details", exact=True).click()
        page.wait_for_url(re.compile(rf"/tasks/{task_id}/details$"))
        expect(page.get_by_role("heading", name="Extra Links")).to_be_visible()


def test_train_run_mlflow_link_opens_the_registered_version_and_its_run(ui, stack, chain):
    from mlflow import MlflowClient
    from playwright.sync_api import expect

    from tests.stack.api import bundle_config

    cfg = bundle_config(stack, chain.dataset)
    run_id = chain.runs["train"]["dag_run_id"]
    best = _xcom(stack, chain, "train", "register_best", "return_value")
    version = str(best["version"])
    registered = MlflowClient(stack.mlflow_url).get_model_version(cfg.model_name, version)
    assert registered.run_id == best["run_id"]

    page = ui.page
    model_line = re.compile(rf"{re.escape(cfg.model_name)} version {version}\b")  # registered / reused
    _open_task_details(ui, chain.dag_id("train"), run_id, "register_best", model_line)
    link = page.get_by_role("link", name="MLflow model", exact=True)
    expect(link).to_be_visible()
    expected = f"{stack.mlflow_url}/#/models/{cfg.model_name}/versions/{version}"
    assert link.get_attribute("href") == expected

    # another origin: the UI opens it in a new tab
    with page.context.expect_page(timeout=ACTION_MS) as new_tab:
        link.click()
    mlflow_page = new_tab.value
    try:
        with ui.step("mlflow-model-version", mlflow_page):
            mlflow_page.wait_for_load_state("domcontentloaded")
            assert mlflow_page.url == expected
            expect(mlflow_page.get_by_text(f"Version {version}", exact=True).first).to_be_visible()
            # the version's lineage tags name this Airflow run
            expect(mlflow_page.get_by_text(run_id, exact=True).first).to_be_visible()
            source = mlflow_page.locator(f'a[href*="/runs/{best["run_id"]}"]').first
            expect(source).to_be_visible()
        with ui.step("mlflow-source-run", mlflow_page):
            source.click()
            mlflow_page.wait_for_url(re.compile(rf"/runs/{best['run_id']}"))
            assert mlflow_page.url.startswith(stack.mlflow_url + "/")
            expect(mlflow_page.get_by_text(best["run_id"]).first).to_be_visible()
    finally:
        mlflow_page.close()


def test_monitor_run_drift_report_link_shows_the_rendered_report(ui, browser, stack, chain):
    from playwright.sync_api import expect

    run_id = chain.runs["monitor"]["dag_run_id"]
    summary = _xcom(stack, chain, "monitor", "drift_report", "return_value")
    page = ui.page
    _open_task_details(
        ui,
        chain.dag_id("monitor"),
        run_id,
        "drift_report",
        re.compile(f"drift report for {chain.batch_date}:"),
    )
    link = page.get_by_role("link", name="Drift report", exact=True)
    expect(link).to_be_visible()
    report_path = f"/mlops/reports/{chain.dataset}/{chain.batch_date}/report.html"
    assert link.get_attribute("href") == ui.base_url + report_path

    # same origin: opened in the same tab, with the UI's session cookie
    with ui.step("drift-report"):
        with page.expect_response(lambda r: r.url.endswith(report_path)) as response:
            link.click()
        assert response.value.status == 200, response.value.status
        page.wait_for_url(ui.base_url + report_path)
        # Evidently's report is a JavaScript app: these exist only once it rendered, and they must say
        # what the monitor run concluded
        expect(page.get_by_text("Data Drift Summary", exact=True).first).to_be_visible()
        verdict = "detected" if summary["dataset_drift"] else "NOT detected"
        expect(page.get_by_text(re.compile(rf"^Dataset Drift is {verdict}\.")).first).to_be_visible()
        n_drifted = len(summary["drifted_columns"])
        expect(page.get_by_text(re.compile(rf"\({n_drifted} out of \d+\)")).first).to_be_visible()

    # the report is not public: the same URL without the UI's session cookie is refused
    anonymous = browser.new_context()
    try:
        status = anonymous.request.get(ui.base_url + report_path, timeout=ACTION_MS).status
    finally:
        anonymous.close()
    # not authenticated at all: 401 (as test_api_auth.py checks for tokens), not 403 or a login redirect
    assert status == 401, f"{report_path} without a session answered {status}"

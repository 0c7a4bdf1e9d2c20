"""REST helpers of the stack tests: JWT calls on loopback (proxies bypassed), waiting for runs, MLflow calls
as one of the stack's MLflow accounts."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from tests.polling import wait_for

TERMINAL = {"success", "failed"}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def rest(base_url: str, token: str | None, method: str, path: str, body=None, **params):
    """One REST call with a bearer JWT; raises urllib.error.HTTPError on 4xx/5xx."""
    url = base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with _OPENER.open(req, timeout=90) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def status_of(base_url: str, method: str, path: str, headers: dict[str, str] | None = None, body=None) -> int:
    """The HTTP status of one request (no raising)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base_url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with _OPENER.open(req, timeout=90) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def mlflow_call(stack, who, method: str, path: str, body=None, **params) -> tuple[int, dict]:
    """(status, JSON body) of one call to the stack's MLflow server, never raising. `who`: one of the stack's
    MLflow accounts ("admin", "service", "reader"), a (username, password) pair, or None (no credentials);
    sent with HTTP basic auth as MLflow's client sends it (scripts/mlflow_accounts.py's ``Server``)."""
    from mlflow_accounts import Account, Server  # scripts/ is on sys.path (tests/stack/conftest.py)

    if isinstance(who, tuple):
        who = Account(*who)
    elif who is not None:
        who = stack.mlflow_accounts[who]
    return Server(stack.mlflow_url, who, timeout=90).call(method, path, body, **params)


@contextlib.contextmanager
def mlflow_client_as(stack, role: str = "reader") -> Iterator[None]:
    """MLflow's client in this process signs in to the stack's server as `role` (it reads the credentials
    from the environment at every request). The tests read the registry with the read-only account; only
    the bundle's tasks write, with the service account."""
    account = stack.mlflow_accounts[role]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", account.username)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", account.password)
        yield


@contextlib.contextmanager
def provenance_key_of(stack) -> Iterator[None]:
    """Library loads in this process check model versions with the stack's provenance key (the password of
    its connection ``mlflow.provenance_conn_id``), the key its tasks sign the versions they register with."""
    conn_id = stack.env.get("MLOPS_MLFLOW__PROVENANCE_CONN_ID")
    if not conn_id:
        yield
        return
    key = json.loads(stack.env[f"AIRFLOW_CONN_{conn_id.upper()}"])["password"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_PROVENANCE_KEY", key)
        yield


def token_for(base_url: str, username: str, password: str) -> str:
    return rest(base_url, None, "POST", "/auth/token", {"username": username, "password": password})[
        "access_token"
    ]


def wait_run(stack, token: str, dag_id: str, run_id: str, timeout: float) -> dict:
    return wait_for(
        lambda: rest(stack.api_url, token, "GET", f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}"),
        lambda run: run["state"] in TERMINAL,
        timeout=timeout,
        describe=lambda run: f"{dag_id} {run_id} still {run['state']} (logs {stack.log_dir})",
        alive=stack.check_alive,
    )


def bundle_config(stack, dataset: str = "churn"):
    """The config of one data set of the stack's catalog (MLOPS_CONFIG: config/datasets/), as its
    Airflow processes see it (MLOPS_* of the stack's environment)."""
    from mlops_bundle.catalog import dataset_config

    return dataset_config(dataset, environ=stack.env)


def land_batch(stack, date: str, rows: int = 2000, drift: float = 0.0) -> tuple[str, bytes]:
    """Put one day's generated churn batch into the stack's S3 landing prefix, where churn__ingest looks
    for it; (object key, the CSV bytes written)."""
    from mlops_bundle.sample import generate_batch

    cfg = bundle_config(stack, "churn")
    key = f"lake/{cfg.storage.landing_prefix}/{cfg.dataset.name}/{date}/batch.csv"
    body = generate_batch(date, rows=rows, drift=drift).to_csv(index=False).encode()
    stack.s3().put_object(Bucket=stack.bucket, Key=key, Body=body)
    return key, body


def task_instances(stack, token: str, dag_id: str, run_id: str) -> list[dict]:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances"
    return rest(stack.api_url, token, "GET", path, limit=100)["task_instances"]


def wait_new_run(stack, token: str, dag_id: str, since, run_type: str, timeout: float) -> dict:
    """The first run of `dag_id` of `run_type` queued at or after `since` (a UTC datetime)."""
    import datetime as dt

    def found() -> list[dict]:
        runs = rest(stack.api_url, token, "GET", f"/api/v2/dags/{dag_id}/dagRuns", limit=50)["dag_runs"]
        return [
            r
            for r in runs
            if r["run_type"] == run_type
            and dt.datetime.fromisoformat(r["queued_at"].replace("Z", "+00:00")) >= since
        ]

    runs = wait_for(
        found,
        bool,
        timeout=timeout,
        describe=lambda _: f"no {run_type} {dag_id} run queued since {since}",
        alive=stack.check_alive,
    )
    return runs[0]


def wait_task_state(stack, token: str, dag_id: str, run_id: str, task_id: str, state: str, timeout: float):
    """Wait until task `task_id` (map index -1) of the run is in `state`; fail early if the run ends."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances/{task_id}"

    def fetch() -> dict:
        try:
            ti = rest(stack.api_url, token, "GET", path)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: not created yet
                raise
            ti = {"state": None}
        if ti["state"] != state:
            run = rest(stack.api_url, token, "GET", f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}")
            if run["state"] in TERMINAL:
                raise AssertionError(f"{dag_id} {run_id} ended {run['state']} before {task_id} was {state}")
        return ti

    return wait_for(
        fetch,
        lambda ti: ti["state"] == state,
        timeout=timeout,
        describe=lambda ti: f"{dag_id}.{task_id} still {ti['state']} (logs {stack.log_dir})",
        alive=stack.check_alive,
    )

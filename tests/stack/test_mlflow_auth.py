"""Only the gate moves the champion: the stack's MLflow server runs behind MLflow's basic-auth app
(config/mlflow-auth.ini: ``default_permission = NO_PERMISSIONS``), with the accounts that
scripts/mlflow_accounts.py created at start-up, as compose's mlflow-init does.

What someone who reaches the server sees, tried as they would, over MLflow's REST API:

* without an account (or with a wrong password) every call is 401, reads and writes alike; only
  ``/health`` answers, so the tasks' reachability check (``tracking.check_reachable``) still works;
* the bundle's service account writes. The `chain` fixture's ingest -> train -> approved promotion ran with
  it (the tasks get it from the Airflow connection ``mlops_mlflow``: plugins/mlops_airflow/mlflow_auth.py,
  also called here in this process); here it also creates an experiment, a registered model, a version and
  an alias of its own, and it holds MANAGE on the bundle's experiments and registered model;
* the read-only account reads the bundle's registered model, its versions and the champion, but moving or
  deleting an alias, registering a version, tagging or deleting the model get 403 and the registry is as
  it was.
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.stack.api import mlflow_call

pytestmark = pytest.mark.stack

ALIAS = "/api/2.0/mlflow/registered-models/alias"
UNAUTHENTICATED = (401,)
DENIED = (403,)


def _cfg(stack):
    """The config of the data set the `chain` fixture drives (churn)."""
    from tests.stack.api import bundle_config

    return bundle_config(stack, "churn")


def _catalog(stack) -> list:
    """Every data set of the stack's catalog (MLOPS_CONFIG: config/datasets/, churn and diabetes)."""
    from mlops_bundle.catalog import configs

    cfgs = configs(environ=stack.env)
    assert [c.dataset.name for c in cfgs] == ["churn", "diabetes"], [c.dataset.name for c in cfgs]
    return cfgs


def _registry(stack, name: str) -> dict:
    """The registered model (aliases, ...) and its versions as the admin sees them."""
    status, model = mlflow_call(stack, "admin", "GET", "/api/2.0/mlflow/registered-models/get", name=name)
    assert status == 200, model
    status, found = mlflow_call(
        stack, "admin", "GET", "/api/2.0/mlflow/model-versions/search", filter=f"name = '{name}'"
    )
    assert status == 200, found
    versions = sorted(
        (
            v["version"],
            v.get("current_stage"),
            tuple(sorted((t["key"], t["value"]) for t in v.get("tags", []))),
        )
        for v in found.get("model_versions", [])
    )
    model = model["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    tags = {t["key"]: t["value"] for t in model.get("tags", [])}
    return {"aliases": aliases, "versions": versions, "tags": tags, "description": model.get("description")}


def test_without_an_account_nothing_but_health_answers(stack, chain):
    cfg = _cfg(stack)
    champion = _registry(stack, cfg.model_name)["aliases"]["champion"]
    name = f"auth-anon-{uuid.uuid4().hex[:8]}"
    attempts = {
        "create an experiment": ("POST", "/api/2.0/mlflow/experiments/create", {"name": name}),
        "create a registered model": ("POST", "/api/2.0/mlflow/registered-models/create", {"name": name}),
        "set the champion alias": (
            "POST",
            ALIAS,
            {"name": cfg.model_name, "alias": "champion", "version": "1"},
        ),
        "delete the champion alias": ("DELETE", ALIAS, {"name": cfg.model_name, "alias": "champion"}),
        "read the registered model": (
            "GET",
            f"/api/2.0/mlflow/registered-models/get?name={cfg.model_name}",
            None,
        ),
        "search experiments": ("POST", "/api/2.0/mlflow/experiments/search", {"max_results": 10}),
    }
    service = stack.mlflow_accounts["service"]
    for who, label in (
        (None, "no account"),
        ((service.username, service.password + "x"), "a wrong password"),
    ):
        for what, (method, path, body) in attempts.items():
            status, data = mlflow_call(stack, who, method, path, body)
            assert status in UNAUTHENTICATED, f"with {label}, '{what}' answered {status}: {data}"
    status, _ = mlflow_call(stack, None, "GET", "/health")
    assert status == 200, "/health must stay unauthenticated: the tasks' reachability check uses it"
    after = _registry(stack, cfg.model_name)
    assert after["aliases"]["champion"] == champion, after
    status, _ = mlflow_call(
        stack, "admin", "GET", "/api/2.0/mlflow/experiments/get-by-name", experiment_name=name
    )
    assert status == 404, "an anonymous call created an experiment"


def test_the_service_account_writes_and_holds_the_bundles_resources(stack, chain):
    cfg = _cfg(stack)
    service = stack.mlflow_accounts["service"].username
    # the chain's train run registered and promoted through it: the champion exists
    champion = _registry(stack, cfg.model_name)["aliases"]["champion"]
    status, data = mlflow_call(
        stack, "service", "GET", "/api/2.0/mlflow/model-versions/get", name=cfg.model_name, version=champion
    )
    assert status == 200 and data["model_version"]["version"] == champion, data

    # it owns every data set's experiments and registered model (it created them at start-up, diabetes'
    # too although nothing trained it here)
    owned = []
    for c in _catalog(stack):
        owned.append(("registered_model", c.model_name))
        owned += [
            ("experiment", _experiment_id(stack, n))
            for n in (c.experiment_name, c.monitoring_experiment_name)
        ]
    assert len({rid for _, rid in owned}) == 6, owned
    for rtype, rid in owned:
        status, perm = mlflow_call(
            stack,
            "admin",
            "GET",
            "/api/3.0/mlflow/users/permissions/get",
            username=service,
            resource_type=rtype,
            resource_id=rid,
        )
        assert status == 200 and perm["permission"] == "MANAGE", (rtype, rid, perm)

    # and it writes what it creates: an experiment, a registered model, a version, an alias
    name = f"auth-service-{uuid.uuid4().hex[:8]}"
    status, exp = mlflow_call(stack, "service", "POST", "/api/2.0/mlflow/experiments/create", {"name": name})
    assert status == 200 and exp["experiment_id"], exp
    status, data = mlflow_call(
        stack, "service", "POST", "/api/2.0/mlflow/registered-models/create", {"name": name}
    )
    assert status == 200, data
    # a copy of the champion (its source: a registered version this account may read)
    body = {"name": name, "source": f"models:/{cfg.model_name}/{champion}"}
    status, created = mlflow_call(stack, "service", "POST", "/api/2.0/mlflow/model-versions/create", body)
    assert status == 200, created
    version = created["model_version"]["version"]
    status, data = mlflow_call(
        stack, "service", "POST", ALIAS, {"name": name, "alias": "champion", "version": version}
    )
    assert status == 200, data
    assert _registry(stack, name)["aliases"] == {"champion": version}


def _experiment_id(stack, name: str) -> str:
    status, data = mlflow_call(
        stack, "admin", "GET", "/api/2.0/mlflow/experiments/get-by-name", experiment_name=name
    )
    assert status == 200, (name, data)
    return data["experiment"]["experiment_id"]


def test_the_read_only_account_reads_but_cannot_move_the_champion(stack, chain):
    import mlflow
    from mlflow import MlflowClient

    from mlops_bundle import tracking

    cfg = _cfg(stack)
    name = cfg.model_name
    before = _registry(stack, name)
    champion = before["aliases"]["champion"]

    # it reads: the registered model, its versions, the champion, the runs, and loads the model
    status, data = mlflow_call(stack, "reader", "GET", "/api/2.0/mlflow/registered-models/get", name=name)
    assert status == 200 and data["registered_model"]["name"] == name, data
    status, data = mlflow_call(
        stack, "reader", "GET", "/api/2.0/mlflow/model-versions/search", filter=f"name = '{name}'"
    )
    assert status == 200 and {v["version"] for v in data["model_versions"]} == {
        v for v, _, _ in before["versions"]
    }
    status, data = mlflow_call(stack, "reader", "GET", f"{ALIAS}", name=name, alias="champion")
    assert status == 200 and data["model_version"]["version"] == champion, data
    client = MlflowClient(stack.mlflow_url, stack.mlflow_url)  # as the reader (the `stack` fixture)
    assert tracking.alias_version(client, name, "champion") == champion
    assert client.get_run(client.get_model_version(name, champion).run_id).info.status == "FINISHED"
    mlflow.set_tracking_uri(stack.mlflow_url)
    mlflow.set_registry_uri(stack.mlflow_url)  # the autouse fixture of tests/conftest.py resets both
    assert hasattr(mlflow.sklearn.load_model(f"models:/{name}@champion"), "predict_proba")

    # and every other data set's registered model (READ on all of them), but writes none of them
    for c in _catalog(stack):
        status, data = mlflow_call(
            stack, "reader", "GET", "/api/2.0/mlflow/registered-models/get", name=c.model_name
        )
        assert status == 200 and data["registered_model"]["name"] == c.model_name, (c.model_name, data)
        body = {"name": c.model_name, "key": "reader-was-here", "value": "1"}
        status, data = mlflow_call(stack, "reader", "POST", "/api/2.0/mlflow/registered-models/set-tag", body)
        assert status in DENIED, (c.model_name, status, data)

    # it cannot write: every attempt is 403 and the registry is unchanged
    other = next((v for v, _, _ in before["versions"] if v != champion), champion)
    status, mv = mlflow_call(
        stack, "reader", "GET", "/api/2.0/mlflow/model-versions/get", name=name, version=champion
    )
    mv = mv["model_version"]
    attempts = {
        "move the champion": ("POST", ALIAS, {"name": name, "alias": "champion", "version": other}),
        "set a new alias": ("POST", ALIAS, {"name": name, "alias": "reader-was-here", "version": champion}),
        "delete the champion alias": ("DELETE", ALIAS, {"name": name, "alias": "champion"}),
        "register a version": (
            "POST",
            "/api/2.0/mlflow/model-versions/create",
            {"name": name, "source": f"models:/{name}/{champion}"},
        ),
        "tag a version": (
            "POST",
            "/api/2.0/mlflow/model-versions/set-tag",
            {"name": name, "version": champion, "key": "approved", "value": "yes"},
        ),
        "tag the model": (
            "POST",
            "/api/2.0/mlflow/registered-models/set-tag",
            {"name": name, "key": "k", "value": "v"},
        ),
        "delete the model": ("DELETE", "/api/2.0/mlflow/registered-models/delete", {"name": name}),
        "log to the champion's run": (
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            {"run_id": mv["run_id"], "key": "roc_auc", "value": 1.0, "timestamp": 0, "step": 0},
        ),
        "create a run in the bundle's experiment": (
            "POST",
            "/api/2.0/mlflow/runs/create",
            {"experiment_id": _experiment_id(stack, cfg.experiment_name)},
        ),
        "create the bundle's model again": (
            "POST",
            "/api/2.0/mlflow/registered-models/create",
            {"name": name},
        ),
    }
    for what, (method, path, body) in attempts.items():
        status, data = mlflow_call(stack, "reader", method, path, body)
        # the model exists already: creating it again is refused as such (the name cannot be taken)
        expected = (400,) if what == "create the bundle's model again" else DENIED
        assert status in expected, f"the read-only account could '{what}': {status} {data}"
    after = _registry(stack, name)
    assert after == before, f"the registry changed: {before} -> {after}"
    assert after["aliases"]["champion"] == champion


def test_the_task_side_takes_the_service_account_from_the_airflow_connection(stack, monkeypatch):
    """What the audit listener does at the start of every task: read connection `mlflow.conn_id` and put the
    login and password where MLflow's client looks for them; with them this process writes."""
    import airflow  # noqa: F401 - puts the plugins folder (mlops_airflow) on sys.path
    from mlflow import MlflowClient

    from mlops_airflow.mlflow_auth import PASSWORD_ENV, USERNAME_ENV, share_mlflow_credentials

    cfg = _cfg(stack)
    assert cfg.mlflow.conn_id, "config/stack.env must name the MLflow connection (MLOPS_MLFLOW__CONN_ID)"
    conn_env = f"AIRFLOW_CONN_{cfg.mlflow.conn_id.upper()}"
    monkeypatch.setenv(conn_env, stack.env[conn_env])
    for key in (USERNAME_ENV, PASSWORD_ENV):  # restored (to the reader) after the test
        monkeypatch.setenv(key, "")
    assert share_mlflow_credentials(cfg) is True
    service = stack.mlflow_accounts["service"]
    assert (os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV]) == (service.username, service.password)
    exp_id = MlflowClient(stack.mlflow_url, stack.mlflow_url).create_experiment(
        f"auth-task-{uuid.uuid4().hex[:8]}"
    )
    assert exp_id

    monkeypatch.delenv(conn_env)
    with pytest.raises(LookupError, match=cfg.mlflow.conn_id):
        share_mlflow_credentials(cfg)
    assert (
        share_mlflow_credentials(
            cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"conn_id": ""})})
        )
        is False
    )


def test_adding_a_reader_for_a_person(stack, chain):
    """The README's way to add a person: scripts/mlflow_accounts.py --add-reader, as the admin. The new
    account reads the bundle's model but cannot move its champion; the service account cannot be turned
    into a reader that way (its grants would be reset)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    name = _cfg(stack).model_name
    admin = stack.mlflow_accounts["admin"]
    user, password = f"person-{uuid.uuid4().hex[:6]}", "a-long-enough-password"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack.mlflow_url,
        "MLFLOW_ADMIN_USERNAME": admin.username,
        "MLFLOW_ADMIN_PASSWORD": admin.password,
        "MLFLOW_NEW_READER_PASSWORD": password,
    }
    script = [sys.executable, str(REPO / "scripts" / "mlflow_accounts.py"), "--add-reader"]
    done = subprocess.run([*script, user], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    status, data = mlflow_call(
        stack, (user, password), "GET", "/api/2.0/mlflow/registered-models/get", name=name
    )
    assert status == 200 and data["registered_model"]["name"] == name, data
    champion = {a["alias"]: a["version"] for a in data["registered_model"]["aliases"]}["champion"]
    body = {"name": name, "alias": "champion", "version": champion}
    status, _ = mlflow_call(stack, (user, password), "POST", ALIAS, body)
    assert status == 403
    service = stack.mlflow_accounts["service"].username
    refused = subprocess.run([*script, service], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "not only READ" in refused.stderr, refused.stderr
    status, _ = mlflow_call(stack, "service", "GET", "/api/2.0/mlflow/registered-models/get", name=name)
    assert status == 200


def test_the_credential_cache_never_remembers_a_refusal_and_forgets_a_changed_password(stack, chain):
    """config/mlflow-auth.ini turns on MLflow's cache of successful password checks (auth_cache_ttl_seconds:
    without it every request pays a scrypt check; benchmarks/README.md). What an attacker could hope from
    a cache, tried on the stack's server: a wrong password is refused every time (failures are not
    cached), and once the admin changes a password or deletes the account, the old credential is refused
    at once (the server process that made the change drops its entry; the stack runs one, compose's other
    processes forget it within the 10 s TTL)."""
    name = _cfg(stack).model_name
    user, password = f"cache-{uuid.uuid4().hex[:6]}", "first-long-enough-password"
    read = ("GET", "/api/2.0/mlflow/registered-models/get")
    status, body = mlflow_call(
        stack, "admin", "POST", "/api/2.0/mlflow/users/create", {"username": user, "password": password}
    )
    assert status == 200, body
    for _ in range(2):  # authenticated (then cached): 403, the account holds no grant; never 401
        assert mlflow_call(stack, (user, password), *read, name=name)[0] in DENIED
    for _ in range(3):  # a wrong password right after a cached success: refused each time
        assert mlflow_call(stack, (user, password + "x"), *read, name=name)[0] in UNAUTHENTICATED
    new = "second-long-enough-password"
    status, body = mlflow_call(
        stack, "admin", "PATCH", "/api/2.0/mlflow/users/update-password", {"username": user, "password": new}
    )
    assert status == 200, body
    assert mlflow_call(stack, (user, password), *read, name=name)[0] in UNAUTHENTICATED, "old password cached"
    assert mlflow_call(stack, (user, new), *read, name=name)[0] in DENIED
    status, body = mlflow_call(stack, "admin", "DELETE", "/api/2.0/mlflow/users/delete", {"username": user})
    assert status == 200, body
    assert mlflow_call(stack, (user, new), *read, name=name)[0] in UNAUTHENTICATED, "deleted account cached"

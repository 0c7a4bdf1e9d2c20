"""MLflow's accounts for the bundle, on a tracking server behind its basic-auth app: the init step of the
process stack (scripts/stack.py, at every start) and of docker-compose.yaml (the one-shot ``mlflow-init``).

  python scripts/mlflow_accounts.py [--bundle-config]

reads the server's URL and the accounts from the environment (``MLFLOW_TRACKING_URI``,
``MLFLOW_{ADMIN,SERVICE,READER}_{USERNAME,PASSWORD}``, as in .env.example); ``--bundle-config`` also
pre-creates the experiments and registered model of the bundle's config (``MLOPS_CONFIG``).

The accounts (config/mlflow-auth.ini: ``default_permission = NO_PERMISSIONS``, so an account sees only
what it holds):

* admin: created by the server itself at its first start (``MLFLOW_AUTH_ADMIN_*``); administers accounts;
* service: the bundle's (Airflow's connection ``mlflow.conn_id``). It creates the bundle's experiments and
  registered model and so holds MANAGE on them: only it logs runs, registers versions and moves aliases;
* reader: people (MLflow UI, clients): READ on every experiment and registered model, nothing else.

The bundle's experiments and model are created here as the service account, before any task runs: with
workspaces off, MLflow lets every account create experiments and registered models (the creator holds
MANAGE), so whoever came first could otherwise take the registered model's name and its ``champion``.

Idempotent (compose runs it at every ``up``): existing accounts get the configured password again and lose
admin rights, the reader's grants are reset to exactly the two READ grants, and the service account gets
MANAGE on the bundle's resources if it lacks it. Stdlib only (it runs before and beside everything else).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

READER_GRANTS = (("experiment", "*", "READ"), ("registered_model", "*", "READ"))
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the server is on our network


class ProvisionError(RuntimeError):
    """A call the init step needs failed; the message names the account or resource and what to do."""


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    setting: str = ""  # where it comes from (e.g. MLFLOW_SERVICE_PASSWORD), named in errors

    def __repr__(self) -> str:  # never print a password
        return f"Account({self.username!r})"


class Server:
    """JSON calls to one MLflow server as one account (HTTP basic auth), or none (``account=None``)."""

    def __init__(self, url: str, account: Account | None, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.account = account
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None, **params: str) -> tuple[int, dict]:
        """(status, JSON body) of one call; never raises on an HTTP error status."""
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, None if body is None else json.dumps(body).encode(), method=method)
        req.add_header("Content-Type", "application/json")
        if self.account is not None:  # None: no credentials (what an anonymous client gets)
            creds = f"{self.account.username}:{self.account.password}".encode()
            req.add_header("Authorization", "Basic " + base64.b64encode(creds).decode())
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"message": raw.decode(errors="replace")[:300]}
        return status, data if isinstance(data, dict) else {"value": data}

    def ok(self, method: str, path: str, body: dict | None = None, *, what: str, allow=(), **params) -> dict:
        """The JSON body of a 200, {} for an error code in `allow`; else ProvisionError naming `what`."""
        status, data = self.call(method, path, body, **params)
        if status == 200:
            return data
        if data.get("error_code") in allow:
            return {}
        hint = {
            401: f"the {self.account.username!r} login was refused: check {self.account.setting or 'its password'}",
            403: f"{self.account.username!r} may not do this",
        }.get(status, "")
        raise ProvisionError(
            f"{what}: MLflow answered {status} {data.get('error_code', '')} "
            f"{data.get('message', '')[:200]}{'; ' + hint if hint else ''}"
        )


def ensure_user(admin: Server, account: Account) -> None:
    """Create `account` (or reset its password to the configured one) as a non-admin user."""
    what = f"creating MLflow user {account.username!r}"
    body = {"username": account.username, "password": account.password}
    status, data = admin.call("POST", "/api/2.0/mlflow/users/create", body)
    if status != 200 and data.get("error_code") == "RESOURCE_ALREADY_EXISTS":
        what = f"setting the password of MLflow user {account.username!r}"
        status, data = admin.call("PATCH", "/api/2.0/mlflow/users/update-password", body)
    if status != 200:
        hint = f" (check {account.setting})" if account.setting else ""
        raise ProvisionError(f"{what}: {status} {data.get('message', data)}{hint}")
    admin.ok(
        "PATCH",
        "/api/2.0/mlflow/users/update-admin",
        {"username": account.username, "is_admin": False},
        what=f"making sure {account.username!r} is not an MLflow admin",
    )


def grants_of(admin: Server, username: str) -> list[tuple[str, str, str]]:
    """The user's own grants as (resource_type, resource_pattern, permission)."""
    data = admin.ok(
        "GET",
        "/api/3.0/mlflow/users/permissions/list",
        what=f"listing {username!r}'s grants",
        username=username,
    )
    return [(p["resource_type"], p["resource_pattern"], p["permission"]) for p in data.get("permissions", [])]


def set_grants(admin: Server, username: str, wanted: Iterable[tuple[str, str, str]]) -> None:
    """Make the user's own grants exactly `wanted` (revoke the others, grant what is missing)."""
    wanted = set(wanted)
    current = set(grants_of(admin, username))
    for rtype, pattern, perm in sorted(current - wanted):
        admin.ok(
            "POST",
            "/api/3.0/mlflow/users/permissions/revoke",
            {"username": username, "resource_type": rtype, "resource_id": pattern},
            what=f"revoking {perm} on {rtype} {pattern!r} from {username!r}",
            allow=("RESOURCE_DOES_NOT_EXIST",),
        )
    for rtype, pattern, perm in sorted(wanted - current):
        admin.ok(
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            {"username": username, "resource_type": rtype, "resource_id": pattern, "permission": perm},
            what=f"granting {perm} on {rtype} {pattern!r} to {username!r}",
        )


def ensure_manage(admin: Server, username: str, rtype: str, resource_id: str) -> None:
    """`username` holds MANAGE on one resource (it does when it created it; else it is granted)."""
    data = admin.ok(
        "GET",
        "/api/3.0/mlflow/users/permissions/get",
        what=f"reading {username!r}'s permission on {rtype} {resource_id!r}",
        username=username,
        resource_type=rtype,
        resource_id=resource_id,
    )
    if data.get("permission") != "MANAGE":
        admin.ok(
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            {
                "username": username,
                "resource_type": rtype,
                "resource_id": resource_id,
                "permission": "MANAGE",
            },
            what=f"granting MANAGE on {rtype} {resource_id!r} to {username!r}",
        )


def ensure_bundle_resources(
    admin: Server, service: Server, experiments: Iterable[str], models: Iterable[str]
) -> None:
    """Create the bundle's experiments and registered models as the service account, which holds MANAGE."""
    user = service.account.username
    for name in experiments:
        service.ok(
            "POST",
            "/api/2.0/mlflow/experiments/create",
            {"name": name},
            what=f"creating experiment {name!r} as {user!r}",
            allow=("RESOURCE_ALREADY_EXISTS",),
        )
        exp = admin.ok(
            "GET",
            "/api/2.0/mlflow/experiments/get-by-name",
            what=f"reading experiment {name!r}",
            experiment_name=name,
        )["experiment"]
        ensure_manage(admin, user, "experiment", exp["experiment_id"])
    for name in models:
        service.ok(
            "POST",
            "/api/2.0/mlflow/registered-models/create",
            {"name": name},
            what=f"creating registered model {name!r} as {user!r}",
            allow=("RESOURCE_ALREADY_EXISTS",),
        )
        ensure_manage(admin, user, "registered_model", name)


def provision(
    url: str,
    *,
    admin: Account,
    service: Account,
    reader: Account,
    experiments: Iterable[str] = (),
    models: Iterable[str] = (),
) -> None:
    """The accounts and grants described in the module docstring, on the server at `url` (idempotent)."""
    if len({admin.username, service.username, reader.username}) != 3:
        raise ProvisionError(
            f"the MLflow admin, service and reader accounts need three different user names, got "
            f"{admin.username!r}, {service.username!r}, {reader.username!r}"
        )
    as_admin = Server(url, admin)
    as_admin.ok("GET", "/api/2.0/mlflow/users/current", what=f"signing in to MLflow at {url} as the admin")
    for account in (service, reader):
        ensure_user(as_admin, account)
    set_grants(as_admin, reader.username, READER_GRANTS)
    ensure_bundle_resources(as_admin, Server(url, service), experiments, models)


def add_reader(url: str, admin: Account, account: Account) -> None:
    """Create (or reset the password of) one more read-only account for a person: READ on every experiment
    and registered model, nothing else. Refuses an account that holds more than READ (e.g. the service's)."""
    as_admin = Server(url, admin)
    status, data = as_admin.call("GET", "/api/3.0/mlflow/users/permissions/list", username=account.username)
    held = {p["permission"] for p in data.get("permissions", [])} if status == 200 else set()
    if held - {"READ"}:
        raise ProvisionError(
            f"{account.username!r} holds {sorted(held)}, not only READ: it is not a reader (the service "
            "account?); pick a new user name"
        )
    ensure_user(as_admin, account)
    set_grants(as_admin, account.username, READER_GRANTS)


def wait_healthy(url: str, timeout: float) -> None:
    """Wait until GET <url>/health answers 200 (it needs no account)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _OPENER.open(url.rstrip("/") + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ProvisionError(f"MLflow at {url} did not answer /health within {timeout:.0f}s")
        time.sleep(1)


def _account(role: str, environ: dict[str, str]) -> Account:
    user_key, password_key = f"MLFLOW_{role}_USERNAME", f"MLFLOW_{role}_PASSWORD"
    missing = [k for k in (user_key, password_key) if not environ.get(k)]
    if missing:
        raise ProvisionError(f"{' and '.join(missing)} not set (see .env.example)")
    return Account(environ[user_key], environ[password_key], password_key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundle-config",
        action="store_true",
        help="pre-create the config's experiments and registered model",
    )
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for the server's /health")
    parser.add_argument(
        "--add-reader",
        metavar="USER",
        help="only add a read-only account USER for a person, password from $MLFLOW_NEW_READER_PASSWORD "
        "(needs MLFLOW_ADMIN_USERNAME/PASSWORD)",
    )
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        url = env.get("MLFLOW_TRACKING_URI") or ""
        if not url.startswith(("http://", "https://")):
            raise ProvisionError(f"MLFLOW_TRACKING_URI must be the server's http(s) URL, got {url!r}")
        if args.add_reader:
            password = env.get("MLFLOW_NEW_READER_PASSWORD") or ""
            if len(password) < 12:
                raise ProvisionError("set MLFLOW_NEW_READER_PASSWORD (MLflow needs at least 12 characters)")
            wait_healthy(url, args.wait)
            add_reader(
                url, _account("ADMIN", env), Account(args.add_reader, password, "MLFLOW_NEW_READER_PASSWORD")
            )
            print(f"mlflow accounts: {args.add_reader!r} (reads) ready at {url}")
            return 0
        accounts = {role.lower(): _account(role, env) for role in ("ADMIN", "SERVICE", "READER")}
        experiments, models = [], []
        if args.bundle_config:  # every data set of the catalog (MLOPS_CONFIG: the folder or one file)
            from mlops_bundle.catalog import configs

            cfgs = configs()
            experiments = [n for c in cfgs for n in (c.experiment_name, c.monitoring_experiment_name)]
            models = [c.model_name for c in cfgs]
        wait_healthy(url, args.wait)
        provision(url, **accounts, experiments=experiments, models=models)
    except ProvisionError as exc:
        print(f"mlflow accounts: {exc}", file=sys.stderr)
        return 1
    print(
        f"mlflow accounts: {accounts['service'].username!r} (writes: {', '.join(experiments + models) or '-'}), "
        f"{accounts['reader'].username!r} (reads) ready at {url}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

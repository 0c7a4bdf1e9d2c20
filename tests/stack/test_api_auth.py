"""Authentication of the REST API on the production-like stack (issue 6): a request without a token or with
a bad one gets 401 on every mutating endpoint, a viewer cannot trigger or change anything.

The mutating operations are not listed by hand: they are read from the api-server's own OpenAPI document
(every POST/PUT/PATCH/DELETE under /api/v2), so an endpoint added by an Airflow upgrade is checked too.
Airflow 3.3 itself answers 403 for a token it rejects; the bundle's plugin turns that into 401
(plugins/mlops_airflow/auth_errors.py), and these tests check the real api-server process with it.
"""

from __future__ import annotations

import collections
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import jwt
import pytest

from tests.stack.api import rest, token_for

pytestmark = pytest.mark.stack

MUTATING = ("post", "put", "patch", "delete")
# the stack's catalog (MLOPS_CONFIG: config/datasets/)
DATASETS = ("churn", "diabetes")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_NO_REDIRECT_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)

# Path parameters. "Plausible" values name the stack's real objects (requests with a bad token must be
# refused before anything is looked up); "absent" ones name nothing, for calls with valid tokens, so an
# admin's DELETE or PATCH cannot change the shared stack.
PLAUSIBLE = {
    "dag_id": "churn__ingest",
    "dag_run_id": "manual__2026-01-05T00:00:00+00:00",
    "task_id": "validate",
    "group_id": "checks",
    "map_index": "-1",
    "xcom_key": "return_value",
    "key": "cursor",
    "asset_id": "1",
    "backfill_id": "1",
    "connection_id": "aws_default",
    "pool_name": "default_pool",
    "variable_key": "mlops_threshold",
    "file_token": "not-a-file-token",
}
ABSENT = {
    name: "987654321" if value.lstrip("-").isdigit() else f"api_auth_no_such_{name}"
    for name, value in PLAUSIBLE.items()
}
ABSENT["map_index"] = "-1"
# Mutations that change the stack even when every path parameter names nothing and the body is {}.
NOT_FOR_ADMIN = {("POST", "/api/v2/connections/defaults")}  # creates Airflow's ~50 default connections
# POSTs that only read (or change the caller's own favourites) and need read access only: a viewer may.
VIEWER_MAY = {
    ("POST", "/api/v2/dags/{dag_id}/dagRuns/list"),
    ("POST", "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/list"),
    ("POST", "/api/v2/dags/{dag_id}/favorite"),
    ("POST", "/api/v2/dags/{dag_id}/unfavorite"),
}


def _delete_nothing(name: str) -> dict:
    return {
        "actions": [
            {"action": "delete", "entities": [f"api_auth_no_such_{name}"], "action_on_non_existence": "skip"}
        ]
    }


# These endpoints authorize on what their body names, so `{}` is answered 422 before anyone is asked: the
# viewer sends a well-formed body (naming nothing that exists) that reaches the authorization check.
VIEWER_BODIES = {
    ("POST", "/api/v2/connections/enqueue-test"): {
        "connection_id": "api_auth_no_such_connection_id",
        "conn_type": "generic",
    },
    ("PATCH", "/api/v2/connections"): _delete_nothing("connection_id"),
    ("PATCH", "/api/v2/pools"): _delete_nothing("pool_name"),
    ("PATCH", "/api/v2/variables"): _delete_nothing("variable_key"),
    ("PATCH", "/api/v2/dags/{dag_id}/dagRuns"): _delete_nothing("dag_run_id"),
    ("POST", "/api/v2/dags/{dag_id}/clearDagRuns"): {
        "partition_key": "api_auth_no_such_key",
        "dry_run": True,
    },
}
# The one answer that is not 403: Airflow authorizes a backfill on its DAG and answers 404 to everybody
# when the id names no backfill, so ids do not leak across DAGs (api_fastapi/core_api/security.py,
# _authorize_backfill_in_path); the stack has no backfill, and creating one would start runs.
VIEWER_ANSWERS = {
    ("PUT", f"/api/v2/backfills/{{backfill_id}}/{verb}"): 404 for verb in ("pause", "unpause", "cancel")
}


def _call(stack, method: str, path: str, headers: dict[str, str] | None = None, body=None):
    """(status, headers, parsed JSON body or raw text) of one request; never raises on 4xx/5xx."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(stack.api_url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with _NO_REDIRECT_OPENER.open(req, timeout=60) as resp:
            status, hdrs, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, exc.headers, exc.read()
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, hdrs, payload


def _fill(template: str, values: dict[str, str], types: dict[str, str | None]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        fallback = "1" if types.get(name) == "integer" else f"api_auth_{name}"
        return urllib.parse.quote(values.get(name, fallback), safe="")

    return re.sub(r"\{(\w+)\}", value, template)


@pytest.fixture(scope="module")
def operations(stack) -> list[dict]:
    """Every mutating /api/v2 operation of the running api-server's OpenAPI document."""
    with _OPENER.open(stack.api_url + "/openapi.json", timeout=60) as resp:
        spec = json.load(resp)
    ops = []
    for template, item in spec["paths"].items():
        if not template.startswith("/api/v2/"):
            continue
        for method, op in item.items():
            if method not in MUTATING:
                continue
            types = {
                p["name"]: p.get("schema", {}).get("type")
                for p in op.get("parameters", []) + item.get("parameters", [])
                if p.get("in") == "path"
            }
            ops.append(
                {
                    "method": method.upper(),
                    "template": template,
                    "plausible": _fill(template, PLAUSIBLE, types),
                    "absent": _fill(template, ABSENT, types),
                }
            )
    # Airflow 3.3.2 has 61; far fewer means the document was not the public API's
    assert len(ops) >= 40, f"only {len(ops)} mutating /api/v2 operations in {stack.api_url}/openapi.json"
    return ops


def _claims_of_a_real_token(stack) -> tuple[dict, dict]:
    token = token_for(stack.api_url, "admin", "admin")
    return jwt.decode(token, options={"verify_signature": False}), jwt.get_unverified_header(token)


def _bad_credentials(stack) -> dict[str, dict[str, str]]:
    """Name -> request headers carrying a credential Airflow must refuse (or none at all)."""
    secret = stack.env["AIRFLOW__API_AUTH__JWT_SECRET"]
    claims, header = _claims_of_a_real_token(stack)
    algorithm = header["alg"]
    now = int(time.time())
    fresh = {**claims, "iat": now, "nbf": now, "exp": now + 3600, "jti": "api-auth-test-" + str(now)}
    expired = {**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}
    wrong_key = "not-the-stack-secret-" + "k" * 64
    revoked = token_for(stack.api_url, "admin", "admin")
    status, _, _ = _call(stack, "GET", "/api/v2/auth/logout", {"Authorization": f"Bearer {revoked}"})
    assert status in (200, 302, 303, 307), f"logout answered {status}"
    bearer = {
        "garbage": "not-a-jwt",
        "wrong secret": jwt.encode(fresh, wrong_key, algorithm=algorithm, headers=header),
        "expired (right secret)": jwt.encode(expired, secret, algorithm=algorithm, headers=header),
        "unsigned (alg none)": jwt.encode(fresh, None, algorithm="none"),
        "no subject (right secret)": jwt.encode(
            {k: v for k, v in fresh.items() if k not in ("sub", "role")},
            secret,
            algorithm=algorithm,
            headers=header,
        ),
        "revoked (logged out)": revoked,
    }
    creds: dict[str, dict[str, str]] = {"no token": {}}
    creds.update({name: {"Authorization": f"Bearer {tok}"} for name, tok in bearer.items()})
    creds["garbage UI cookie"] = {"Cookie": "_token=not-a-jwt"}
    creds["expired UI cookie"] = {"Cookie": f"_token={bearer['expired (right secret)']}"}
    return creds


def test_bad_or_missing_tokens_get_401_on_every_mutating_endpoint(stack, operations):
    creds = _bad_credentials(stack)
    failures: list[str] = []
    seen = collections.Counter()
    t0 = time.monotonic()
    for op in operations:
        for name, headers in creds.items():
            status, hdrs, body = _call(stack, op["method"], op["plausible"], headers, body={})
            seen[status] += 1
            where = f"{op['method']} {op['plausible']} with {name}"
            if status != 401:
                failures.append(f"{where}: {status} {str(body)[:160]}")
                continue
            challenge = hdrs.get("WWW-Authenticate") or ""
            if not challenge.startswith("Bearer"):
                failures.append(f"{where}: 401 without 'WWW-Authenticate: Bearer' (got {challenge!r})")
            detail = body.get("detail", "") if isinstance(body, dict) else ""
            if name == "no token":
                if detail != "Not authenticated":
                    failures.append(f"{where}: detail {detail!r}")
            elif "POST /auth/token" not in detail or "invalid, expired or revoked" not in detail:
                failures.append(f"{where}: the detail does not say how to get a new token: {detail!r}")
            elif 'error="invalid_token"' not in challenge:
                failures.append(f'{where}: challenge {challenge!r} lacks error="invalid_token"')
    seconds = time.monotonic() - t0
    print(
        f"\n{len(operations)} mutating /api/v2 operations x {len(creds)} bad credentials "
        f"({', '.join(creds)}): {dict(seen)} in {seconds:.1f}s"
    )
    assert not failures, f"{len(failures)} answers were not a proper 401:\n" + "\n".join(failures[:40])

    # the bundle's own plugin app serves reports only: it has no mutating route at all
    for path in ("/mlops/reports", "/mlops/reports/churn", "/mlops/reports/churn/2026-01-05/report.html"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            status, _, _ = _call(stack, method, path, body={})
            assert status == 405, (method, path, status)


def test_the_report_app_answers_bad_tokens_401_and_serves_a_viewer(stack):
    """/mlops (the bundle's report app) refuses a bad credential the way /api/v2 does, and a viewer, who
    may read every data set's monitor DAG's task instances, gets the index of both data sets."""
    for name, headers in _bad_credentials(stack).items():
        status, hdrs, body = _call(stack, "GET", "/mlops/reports?format=json", headers)
        assert status == 401, (name, status, body)
        assert (hdrs.get("WWW-Authenticate") or "").startswith("Bearer"), (name, dict(hdrs))
    viewer = {"Authorization": f"Bearer {token_for(stack.api_url, 'viewer', 'viewer')}"}
    status, _, body = _call(stack, "GET", "/mlops/reports?format=json", viewer)
    assert (status, body) == (200, {"datasets": list(DATASETS)})


def test_valid_tokens_are_never_answered_401_and_a_viewer_cannot_mutate(stack, operations):
    admin = {"Authorization": f"Bearer {token_for(stack.api_url, 'admin', 'admin')}"}
    viewer_token = token_for(stack.api_url, "viewer", "viewer")
    viewer = {"Authorization": f"Bearer {viewer_token}"}
    # reparsing is authorized on the DAGs of the file a signed token names: the viewer names a real one
    file_token = rest(stack.api_url, viewer_token, "GET", "/api/v2/dags/churn__ingest/details")["file_token"]
    failures: list[str] = []
    seen = {"admin": collections.Counter(), "viewer": collections.Counter()}
    for op in operations:
        key = (op["method"], op["template"])
        for role, headers in (("admin", admin), ("viewer", viewer)):
            if role == "admin" and key in NOT_FOR_ADMIN:
                continue
            path, payload = op["absent"], {}
            if role == "viewer":
                path = path.replace(ABSENT["file_token"], urllib.parse.quote(file_token, safe=""))
                payload = VIEWER_BODIES.get(key, {})
            status, _, body = _call(stack, op["method"], path, headers, body=payload)
            seen[role][status] += 1
            where = f"{role}: {op['method']} {path}"
            if status == 401:
                failures.append(f"{where}: 401 for a valid token: {str(body)[:160]}")
            elif role == "admin" and status == 403:
                failures.append(f"{where}: 403 for the admin: {str(body)[:160]}")
            elif role == "viewer" and key in VIEWER_MAY:
                if status == 403 or status >= 500:
                    failures.append(f"{where}: {status} for the viewer, who may read: {str(body)[:160]}")
            elif role == "viewer" and status != VIEWER_ANSWERS.get(key, 403):
                # authenticated but not allowed: exactly 403; accepted, 404, 422 or 500 are failures too
                failures.append(
                    f"{where}: {status} for the viewer's mutation, not {VIEWER_ANSWERS.get(key, 403)}: "
                    f"{str(body)[:160]}"
                )
    print(f"\nvalid tokens on {len(operations)} operations: { {r: dict(c) for r, c in seen.items()} }")
    assert not failures, "\n".join(failures[:40])

    # a viewer may read but not trigger or change: 403 (authenticated, not allowed), not 401
    dags = rest(stack.api_url, viewer_token, "GET", "/api/v2/dags", limit=100)
    assert {f"{ds}__{kind}" for ds in DATASETS for kind in ("ingest", "train", "monitor")} <= {
        d["dag_id"] for d in dags["dags"]
    }
    run_id = f"api_auth_viewer__{int(time.time())}"
    refused = {
        "trigger ingest": (
            "POST",
            "/api/v2/dags/churn__ingest/dagRuns",
            {"dag_run_id": run_id, "logical_date": None},
        ),
        "pause a DAG": ("PATCH", "/api/v2/dags/api_auth_no_such_dag", {"is_paused": True}),
        "delete a DAG": ("DELETE", "/api/v2/dags/api_auth_no_such_dag", None),
        "create a variable": ("POST", "/api/v2/variables", {"key": "api_auth_viewer", "value": "x"}),
        "create a pool": ("POST", "/api/v2/pools", {"name": "api_auth_viewer", "slots": 1}),
        "create a connection": (
            "POST",
            "/api/v2/connections",
            {"connection_id": "api_auth_viewer", "conn_type": "generic"},
        ),
        "approve a promotion": (
            "PATCH",
            "/api/v2/dags/churn__train/dagRuns/api_auth_no_such_run/taskInstances/approve/-1/hitlDetails",
            {"chosen_options": ["Approve"], "params_input": {}},
        ),
    }
    answers = {what: _call(stack, m, p, viewer, body=b)[::2] for what, (m, p, b) in refused.items()}
    assert {what: status for what, (status, _) in answers.items()} == dict.fromkeys(refused, 403), answers
    assert answers["trigger ingest"][1] == {"detail": "Forbidden"}
    status, _, _ = _call(stack, "GET", f"/api/v2/dags/churn__ingest/dagRuns/{run_id}", admin)
    assert status == 404, "the viewer's refused trigger created a run anyway"


# ------------------------------------------------------------------ the report app across data sets


def _roleless_token(stack) -> str:
    """A token the api-server accepts (signed with the stack's key, fresh, not revoked) for a user with no
    role: authenticated, but allowed to read no DAG. SimpleAuthManager (the stack's auth manager) grants by
    role over every DAG at once (VIEWER reads all of them), so it cannot express "churn__monitor but not
    diabetes__monitor"; a user without any DAG read right is the refused side it can express."""
    claims, header = _claims_of_a_real_token(stack)
    now = int(time.time())
    claims = {
        **claims,
        "sub": "api_auth_no_rights",
        "role": None,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": f"api-auth-roleless-{now}",
    }
    return jwt.encode(
        claims, stack.env["AIRFLOW__API_AUTH__JWT_SECRET"], algorithm=header["alg"], headers=header
    )


def _leaks(stack, body) -> list[str]:
    """What of the stack's paths, bucket or config files an answer shows (it should show none)."""
    from tests.conftest import REPO

    text = json.dumps(body) if not isinstance(body, str) else body
    secrets_of_place = {
        "the checkout": str(REPO),
        "the catalog folder": stack.env["MLOPS_CONFIG"],
        "the stack's home": stack.env["AIRFLOW_HOME"],
        "the lake bucket": stack.bucket,
        "the catalog's files": "config/datasets",  # (a name the request itself sent may be echoed)
        "an S3 URI": "s3://",
        "a traceback": "Traceback",
    }
    return [what for what, needle in secrets_of_place.items() if needle and needle in text]


def test_report_app_authorizes_each_data_set_and_names_nothing_it_should_not(stack):
    """The /mlops report app as an attacker probes it: every data set's routes check read access to that
    data set's `<dataset>__monitor` before anything else; the index lists only what the user may read; a
    malformed name is 400 and never reaches storage; a well-formed unknown name is 404 for a reader and
    403 (not 404) for a user who may read nothing, so it does not tell which data sets exist; no answer
    names a path, the bucket or a config file."""
    admin = {"Authorization": f"Bearer {token_for(stack.api_url, 'admin', 'admin')}"}
    viewer = {"Authorization": f"Bearer {token_for(stack.api_url, 'viewer', 'viewer')}"}
    nobody = {"Authorization": f"Bearer {_roleless_token(stack)}"}
    report = "2026-01-05/report.html"

    # the index: the configured data sets each user may read, and nothing else
    for who, headers, expected in (
        ("admin", admin, list(DATASETS)),
        ("viewer", viewer, list(DATASETS)),
        ("a user without DAG read rights", nobody, []),
    ):
        status, hdrs, body = _call(stack, "GET", "/mlops/reports?format=json", headers)
        assert (status, body) == (200, {"datasets": expected}), (who, status, body)
        status, _, page = _call(stack, "GET", "/mlops/reports", headers)
        assert status == 200, (who, status)
        for ds in DATASETS:
            assert (f'href="reports/{ds}"' in page) == (ds in expected), (who, ds, page)

    # per data set: a reader gets the index of each, the user without rights 403 for each (and for a name
    # no data set has: existence is not disclosed to someone who may not read)
    for ds in DATASETS:
        status, _, body = _call(stack, "GET", f"/mlops/reports/{ds}?format=json", viewer)
        assert status == 200 and body["dataset"] == ds, (ds, status, body)
        for path in (
            f"/mlops/reports/{ds}",
            f"/mlops/reports/{ds}?format=json",
            f"/mlops/reports/{ds}/{report}",
        ):
            status, _, body = _call(stack, "GET", path, nobody)
            assert (status, body) == (403, {"detail": "Forbidden"}), (path, status, body)
    for path in ("/mlops/reports/api_auth_nosuch", f"/mlops/reports/api_auth_nosuch/{report}"):
        status, _, body = _call(stack, "GET", path, nobody)
        assert (status, body) == (403, {"detail": "Forbidden"}), (path, status, body)

    # malformed data set names: 400 for a reader, before any lookup; none is a path
    failures = []
    # (percent-encoded as a client sends them: the api-server decodes them before routing)
    for name in (
        "Churn",
        "..",
        "%2E%2E",
        "churn.yaml",
        "churn%00",
        "-churn",
        "1churn",
        "ch%20urn",
        "churn%2A",
    ):
        for path in (f"/mlops/reports/{name}", f"/mlops/reports/{name}/{report}"):
            status, hdrs, body = _call(stack, "GET", path, admin)
            if (
                status != 400
                or not isinstance(body, dict)
                or "not a data set name" not in body.get("detail", "")
            ):
                failures.append(f"{path}: {status} {str(body)[:200]}")
            elif _leaks(stack, body):
                failures.append(f"{path}: 400 names {_leaks(stack, body)}: {body}")
    # a traversal spread over segments is no route of the app at all (404 from the router): never a file
    traversals = ("/mlops/reports/../x", "/mlops/reports/..%2Fx", "/mlops/reports/churn%2F..")
    for path in (*traversals, f"/mlops/reports/..%2F..%2Fconfig/{report}"):
        status, _, body = _call(stack, "GET", path, admin)
        if status not in (400, 404) or _leaks(stack, body):
            failures.append(f"{path}: {status} {str(body)[:200]}")
    assert not failures, "\n".join(failures)

    # a well-formed name no data set has: 404 for a reader, naming no path
    for path in ("/mlops/reports/api_auth_nosuch", f"/mlops/reports/api_auth_nosuch/{report}"):
        status, _, body = _call(stack, "GET", path, viewer)
        assert status == 404 and "api_auth_nosuch" in body["detail"], (path, status, body)
        assert not _leaks(stack, body), (path, _leaks(stack, body), body)
    # a configured data set without that day's report: 404, naming no bucket or key
    status, _, body = _call(stack, "GET", "/mlops/reports/diabetes/2001-01-01/report.html", viewer)
    assert status == 404 and "diabetes" in body["detail"], (status, body)
    assert not _leaks(stack, body), (_leaks(stack, body), body)

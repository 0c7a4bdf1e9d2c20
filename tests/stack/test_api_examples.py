"""The README's API examples run end to end on the stack: examples/api_curl.sh and examples/api_client.py
(apache-airflow-client) each get a JWT, trigger churn__ingest with conf for a freshly landed batch, follow the run,
approve the promotion the validated-data asset's train run asks for, wait for it and roll the champion
back, as a user would copy them.

The two walkthroughs run one after the other on their own batch dates (after the `chain` fixture made
version 1 the champion), so they never race for the champion:

* curl, 2026-01-07, a batch like the champion's: the challenger does not beat the champion by
  `min_improvement`, so the gate rejects and nothing awaits approval; the walkthrough then triggers `train`
  with `force` + justification, whose gate says promote and asks for the approval it gives;
* client, 2026-01-08, a drifted batch: the challenger beats the champion, so the asset-triggered run
  itself waits for approval.

Which branch ran is printed, not asserted (other tests may have landed data in the same window); what is
asserted is what the user sees: exit code 0, every run the example started succeeded, the approval was
given by the example's user, the promotion moved `champion` and the rollback moved it back to the version
that was champion before, keeping the promoted one as `previous`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.stack.api import bundle_config, land_batch, q, rest, token_for

pytestmark = pytest.mark.stack

CURL = REPO / "examples" / "api_curl.sh"
CLIENT = REPO / "examples" / "api_client.py"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
RUN_TIMEOUT = 2700  # one walkthrough: ingest, up to two train runs, rollback on a loaded 2-core machine
# the data set the walkthroughs drive (the examples' default; the curl one names it with --dataset)
DATASET = "churn"
INGEST, TRAIN, ROLLBACK = (f"{DATASET}__{kind}" for kind in ("ingest", "train", "rollback"))


def _aliases(stack) -> dict[str, str | None]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = bundle_config(stack, DATASET).model_name
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    out = {}
    for alias in ("champion", "previous"):
        try:
            out[alias] = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            out[alias] = None
    return out


def _run(stack, argv: list[str]) -> tuple[dict[str, list[str]], str, float]:
    """Run one example as a user would (env vars only, no proxy); return its `key: value` stdout lines,
    its stderr (the progress lines) and how long it took."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env.update(
        AIRFLOW_URL=stack.api_url,
        AIRFLOW_USERNAME="admin",
        AIRFLOW_PASSWORD="admin",
        # four eyes: the walkthrough's forced promotion is approved by this second admin
        AIRFLOW_APPROVER_USERNAME="approver",
        AIRFLOW_APPROVER_PASSWORD="approver",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        POLL_SECONDS="2",
        WAIT_TIMEOUT="1500",
    )
    env.pop("AIRFLOW_TOKEN", None)
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    seconds = round(time.monotonic() - t0, 1)
    print(f"\n$ {' '.join(map(str, argv))}  ({seconds}s, exit {proc.returncode})\n{proc.stderr}{proc.stdout}")
    assert proc.returncode == 0, (
        f"{argv[-2:]} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr (tail):\n"
        + "\n".join(proc.stderr.splitlines()[-40:])
        + f"\nAirflow logs: {stack.log_dir}"
    )
    lines: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^([a-z ()]+): (.+)$", line)
        if m:
            lines.setdefault(m.group(1), []).append(m.group(2))
    return lines, proc.stderr, seconds


def _run_of(stack, token: str, dag_id: str, run_id: str) -> dict:
    return rest(stack.api_url, token, "GET", f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}")


def _ti(stack, token: str, dag_id: str, run_id: str, task_id: str, suffix: str = "") -> dict:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances/{task_id}{suffix}"
    return rest(stack.api_url, token, "GET", path)


def _xcom(stack, token: str, dag_id: str, run_id: str, task_id: str, key: str) -> dict:
    import json

    value = _ti(stack, token, dag_id, run_id, task_id, f"/xcomEntries/{key}")["value"]
    return json.loads(value) if isinstance(value, str) else value


def _check_walkthrough(stack, lines: dict[str, list[str]], progress: str, date: str, before: dict) -> str:
    """Assert what one walkthrough did through the REST API and MLflow; return the branch it took."""
    token = token_for(stack.api_url, "admin", "admin")
    # the user saw the run's state changes and, before approving, the gate's numbers and verdict
    assert re.search(rf"{INGEST} \S+: \S+ -> success", progress), progress
    assert re.search(r"candidate \w+ -> version \d+: .*roc_auc=0\.\d+", progress), progress
    assert re.search(r"gate (?:evaluation|decision) \w+: promote", progress), progress
    for key in ("ingest run", "train run", "approved", "promotion", "rollback run", "rollback"):
        assert len(lines.get(key, [])) == 1, f"expected one {key!r} line, got {lines.get(key)}"

    ingest = _run_of(stack, token, INGEST, lines["ingest run"][0])
    assert ingest["state"] == "success" and ingest["conf"] == {"date": date}, ingest
    asset_train = _run_of(stack, token, TRAIN, lines["train run"][0])
    assert asset_train["run_type"] == "asset_triggered" and asset_train["state"] == "success", asset_train
    events = rest(stack.api_url, token, "GET", "/api/v2/assets/events", source_run_id=ingest["dag_run_id"])
    started = {r["run_id"] for e in events["asset_events"] for r in e["created_dagruns"]}
    assert asset_train["dag_run_id"] in started, (asset_train["dag_run_id"], started)

    approved_id = lines["approved"][0]
    if "train run (forced)" in lines:
        branch = "gate rejected the asset-triggered run -> forced train run approved"
        assert lines["train run (forced)"] == [approved_id]
        assert _ti(stack, token, TRAIN, asset_train["dag_run_id"], "approve")["state"] == "skipped"
        forced = _run_of(stack, token, TRAIN, approved_id)
        assert forced["run_type"] == "manual" and forced["conf"]["force"] is True, forced["conf"]
        assert forced["conf"]["end_date"] == date and len(forced["conf"]["justification"]) >= 10
    else:
        branch = "gate passed: the asset-triggered run was approved"
        assert approved_id == asset_train["dag_run_id"]
    train = _run_of(stack, token, TRAIN, approved_id)
    assert train["state"] == "success", train
    assert _ti(stack, token, TRAIN, approved_id, "approve")["state"] == "success"
    hitl = _ti(stack, token, TRAIN, approved_id, "approve", "/-1/hitlDetails")
    assert hitl["response_received"] and hitl["chosen_options"] == ["Approve"], hitl
    # four eyes: the forced run (triggered by admin) was approved by the second admin
    approver = "approver" if "train run (forced)" in lines else "admin"
    assert hitl["responded_by_user"]["name"] == approver, hitl["responded_by_user"]
    assert _ti(stack, token, TRAIN, approved_id, "publish_champion")["state"] == "success"

    promoted = _xcom(stack, token, TRAIN, approved_id, "promote", "decision")
    assert promoted["verdict"] == "promote" and promoted["applied"], promoted
    assert promoted["approved_by"] == approver, promoted
    if "train run (forced)" in lines:
        assert promoted["triggered_by"] == "admin" and promoted["forced"] is True, promoted
    assert promoted["previous_champion"] == before["champion"], (promoted["previous_champion"], before)
    new_version = str(promoted["challenger"]["version"])
    assert new_version != before["champion"]

    back = _run_of(stack, token, ROLLBACK, lines["rollback run"][0])
    assert back["state"] == "success" and len(back["conf"]["reason"]) >= 10, back
    record = _xcom(stack, token, ROLLBACK, back["dag_run_id"], "roll_back", "return_value")
    assert record["verdict"] == "rollback" and record["previous_champion"] == new_version, record
    assert str(record["challenger"]["version"]) == before["champion"], record

    after = _aliases(stack)
    assert after == {"champion": before["champion"], "previous": new_version}, (before, after)
    return f"{branch}; promoted version {new_version} over {before['champion']}, rolled back to it"


def test_curl_walkthrough(chain, stack):
    date = "2026-01-07"
    land_batch(stack, date, drift=0.0)
    before = _aliases(stack)
    assert before["champion"], "the chain fixture should have left a champion"
    lines, progress, seconds = _run(stack, ["bash", str(CURL), "--dataset", DATASET, "walkthrough", date])
    branch = _check_walkthrough(stack, lines, progress, date, before)
    print(f"curl walkthrough {date}: {branch} ({seconds}s)")


def test_python_client_walkthrough(chain, stack):
    date = "2026-01-08"
    land_batch(stack, date, drift=1.0)
    before = _aliases(stack)
    assert before["champion"], "the chain fixture should have left a champion"
    lines, progress, seconds = _run(stack, [sys.executable, str(CLIENT), "walkthrough", date])
    branch = _check_walkthrough(stack, lines, progress, date, before)
    print(f"apache-airflow-client walkthrough {date}: {branch} ({seconds}s)")


def test_single_steps_fail_clearly(chain, stack):
    """Copied steps report bad input and missing credentials with a message and a non-zero exit."""
    base = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    base.update(AIRFLOW_URL=stack.api_url, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    base.pop("AIRFLOW_USERNAME", None)
    base.pop("AIRFLOW_PASSWORD", None)
    base.pop("AIRFLOW_TOKEN", None)
    for argv in (["bash", str(CURL), "token"], [sys.executable, str(CLIENT), "token"]):
        proc = subprocess.run(argv, env=base, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "AIRFLOW_USERNAME and AIRFLOW_PASSWORD" in proc.stderr, proc

    creds = {**base, "AIRFLOW_USERNAME": "admin", "AIRFLOW_PASSWORD": "wrong-password"}
    for argv in (["bash", str(CURL), "token"], [sys.executable, str(CLIENT), "token"]):
        proc = subprocess.run(argv, env=creds, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "auth/token" in proc.stderr and not proc.stdout.strip(), proc

    token = token_for(stack.api_url, "admin", "admin")
    env = {**base, "AIRFLOW_TOKEN": token}
    for argv in (["bash", str(CURL)], [sys.executable, str(CLIENT)]):
        proc = subprocess.run(
            [*argv, "wait", "ingest", "no-such-run"], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 1 and "not found" in proc.stderr.lower(), proc
        # the rollback DAG refuses a reason shorter than 10 characters before any run is created
        proc = subprocess.run([*argv, "rollback", "short"], env=env, capture_output=True, text=True)
        assert proc.returncode == 1 and "reason" in proc.stderr, proc

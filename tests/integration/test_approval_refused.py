"""Four eyes where the auth manager lets everyone answer: SimpleAuthManager's all-admins mode makes every
request the same anonymous admin, so Airflow's assigned-users check cannot refuse anybody. The approval
step itself must then refuse an "Approve" from the user who triggered a forced promotion: the answer is
logged and audited (`approval.refused`), the question is asked again, and nothing is promoted (in this
mode nobody else exists, so a forced promotion can never be approved: the right outcome)."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.conftest import _SESSION_DIR
from tests.integration.conftest import dag
from tests.polling import wait_for

pytestmark = pytest.mark.slow

MODEL = f"churn-refused-{uuid.uuid4().hex[:8]}"
LOCAL_AIRFLOW_ENV = {
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    "MLOPS_MLFLOW__REGISTERED_MODEL": MODEL,
    "MLOPS_MLFLOW__EXPERIMENT": f"{MODEL}-training",
    "MLOPS_TRAINING__CANDIDATES": json.dumps(
        [{"name": "logreg", "family": "logistic_regression", "params": {"C": 1.0}}]
    ),
    "MLOPS_AUDIT__STORE_URI": f"sqlite:///{_SESSION_DIR / f'audit-{MODEL}.db'}",
}
DAYS = ["2026-09-01", "2026-09-02", "2026-09-03"]
TRAIN = dag("train")


def test_the_triggering_user_cannot_approve_even_when_the_api_lets_them(local_airflow):
    from mlops_bundle import audit, tracking

    af = local_airflow
    cfg = af.bundle_config()
    af.stage(DAYS)
    af.call("PATCH", f"/api/v2/dags/{TRAIN}", {"is_paused": False})
    conf = {"end_date": DAYS[-1], "window_days": 3, "force": True, "justification": "four eyes: refused"}
    run = af.call("POST", f"/api/v2/dags/{TRAIN}/dagRuns", {"logical_date": None, "conf": conf})
    run_id, trigger = run["dag_run_id"], run["triggering_user_name"]
    assert trigger, run
    base = f"/api/v2/dags/{TRAIN}/dagRuns/{run_id}/taskInstances/approve"

    def awaiting() -> dict:
        return wait_for(
            lambda: af.call("GET", base),
            lambda ti: ti["state"] == "awaiting_input",
            timeout=400,
            describe=lambda ti: f"approve not awaiting input: {ti['state']}",
            interval=2,
        )

    first = awaiting()
    time.sleep(5)  # a human is never faster (see test_approval.py)
    done = af.call("PATCH", f"{base}/-1/hitlDetails", {"chosen_options": ["Approve"], "params_input": {}})
    assert done["responded_by"]["name"] == trigger, (done, trigger)  # the API accepted it...

    # ...the approval step refused it and asks again: same try, no answer recorded, nothing promoted
    def refused() -> list[dict]:
        return [r for r in audit.iter_records(cfg.audit_uri) if r["event"] == "approval.refused"]

    records = wait_for(
        refused, bool, timeout=120, describe=lambda r: "no approval.refused record", interval=2
    )
    assert records[0]["subject"] == f"{TRAIN}/{run_id}/approve" and records[0]["actor"] == f"user:{trigger}"
    again = awaiting()
    assert again["try_number"] == first["try_number"]
    detail = wait_for(
        lambda: af.call("GET", f"{base}/-1/hitlDetails"),
        lambda d: d["response_received"] is False,
        timeout=60,
        describe=lambda d: f"the refused answer is still recorded: {d}",
        interval=1,
    )
    assert detail["chosen_options"] in (None, [])
    assert af.call("GET", f"/api/v2/dags/{TRAIN}/dagRuns/{run_id}")["state"] == "running"
    assert tracking.alias_version(tracking.client(cfg), MODEL, "champion") is None
    states = af.task_states(TRAIN, run_id)
    assert states.get(("promote", -1)) is None, states  # promote never ran
    af.call("PATCH", f"/api/v2/dags/{TRAIN}/dagRuns/{run_id}", {"state": "failed"})  # end the drill

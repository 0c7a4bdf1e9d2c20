"""Stack tier: the docker-compose topology as real processes (PostgreSQL, Redis, CeleryExecutor with two
workers, api-server, scheduler, dag-processor, triggerer, MLflow on Postgres, moto S3 + KMS), started by
scripts/stack.py. Its MLflow server runs behind MLflow's basic-auth app: the tests read it with the stack's
read-only account (``mlflow_client_as``); only the bundle's tasks write, with the service account.

Marker ``stack`` (which implies ``postgres`` and ``redis``). Skipped when PostgreSQL or Redis is not
reachable (tests.services: PG_URL, REDIS_URL), except in CI (env CI set), where that is a failure: the CI
machine has both.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field

import pytest

from tests import services
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import stack as stack_runner  # noqa: E402 (scripts/stack.py)

# Small and fast: one logistic-regression candidate instead of the config's four. Promotions need a
# human approval here (as a governed team would run it): the `chain` fixture approves through the API.
STACK_ENV = {
    "MLOPS_TRAINING__CANDIDATES": json.dumps(
        [{"name": "logreg", "family": "logistic_regression", "params": {"C": 1.0}}]
    ),
    "MLOPS_PROMOTION__REQUIRE_APPROVAL": "true",
}


def _require_services() -> None:
    services.assert_services_allowed("the process stack")
    missing = stack_runner.missing_services()
    if missing:
        services.unavailable(f"stack tests need {' and '.join(missing)} (not reachable)")


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One running stack shared by the tier's tests (the fault tests start their own); stopped and its
    databases dropped at the end of the session."""
    from tests.stack.api import mlflow_client_as, provenance_key_of

    _require_services()
    with stack_runner.start_stack(tmp_path_factory.mktemp("stack"), extra_env=STACK_ENV) as running:
        # MLflow refuses anonymous calls: the tests' own reads go through the read-only account; models
        # they load are checked with the stack's provenance key
        with mlflow_client_as(running, "reader"), provenance_key_of(running):
            yield running


CHAIN_DATE = "2026-01-05"
# the data set the chain drives (the stack's catalog, config/datasets/, also holds diabetes)
DATASET = "churn"
INGEST, TRAIN, MONITOR = (f"{DATASET}__{kind}" for kind in ("ingest", "train", "monitor"))


@dataclass
class Chain:
    """What the REST-driven chain left behind: run ids per DAG kind ("ingest", "train", "monitor" of
    DATASET), the landing object, timings."""

    token: str
    batch_date: str
    landing_key: str
    landing_bytes: bytes
    runs: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    dataset: str = DATASET

    def dag_id(self, kind: str) -> str:
        """The DAG id of the chain's data set's DAG of `kind` (a key of `runs`): ``churn__train``."""
        return f"{self.dataset}__{kind}"


@pytest.fixture(scope="session")
def chain(stack) -> Chain:
    """Drive the whole chain once through the REST API with a JWT, as a producer and an operator would:
    a batch lands in S3, ingest is triggered with conf, the validated-data asset triggers train, whose
    promotion waits for a human and is approved through the API, then monitor is triggered for the same day. Fails if any run does not succeed."""
    from tests.stack.api import land_batch, q, rest, token_for, wait_new_run, wait_run, wait_task_state

    token = token_for(stack.api_url, "admin", "admin")
    landing_key, csv = land_batch(stack, CHAIN_DATE)
    result = Chain(token=token, batch_date=CHAIN_DATE, landing_key=landing_key, landing_bytes=csv)

    for dag_id in (INGEST, TRAIN, MONITOR):
        rest(stack.api_url, token, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    t0 = time.monotonic()
    run_id = f"stack__{CHAIN_DATE}__{int(time.time())}"
    body = {"dag_run_id": run_id, "logical_date": None, "conf": {"date": CHAIN_DATE}}
    rest(stack.api_url, token, "POST", f"/api/v2/dags/{INGEST}/dagRuns", body)
    result.runs["ingest"] = wait_run(stack, token, INGEST, run_id, timeout=300)
    assert result.runs["ingest"]["state"] == "success", f"ingest failed; task logs under {stack.log_dir}"

    train = wait_new_run(stack, token, TRAIN, since, "asset_triggered", timeout=120)
    train_id = train["dag_run_id"]
    approve_path = f"/api/v2/dags/{TRAIN}/dagRuns/{q(train_id)}/taskInstances/approve/-1/hitlDetails"
    wait_task_state(stack, token, TRAIN, train_id, "approve", "awaiting_input", timeout=480)
    # an answer within ~1 s of the pause can race the scheduler's handling of the pausing process's exit
    # (Airflow 3.3: the resumed attempt is failed and approval is asked again); a human is never that fast
    time.sleep(5)
    result.seconds["ingest_to_approval"] = round(time.monotonic() - t0, 1)
    rest(stack.api_url, token, "PATCH", approve_path, {"chosen_options": ["Approve"], "params_input": {}})
    result.runs["train"] = wait_run(stack, token, TRAIN, train_id, timeout=300)
    result.seconds["ingest_to_promote"] = round(time.monotonic() - t0, 1)
    assert result.runs["train"]["state"] == "success", f"train failed; task logs under {stack.log_dir}"

    t1 = time.monotonic()
    monitor_id = f"stack_monitor__{CHAIN_DATE}__{int(time.time())}"
    body = {"dag_run_id": monitor_id, "logical_date": None, "conf": {"date": CHAIN_DATE}}
    rest(stack.api_url, token, "POST", f"/api/v2/dags/{MONITOR}/dagRuns", body)
    result.runs["monitor"] = wait_run(stack, token, MONITOR, monitor_id, timeout=300)
    result.seconds["monitor"] = round(time.monotonic() - t1, 1)
    assert result.runs["monitor"]["state"] == "success", f"monitor failed; task logs under {stack.log_dir}"
    return result

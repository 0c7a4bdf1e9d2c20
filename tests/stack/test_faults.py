"""Faults on the process stack (issue 6): a Celery worker dies in the middle of a training task, and the
MLflow server goes away during a train run and comes back.

These tests start their own stack (module scope) instead of the shared session `stack`: they kill
processes. The stack is tuned so that faults show within a minute:

* one random-forest candidate big enough that fitting it takes tens of seconds (a window to kill in);
* ``[scheduler] task_instance_heartbeat_timeout`` = 30 s, checked every 5 s (default 300 s / 10 s), so a
  task whose worker vanished is failed - and, with the train DAG's retries, retried - quickly;
* the MLflow client gives up after ~3 s of connection errors (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 2,
  backoff 1; the default rides out ~4 minutes of outage inside one request), so a server outage fails the
  task attempt that talks to it and Airflow's retries must recover - the path that can leave debris.

Both tests drive the stack as an operator would (S3 upload, REST API with a JWT) and print their timings.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import time
import urllib.error

import pytest

from tests.polling import wait_for
from tests.stack.api import (
    land_batch,
    mlflow_client_as,
    provenance_key_of,
    q,
    rest,
    token_for,
    wait_new_run,
    wait_run,
)
from tests.stack.conftest import _require_services, stack_runner

pytestmark = pytest.mark.stack

KILL_DATE = "2026-01-05"
MLFLOW_DATE = "2026-01-06"
ROWS = {KILL_DATE: 16_000, MLFLOW_DATE: 4_000}
CANDIDATE = "forest"
MLFLOW_DOWN_S = 25
# the data set driven here (the stack's catalog also holds diabetes, which stays idle)
DATASET = "churn"
INGEST, TRAIN = f"{DATASET}__ingest", f"{DATASET}__train"
FAULT_ENV = {
    "MLOPS_TRAINING__CANDIDATES": json.dumps(
        [
            {
                "name": CANDIDATE,
                "family": "random_forest",
                "params": {"n_estimators": 200, "max_depth": 8, "min_samples_leaf": 5},
            }
        ]
    ),
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    _require_services()
    with stack_runner.start_stack(tmp_path_factory.mktemp("fault-stack"), extra_env=FAULT_ENV) as running:
        print(f"\nfault stack up in {running.timings}")
        # this module's registry checks only read, and load models with the stack's provenance key
        with mlflow_client_as(running, "reader"), provenance_key_of(running):
            yield running


@pytest.fixture(scope="module")
def token(fault_stack) -> str:
    token = token_for(fault_stack.api_url, "admin", "admin")
    for dag_id in (INGEST, TRAIN):
        rest(fault_stack.api_url, token, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    return token


# ------------------------------------------------------------------------------------------- helpers


def _cfg(stack):
    from tests.stack.api import bundle_config

    return bundle_config(stack, DATASET)


def _client(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def _ingest_and_wait_for_train(stack, token: str, date: str) -> dict:
    """Land a batch in S3, trigger ingest with conf through REST, return the asset-triggered train run."""
    land_batch(stack, date, rows=ROWS[date])
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    run_id = f"faults__{date}__{int(time.time())}"
    body = {"dag_run_id": run_id, "logical_date": None, "conf": {"date": date}}
    rest(stack.api_url, token, "POST", f"/api/v2/dags/{INGEST}/dagRuns", body)
    ingest = wait_run(stack, token, INGEST, run_id, timeout=420)
    assert ingest["state"] == "success", f"ingest {run_id} {ingest['state']}; task logs under {stack.log_dir}"
    return wait_new_run(stack, token, TRAIN, since, "asset_triggered", timeout=180)


def _tries(stack, token: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
    """Every try of one task instance (history + current), oldest first."""
    mi = f"/{map_index}" if map_index >= 0 else ""
    path = f"/api/v2/dags/{TRAIN}/dagRuns/{q(run_id)}/taskInstances/{task_id}{mi}/tries"
    try:
        rows = rest(stack.api_url, token, "GET", path)["task_instances"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
    return sorted(rows, key=lambda r: r["try_number"])


def _xcom(stack, token: str, run_id: str, task_id: str):
    path = f"/api/v2/dags/{TRAIN}/dagRuns/{q(run_id)}/taskInstances/{task_id}/xcomEntries/return_value"
    return rest(stack.api_url, token, "GET", path, deserialize="true")["value"]


def _task_logs(stack, run_id: str, task_id: str) -> dict[str, str]:
    folder = stack.log_dir / f"dag_id={TRAIN}" / f"run_id={run_id}" / f"task_id={task_id}"
    return {str(p.relative_to(folder)): p.read_text(errors="replace") for p in sorted(folder.rglob("*.log"))}


def _holdout_reads(moto_log) -> int:
    """How many times a training window's holdout was fetched from S3 (moto's request log)."""
    text = moto_log.read_text(errors="replace")
    return len(re.findall(r'"GET /[^ ]*/work/[^ ]*/holdout\.parquet ', text))


def _staging_objects(stack, date: str) -> list[str]:
    cfg = _cfg(stack)
    prefix = f"lake/{cfg.storage.staging_prefix}/{cfg.dataset.name}/"
    pages = stack.s3().get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return [k for k in keys if f"/ds={date}/" in k]


def _runs_of(stack, train_run_id: str) -> list:
    cfg = _cfg(stack)
    c = _client(stack)
    exp = c.get_experiment_by_name(cfg.experiment_name)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`airflow.run_id` = '{train_run_id}'")


def _assert_registry_consistent(stack, require_champion: bool = True, allow_running: bool = False) -> dict:
    """Nothing half-written in the registry: every version READY, carrying a train_key, at most one version
    per train_key, its model loadable, its drift reference recorded; every alias points at such a version; no MLflow run is RUNNING
    (every train attempt of these tests has finished when this is called). Returns {alias: version}."""
    from mlops_bundle import training
    from mlops_bundle.monitoring import REFERENCE_ARTIFACT_DIR, REFERENCE_FILE

    cfg = _cfg(stack)
    c = _client(stack)
    versions = c.search_model_versions(f"name = '{cfg.model_name}'")
    keys: dict[str, list[str]] = {}
    for mv in versions:
        assert str(mv.status) == "READY", f"version {mv.version} is {mv.status}: {mv.status_message}"
        assert mv.tags.get("train_key"), f"version {mv.version} has no train_key tag: {mv.tags}"
        keys.setdefault(mv.tags["train_key"], []).append(str(mv.version))
        model = training.load_model(cfg, f"models:/{cfg.model_name}/{mv.version}")
        assert hasattr(model, "predict_proba"), f"version {mv.version} did not load as a classifier"
        # register_best also records the drift reference monitoring compares against
        refs = [a.path for a in c.list_artifacts(mv.run_id, REFERENCE_ARTIFACT_DIR)]
        assert f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}" in refs, (
            f"version {mv.version}: no reference ({refs})"
        )
    duplicates = {k[:12]: v for k, v in keys.items() if len(v) > 1}
    assert not duplicates, f"the same training was registered more than once: {duplicates}"
    aliases = {a: str(v) for a, v in c.get_registered_model(cfg.model_name).aliases.items()}
    if require_champion:
        assert aliases.get("champion"), f"no champion alias: {aliases}"
    assert set(aliases.values()) <= {str(mv.version) for mv in versions}, aliases
    exp = c.get_experiment_by_name(cfg.experiment_name)
    if allow_running:
        return aliases
    running = c.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
    pending = [m.model_id for m in c.search_logged_models([exp.experiment_id]) if str(m.status) == "PENDING"]
    assert not pending, f"logged models left PENDING by finished attempts: {pending}"
    assert not running, "MLflow runs left RUNNING by finished attempts: " + ", ".join(
        f"{r.info.run_id} ({r.data.tags.get('airflow.run_id')}, {r.data.tags.get('candidate')})"
        for r in running
    )
    return aliases


def _ensure_workers(stack) -> None:
    for name in sorted(stack.airflow.killed):
        if name.startswith("worker-"):
            _restart_worker(stack, name)


def _restart_worker(stack, name: str, timeout: float = 180) -> None:
    log = stack.airflow.log(name)
    before = log.read_text(errors="replace").count(" ready.")
    stack.airflow.restart(name)
    wait_for(
        lambda: log.read_text(errors="replace").count(" ready."),
        lambda ready: ready > before,
        timeout=timeout,
        describe=lambda _: f"{name} not ready after restart; see {log}",
        interval=1,
        alive=stack.airflow.check_alive,
    )


# --------------------------------------------------------------------------------------------- tests


def test_worker_killed_mid_training_is_retried_on_the_other_worker(fault_stack, token):
    stack = fault_stack
    cfg = _cfg(stack)
    node_to_worker = {node: w for w, node in stack.worker_hostnames.items()}
    moto_log = stack.infra.log("moto")
    fetched_before = _holdout_reads(moto_log)
    train = _ingest_and_wait_for_train(stack, token, KILL_DATE)
    train_id = train["dag_run_id"]

    # wait for the candidate's task to run on a worker and to have fetched its window (the holdout is read
    # last, then the fit starts: the moto server's request log shows it), then kill that worker
    deadline = time.monotonic() + 480

    def candidate_try() -> dict:
        tries = _tries(stack, token, train_id, "train_candidate", 0)
        current = tries[-1] if tries else {}
        assert current.get("state") not in ("success", "failed"), f"train_candidate ended first: {current}"
        return current

    current = wait_for(
        candidate_try,
        lambda c: c.get("state") == "running" and c.get("hostname") in node_to_worker,
        timeout=480,
        describe=lambda c: f"train_candidate not running on a worker: {c}",
        interval=1,
        alive=stack.check_alive,
    )

    def window_read() -> bool:
        if _holdout_reads(moto_log) > fetched_before:
            return True
        now = _tries(stack, token, train_id, "train_candidate", 0)[-1]
        assert now["state"] == "running", f"train_candidate left running before fitting: {now}"
        return False

    wait_for(
        window_read,
        bool,
        timeout=max(deadline - time.monotonic(), 1),
        describe=lambda _: "train_candidate did not read its window",
        interval=0.5,
        alive=stack.check_alive,
    )
    victim_node = current["hostname"]
    victim = node_to_worker[victim_node]
    time.sleep(1)
    t_kill = time.monotonic()
    killed = stack.airflow.kill(f"worker-{victim}", signal.SIGKILL)

    # follow the task instance: heartbeat timeout -> retry queued -> running elsewhere -> success
    seen: dict[str, float] = {}

    def follow() -> list[dict]:
        tries = _tries(stack, token, train_id, "train_candidate", 0)
        first, last = tries[0], tries[-1]
        now = round(time.monotonic() - t_kill, 1)
        if first["state"] != "running":
            seen.setdefault("detected", now)
        if last["try_number"] > first["try_number"]:
            seen.setdefault("retry_created", now)
            if last["state"] == "running":
                seen.setdefault("retry_running", now)
            if last["state"] in ("success", "failed"):
                seen.setdefault(f"retry_{last['state']}", now)
        return tries

    tries = wait_for(
        follow,
        lambda t: t[-1]["try_number"] > t[0]["try_number"] and t[-1]["state"] in ("success", "failed"),
        timeout=600,
        describe=lambda t: f"no finished retry after the kill: {t}",
        interval=1,
    )
    first, last = tries[0], tries[-1]
    run = wait_run(stack, token, TRAIN, train_id, timeout=600)
    seen["train_run_" + run["state"]] = round(time.monotonic() - t_kill, 1)
    print(
        f"\nworker kill: {victim} ({victim_node}) killed with {len(killed)} process(es); seconds after the "
        f"kill: {seen}; tries: {[(t['try_number'], t['state'], t['hostname']) for t in tries]}"
    )

    # the killed try failed on the victim, a later try succeeded on the other worker, the run succeeded
    assert first["hostname"] == victim_node and first["state"] in ("failed", "up_for_retry"), first
    assert last["try_number"] > 1 and last["state"] == "success", tries
    assert last["hostname"] != victim_node and last["hostname"] in node_to_worker, last
    assert run["state"] == "success", f"train {train_id} {run['state']}; task logs under {stack.log_dir}"
    logs = _task_logs(stack, train_id, "train_candidate")
    fitted = {name: f"candidate {CANDIDATE} (random_forest): fit" in text for name, text in logs.items()}
    assert fitted == {
        "map_index=0/attempt=1.log": False,
        f"map_index=0/attempt={last['try_number']}.log": True,
    }, f"the kill did not interrupt the fit of try 1: {fitted}"

    # the killed attempt never got as far as MLflow: one finished run of the candidate, none RUNNING
    runs = _runs_of(stack, train_id)
    assert [(r.data.tags.get("candidate"), r.info.status) for r in runs] == [(CANDIDATE, "FINISHED")], runs

    # exactly one version, the one register_best returned, and it is the champion
    registered = _xcom(stack, token, train_id, "register_best")
    versions = _client(stack).search_model_versions(f"name = '{cfg.model_name}'")
    assert [str(v.version) for v in versions] == [str(registered["version"])], (versions, registered)
    assert versions[0].tags["train_key"] == registered["train_key"]
    assert versions[0].run_id == runs[0].info.run_id
    aliases = _assert_registry_consistent(stack)
    assert aliases["champion"] == str(registered["version"]), aliases

    # the day's staging partition exists once: one manifest, one data object, nothing else
    objects = _staging_objects(stack, KILL_DATE)
    names = sorted(k.rsplit("/", 1)[1] for k in objects)
    assert len(names) == 2 and "_manifest.json" in names, objects

    # the killed worker comes back (the next test needs both)
    _restart_worker(stack, f"worker-{victim}")


def test_mlflow_outage_during_training_recovers_or_fails_clearly(fault_stack, token):
    stack = fault_stack
    cfg = _cfg(stack)
    _ensure_workers(stack)
    c = _client(stack)
    from mlops_bundle import tracking

    champion_before = tracking.alias_version(c, cfg.model_name, "champion")
    train = _ingest_and_wait_for_train(stack, token, MLFLOW_DATE)
    train_id = train["dag_run_id"]

    # stop MLflow while the train run talks to it: while a candidate run is being logged (an MLflow run in
    # state RUNNING) or, failing that, while register_best runs

    def talking_to_mlflow() -> str | None:
        if any(r.info.status == "RUNNING" for r in _runs_of(stack, train_id)):
            return "train_candidate logging to MLflow"
        reg = _tries(stack, token, train_id, "register_best")
        if reg and reg[-1]["state"] == "running":
            return "register_best"
        if reg and reg[-1]["state"] in ("success", "failed"):
            pytest.fail(f"register_best finished ({reg[-1]['state']}) before the outage could start")
        return None

    phase = wait_for(
        talking_to_mlflow,
        bool,
        timeout=600,
        describe=lambda _: "the train run never reached MLflow",
        interval=0.3,
        alive=stack.check_alive,
    )
    t_stop = time.monotonic()
    stack.infra.kill("mlflow", signal.SIGKILL)
    time.sleep(MLFLOW_DOWN_S)
    stack.infra.restart("mlflow")
    stack_runner.wait_http(stack.mlflow_url + "/health", "mlflow server (restarted)", 420, stack.infra)
    t_up = round(time.monotonic() - t_stop, 1)

    run = wait_run(stack, token, TRAIN, train_id, timeout=900)
    t_end = round(time.monotonic() - t_stop, 1)
    history = {
        task: [(t["try_number"], t["state"], t["hostname"]) for t in _tries(stack, token, train_id, task, mi)]
        for task, mi in (("train_candidate", 0), ("register_best", -1), ("promote", -1))
    }
    print(
        f"\nmlflow outage during {phase}: down {MLFLOW_DOWN_S}s, healthy again after {t_up}s, train run "
        f"{run['state']} after {t_end}s; tries {history}"
    )

    if run["state"] != "success":
        # it failed: clearly (a task log names the MLflow server), with the champion and the registry intact;
        # an attempt that died while logging may have left its MLflow run open (no process could close it
        # while the server was down) until the task runs again
        aliases = _assert_registry_consistent(
            stack, require_champion=champion_before is not None, allow_running=True
        )
        assert aliases.get("champion") == champion_before, (aliases, champion_before)
        logs = "\n".join(
            text
            for task in ("train_candidate", "register_best", "promote")
            for text in _task_logs(stack, train_id, task).values()
        )
        assert stack.mlflow_url in logs, (
            f"no task log of the failed run names the MLflow server {stack.mlflow_url}"
        )
        # the operator's remedy once MLflow is back: clear the failed tasks; the rerun must complete and
        # close what the interrupted attempt left open
        body = {"dry_run": False, "dag_run_id": train_id, "only_failed": True, "reset_dag_runs": True}
        rest(stack.api_url, token, "POST", f"/api/v2/dags/{TRAIN}/clearTaskInstances", body)
        time.sleep(2)
        run = wait_run(stack, token, TRAIN, train_id, timeout=900)
        print(f"after clearing the failed tasks: train run {run['state']}")
        assert run["state"] == "success", (
            f"train {train_id} {run['state']} after clearing; logs {stack.log_dir}"
        )
    else:
        # the outage hit an attempt (MLflow calls fail within seconds here): a retry is what recovered
        assert any(t[0] > 1 for h in history.values() for t in h), f"no task retried: {history}"

    # recovered: nothing half-written, one registered version for the run, the champion consistent
    aliases = _assert_registry_consistent(stack, require_champion=True)
    registered = _xcom(stack, token, train_id, "register_best")
    same_key = c.search_model_versions(
        f"name = '{cfg.model_name}' AND tags.train_key = '{registered['train_key']}'"
    )
    assert [str(v.version) for v in same_key] == [str(registered["version"])], same_key
    decision = rest(
        stack.api_url,
        token,
        "GET",
        f"/api/v2/dags/{TRAIN}/dagRuns/{q(train_id)}/taskInstances/promote/xcomEntries/decision",
        deserialize="true",
    )["value"]
    expected = str(registered["version"]) if decision["applied"] else champion_before
    assert aliases.get("champion") == expected, (aliases, decision["verdict"], champion_before)
    runs = _runs_of(stack, train_id)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert [r.data.tags.get("candidate") for r in finished] == [CANDIDATE], runs
    closed = [r.info.run_id for r in runs if r.data.tags.get("mlops.interrupted")]
    print(
        f"gate verdict {decision['verdict']}; champion {aliases.get('champion')}; interrupted runs closed {closed}"
    )
    assert all(r.info.status in ("FINISHED", "FAILED") for r in runs), [
        (r.info.run_id, r.info.status) for r in runs
    ]
